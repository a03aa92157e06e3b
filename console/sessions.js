// Sessions on the Balance page (rules 20–22): which products are open now, on which
// device, in use or idle and last heard from when, and the sessions that ended lately
// with a short launch's refund marked. The server decides who sees what (a member
// gets their own sessions only) and who may close one; this only asks and shows.

import { accountOf, allPages } from "./api.js";
import { $, $$, announce, el, guard, int, when } from "./ui.js";

/** Ended sessions shown: the newest by start. */
const RECENT = 10;
const ENDED = ["CLOSED", "LAPSED", "DENIED"];
const FIELDS = "id user { id name email } product { code name } deviceId version source state active startedAt lastHeartbeatAt endedAt";
const SOURCES = { FLEX: "pay-as-you-go", SUBSCRIPTION: "subscription" };
const STATES = { OPEN: "Open", CLOSED: "Closed", LAPSED: "Lapsed", DENIED: "Denied" };

/** Each load's number: an answer that a newer load overtook is dropped. */
let loads = 0;
/** A close under way: its session and row, for the focus once the row is gone. */
let closing = null;

/**
 * Reads the sessions and shows them. `who` says whose and how: `api`, `accountId`
 * (the operator's chosen account, null for a user's own), `canClose` (admins and the
 * operator get a Close button per open session), `own` (a member, who sees only
 * their own).
 */
export async function loadSessions(who) {
  const load = ++loads;
  const endedFields = ENDED.map((state) => `${state.toLowerCase()}: sessions(state: ${state}, first: ${RECENT}) {
      edges { node { ${FIELDS} charges { tokens refunded } } } }`).join(" ");
  const [open, ended] = await Promise.all([
    allPages(async (after) => accountOf(await who.api.gql(
      `query($a: ID, $after: String) { account(id: $a) { sessions(state: OPEN, first: 500, after: $after) {
        edges { node { ${FIELDS} } } pageInfo { hasNextPage endCursor } } } }`,
      { a: who.accountId, after },
    )).sessions),
    who.api.gql(`query($a: ID) { account(id: $a) { ${endedFields} } }`, { a: who.accountId }).then(accountOf),
  ]);
  if (load !== loads) return;
  // The newest of each state's newest are the newest of all three.
  const recent = ENDED.flatMap((state) => ended[state.toLowerCase()].edges.map((e) => e.node))
    .sort((x, y) => Date.parse(y.startedAt) - Date.parse(x.startedAt) || y.id.localeCompare(x.id))
    .slice(0, RECENT);
  $("#sessions-own-note").hidden = !who.own;
  renderOpen(open, who);
  renderRecent(recent, who);
}

/** Empties both lists (on sign-out) and drops any answer still on its way. */
export function clearSessions() {
  loads += 1;
  closing = null;
  $("#sessions-open-table tbody").replaceChildren();
  $("#sessions-recent-table tbody").replaceChildren();
}

const time = (instant) => el("time", { datetime: instant, text: when(instant) });

function sessionCells(s) {
  return [
    el("th", { scope: "row" }, el("span", { class: "name", text: s.user.name }), el("span", { class: "sub", text: s.user.email })),
    el("td", {}, el("span", { class: "name", text: s.product.name }), el("span", { class: "sub", text: SOURCES[s.source] || s.source })),
    el("td", {}, el("code", { class: "name", text: s.deviceId }), s.version ? el("span", { class: "sub", text: `version ${s.version}` }) : null),
  ];
}

function renderOpen(sessions, who) {
  const tbody = $("#sessions-open-table tbody");
  // A redraw keeps the keyboard focus on the same session's button; when that
  // session is gone, on the section's heading rather than nowhere.
  const focused = document.activeElement?.closest("#sessions-open-table tr[data-session-id]")?.dataset.sessionId;
  tbody.replaceChildren(...sessions.map((s) => el("tr", { "data-session-id": s.id, "data-user-email": s.user.email, "data-device": s.deviceId },
    sessionCells(s),
    el("td", { class: "date" }, time(s.startedAt)),
    el("td", { "data-col": "use" }, el("span", { class: `status status-${s.active ? "active" : "idle"}`, text: s.active ? "Active" : "Idle" })),
    // A session not heard from yet reports its open as its last heartbeat.
    el("td", { class: "date" }, s.lastHeartbeatAt === s.startedAt ? el("span", { class: "muted", text: "none yet" }) : time(s.lastHeartbeatAt)),
    who.canClose ? el("td", { class: "row-actions" }, el("button", {
      type: "button",
      class: "button-small button-danger close-session",
      "aria-label": `Close ${s.product.name} for ${s.user.name} on ${s.deviceId}`,
      text: "Close",
      onclick: () => closeSession(s, who),
    })) : null)));
  if (!sessions.length) {
    tbody.append(el("tr", {}, el("td", { colspan: who.canClose ? 7 : 6, class: "empty", text: who.own ? "You have nothing open now." : "Nothing is open now." })));
  }
  const buttonOf = (id) => $(`#sessions-open-table tr[data-session-id="${CSS.escape(id)}"] button`);
  if (closing && !buttonOf(closing.id)) {
    // Whichever load shows the closed session gone moves the focus on to the next
    // session's Close button (the one now in its row's place).
    const buttons = $$("#sessions-open-table .close-session");
    (buttons[Math.min(closing.index, buttons.length - 1)] || $("#sessions-open-title")).focus();
    closing = null;
  } else if (focused) {
    (buttonOf(focused) || $("#sessions-open-title")).focus();
  }
}

function renderRecent(sessions, who) {
  const tbody = $("#sessions-recent-table tbody");
  tbody.replaceChildren(...sessions.map((s) => {
    const tokens = s.charges.reduce((n, c) => n + c.tokens, 0);
    const refunded = s.charges.some((c) => c.refunded);
    return el("tr", { "data-session-id": s.id, "data-user-email": s.user.email, "data-device": s.deviceId, "data-state": s.state },
      sessionCells(s),
      el("td", { class: "date" }, time(s.startedAt)),
      el("td", { class: "date" }, s.endedAt ? time(s.endedAt) : ""),
      el("td", {}, el("span", { class: `status status-${s.state.toLowerCase()}`, text: STATES[s.state] || s.state })),
      el("td", { class: "num", "data-col": "tokens" },
        s.charges.length ? int.format(tokens) : el("span", { class: "muted", text: "none" }),
        refunded ? el("span", { class: "flag flag-refunded", text: "refunded" }) : null));
  }));
  if (!sessions.length) {
    tbody.append(el("tr", {}, el("td", { colspan: 7, class: "empty", text: who.own ? "None of your sessions has ended yet." : "No session has ended yet." })));
  }
}

/**
 * Closes an open session for its user (an admin's or the operator's choice, after
 * asking), then reads the lists again. The focus goes to the next session's Close
 * button, or to the heading when none is left; it stays on the button when the close
 * failed.
 */
async function closeSession(s, who) {
  const card = $("#sessions-open-card");
  if (closing || card.hasAttribute("aria-busy")) return;
  const what = `${s.product.name} for ${s.user.name} on ${s.deviceId}`;
  if (!window.confirm(`Close ${what}? Its launcher learns at its next heartbeat that the session has ended and must stop the product.`)) return;
  closing = { id: s.id, index: $$("#sessions-open-table tr[data-session-id]").findIndex((r) => r.dataset.sessionId === s.id) };
  const done = await guard(async () => {
    const c = (await who.api.gql(
      "mutation($id: ID!) { closeProduct(sessionId: $id) { id state charges { refunded } } }",
      { id: s.id },
    )).closeProduct;
    // A session that lapsed before the close ends as lapsed (rule 20).
    announce(c.state === "CLOSED"
      ? `Closed ${what}${c.charges.some((x) => x.refunded) ? "; its charge was refunded as a short launch" : ""}`
      : `${what} had already ended (${(STATES[c.state] || c.state).toLowerCase()})`);
    await loadSessions(who);
    return true;
  }, card);
  if (!done) closing = null;
}
