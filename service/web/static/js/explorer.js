// Sweet-spot explorer: a built-in network or an ONNX upload, one or two hardware profiles and a
// batch size → per layer the speedup-vs-sparsity curve with its sweet spot shaded, the bound,
// the plan and its reason; CSV/JSON export. State lives in the URL hash
// (#/explorer?model=googlenet&hardware=xeon-e5-2697v4&compare=atom-c2750&batch=1).

import { api, cached } from "./api.js";
import { lineChart, legend } from "./chart.js";
import { announce, download, errorBox, field, fill, fmt, h, options, showError } from "./dom.js";
import { speedupCurve } from "./perfmodel.js";

const COLORS = ["#1f6feb", "#d1242f"];
const BANDS = ["#2da44e", "#bf8700"];
const POINTS = ["0.5", "0.7", "0.8", "0.9", "0.95"];

export async function renderExplorer(main, { params }) {
  const error = errorBox(null);
  main.append(
    h("h1", {}, "Sweet spots"),
    h("p", { class: "lead" }, "Which layers will a sparse kernel speed up on this hardware, ",
      "and from which sparsity? Predicted with the roofline model of Park et al. (ICLR 2017)."),
  );
  let catalogue;
  let profiles;
  try {
    [catalogue, profiles] = await Promise.all([cached("/v1/models"), cached("/v1/hardware")]);
  } catch (e) {
    main.append(showError(error, e));
    return null;
  }
  profiles = profiles.data;
  const names = profiles.map((p) => p.name);
  const pick = (value, fallback) => (value !== null && value !== "" ? value : fallback);

  const source = params.get("source") === "onnx" ? "onnx" : "builtin";
  const model = options(h("select", { name: "model" }), catalogue.map((m) => [m.name,
    `${m.name} — ${m.paper}`]), pick(params.get("model"), "alexnet"));
  const file = h("input", { type: "file", name: "file", accept: ".onnx" });
  const hardwareA = options(h("select", { name: "hardware" }), names,
    pick(params.get("hardware"), names.includes("xeon-e5-2697v4") ? "xeon-e5-2697v4" : names[0]));
  const hardwareB = options(h("select", { name: "compare" }), [["", "— none —"], ...names],
    params.get("compare") || "");
  // A name in the URL that is not a profile still goes to the API: its answer says so.
  for (const [select, value] of [[hardwareA, params.get("hardware")],
    [hardwareB, params.get("compare")]]) {
    if (value && !names.includes(value)) {
      select.append(h("option", { value, selected: true }, `${value} (unknown)`));
    }
  }
  const batch = h("input", { type: "number", name: "batch", min: 1, max: 65536, step: 1,
    value: pick(params.get("batch"), "1"), inputmode: "numeric", required: true });
  const radio = (value, text) => h("label", { class: "inline" },
    h("input", { type: "radio", name: "source", value, checked: source === value,
      onchange: toggle }), ` ${text}`);
  const modelField = field("ex-model", "Built-in network", model);
  const fileField = field("ex-file", "ONNX file", file,
    "Conv, Gemm and MatMul layers with constant weights; checked, never executed.");
  const submit = h("button", { type: "submit" }, "Predict");
  const form = h("form", { class: "panel", "aria-label": "Prediction inputs", onsubmit: run },
    h("div", { class: "row fields" },
      h("fieldset", { class: "source" }, h("legend", {}, "Network"), h("div", { class: "row" },
        radio("builtin", "built-in"), radio("onnx", "ONNX upload")), modelField, fileField),
      field("ex-hardware", "Hardware profile", hardwareA),
      field("ex-compare", "Compare with", hardwareB, "a second profile, side by side"),
      field("ex-batch", "Batch size", batch, "weights are amortised over the batch"),
      h("div", { class: "field submit" }, submit)));
  const results = h("section", { "aria-label": "Predictions", id: "ex-results" });
  main.append(form, error, results);
  toggle();

  function toggle() {
    const onnx = form.querySelector("input[name=source]:checked").value === "onnx";
    modelField.hidden = onnx;
    fileField.hidden = !onnx;
  }

  async function run(event) {
    if (event) event.preventDefault();
    showError(error, null);
    const onnx = form.querySelector("input[name=source]:checked").value === "onnx";
    const chosen = [hardwareA.value, hardwareB.value].filter(Boolean);
    const n = Number(batch.value);
    if (onnx && !file.files.length) {
      showError(error, { detail: "choose an ONNX file to upload" });
      file.focus();
      return;
    }
    if (!onnx) {
      const query = new URLSearchParams({ model: model.value, hardware: hardwareA.value,
        batch: batch.value });
      if (hardwareB.value) query.set("compare", hardwareB.value);
      history.replaceState(null, "", `#/explorer?${query}`);
    }
    submit.disabled = true;
    fill(results, h("p", { class: "muted" }, "Predicting…"));
    announce("Predicting");
    try {
      const predictions = await Promise.all(chosen.map((name) => {
        if (!onnx) {
          const q = new URLSearchParams({ model: model.value, hardware: name, batch: n });
          return api(`/v1/sweet-spots?${q}`);
        }
        const body = new FormData();
        body.append("file", file.files[0]);
        body.append("hardware", name);
        body.append("batch", String(n));
        return api("/v1/sweet-spots/onnx", { method: "POST", body });
      }));
      const used = predictions.map((p) => profiles.find((x) => x.name === p.hardware));
      renderResults(results, predictions, used);
      announce(`Predicted ${predictions[0].layers.length} layers`);
    } catch (e) {
      results.replaceChildren();
      showError(error, e);
    } finally {
      submit.disabled = false;
    }
  }

  if (params.get("model") || params.get("hardware")) run();
  return null;
}

function describe(p, profile) {
  const numbers = profile ? ` (${fmt.num(profile.dense_flops_per_s / 1e9, 4)} GFLOP/s, ${
    fmt.num(profile.memory_bandwidth_bytes_per_s / 1e9, 4)} GB/s, α=${profile.sparse_overhead}, β=${
    profile.sparse_bytes_per_nonzero})` : "";
  return `${p.hardware}${numbers}`;
}

function renderResults(section, predictions, profiles) {
  const first = predictions[0];
  const detail = h("section", { class: "panel detail", "aria-labelledby": "ex-detail-title" });
  const filter = h("input", { type: "search", placeholder: "e.g. inception_4a", oninput: () => {
    const text = filter.value.trim().toLowerCase();
    for (const row of tbody.rows) row.hidden = !row.dataset.layer.toLowerCase().includes(text);
  } });

  const totals = h("table", { class: "data totals" },
    h("caption", {}, `${first.model}, batch ${first.batch}, ${first.performance_model} model: `,
      "network speedup with the layers planned sparse pruned to each sparsity"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "hardware"),
      h("th", { scope: "col" }, "dense time"), h("th", { scope: "col" }, "sparse layers"),
      POINTS.map((s) => h("th", { scope: "col", class: "num" }, `×@${s}`)))),
    h("tbody", {}, predictions.map((p, i) => h("tr", {},
      h("th", { scope: "row" }, h("span", { class: "swatch", style: `background:${COLORS[i]}`,
        "aria-hidden": "true" }), describe(p, profiles[i])),
      h("td", { class: "num" }, `${fmt.num(p.totals.dense_time_s * 1e3, 4)} ms`),
      h("td", { class: "num" }, `${p.totals.sparse_layers} of ${p.layers.length}`),
      POINTS.map((s) => h("td", { class: "num" }, fmt.x(p.totals.speedup[s])))))));

  const groupHead = predictions.map((p, i) => h("th", { scope: "colgroup", colspan: 4,
    class: `group g${i}` }, p.hardware));
  const subHead = predictions.map(() => ["bound", "sweet spot", "×@sat", "plan and reason"]
    .map((t) => h("th", { scope: "col" }, t)));
  const tbody = h("tbody");
  first.layers.forEach((layer, row) => {
    const cells = predictions.map((p, i) => {
      const l = p.layers[row];
      return [
        h("td", { dataset: { col: `bound-${i}` } }, l.bound),
        h("td", { dataset: { col: `sweet-spot-${i}` }, class: l.sweet_spot ? "spot" : "nospot" },
          fmt.range(l.sweet_spot)),
        h("td", { class: "num", dataset: { col: `best-${i}` } },
          l.sweet_spot ? fmt.x(l.sweet_spot.max_speedup, 1) : "–"),
        h("td", { dataset: { col: `plan-${i}` } }, h("span", { class: `plan ${l.recommendation}` },
          l.recommendation), h("small", { class: "reason" }, l.reason)),
      ];
    });
    const spark = lineChart({
      compact: true, label: `speedup curve of ${layer.name}`,
      series: predictions.map((p, i) => ({ name: p.hardware, color: COLORS[i],
        points: speedupCurve(p.layers[row], profiles[i], p.performance_model, 100) })),
      bands: predictions.map((p, i) => p.layers[row].sweet_spot && ({
        from: p.layers[row].sweet_spot.min_sparsity, to: p.layers[row].sweet_spot.max_sparsity,
        color: BANDS[i] })).filter(Boolean),
      xDomain: [0, 1], hline: 1,
    });
    tbody.append(h("tr", { dataset: { layer: layer.name } },
      h("th", { scope: "row" }, h("button", { type: "button", class: "link",
        "aria-label": `${layer.name}: show its curve`, onclick: () => showLayer(row, true) },
      layer.name)),
      h("td", { class: "shape" }, layer.shape),
      h("td", { class: "num" }, fmt.num(layer.flops / 1e6, 4)),
      h("td", { class: "spark" }, spark),
      cells));
  });
  const table = h("table", { class: "data layers" },
    h("caption", {}, "Per layer: the sweet spot is the sparsity range in which the sparse ",
      "kernel beats dense, up to where it turns memory bound."),
    h("thead", {},
      h("tr", {}, h("td", { colspan: 4 }), groupHead),
      h("tr", {}, h("th", { scope: "col" }, "layer"), h("th", { scope: "col" }, "shape"),
        h("th", { scope: "col", class: "num" }, "MFLOP"),
        h("th", { scope: "col" }, "speedup vs sparsity"), subHead)),
    tbody);

  function showLayer(row, focus) {
    const name = first.layers[row].name;
    const series = predictions.map((p, i) => ({ name: `${p.hardware}`, color: COLORS[i],
      points: speedupCurve(p.layers[row], profiles[i], p.performance_model) }));
    const bands = predictions.map((p, i) => p.layers[row].sweet_spot && ({
      from: p.layers[row].sweet_spot.min_sparsity, to: p.layers[row].sweet_spot.max_sparsity,
      color: BANDS[i], label: `sweet spot on ${p.hardware}` })).filter(Boolean);
    fill(detail,
      h("h2", { id: "ex-detail-title", tabindex: -1 }, name),
      h("p", { class: "muted" }, `${first.layers[row].shape} · ${first.layers[row].kind} · ${
        fmt.num(first.layers[row].flops / 1e6, 4)} MFLOP`),
      h("div", { class: "chart-box" }, lineChart({
        label: `predicted speedup of ${name} against sparsity`, series, bands,
        xDomain: [0, 1], hline: 1, xLabel: "sparsity", yLabel: "speedup over dense",
        xTicks: [0, 0.2, 0.4, 0.6, 0.8, 0.9, 1], xFormat: (v) => `${Math.round(v * 100)}%`,
        yFormat: (v) => `${Number(v.toPrecision(3))}×`,
      }), legend(series, bands)),
      h("dl", { class: "facts" }, predictions.map((p) => {
        const l = p.layers[row];
        return [h("dt", {}, p.hardware), h("dd", {},
          `${l.bound} bound dense (${fmt.num(l.dense_time_s * 1e6, 4)} µs); sweet spot ${
            fmt.range(l.sweet_spot)}${l.sweet_spot ? `, ${fmt.x(l.sweet_spot.max_speedup, 1)} at its upper bound`
            : ""}; plan: ${l.recommendation} — ${l.reason}`)];
      })));
    if (focus) detail.querySelector("h2").focus();
  }

  const exports = h("div", { class: "row" },
    h("button", { type: "button", class: "secondary", onclick: () => download(
      `${first.model}-sweet-spots.csv`, toCsv(predictions), "text/csv") }, "Export CSV"),
    h("button", { type: "button", class: "secondary", onclick: () => download(
      `${first.model}-sweet-spots.json`, JSON.stringify(
        predictions.length === 1 ? first : predictions, null, 2), "application/json") },
    "Export JSON"),
    field("ex-filter", "Filter layers", filter));
  fill(section, h("div", { class: "scroll" }, totals), exports, detail,
    h("div", { class: "scroll" }, table));
  const start = first.layers.findIndex((l) => l.recommendation === "sparse");
  showLayer(Math.max(0, start), false);
}

// batch: the network's; layer_batch: the images or rows the layer itself runs (a linear layer
// on (50, 64) examples runs 50 rows each: per_example).
const CSV_COLUMNS = ["hardware", "batch", "layer", "layer_batch", "kind", "shape", "flops",
  "activation_bytes",
  "weight_bytes", "dense_time_s", "bound", "sweet_spot_min", "sweet_spot_max", "max_speedup",
  ...POINTS.map((s) => `speedup_${s}`), "recommendation", "reason"];

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** One row per (hardware, layer): a tidy table for spreadsheets and pandas. */
export function toCsv(predictions) {
  const rows = [CSV_COLUMNS];
  for (const p of predictions) {
    for (const l of p.layers) {
      const spot = l.sweet_spot || {};
      rows.push([p.hardware, p.batch, l.name, l.spec?.batch, l.kind, l.shape, l.flops,
        l.activation_bytes,
        l.weight_bytes, l.dense_time_s, l.bound, spot.min_sparsity, spot.max_sparsity,
        spot.max_speedup, ...POINTS.map((s) => l.speedup[s]), l.recommendation, l.reason]);
    }
  }
  return `${rows.map((r) => r.map(csvCell).join(",")).join("\n")}\n`;
}
