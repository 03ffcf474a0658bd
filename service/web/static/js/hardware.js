// Hardware: every profile's roofline numbers (F, B, α, β) with where they came from, and a
// form for a custom profile (validated by POST /v1/hardware).
// "Calibrate this host" submits POST /v1/hardware/calibrate (a job run by a worker) and opens
// its job page; the new profile appears here when it succeeds. A custom profile has a Delete
// button (DELETE /v1/hardware/{name}: its creator only, and not while a job uses it).

import { api, cached, forget } from "./api.js";
import { announce, errorBox, field, fill, fmt, h, showError } from "./dom.js";

export async function renderHardware(main) {
  const error = errorBox(null);
  const list = h("div", { class: "scroll" });
  main.append(
    h("h1", {}, "Hardware"),
    h("p", { class: "lead" }, "The roofline inputs of each profile: F the achievable dense ",
      "compute rate, B the memory bandwidth, α the sparse kernel's compute overhead per useful ",
      "FLOP, β the bytes per non-zero relative to a dense weight. Every number says where it ",
      "came from."),
    list, error);
  await load();

  async function load() {
    try {
      const listing = await cached("/v1/hardware");
      fill(list, table(listing.data, new Set(listing.builtin || []), remove));
    } catch (e) {
      showError(error, e);
    }
  }

  async function remove(name) {
    if (!confirm(`Delete the profile ${name}?`)) return;
    try {
      await api(`/v1/hardware/${encodeURIComponent(name)}`, { method: "DELETE" });
      showError(error, null);
      announce(`Profile ${name} deleted`);
      forget("/v1/hardware");
      await load();
    } catch (e) {
      showError(error, e);  // 403: another caller's; 409: a job uses it
    }
  }

  main.append(createForm(async (profile) => {
    forget("/v1/hardware");
    await load();
    const row = list.querySelector(`tr[data-profile="${CSS.escape(profile.name)}"] th`);
    if (row) { row.tabIndex = -1; row.focus(); }
  }), calibrateForm());
  return null;
}

function calibrateForm() {
  const name = h("input", { type: "text", value: "host", required: true,
    pattern: "[a-z0-9][a-z0-9._-]*" });
  const quick = h("input", { type: "checkbox", checked: true });
  const replace = h("input", { type: "checkbox" });
  const error = errorBox(null);
  const form = h("form", { class: "panel", "aria-labelledby": "hw-cal" },
    h("h2", { id: "hw-cal" }, "Calibrate this host"),
    h("p", { class: "muted" }, "Microbenchmarks of the machine the workers run on (dense and ",
      "sparse kernels, memory bandwidth), fitted into the refined model and saved as a ",
      "profile. It keeps the CPUs busy for up to a minute (three without quick)."),
    field("cal-name", "Profile name", name, "lower case; built-in names are refused"),
    h("div", { class: "field" }, h("label", {}, quick, " quick plan (≤ 60 s)")),
    h("div", { class: "field" }, h("label", {}, replace,
      " replace the custom profile of this name if it exists (yours only)")),
    h("button", { type: "submit" }, "Calibrate"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await api("/v1/hardware/calibrate", { method: "POST",
        body: { name: name.value.trim(), quick: quick.checked, replace: replace.checked } });
      announce(`Calibration job ${job.id} queued`);
      forget("/v1/hardware");
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      showError(error, e);
    }
  });
  return form;
}

function table(profiles, builtin, remove) {
  const head = ["name", "F (GFLOP/s)", "B (GB/s)", "α", "β", "ridge (FLOP/B)", "batch",
    "machine", "provenance", ""];
  return h("table", { class: "data profiles" },
    h("caption", {}, `${profiles.length} profiles`),
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, profiles.map((p) => {
      const prov = p.provenance;
      const machine = [p.cores && `${p.cores} cores`, p.clock_hz && `${fmt.num(p.clock_hz / 1e9)} GHz`,
        p.simd_width_fp32 && `${p.simd_width_fp32}-wide fp32`].filter(Boolean).join(", ");
      return h("tr", { dataset: { profile: p.name } },
        h("th", { scope: "row" }, h("a", { href: `#/explorer?model=alexnet&hardware=${
          encodeURIComponent(p.name)}`, title: "predict sweet spots on this profile" }, p.name),
        h("div", { class: "muted small" }, p.description)),
        h("td", { class: "num" }, fmt.num(p.dense_flops_per_s / 1e9, 4)),
        h("td", { class: "num" }, fmt.num(p.memory_bandwidth_bytes_per_s / 1e9, 4)),
        h("td", { class: "num" }, p.sparse_overhead),
        h("td", { class: "num" }, p.sparse_bytes_per_nonzero),
        h("td", { class: "num" }, fmt.num(p.dense_flops_per_s / p.memory_bandwidth_bytes_per_s)),
        h("td", { class: "num" }, p.default_batch),
        h("td", {}, machine || "–"),
        h("td", { class: "small" }, h("span", { class: `kind ${prov.kind}` }, prov.kind), " ",
          prov.source,
          [prov.host && `host ${prov.host}`, prov.cpu, prov.date].filter(Boolean).length
            ? h("div", {}, [prov.host && `host ${prov.host}`, prov.cpu, prov.date]
              .filter(Boolean).join(" · ")) : null,
          prov.notes ? h("div", { class: "muted" }, prov.notes) : null),
        h("td", {}, builtin.has(p.name) ? null : h("button", { type: "button",
          class: "secondary", dataset: { delete: p.name }, "aria-label": `delete ${p.name}`,
          onclick: () => remove(p.name) }, "Delete")));
    })));
}

function createForm(onCreated) {
  const error = errorBox(null);
  const input = (name, attrs = {}) => h("input", { name, ...attrs });
  const name = input("name", { required: true, placeholder: "my-laptop", autocomplete: "off" });
  const description = input("description", { placeholder: "what machine this is" });
  const flops = input("flops", { type: "number", step: "any", min: 0, required: true });
  const bandwidth = input("bandwidth", { type: "number", step: "any", min: 0, required: true });
  const alpha = input("alpha", { type: "number", step: "any", min: 0, value: 3, required: true });
  const beta = input("beta", { type: "number", step: "any", min: 0, value: 2, required: true });
  const source = input("source", { required: true, placeholder: "datasheet, STREAM run, …" });
  const submit = h("button", { type: "submit" }, "Create profile");
  const form = h("form", { class: "panel", "aria-labelledby": "hw-new", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      showError(error, null);
      const profile = {
        name: name.value.trim(), description: description.value.trim(),
        dense_flops_per_s: Number(flops.value) * 1e9,
        memory_bandwidth_bytes_per_s: Number(bandwidth.value) * 1e9,
        sparse_overhead: Number(alpha.value), sparse_bytes_per_nonzero: Number(beta.value),
        provenance: { kind: "user", source: source.value.trim() || "entered on the web page" },
      };
      submit.disabled = true;
      try {
        const created = await api("/v1/hardware", { method: "POST", body: profile });
        announce(`Profile ${created.name} created`);
        form.reset();
        await onCreated(created);
      } catch (e) {
        showError(error, e);
        name.focus();
      } finally {
        submit.disabled = false;
      }
    } },
  h("h2", { id: "hw-new" }, "Add a custom profile"),
  h("div", { class: "row fields" },
    field("hw-name", "Name", name, "lower case, digits, . _ -"),
    field("hw-description", "Description", description)),
  h("div", { class: "row fields" },
    field("hw-flops", "F: dense compute (GFLOP/s)", flops, "e.g. an SGEMM benchmark"),
    field("hw-bandwidth", "B: memory bandwidth (GB/s)", bandwidth, "e.g. STREAM triad"),
    field("hw-alpha", "α: sparse overhead", alpha, "sparse kernel cost per useful FLOP"),
    field("hw-beta", "β: bytes per non-zero", beta, "fp32 CSR: 2")),
  field("hw-source", "Source of the numbers", source),
  h("div", { class: "row" }, submit), error);
  return form;
}
