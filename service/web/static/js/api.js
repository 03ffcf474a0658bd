// The REST API as the page sees it: one fetch wrapper that sends the bearer token (when the
// user set one) and turns every error body {"detail": str, "valid": [...]} into an ApiError.

const TOKEN_KEY = "sweetspot.token";

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, detail, valid) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.valid = valid || [];
  }
}

function headers(extra = {}) {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** fetch + JSON; `body` objects are sent as JSON, FormData as multipart. */
export async function api(path, { method = "GET", body, raw = false } = {}) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, `the service did not answer (${error.message})`);
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    let valid = [];
    try {
      const data = await response.json();
      if (typeof data.detail === "string") detail = data.detail;
      valid = data.valid || [];
    } catch { /* not JSON: keep the status line */ }
    throw new ApiError(response.status, detail, valid);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

/** Catalogue and profiles change rarely: fetched once per page load. */
const cache = new Map();
export function cached(path) {
  if (!cache.has(path)) {
    cache.set(path, api(path).catch((error) => { cache.delete(path); throw error; }));
  }
  return cache.get(path);
}

export function forget(path) {
  cache.delete(path);
}

/** Download an artifact: a plain link without a token; with one, fetch it with the header
 *  and save the blob (a link cannot carry an Authorization header). */
export async function downloadWithToken(href, name) {
  const response = await api(href, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
