// Small DOM helpers: element building, announcements for screen readers, error boxes, formats.

/** Build an element: h("a", {href: "#"}, "text", child, ...). Attributes starting with
 *  "on" become listeners; null/false attributes and children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Say something to screen-reader users (the polite live region in index.html). */
export function announce(text) {
  const region = document.getElementById("status");
  region.textContent = "";
  // A fresh text node after a tick makes repeated identical messages heard again.
  setTimeout(() => { region.textContent = text; }, 30);
}

/** A readable error box for an API error (or any Error): its `detail`, and the valid names. */
export function errorBox(error) {
  const box = h("div", { class: "error", role: "alert" });
  return showError(box, error);
}

export function showError(box, error) {
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return box;
  }
  box.hidden = false;
  const detail = error.detail || error.message || String(error);
  const parts = [h("strong", {}, error.status ? `Error ${error.status}: ` : "Error: "), detail];
  const valid = error.valid || [];
  if (valid.length && !valid.every((name) => detail.includes(name))) {
    parts.push(h("div", { class: "valid" }, "Valid: ", valid.join(", ")));
  }
  if (error.status === 401) {
    parts.push(h("div", {}, "Enter a token under “API token” at the top of the page."));
  }
  fill(box, parts);
  return box;
}

export const fmt = {
  pct: (x, digits = 1) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`),
  x: (v, digits = 2) => (v === null || v === undefined ? "–" : `${v.toFixed(digits)}×`),
  num: (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v.toPrecision(digits))
    .toLocaleString("en-US")),
  range: (spot) => (spot ? `${(100 * spot.min_sparsity).toFixed(1)}–${
    (100 * spot.max_sparsity).toFixed(1)}%` : "none"),
  bytes: (n) => {
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  time: (iso) => (iso ? new Date(iso).toLocaleString() : "–"),
};

/** Save text as a file (CSV/JSON export). */
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A labelled form field: label + control (+ help text linked by aria-describedby). */
export function field(id, labelText, control, help) {
  control.id = id;
  const parts = [h("label", { for: id }, labelText), control];
  if (help) {
    const helpId = `${id}-help`;
    control.setAttribute("aria-describedby", helpId);
    parts.push(h("small", { id: helpId, class: "help" }, help));
  }
  return h("div", { class: "field" }, parts);
}

export function options(select, items, selected) {
  fill(select, items.map((item) => {
    const [value, text] = Array.isArray(item) ? item : [item, item];
    return h("option", { value, selected: value === selected }, text);
  }));
  return select;
}
