// Jobs: the list (status, progress; refreshed while any job is active) and the submit form,
// whose hyperparameter fields come from GET /v1/methods (names and defaults).

import { api, cached } from "./api.js";
import { announce, errorBox, field, fill, fmt, h, options, showError } from "./dom.js";

export const ACTIVE = new Set(["queued", "running", "cancelling"]);

// /v1/methods gives names and defaults; these are the explanations of the common ones.
const HELP = {
  dense_epochs: "epochs training the dense baseline (skipped with a starting checkpoint)",
  prune_epochs: "epochs of the pruning phase",
  finetune_epochs: "epochs fine-tuning with the pruned weights frozen at zero",
  batch_size: "training images per step",
  lr: "learning rate of the dense and prune phases",
  finetune_lr: "learning rate while fine-tuning",
  threads: "torch threads for this job (empty: the worker's default)",
  seed: "random seed (data order, initialisation)",
  lasso: "strength of the element-wise lasso on the layers GSL prunes",
  guided: "prune only the layers the performance model says will speed up",
  ratio: "fraction of filters removed per layer",
  strength: "regularisation strength",
  final_sparsity: "sparsity reached at the end of the ramp",
};
const MAIN_TRAIN = ["dense_epochs", "prune_epochs", "finetune_epochs", "lr", "batch_size",
  "threads", "seed"];

export async function renderJobs(main, { params }) {
  const error = errorBox(null);
  const list = h("div", { class: "scroll", "aria-live": "off" });
  const filter = options(h("select", { name: "status" }), [["", "all"], "queued", "running",
    "cancelling", "succeeded", "failed", "cancelled"], params.get("status") || "");
  main.append(h("h1", {}, "Jobs"),
    h("section", { "aria-labelledby": "jobs-list" },
      h("div", { class: "row spread" }, h("h2", { id: "jobs-list" }, "Your jobs"),
        field("jobs-filter", "Status", filter)),
      error, list));
  let timer = null;
  let stopped = false;

  async function refresh() {
    clearTimeout(timer);
    try {
      const q = new URLSearchParams({ limit: 50 });
      if (filter.value) q.set("status", filter.value);
      const jobs = await api(`/v1/jobs?${q}`);
      showError(error, null);
      fill(list, jobsTable(jobs));
      if (!stopped && jobs.data.some((j) => ACTIVE.has(j.status))) timer = setTimeout(refresh, 2000);
    } catch (e) {
      showError(error, e);
    }
  }
  filter.addEventListener("change", refresh);
  await refresh();
  main.append(await submitForm());
  return () => { stopped = true; clearTimeout(timer); };
}

function jobsTable(jobs) {
  if (!jobs.data.length) return h("p", { class: "muted" }, "No jobs yet: submit one below.");
  return h("table", { class: "data jobs" },
    h("caption", {}, `${jobs.count} job${jobs.count === 1 ? "" : "s"}`,
      jobs.count > jobs.data.length ? `, newest ${jobs.data.length} shown` : ""),
    h("thead", {}, h("tr", {}, ["job", "method", "model", "dataset", "hardware", "status",
      "progress", "submitted"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, jobs.data.map((j) => h("tr", { dataset: { job: j.id } },
      h("th", { scope: "row" }, h("a", { href: `#/jobs/${j.id}` }, j.id)),
      ...(j.request.kind === "calibration"  // no method, model or data set: say what it is
        ? [h("td", { colspan: 3 }, "calibration"), h("td", {}, j.request.name)]
        : [h("td", {}, j.request.method), h("td", {}, j.request.model),
          h("td", {}, j.request.dataset), h("td", {}, j.request.hardware)]),
      h("td", {}, h("span", { class: `status ${j.status}`, title: j.status_reason }, j.status)),
      h("td", {}, h("progress", { max: 1, value: j.progress,
        "aria-label": `progress of ${j.id}` }), ` ${Math.round(100 * j.progress)}%`),
      h("td", {}, fmt.time(j.created_at))))));
}

function inputFor(param) {
  const value = param.default;
  if (typeof value === "boolean") {
    return h("select", { dataset: { param: param.name, kind: "bool", default: String(value) } },
      h("option", { value: "true", selected: value }, "true"),
      h("option", { value: "false", selected: !value }, "false"));
  }
  const numeric = typeof value === "number" || value === null;
  return h("input", {
    type: numeric ? "number" : "text", step: "any", inputmode: numeric ? "decimal" : null,
    value: value === null ? "" : value, placeholder: value === null ? "default" : null,
    dataset: { param: param.name, kind: numeric ? "number" : "text",
      default: value === null ? "" : String(value) },
  });
}

async function submitForm() {
  const error = errorBox(null);
  let catalogue;
  let profiles;
  try {
    [catalogue, profiles] = await Promise.all([cached("/v1/catalogue"), cached("/v1/hardware")]);
  } catch (e) {
    return showError(error, e);
  }
  const method = options(h("select", { name: "method" }), catalogue.methods.map((m) => m.name),
    "gsl");
  const model = options(h("select", { name: "model" }), catalogue.models.map((m) => m.name),
    "lenet5");
  const dataset = options(h("select", { name: "dataset" }), catalogue.datasets.map((d) => [d.name,
    `${d.name} — ${d.description}`]), "digits");
  const hardware = options(h("select", { name: "hardware" }), profiles.data.map((p) => p.name),
    "xeon-e5-2697v4");
  const measure = h("input", { type: "checkbox", name: "measure", checked: true });
  const summary = h("p", { class: "muted", id: "job-method-summary" });
  const paramsBox = h("div", { class: "params" });
  const extra = h("textarea", { name: "extra", rows: 2, spellcheck: "false" }, "{}");
  const submit = h("button", { type: "submit" }, "Submit job");

  function showParams() {
    const info = catalogue.methods.find((m) => m.name === method.value);
    summary.textContent = info.summary;
    const scalar = (p) => p.default === null || ["number", "boolean", "string"]
      .includes(typeof p.default);
    const train = MAIN_TRAIN.map((n) => info.parameters.find((p) => p.name === n)).filter(Boolean);
    const own = info.parameters.filter((p) => p.scope === "method" && scalar(p));
    const rest = info.parameters.filter((p) => !train.includes(p) && !own.includes(p));
    const group = (title, items) => h("fieldset", {}, h("legend", {}, title),
      h("div", { class: "row fields" }, items.map((p) => field(`job-p-${p.name}`, p.name,
        inputFor(p), `${HELP[p.name] ? `${HELP[p.name]}; ` : ""}default ${
          JSON.stringify(p.default)}`))));
    fill(paramsBox, group("Schedule", train), own.length ? group(`${info.name} settings`, own)
      : null, h("p", { class: "help" }, "Other settings as JSON (",
      rest.map((p) => p.name).join(", "), ")"));
  }
  method.addEventListener("change", showParams);
  showParams();

  function config() {
    const values = {};
    for (const el of paramsBox.querySelectorAll("[data-param]")) {
      if (el.value === el.dataset.default) continue;
      const { param, kind } = el.dataset;
      if (kind === "bool") values[param] = el.value === "true";
      else if (kind === "number") values[param] = el.value === "" ? null : Number(el.value);
      else values[param] = el.value;
    }
    let more;
    try {
      more = JSON.parse(extra.value || "{}");
    } catch (e) {
      throw { detail: `other settings are not valid JSON: ${e.message}` };
    }
    if (typeof more !== "object" || more === null || Array.isArray(more)) {
      throw { detail: "other settings must be a JSON object, e.g. {\"multipliers\": {}}" };
    }
    return { ...values, ...more };
  }

  const form = h("form", { class: "panel", "aria-labelledby": "job-new", onsubmit: async (e) => {
    e.preventDefault();
    showError(error, null);
    submit.disabled = true;
    try {
      const body = { method: method.value, model: model.value, dataset: dataset.value,
        hardware: hardware.value, config: config(), measure: measure.checked };
      const job = await api("/v1/jobs", { method: "POST", body });
      announce(`Job ${job.id} submitted`);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showError(error, err);
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", { id: "job-new" }, "Submit a pruning job"),
  h("div", { class: "row fields" },
    field("job-method", "Method", method), field("job-model", "Model", model),
    field("job-dataset", "Data set", dataset), field("job-hardware", "Predict for", hardware,
      "the profile whose sweet spots guide pruning")),
  summary, paramsBox, field("job-extra", "Other settings (JSON)", extra),
  h("label", { class: "inline" }, measure,
    " measure the pruned model against dense on the worker"),
  h("div", { class: "row" }, submit), error);
  method.setAttribute("aria-describedby", "job-method-summary");
  return form;
}
