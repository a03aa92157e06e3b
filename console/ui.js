// What every view of the console shares: DOM helpers that never parse HTML, times
// as the console writes them, and the page's messages (the alert, the spoken status,
// and `guard`, which shows a failure instead of losing it).

import { ApiError } from "./api.js";

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
export const int = new Intl.NumberFormat();

/** An element with properties/attributes and children (strings become text, never HTML). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null) node.append(c instanceof Node ? c : String(c));
  return node;
}

/** An instant as a UTC day and minute ("2026-12-06 08:48 UTC"). */
export function when(instant) {
  if (!instant) return "";
  const d = new Date(instant);
  return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 16)} UTC`;
}

export function showError(err) {
  const box = $("#alert");
  box.replaceChildren();
  const text = err instanceof ApiError ? err.message : `Something went wrong in the console: ${err?.message || err}`;
  box.append(el("p", { text }));
  if (err?.requestId) box.append(el("p", { class: "small", text: `Request id: ${err.requestId}` }));
  box.append(el("button", { type: "button", class: "button-quiet", text: "Dismiss", onclick: clearError }));
  box.hidden = false;
  if (!(err instanceof ApiError)) console.error(err);
}

export function clearError() {
  $("#alert").hidden = true;
  $("#alert").replaceChildren();
}

/** Says `text` through the polite live region. */
export function announce(text) {
  const s = $("#status");
  s.textContent = "";
  setTimeout(() => { s.textContent = text; }, 30);
}

/** Runs `fn`, showing any failure; `busy` marks an element busy meanwhile. */
export async function guard(fn, busy) {
  if (busy) busy.setAttribute("aria-busy", "true");
  try {
    return await fn();
  } catch (e) {
    showError(e);
    return undefined;
  } finally {
    if (busy) busy.removeAttribute("aria-busy");
  }
}
