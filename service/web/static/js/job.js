// One job, live: status and progress, charts of loss / accuracy / per-layer sparsity over the
// epochs, the controller's decisions with reasons, then predicted against measured speedup
// per layer, cancel, and the artifacts.
//
// Events arrive by server-sent events (EventSource on /events?follow=true). EventSource cannot
// send an Authorization header, so with a token set (or if the stream breaks) the page polls
// /events?after=<last id> instead. Either way each event is applied once, in id order.

import { api, downloadWithToken, getToken } from "./api.js";
import { lineChart, legend, PALETTE } from "./chart.js";
import { announce, errorBox, fill, fmt, h, showError } from "./dom.js";
import { ACTIVE } from "./jobs.js";

const EVENT_TYPES = ["phase", "epoch", "decision", "log", "step"];

export async function renderJob(main, { id }) {
  const error = errorBox(null);
  const statusLine = h("p", { class: "status-line", role: "status", "aria-live": "polite" });
  const progress = h("progress", { max: 1, value: 0, "aria-label": "progress" });
  const cancel = h("button", { type: "button", class: "danger", onclick: onCancel }, "Cancel job");
  const remove = h("button", { type: "button", class: "secondary", onclick: onDelete },
    "Delete job");
  const request = h("dl", { class: "facts" });
  const charts = h("div", { class: "charts" });
  const decisions = h("tbody");
  const logs = h("ul", { class: "logs" });
  const result = h("section", { "aria-labelledby": "job-result", hidden: true });
  const artifacts = h("section", { "aria-labelledby": "job-artifacts", hidden: true });
  const transitions = h("ol", { class: "transitions" });

  main.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")),
    h("h1", {}, `Job ${id}`),
    h("div", { class: "row" }, statusLine, progress, cancel, remove),
    error,
    h("div", { class: "two" }, h("section", { class: "panel", "aria-labelledby": "job-req" },
      h("h2", { id: "job-req" }, "Request"), request),
    h("section", { class: "panel", "aria-labelledby": "job-hist" },
      h("h2", { id: "job-hist" }, "History"), transitions)),
    h("section", { "aria-labelledby": "job-curves" }, h("h2", { id: "job-curves" },
      "Training curves"), charts),
    result,
    h("section", { "aria-labelledby": "job-decisions" },
      h("h2", { id: "job-decisions" }, "Controller decisions"),
      h("div", { class: "scroll" }, h("table", { class: "data decisions" },
        h("thead", {}, h("tr", {}, ["epoch", "layer", "action", "reason"].map((t) =>
          h("th", { scope: "col" }, t)))), decisions)),
      h("h3", {}, "Messages"), logs),
    artifacts);

  let job = null;
  let last = 0;
  let source = null;
  let timer = null;
  let stopped = false;
  let drawPending = false;
  const epochs = [];  // epoch events in order: x = their index + 1
  const phases = [];  // {x, phase}: where a phase starts on that axis

  async function loadJob() {
    try {
      job = await api(`/v1/jobs/${id}`);
      showError(error, null);
      showJob();
      return job;
    } catch (e) {
      showError(error, e);
      return null;
    }
  }

  function showJob() {
    const previous = statusLine.dataset.status;
    statusLine.dataset.status = job.status;
    fill(statusLine, "Status: ", h("span", { class: `status ${job.status}`, id: "job-status" },
      job.status), ` — ${job.status_reason}`, job.attempts > 1 ? ` (attempt ${job.attempts})` : "");
    if (previous && previous !== job.status) announce(`Job ${job.status}`);
    progress.value = job.progress;
    progress.textContent = `${Math.round(job.progress * 100)}%`;
    cancel.hidden = !ACTIVE.has(job.status) || job.status === "cancelling";
    remove.hidden = ACTIVE.has(job.status);
    const r = job.request;
    const rows = r.kind === "calibration"  // a calibration has no method, model or config
      ? [["kind", "calibration of the workers' host"], ["profile", r.name],
        ["quick", String(r.quick)], ["replace", String(r.replace)]]
      : [["method", r.method], ["model", r.model], ["dataset", r.dataset],
        ["predicted for", r.hardware], ["measure", String(r.measure)],
        ["config", JSON.stringify(r.config)], ["checkpoint", r.checkpoint || "none"]];
    fill(request, [...rows, ["worker", job.worker_id || "–"]].map(
      ([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    fill(transitions, job.transitions.map((t) => h("li", {}, h("time", { datetime: t.at },
      fmt.time(t.at)), ` ${t.from_status || "—"} → `, h("strong", {}, t.to_status),
    `: ${t.reason}`)));
    if (!ACTIVE.has(job.status)) {
      showResult();
      showArtifacts();
    }
  }

  // ------------------------------------------------------------------------------- events

  function apply(event) {
    if (event.id <= last) return;
    last = event.id;
    const d = event.data;
    if (event.type === "epoch") {
      epochs.push(d);
      scheduleDraw();
    } else if (event.type === "phase") {
      phases.push({ x: epochs.length + 0.5, phase: d.phase });
      scheduleDraw();
    } else if (event.type === "decision") {
      decisions.append(h("tr", { dataset: { layer: d.layer } }, h("td", { class: "num" }, d.epoch),
        h("th", { scope: "row" }, d.layer), h("td", {}, h("span", { class: `action ${d.action}` },
          d.action)), h("td", {}, d.reason)));
    } else if (event.type === "log") {
      logs.append(h("li", {}, d.message));
    }
  }

  function follow() {
    if (getToken() || !window.EventSource) {
      poll();
      return;
    }
    source = new EventSource(`/v1/jobs/${id}/events?follow=true&after=${last}`);
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (m) => apply(JSON.parse(m.data)));
    }
    source.onmessage = (m) => apply(JSON.parse(m.data));
    source.addEventListener("end", async (m) => {
      source.close();
      source = null;
      if (JSON.parse(m.data).status === "deleted") {  // by another tab or client
        stopped = true;
        fill(statusLine, "Status: ", h("strong", {}, "deleted"), " — this job no longer exists");
        cancel.hidden = remove.hidden = true;
        announce("Job deleted");
        return;
      }
      await finish();
    });
    source.onerror = () => {
      // The browser would reconnect from the first URL (replaying events); poll instead.
      if (source) source.close();
      source = null;
      if (!stopped) poll();
    };
  }

  async function poll() {
    if (stopped) return;
    try {
      const events = await api(`/v1/jobs/${id}/events?after=${last}&limit=1000`);
      events.data.forEach(apply);
      if (events.count === 0 && job && !ACTIVE.has(job.status)) {
        await finish();
        return;
      }
      if (events.count === 1000) { poll(); return; }
    } catch (e) {
      showError(error, e);
    }
    timer = setTimeout(poll, 1000);
  }

  async function finish() {
    const done = await loadJob();
    if (done && ACTIVE.has(done.status) && !stopped) timer = setTimeout(poll, 1000);
  }

  // The job itself (status, progress) while it runs: events do not carry progress.
  async function watchJob() {
    if (stopped) return;
    await loadJob();
    if (job && ACTIVE.has(job.status)) setTimeout(watchJob, 1500);
  }

  // ------------------------------------------------------------------------------- charts

  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }

  function draw() {
    if (!epochs.length) {
      fill(charts, h("p", { class: "muted" }, "No finished epoch yet."));
      return;
    }
    const x = (i) => i + 1;
    const series = (key) => epochs.map((e, i) => [x(i), e[key]]).filter((p) => p[1] !== undefined
      && p[1] !== null);
    const vlines = phases.map((p) => ({ x: p.x, label: p.phase }));
    const xDomain = [0.5, Math.max(epochs.length, 1) + 0.5];
    const xTicks = epochs.map((_, i) => x(i)).filter((v, i, all) => all.length <= 12
      || i % Math.ceil(all.length / 12) === 0);
    const common = { xDomain, vlines, xLabel: "epoch (all phases)", xTicks, width: 380,
      height: 220, xFormat: (v) => String(v) };
    const box = (title, chartSeries, extra = {}) => h("figure", { class: "chart-box" },
      h("figcaption", {}, title), lineChart({ label: `${title} over epochs`, series: chartSeries,
        ...common, ...extra }), legend(chartSeries));
    const layers = Object.keys(epochs[epochs.length - 1].sparsity || {});
    fill(charts,
      box("Loss", [{ name: "train loss", points: series("loss") },
        { name: "test loss", points: series("test_loss"), dash: "5 3" }]),
      box("Accuracy", [{ name: "train accuracy", points: series("train_accuracy") },
        { name: "test accuracy", points: series("test_accuracy"), dash: "5 3" }],
      { yDomain: [0, 1], yFormat: (v) => `${Math.round(v * 100)}%` }),
      box("Sparsity per layer", layers.map((name, i) => ({ name, color: PALETTE[i % 8],
        points: epochs.map((e, j) => [x(j), (e.sparsity || {})[name]]) })),
      { yDomain: [0, 1], yFormat: (v) => `${Math.round(v * 100)}%` }));
  }

  // ------------------------------------------------------------------------ result, files

  function showResult() {
    const res = job.result;
    if (res && res.profile) {  // a calibration job: the profile it wrote
      const p = res.profile;
      result.hidden = false;
      fill(result, h("h2", { id: "job-result" }, "Result"),
        h("p", {}, "Profile ", h("a", { href: "#/hardware" }, p.name), " written: F = ",
          `${fmt.num(p.dense_flops_per_s / 1e9, 4)} GFLOP/s, B = `,
          `${fmt.num(p.memory_bandwidth_bytes_per_s / 1e9, 4)} GB/s, α = ${p.sparse_overhead}. `,
          h("a", { href: `#/explorer?model=alexnet&hardware=${encodeURIComponent(p.name)}` },
            "Predict sweet spots with it")));
      return;
    }
    if (!res || !res.layers) {
      result.hidden = true;
      return;
    }
    result.hidden = false;
    const acc = res.accuracy || {};
    const speed = res.model_speedup || {};
    fill(result, h("h2", { id: "job-result" }, "Result"),
      h("p", {}, `Accuracy: dense ${fmt.pct(acc.dense)} → pruned ${fmt.pct(acc.pruned)}. `,
        `Model speedup: predicted ${fmt.x(speed.predicted)}${job.request.hardware
          ? ` (${job.request.hardware})` : ""}; ${speed.measured === null
          || speed.measured === undefined
          ? `not measured${res.not_measured ? ` (${res.not_measured})` : ""}`
          : `measured ${fmt.x(speed.measured)} on the worker`}.`,
        res.surgery_skipped ? ` Surgery skipped: ${res.surgery_skipped}.` : ""),
      h("div", { class: "scroll" }, h("table", { class: "data result" },
        h("caption", {}, "Predicted against measured speedup per layer"),
        h("thead", {}, h("tr", {}, ["layer", "sparsity", "format", "state", "predicted",
          "measured"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, res.layers.map((l) => h("tr", { dataset: { layer: l.name } },
          h("th", { scope: "row" }, l.name), h("td", { class: "num" }, fmt.pct(l.sparsity)),
          h("td", {}, l.format), h("td", {}, l.state),
          h("td", { class: "num" }, fmt.x(l.predicted_speedup)),
          h("td", { class: "num" }, l.measured_speedup === null ? "–"
            : fmt.x(l.measured_speedup))))))));
  }

  async function showArtifacts() {
    if (artifacts.dataset.loaded === job.status) return;
    try {
      const files = await api(`/v1/jobs/${id}/artifacts`);
      artifacts.dataset.loaded = job.status;
      artifacts.hidden = false;
      fill(artifacts, h("h2", { id: "job-artifacts" }, "Artifacts"), files.count ? h("ul",
        { class: "artifacts" }, files.data.map((a) => h("li", {}, h("a", { href: a.href,
          download: a.name, dataset: { artifact: a.name }, onclick: (event) => {
            if (!getToken()) return;
            event.preventDefault();
            downloadWithToken(a.href, a.name).catch((e) => showError(error, e));
          } }, a.name), ` ${fmt.bytes(a.size)} · ${a.media_type}`)))
        : h("p", { class: "muted" }, "This job wrote no files."));
    } catch (e) {
      showError(error, e);
    }
  }

  async function onCancel() {
    try {
      job = await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
      showJob();
      announce("Cancel requested");
      watchJob();
    } catch (e) {
      showError(error, e);
    }
  }

  async function onDelete() {
    // eslint-disable-next-line no-alert
    if (!confirm(`Delete job ${id} with its events and artifacts?`)) return;
    try {
      await api(`/v1/jobs/${id}`, { method: "DELETE" });
      announce(`Job ${id} deleted`);
      location.hash = "#/jobs";
    } catch (e) {
      showError(error, e);
    }
  }

  draw();
  if (await loadJob()) {
    follow();
    if (ACTIVE.has(job.status)) setTimeout(watchJob, 1500);
  }
  return () => {
    stopped = true;
    if (source) source.close();
    clearTimeout(timer);
  };
}
