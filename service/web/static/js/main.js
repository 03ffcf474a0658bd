// The page's entry point: hash routes (#/explorer, #/jobs, #/jobs/<id>, #/hardware), the API
// token box, and focus management when the page changes.

import { api, getToken, setToken } from "./api.js";
import { announce } from "./dom.js";
import { renderExplorer } from "./explorer.js";
import { renderHardware } from "./hardware.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";

const main = document.getElementById("main");
let cleanup = null;

/** "#/jobs/abc?x=1" → {page: "jobs", id: "abc", params: URLSearchParams} */
export function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const [page, id] = (path || "explorer").split("/");
  return { page, id: id ? decodeURIComponent(id) : null, params: new URLSearchParams(query) };
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const { page, id, params } = parseHash();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  main.dataset.page = page;
  const view = { explorer: renderExplorer, jobs: id ? renderJob : renderJobs,
    hardware: renderHardware }[page] || renderExplorer;
  cleanup = await view(main, { id, params });
  const heading = main.querySelector("h1");
  document.title = `${heading ? heading.textContent : "Sweetspot"} · Sweetspot`;
  if (heading && route.moved) {
    heading.tabIndex = -1;
    heading.focus();
    announce(`${heading.textContent} page`);
  }
  route.moved = true;
}

function setupToken() {
  const box = document.getElementById("token-box");
  const input = document.getElementById("token-input");
  const state = document.getElementById("token-state");
  const show = () => { state.textContent = getToken() ? "(set)" : "(none)"; };
  show();
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    input.value = "";
    show();
    box.open = false;
    announce(getToken() ? "Token saved" : "Token cleared");
    route();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    setToken("");
    input.value = "";
    show();
    announce("Token cleared");
    route();
  });
}

setupToken();
window.addEventListener("hashchange", route);
route();
api("/version").then((v) => {
  document.getElementById("version").textContent = `Sweetspot ${v.version} · API ${v.api}`;
}).catch(() => {});
