// A small SVG line chart with shaded bands: enough for speedup curves with their sweet spot
// and for training curves over epochs. No library: a few hundred points per chart at most.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
  "#0a7d8c", "#57606a"];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= step0) || step0;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  return ticks;
}

/**
 * Draw a chart.
 * @param {object} o
 *   series: [{name, points: [[x, y]], color?, dash?}]
 *   bands: [{from, to, color?, label?}]  shaded x ranges (the sweet spot)
 *   hline: y of a dashed reference line (1× = break-even); vlines: [{x, label}]
 *   xDomain/yDomain: [lo, hi] (default: from the data); xFormat/yFormat: tick labels
 *   label: the accessible name (role="img"); compact: a sparkline without axes
 */
export function lineChart(o) {
  const compact = Boolean(o.compact);
  const width = o.width || (compact ? 160 : 560);
  const height = o.height || (compact ? 44 : 260);
  const pad = compact ? { l: 2, r: 2, t: 3, b: 3 } : { l: 48, r: 22, t: 12, b: 36 };
  const all = o.series.flatMap((x) => x.points).filter((p) => Number.isFinite(p[1]));
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = o.xDomain || [Math.min(...xs, 0), Math.max(...xs, 1)];
  let [y0, y1] = o.yDomain || [Math.min(0, ...ys), Math.max(...ys, o.hline ?? -Infinity)];
  if (!(y1 > y0)) y1 = y0 + 1;
  if (!o.yDomain) y1 += (y1 - y0) * 0.05;
  const X = (x) => pad.l + ((x - x0) / (x1 - x0 || 1)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);

  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": o.label || "chart", class: compact ? "chart compact" : "chart",
  });
  if (o.label) svg.append(s("title", {}, o.label));
  for (const band of o.bands || []) {
    svg.append(s("rect", {
      x: X(band.from), y: pad.t, width: Math.max(1, X(band.to) - X(band.from)),
      height: height - pad.t - pad.b, fill: band.color || "#2da44e", "fill-opacity": 0.16,
      class: "band",
    }));
  }
  if (!compact) {
    const xFormat = o.xFormat || ((v) => String(v));
    const yFormat = o.yFormat || ((v) => String(Number(v.toPrecision(3))));
    for (const t of niceTicks(y0, y1, 5)) {
      svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: Y(t), y2: Y(t), class: "grid" }));
      svg.append(s("text", { x: pad.l - 6, y: Y(t) + 4, "text-anchor": "end", class: "tick" },
        yFormat(t)));
    }
    const xTicks = o.xTicks || niceTicks(x0, x1, 6);
    for (const t of xTicks) {
      svg.append(s("text", { x: X(t), y: height - pad.b + 16, "text-anchor": "middle",
        class: "tick" }, xFormat(t)));
    }
    svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b,
      class: "axis" }));
    svg.append(s("line", { x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b, class: "axis" }));
    if (o.xLabel) {
      svg.append(s("text", { x: (pad.l + width - pad.r) / 2, y: height - 4,
        "text-anchor": "middle", class: "axis-label" }, o.xLabel));
    }
    if (o.yLabel) {
      svg.append(s("text", { x: 12, y: (pad.t + height - pad.b) / 2, "text-anchor": "middle",
        transform: `rotate(-90 12 ${(pad.t + height - pad.b) / 2})`, class: "axis-label" },
      o.yLabel));
    }
  }
  if (o.hline !== undefined && o.hline >= y0 && o.hline <= y1) {
    svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: Y(o.hline), y2: Y(o.hline),
      class: "ref" }));
  }
  for (const v of o.vlines || []) {
    svg.append(s("line", { x1: X(v.x), x2: X(v.x), y1: pad.t, y2: height - pad.b, class: "ref" }));
    if (v.label && !compact) {
      svg.append(s("text", { x: X(v.x) + 3, y: pad.t + 10, class: "tick" }, v.label));
    }
  }
  o.series.forEach((series, i) => {
    const pts = series.points.filter((p) => Number.isFinite(p[1]));
    if (!pts.length) return;
    const color = series.color || PALETTE[i % PALETTE.length];
    const d = pts.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`);
    svg.append(s("path", { d: d.join(""), fill: "none", stroke: color,
      "stroke-width": compact ? 1.5 : 2, "stroke-dasharray": series.dash || null,
      class: "line" }));
    if (pts.length < 30 && !compact) {
      for (const p of pts) {
        svg.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color }));
      }
    }
  });
  return svg;
}

/** A legend for a chart's series (HTML, so it is read as text). */
export function legend(series, bands = []) {
  const ul = document.createElement("ul");
  ul.className = "legend";
  series.forEach((item, i) => {
    const li = document.createElement("li");
    const key = document.createElement("span");
    key.className = "key";
    key.setAttribute("aria-hidden", "true");
    key.style.borderTopColor = item.color || PALETTE[i % PALETTE.length];
    if (item.dash) key.style.borderTopStyle = "dashed";
    li.append(key, item.name);
    ul.append(li);
  });
  for (const band of bands) {
    if (!band.label) continue;
    const li = document.createElement("li");
    const key = document.createElement("span");
    key.className = "key band-key";
    key.setAttribute("aria-hidden", "true");
    key.style.background = band.color || "#2da44e";
    li.append(key, band.label);
    ul.append(li);
  }
  return ul;
}
