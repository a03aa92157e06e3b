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

/**
 * Runs `fn` for `form`, once at a time: a refusal from Daypass is shown in `errorBox`
 * beside the form (in the words of `explain`), and what the person typed stays as it
 * was; any other failure goes to the page's alert. Returns `fn`'s value, or
 * undefined when it failed or the form was already busy.
 */
export async function guardForm(form, errorBox, fn) {
  if (form.hasAttribute("aria-busy")) return undefined;
  fieldError(errorBox, null);
  form.setAttribute("aria-busy", "true");
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError) fieldError(errorBox, e);
    else showError(e);
    return undefined;
  } finally {
    form.removeAttribute("aria-busy");
  }
}

/** Shows `err` (an ApiError or a sentence) in `box`, or empties and hides it (null). */
export function fieldError(box, err) {
  box.replaceChildren();
  box.hidden = !err;
  if (!err) return;
  box.append(typeof err === "string" ? err : err.message);
  if (err.requestId) box.append(el("span", { class: "small block", text: `Request id: ${err.requestId}` }));
}

/**
 * Redraws a table with `draw` and keeps the keyboard focus on the same row's same
 * control (rows carry `data-key`, controls `data-action`); when that control is gone,
 * on `fallback`.
 */
export function keepFocus(table, draw, fallback) {
  const active = document.activeElement;
  const row = active?.closest?.(`#${table.id} tr[data-key]`);
  const action = active?.dataset?.action;
  draw();
  if (!row || !action) return;
  const again = $(`#${table.id} tr[data-key="${CSS.escape(row.dataset.key)}"] [data-action="${action}"]`);
  (again || fallback).focus();
}
