// The Alerts & webhooks page: alert rules (rule 25) and scheduled reports (rule 27)
// here, webhook endpoints and their delivery log in webhooks.js. Admins (and the
// operator, for the account they chose) change rules and webhooks; analysts read
// them, and subscribe to scheduled reports as admins do. The server decides every
// one of these; the page only leaves out the controls a role cannot use.

import { ApiError, accountOf } from "./api.js";
import { $, announce, el, fieldError, guard, guardForm, int, keepFocus, when } from "./ui.js";
import { clearWebhooks, loadWebhooks } from "./webhooks.js";

const RULE_FIELDS = "id threshold unit includeAdmins extraRecipients armed";
const REPORT_FIELDS = "id schedule recipients createdBy { id name email } nextRunAt";
const SCHEDULES = { WEEKLY: "Weekly", MONTHLY: "Monthly" };
const SCHEDULE_HELP = { WEEKLY: "Mondays, the previous ISO week", MONTHLY: "the 1st, the previous month" };

/**
 * Who looks, as app.js says: `api`, `accountId` (the operator's chosen account, null
 * for a user's own), `role`, `user` (null for the operator) and `manage` (admins and
 * the operator change rules and webhooks).
 */
let who = null;
/** Each load's number: an answer that a newer load (or a sign-out) overtook is dropped. */
let loads = 0;

/** Reads the whole page: rules, webhooks and the delivery log, scheduled reports. */
export async function loadAlerts(viewer) {
  who = viewer;
  const load = ++loads;
  const current = () => load === loads;
  $("#alerts-read-note").hidden = who.manage;
  const subscribes = who.role === "ADMIN" || who.role === "ANALYST";
  $("#report-form").hidden = !subscribes;
  if (subscribes && !$("#report-recipients").value) $("#report-recipients").value = who.user?.email ?? "";
  await Promise.all([loadRules(current), loadWebhooks(who, current), loadReports(current)]);
}

/** Forgets everything shown (on sign-out), the secret and any typed input included. */
export function clearAlerts() {
  loads += 1;
  who = null;
  for (const id of ["#rules-table", "#reports-table"]) $(`${id} tbody`).replaceChildren();
  for (const form of ["#rule-form", "#report-form"]) $(form).reset();
  for (const box of ["#rule-error", "#report-error"]) fieldError($(box), null);
  $("#reports-card").hidden = true;
  clearWebhooks();
}

/** "a@x, b@y" or one address a line: the addresses, blanks dropped. */
function addresses(text) {
  return text.split(/[\s,;]+/).map((a) => a.trim()).filter(Boolean);
}

// ---------------------------------------------------------------- alert rules

function thresholdText(r) {
  return r.unit === "PERCENT" ? `${int.format(r.threshold)} % of tokens bought` : `${int.format(r.threshold)} tokens`;
}

function recipientsText(r) {
  const all = [r.includeAdmins ? "Admins" : null, ...r.extraRecipients].filter(Boolean);
  return all.length ? all.join(", ") : "nobody";
}

async function loadRules(current) {
  const rules = accountOf(await who.api.gql(`query($a: ID) { account(id: $a) { alertRules { ${RULE_FIELDS} } } }`, { a: who.accountId })).alertRules;
  if (!current()) return;
  const table = $("#rules-table");
  keepFocus(table, () => renderRules(rules), $("#rules-title"));
}

function renderRules(rules) {
  const tbody = $("#rules-table tbody");
  tbody.replaceChildren(...rules.map((r) => el("tr", { "data-key": r.id, "data-rule-id": r.id },
    el("th", { scope: "row", "data-col": "threshold", text: thresholdText(r) }),
    el("td", { "data-col": "recipients", text: recipientsText(r) }),
    el("td", { "data-col": "armed" }, r.armed
      ? el("span", { class: "status status-active", text: "Armed" })
      : el("span", { class: "status status-pending", text: "Below: re-arms at or above it" })),
    who.manage ? el("td", { class: "row-actions" }, el("button", {
      type: "button",
      class: "button-small button-danger",
      "data-action": "delete",
      "aria-label": `Delete the alert rule at ${thresholdText(r)}`,
      text: "Delete",
      onclick: () => deleteRule(r),
    })) : null)));
  if (!rules.length) {
    tbody.append(el("tr", {}, el("td", { colspan: who.manage ? 4 : 3, class: "empty", text: "No alert rules: only the low-balance threshold warns." })));
  }
}

function deleteRule(r) {
  if (!window.confirm(`Delete the alert rule at ${thresholdText(r)} (to ${recipientsText(r)})? Nobody is e-mailed for it any more.`)) return;
  guard(async () => {
    await who.api.gql("mutation($id: ID!) { deleteAlertRule(id: $id) }", { id: r.id });
    announce(`The alert rule at ${thresholdText(r)} was deleted`);
    await loadRules(() => true);
    // Its row is gone: the next rule's Delete button, or the section's heading.
    ($("#rules-table button[data-action=delete]") || $("#rules-title")).focus();
  }, $("#rules-card"));
}

// A refusal stays beside the form until the person changes what they typed.
for (const [form, box] of [["#rule-form", "#rule-error"], ["#report-form", "#report-error"]]) {
  $(form).addEventListener("input", () => fieldError($(box), null));
}

$("#rule-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const error = $("#rule-error");
  const raw = $("#rule-threshold").value.trim();
  const threshold = Number(raw);
  if (!raw || !Number.isInteger(threshold)) {
    fieldError(error, "Give the threshold as a whole number.");
    $("#rule-threshold").focus();
    return;
  }
  const input = {
    threshold,
    unit: $("#rule-unit").value,
    includeAdmins: $("#rule-admins").checked,
    extraRecipients: addresses($("#rule-extra").value),
  };
  guardForm(form, error, async () => {
    const r = (await who.api.gql(
      `mutation($i: AlertRuleInput!, $a: ID) { createAlertRule(input: $i, accountId: $a) { ${RULE_FIELDS} } }`,
      { i: input, a: who.accountId },
    )).createAlertRule;
    form.reset();
    announce(`Alert rule added: below ${thresholdText(r)}, to ${recipientsText(r)}`);
    await loadRules(() => true);
  });
});

// ---------------------------------------------------------------- scheduled reports

/** True when the server's schema has no report subscriptions (an older build). */
function schemaLacksReports(e) {
  return e instanceof ApiError && /^Unknown field "(reportSubscriptions|subscribeToReport|unsubscribeFromReport)"/.test(e.detail || "");
}

async function loadReports(current) {
  let subs;
  try {
    subs = accountOf(await who.api.gql(`query($a: ID) { account(id: $a) { reportSubscriptions { ${REPORT_FIELDS} } } }`, { a: who.accountId })).reportSubscriptions;
  } catch (e) {
    if (!schemaLacksReports(e)) throw e;
    if (current()) $("#reports-card").hidden = true;
    return;
  }
  if (!current()) return;
  $("#reports-card").hidden = false;
  keepFocus($("#reports-table"), () => renderReports(subs), $("#reports-title"));
}

/** Admins and the operator end any subscription of the account; analysts their own. */
function mayUnsubscribe(s) {
  return who.role === "ADMIN" || who.role === "OPERATOR" || (who.role === "ANALYST" && s.createdBy.id === who.user?.id);
}

function renderReports(subs) {
  const tbody = $("#reports-table tbody");
  tbody.replaceChildren(...subs.map((s) => el("tr", { "data-key": s.id, "data-report-id": s.id, "data-schedule": s.schedule },
    el("th", { scope: "row" }, el("span", { class: "name", text: SCHEDULES[s.schedule] || s.schedule }), el("span", { class: "sub", text: SCHEDULE_HELP[s.schedule] || "" })),
    el("td", { "data-col": "recipients", text: s.recipients.join(", ") }),
    el("td", {}, el("span", { class: "name", text: s.createdBy.name }), el("span", { class: "sub", text: s.createdBy.email })),
    el("td", { class: "date" }, el("time", { datetime: s.nextRunAt, text: when(s.nextRunAt) })),
    el("td", { class: "row-actions" }, mayUnsubscribe(s) ? el("button", {
      type: "button",
      class: "button-small button-danger",
      "data-action": "unsubscribe",
      "aria-label": `Unsubscribe ${s.recipients.join(", ")} from the ${(SCHEDULES[s.schedule] || s.schedule).toLowerCase()} report`,
      text: "Unsubscribe",
      onclick: () => unsubscribe(s),
    }) : null))));
  if (!subs.length) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "empty", text: "Nobody is subscribed to a scheduled report." })));
}

function unsubscribe(s) {
  const what = `the ${(SCHEDULES[s.schedule] || s.schedule).toLowerCase()} report to ${s.recipients.join(", ")}`;
  if (!window.confirm(`Stop ${what}?`)) return;
  guard(async () => {
    await who.api.gql("mutation($id: ID!) { unsubscribeFromReport(id: $id) }", { id: s.id });
    announce(`Stopped ${what}`);
    await loadReports(() => true);
    ($("#reports-table button[data-action=unsubscribe]") || $("#reports-title")).focus();
  }, $("#reports-card"));
}

$("#report-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const recipients = addresses($("#report-recipients").value);
  const schedule = $("#report-schedule").value;
  guardForm(form, $("#report-error"), async () => {
    // No address given: Daypass sends to the caller's own.
    const s = (await who.api.gql(
      `mutation($s: ReportSchedule!, $r: [String!]) { subscribeToReport(schedule: $s, recipients: $r) { ${REPORT_FIELDS} } }`,
      { s: schedule, r: recipients.length ? recipients : null },
    )).subscribeToReport;
    $("#report-recipients").value = who.user?.email ?? "";
    announce(`Subscribed ${s.recipients.join(", ")} to the ${SCHEDULES[s.schedule].toLowerCase()} report; the first goes out ${when(s.nextRunAt)}`);
    await loadReports(() => true);
  });
});
