// Webhooks on the Alerts & webhooks page (rule 26): the account's endpoints, a new
// or rotated secret shown once, a test event on request, and the delivery log with
// every attempt and the exact body POSTed. Admins and the operator change them;
// analysts read them. Delivery happens in Daypass's workers; the page only asks and
// shows, and looks again for a while after a test or a replay.

import { accountOf } from "./api.js";
import { $, $$, announce, clearError, el, fieldError, guard, guardForm, int, keepFocus, when } from "./ui.js";

/** The event types an endpoint takes (TEST is sent on request, never subscribed to). */
const EVENTS = {
  BALANCE_LOW: "Balance low",
  TOKENS_EXHAUSTED: "Tokens exhausted",
  LOT_EXPIRING: "Lot expiring in 90 days",
  LOT_EXPIRED: "Lot expired",
  PURCHASE_COMPLETED: "Purchase completed",
  CHARGE_REFUNDED: "Charge refunded",
  BUDGET_REACHED: "Budget reached",
};
const EVENT_NAMES = { ...EVENTS, TEST: "Test" };
const STATES = {
  PENDING: ["Waiting to be sent", "pending"],
  DELIVERED: ["Delivered", "active"],
  FAILED: ["Failed, will retry", "pending"],
  DEAD: ["Gave up", "dead"],
};
const ENDPOINT_FIELDS = "id url events enabled createdAt disabledReason";
const DELIVERY_FIELDS = "id event state createdAt deliveredAt payload endpoint { id url } attempts { at status error }";
const PAGE = 20;
/** After a test or a replay: look again every second, this many times at most. */
const WATCH_TRIES = 20;

let who = null;
let isCurrent = () => false;
let endpoints = [];
/** The deliveries shown, newest first, and the cursor after the last of them. */
let deliveries = [];
let deliveriesAfter = null;
let deliveryLoads = 0;
/** Deliveries whose attempts and payload are open. */
const expanded = new Set();

const eventList = (events) => events.map((e) => EVENT_NAMES[e] || e).join(", ");
const time = (instant) => (instant ? el("time", { datetime: instant, text: when(instant) }) : el("span", { class: "muted", text: "–" }));

function eventChoices(container, name, chosen) {
  container.replaceChildren(...Object.entries(EVENTS).map(([value, label]) => el("label", { class: "check" },
    el("input", { type: "checkbox", name, value, checked: chosen.has(value) }), ` ${label}`)));
}
eventChoices($("#endpoint-events"), "event", new Set(["BALANCE_LOW", "TOKENS_EXHAUSTED"]));
const checkedEvents = (root) => $$("input[type=checkbox]:checked", root).map((b) => b.value);

/** Reads the endpoints and the newest deliveries; `current()` turns false once overtaken. */
export async function loadWebhooks(viewer, current) {
  who = viewer;
  isCurrent = current;
  hideSecret();
  await loadEndpoints();
  if (current()) await loadDeliveries(false);
}

/** Forgets everything shown (on sign-out). */
export function clearWebhooks() {
  who = null;
  isCurrent = () => false;
  endpoints = [];
  deliveries = [];
  deliveryLoads += 1;
  expanded.clear();
  hideSecret();
  $("#endpoints-table tbody").replaceChildren();
  $("#deliveries-table tbody").replaceChildren();
  $("#endpoint-form").reset();
  eventChoices($("#endpoint-events"), "event", new Set(["BALANCE_LOW", "TOKENS_EXHAUSTED"]));
  fieldError($("#endpoint-error"), null);
  if ($("#events-dialog").open) $("#events-dialog").close();
}

// ---------------------------------------------------------------- endpoints

async function loadEndpoints() {
  const list = accountOf(await who.api.gql(`query($a: ID) { account(id: $a) { webhookEndpoints { ${ENDPOINT_FIELDS} } } }`, { a: who.accountId })).webhookEndpoints;
  if (!isCurrent()) return;
  endpoints = list;
  keepFocus($("#endpoints-table"), renderEndpoints, $("#endpoints-title"));
  const select = $("#deliveries-endpoint");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "All endpoints" }), ...endpoints.map((e) => el("option", { value: e.id, text: e.url })));
  select.value = endpoints.some((e) => e.id === chosen) ? chosen : "";
}

function renderEndpoints() {
  const tbody = $("#endpoints-table tbody");
  tbody.replaceChildren(...endpoints.map((e) => el("tr", { "data-key": e.id, "data-endpoint-id": e.id, "data-enabled": String(e.enabled) },
    el("th", { scope: "row", class: "url" }, el("code", { "data-col": "url", text: e.url }), el("span", { class: "sub" }, "created ", time(e.createdAt))),
    el("td", { "data-col": "events", text: eventList(e.events) }),
    el("td", { "data-col": "status" }, e.enabled
      ? el("span", { class: "status status-active", text: "Enabled" })
      : [el("span", { class: "status status-dead", text: "Disabled" }), e.disabledReason ? el("span", { class: "sub", text: e.disabledReason }) : null]),
    who.manage ? el("td", { class: "row-actions wrap" },
      button("test", "Send test event", `Send test event to ${e.url}`, () => sendTest(e)),
      button("toggle", e.enabled ? "Disable" : "Enable", `${e.enabled ? "Disable" : "Enable"} ${e.url}`, () => setEnabled(e, !e.enabled)),
      button("events", "Events…", `Edit the events of ${e.url}`, () => editEvents(e)),
      button("rotate", "Rotate secret", `Rotate secret of ${e.url}`, () => rotate(e)),
      button("delete", "Delete", `Delete ${e.url}`, () => deleteEndpoint(e), "button-danger")) : null)));
  if (!endpoints.length) {
    tbody.append(el("tr", {}, el("td", { colspan: who.manage ? 4 : 3, class: "empty", text: "No webhook endpoints." })));
  }
}

function button(action, text, label, onclick, extra = "") {
  return el("button", { type: "button", class: `button-small ${extra}`.trim(), "data-action": action, "aria-label": label, text, onclick });
}

$("#endpoint-form").addEventListener("input", () => fieldError($("#endpoint-error"), null));

$("#endpoint-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const error = $("#endpoint-error");
  const url = $("#endpoint-url").value.trim();
  const events = checkedEvents($("#endpoint-events"));
  if (!url) {
    fieldError(error, "Give the address Daypass should POST the events to.");
    $("#endpoint-url").focus();
    return;
  }
  if (!events.length) {
    fieldError(error, "Choose at least one event to send.");
    $("#endpoint-events input").focus();
    return;
  }
  guardForm(form, error, async () => {
    const { endpoint, secret } = (await who.api.gql(
      `mutation($i: WebhookEndpointInput!, $a: ID) { createWebhookEndpoint(input: $i, accountId: $a) { endpoint { ${ENDPOINT_FIELDS} } secret } }`,
      { i: { url, events }, a: who.accountId },
    )).createWebhookEndpoint;
    form.reset();
    eventChoices($("#endpoint-events"), "event", new Set(["BALANCE_LOW", "TOKENS_EXHAUSTED"]));
    showSecret(endpoint, secret, false);
    await loadEndpoints();
    announce(`Endpoint ${endpoint.url} added; its signing secret is shown once`);
  });
});

function setEnabled(e, enabled) {
  guard(async () => {
    await who.api.gql(`mutation($id: ID!, $on: Boolean) { updateWebhookEndpoint(id: $id, enabled: $on) { ${ENDPOINT_FIELDS} } }`, { id: e.id, on: enabled });
    await loadEndpoints();
    announce(enabled ? `${e.url} is enabled again` : `${e.url} is disabled: nothing is sent to it until it is enabled`);
  }, $("#endpoints-card"));
}

/** The events dialog: Escape or Cancel closes it unsaved; the focus goes back to its button. */
function editEvents(e) {
  const dialog = $("#events-dialog");
  const error = $("#events-error");
  $("#events-dialog-title").textContent = "Events of this endpoint";
  $("#events-dialog-legend").textContent = `Which events go to ${e.url}?`;
  eventChoices($("#events-choices"), "dialog-event", new Set(e.events));
  fieldError(error, null);
  const opener = () => $(`#endpoints-table tr[data-key="${CSS.escape(e.id)}"] [data-action=events]`) || $("#endpoints-title");
  let saved = false;
  dialog.onclose = () => { if (!saved) opener().focus(); };
  $("#events-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const events = checkedEvents($("#events-choices"));
    if (!events.length) return fieldError(error, "Choose at least one event; to stop all of them, disable the endpoint.");
    const done = await guardForm($("#events-form"), error, async () => {
      await who.api.gql(`mutation($id: ID!, $ev: [WebhookEvent!]) { updateWebhookEndpoint(id: $id, events: $ev) { ${ENDPOINT_FIELDS} } }`, { id: e.id, ev: events });
      return true;
    });
    if (!done) return undefined;
    saved = true;
    dialog.close();
    announce(`${e.url} now gets: ${eventList(events)}`);
    await guard(loadEndpoints, $("#endpoints-card"));
    return opener().focus();
  };
  $("#events-cancel").onclick = () => dialog.close();
  dialog.showModal();
  $("#events-choices input").focus();
}

function rotate(e) {
  if (!window.confirm(`Rotate the signing secret of ${e.url}? The new one is shown once; the old one keeps signing beside it for 24 hours.`)) return;
  guard(async () => {
    const { endpoint, secret } = (await who.api.gql(`mutation($id: ID!) { rotateWebhookSecret(id: $id) { endpoint { ${ENDPOINT_FIELDS} } secret } }`, { id: e.id })).rotateWebhookSecret;
    showSecret(endpoint, secret, true);
    await loadEndpoints();
    announce(`A new secret for ${e.url} is shown once; the old one signs too for 24 hours`);
  }, $("#endpoints-card"));
}

function deleteEndpoint(e) {
  if (!window.confirm(`Delete the endpoint ${e.url}? Nothing is sent to it any more, and its delivery log goes with it.`)) return;
  guard(async () => {
    await who.api.gql("mutation($id: ID!) { deleteWebhookEndpoint(id: $id) }", { id: e.id });
    if ($("#webhook-secret").dataset.endpointId === e.id) hideSecret();
    announce(`${e.url} was deleted`);
    await loadEndpoints();
    await loadDeliveries(false);
    ($("#endpoints-table button[data-action=delete]") || $("#endpoints-title")).focus();
  }, $("#endpoints-card"));
}

function sendTest(e) {
  guard(async () => {
    const d = (await who.api.gql(`mutation($id: ID!) { sendTestWebhook(endpointId: $id) { ${DELIVERY_FIELDS} } }`, { id: e.id })).sendTestWebhook;
    announce(`A test event is on its way to ${e.url}`);
    await loadDeliveries(false);
    watch(d.id, `The test event to ${e.url}`);
  }, $("#endpoints-card"));
}

// ---------------------------------------------------------------- the secret, once

function showSecret(endpoint, secret, rotated) {
  const box = $("#webhook-secret");
  box.dataset.endpointId = endpoint.id;
  $("#webhook-secret-text").replaceChildren(
    el("strong", { text: `${rotated ? "The new signing secret" : "The signing secret"} of ${endpoint.url}, shown this once.` }),
    rotated
      ? " The old secret keeps signing beside it for 24 hours (two signatures in webhook-signature), so move your receiver to this one within a day. Daypass will not show it again."
      : " Copy it now into the receiver, which checks each delivery's webhook-signature with it. Daypass will not show it again; if it is lost, rotate it.",
  );
  $("#webhook-secret-value").textContent = secret;
  box.hidden = false;
  $("#webhook-secret-copy").focus();
}

function hideSecret() {
  const box = $("#webhook-secret");
  box.hidden = true;
  delete box.dataset.endpointId;
  $("#webhook-secret-text").replaceChildren();
  $("#webhook-secret-value").textContent = "";
}

// Shown once means once: leaving the page forgets it.
window.addEventListener("hashchange", () => { if (location.hash !== "#alerts") hideSecret(); });

$("#webhook-secret-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("#webhook-secret-value").textContent);
    announce("Secret copied");
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("#webhook-secret-value"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    announce("Copying is blocked here: the secret is selected, copy it with the keyboard");
  }
});

// ---------------------------------------------------------------- the delivery log

/** Reads the newest deliveries (or, `more`, the next older ones) of the chosen endpoint. */
async function loadDeliveries(more) {
  const load = ++deliveryLoads;
  const conn = accountOf(await who.api.gql(`query($a: ID, $e: ID, $n: Int, $after: String) { account(id: $a) {
      webhookDeliveries(endpointId: $e, first: $n, after: $after) { edges { node { ${DELIVERY_FIELDS} } } pageInfo { hasNextPage endCursor } } } }`,
  { a: who.accountId, e: $("#deliveries-endpoint").value || null, n: PAGE, after: more ? deliveriesAfter : null })).webhookDeliveries;
  if (load !== deliveryLoads || !isCurrent()) return;
  const nodes = conn.edges.map((x) => x.node);
  deliveries = more ? [...deliveries, ...nodes] : nodes;
  deliveriesAfter = conn.pageInfo.endCursor;
  $("#deliveries-more").hidden = !conn.pageInfo.hasNextPage;
  keepFocus($("#deliveries-table"), renderDeliveries, $("#deliveries-title"));
}

function renderDeliveries() {
  const tbody = $("#deliveries-table tbody");
  tbody.replaceChildren(...deliveries.flatMap(deliveryRows));
  if (!deliveries.length) tbody.append(el("tr", {}, el("td", { colspan: 4, class: "empty", text: "Nothing sent yet." })));
}

function stateBadge(state) {
  const [text, look] = STATES[state] || [state, "pending"];
  return el("span", { class: `status status-${look}`, text });
}

function deliveryRows(d) {
  const open = expanded.has(d.id);
  const detailId = `delivery-${d.id}-detail`;
  const name = EVENT_NAMES[d.event] || d.event;
  const row = el("tr", { "data-key": d.id, "data-delivery-id": d.id, "data-state": d.state, "data-event": d.event, class: d.state === "DEAD" || d.state === "FAILED" ? "failed" : null },
    el("th", { scope: "row", "data-col": "event" }, el("span", { class: "name" }, name, " ", el("code", { class: "sub-code", text: d.event })),
      el("span", { class: "sub" }, "created ", time(d.createdAt))),
    el("td", { class: "url" }, el("code", { text: d.endpoint.url })),
    el("td", { "data-col": "state" }, stateBadge(d.state),
      el("span", { class: "sub", text: `${int.format(d.attempts.length)} attempt${d.attempts.length === 1 ? "" : "s"}` }),
      d.deliveredAt ? el("span", { class: "sub", "data-col": "delivered" }, "delivered ", time(d.deliveredAt)) : null),
    el("td", { class: "row-actions wrap" },
      el("button", {
        type: "button", class: "button-small", "data-action": "details", "aria-expanded": String(open), "aria-controls": detailId,
        "aria-label": `Details of the ${name} event of ${when(d.createdAt)}`, text: "Details", onclick: (ev) => toggleDetails(d.id, ev.currentTarget),
      }),
      who.manage ? button("replay", "Replay", `Replay the ${name} event of ${when(d.createdAt)} to ${d.endpoint.url}`, () => replay(d)) : null));
  const detail = el("tr", { id: detailId, class: "delivery-detail", "data-detail-of": d.id, hidden: !open },
    el("td", { colspan: 4 }, el("div", { class: "delivery-detail-body" },
      el("h3", { text: "Attempts" }),
      d.attempts.length ? el("table", { class: "table compact attempts" },
        el("caption", { class: "visually-hidden", text: `Attempts to deliver the ${name} event of ${when(d.createdAt)}` }),
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Time" }), el("th", { scope: "col", class: "num", text: "HTTP status" }), el("th", { scope: "col", text: "Error" }))),
        el("tbody", {}, d.attempts.map((a) => el("tr", { "data-status": a.status ?? "" },
          el("td", { class: "date" }, time(a.at)),
          el("td", { class: "num", "data-col": "status", text: a.status == null ? "none" : String(a.status) }),
          el("td", { class: "error-text", text: a.error || "" })))))
        : el("p", { class: "muted", text: "Not tried yet." }),
      el("h3", { text: "Payload" }),
      el("pre", { class: "payload", text: JSON.stringify(d.payload, null, 2) }))));
  return [row, detail];
}

function toggleDetails(id, btn) {
  const open = !expanded.has(id);
  if (open) expanded.add(id); else expanded.delete(id);
  btn.setAttribute("aria-expanded", String(open));
  $(`#${CSS.escape(btn.getAttribute("aria-controls"))}`).hidden = !open;
}

function replay(d) {
  const name = EVENT_NAMES[d.event] || d.event;
  guard(async () => {
    const again = (await who.api.gql(`mutation($id: ID!) { replayWebhookDelivery(id: $id) { ${DELIVERY_FIELDS} } }`, { id: d.id })).replayWebhookDelivery;
    announce(`The ${name} event is on its way to ${d.endpoint.url} again`);
    await loadDeliveries(false);
    watch(again.id, `The replayed ${name} event to ${d.endpoint.url}`);
  }, $("#deliveries-card"));
}

/**
 * Reads the log again every second until the delivery `id` is no longer waiting (or
 * for WATCH_TRIES seconds), then says how it went.
 */
async function watch(id, what) {
  const watching = isCurrent;
  for (let i = 0; i < WATCH_TRIES; i += 1) {
    const d = deliveries.find((x) => x.id === id);
    if (d && d.state !== "PENDING") {
      const last = d.attempts.at(-1);
      announce(d.state === "DELIVERED" ? `${what} was delivered${last?.status ? ` (HTTP ${last.status})` : ""}`
        : `${what} failed${last?.error ? `: ${last.error}` : last?.status ? ` (HTTP ${last.status})` : ""}`);
      return;
    }
    await new Promise((r) => { setTimeout(r, 1000); });
    if (watching !== isCurrent || !isCurrent() || location.hash !== "#alerts") return;
    const ok = await guard(async () => { await loadDeliveries(false); return true; });
    if (!ok) return;
  }
  announce(`${what} is still waiting to be sent; refresh the log later`);
}

$("#deliveries-endpoint").addEventListener("change", () => guard(() => loadDeliveries(false), $("#deliveries-card")));
$("#deliveries-refresh").addEventListener("click", () => guard(async () => {
  clearError();
  await loadEndpoints();
  await loadDeliveries(false);
  announce(`Delivery log read again: ${deliveries.length} shown`);
}, $("#deliveries-card")));
$("#deliveries-more").addEventListener("click", () => guard(() => loadDeliveries(true), $("#deliveries-card")));
