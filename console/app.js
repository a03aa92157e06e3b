// The Daypass console: one page over the public GraphQL API. Every rule stays in the
// server; this file only asks, shows and sends what a person chose.

import { clearAlerts, loadAlerts } from "./alerts.js";
import { Api, ApiError, LiveSubscription, accountOf, allPages, explain } from "./api.js";
import { drawDays, drawLots, drawProducts } from "./charts.js";
import { clearSessions, loadSessions } from "./sessions.js";
import { $, $$, announce, clearError, el, guard, int, showError, when } from "./ui.js";

const KEY_STORAGE = "daypass.apiKey";
const ACCOUNT_STORAGE = "daypass.operatorAccount";
const DAY_MS = 86_400_000;
const SOON_DAYS = 90;

/** Which roles see which page. */
const PAGES = {
  balance: ["ADMIN", "ANALYST", "MEMBER", "OPERATOR"],
  usage: ["ADMIN", "ANALYST", "MEMBER", "OPERATOR"],
  spending: ["ADMIN", "ANALYST", "OPERATOR"],
  people: ["ADMIN", "ANALYST", "OPERATOR"],
  buy: ["ADMIN", "OPERATOR"],
  notifications: ["ADMIN", "ANALYST", "OPERATOR"],
  alerts: ["ADMIN", "ANALYST", "OPERATOR"],
};
const PAGE_NAMES = {
  balance: "the balance", usage: "usage", spending: "spending", people: "people",
  buy: "buying tokens", notifications: "notifications", alerts: "alerts and webhooks",
};
const ROLE_NAMES = { ADMIN: "Admin", ANALYST: "Analyst", MEMBER: "Member", OPERATOR: "Operator" };

const S = {
  api: null,
  role: null,
  viewer: null,
  /** The operator's chosen account; users always get their own (null). */
  accountId: null,
  live: null,
  page: null,
  balance: null,
  threshold: null,
  /** Tokens in unexpired lots (admins, analysts, the operator), for the ring. */
  capacity: null,
  range: { preset: "last365", from: null, to: null },
  usageByUser: [],
  sort: { key: "tokens", dir: "descending" },
  currency: "USD",
  people: null,
  buyKey: null,
  notificationsAfter: null,
};

// ---------------------------------------------------------------- small helpers

function money(minor, currency = S.currency) {
  let f;
  try {
    f = new Intl.NumberFormat(undefined, { style: "currency", currency });
  } catch {
    return `${int.format(minor)} ${currency} (minor units)`;
  }
  const digits = f.resolvedOptions().maximumFractionDigits;
  return f.format(minor / 10 ** digits);
}

/** Today as a UTC day, YYYY-MM-DD (reports count UTC days). */
function utcToday() {
  return new Date().toISOString().slice(0, 10);
}
function addDays(day, n) {
  return new Date(Date.parse(`${day}T00:00:00Z`) + n * DAY_MS).toISOString().slice(0, 10);
}
function day(instant) {
  return instant ? instant.slice(0, 10) : "";
}

/** The account variable: the operator's chosen account, or null for a user's own. */
function acct() {
  return S.role === "OPERATOR" ? S.accountId : null;
}
const canManage = () => S.role === "ADMIN" || S.role === "OPERATOR";
const readsBooks = () => S.role !== "MEMBER";
/** Whose sessions the Balance page shows, and whether it may close them. */
const sessionsFor = () => ({ api: S.api, accountId: acct(), canClose: canManage(), own: S.role === "MEMBER" });

// ---------------------------------------------------------------- sign in and out

const VIEWER = `{ viewer { role user { id name email role active } account { id name } } }`;
const CURRENCY = "{ priceQuote(quantity: 1) { currency } }";

async function signIn(key, { quiet = false } = {}) {
  const api = new Api(key, { onUnauthenticated: () => signOut(explain("UNAUTHENTICATED")) });
  const probe = new Api(key);
  const { viewer } = await probe.gql(VIEWER);
  if (viewer.user && !viewer.user.active) {
    throw new ApiError(explain("FORBIDDEN", "this user is deactivated"), { code: "FORBIDDEN" });
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  S.api = api;
  S.viewer = viewer;
  S.role = viewer.role;
  if (S.role === "OPERATOR") await loadOperatorAccounts();
  // Money in reports comes in minor units of the price list's currency.
  S.currency = (await api.gql(CURRENCY)).priceQuote.currency;
  renderChrome();
  startLive();
  if (!quiet) announce(`Signed in as ${ROLE_NAMES[S.role]}`);
  if (!location.hash || location.hash === "#signin") location.hash = "#balance";
  else route();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  S.live?.close();
  clearSessions();
  clearAlerts();
  Object.assign(S, { api: null, role: null, viewer: null, live: null, balance: null, threshold: null, capacity: null, accountId: null, page: null });
  $("#who").hidden = true;
  $("#nav").hidden = true;
  $("#new-key").hidden = true;
  $("#new-key-value").textContent = "";
  $("#signin-key").value = "";
  history.replaceState(null, "", location.pathname);
  showPage("signin");
  if (message) {
    const e = $("#signin-error");
    e.textContent = message;
    e.hidden = false;
  }
  $("#signin-key").focus();
}

async function loadOperatorAccounts() {
  const accounts = await allPages(async (after) =>
    (await S.api.gql(`query($after: String) { accounts(first: 500, after: $after) { edges { node { id name } } pageInfo { hasNextPage endCursor } } }`, { after })).accounts);
  const select = $("#account-select");
  select.replaceChildren(...accounts.map((a) => el("option", { value: a.id, text: `${a.name} (#${a.id})` })));
  const saved = sessionStorage.getItem(ACCOUNT_STORAGE);
  S.accountId = accounts.some((a) => a.id === saved) ? saved : accounts[0]?.id ?? null;
  select.value = S.accountId ?? "";
  $("#account-picker").hidden = false;
}

function renderChrome() {
  const v = S.viewer;
  $("#who").hidden = false;
  $("#nav").hidden = false;
  $("#who-account").textContent = v.account?.name ?? "";
  $("#who-account").hidden = S.role === "OPERATOR";
  $("#who-user").textContent = v.user ? v.user.name : "Vendor operator";
  $("#who-role").textContent = ROLE_NAMES[S.role];
  $("#account-picker").hidden = S.role !== "OPERATOR";
  for (const a of $$("#nav a")) a.parentElement.hidden = !PAGES[a.dataset.page].includes(S.role);
  for (const n of $$(".manage-only")) n.hidden = !canManage();
  for (const n of $$(".books")) n.hidden = !readsBooks();
  $("#member-note").hidden = readsBooks();
  $("#usage-member-note").hidden = readsBooks();
}

// ---------------------------------------------------------------- live balance

function startLive() {
  S.live?.close();
  const live = $("#live");
  const text = $("#live-text");
  const state = (s) => {
    live.dataset.state = s;
    text.textContent = { connecting: "connecting", live: "live", offline: "offline", refused: "not live" }[s];
    live.title = s === "live" ? "The balance updates by itself" : "Live updates are not connected; the page shows what it last read";
  };
  if (S.role === "OPERATOR" && !S.accountId) return state("offline");
  const query = S.role === "OPERATOR"
    ? "subscription($a: ID) { balanceChanged(accountId: $a) { id balance lowBalanceThreshold } }"
    : "subscription { balanceChanged { id balance lowBalanceThreshold } }";
  S.live = new LiveSubscription({
    key: sessionStorage.getItem(KEY_STORAGE),
    query,
    variables: S.role === "OPERATOR" ? { a: S.accountId } : {},
    onState: state,
    onData: (d) => balancePushed(d.balanceChanged),
    onError: showError,
    onReconnect: () => { if (S.page === "balance") loadBalance(); },
  });
}

let listsReload = null;
function balancePushed(account) {
  const changed = account.balance !== S.balance;
  renderBalance(account.balance, account.lowBalanceThreshold);
  if (changed) announce(`Balance now ${int.format(account.balance)} tokens`);
  // Every charge and refund moves the balance: an open, a renewal or a short
  // launch's close shows in the sessions as in the lots.
  if (S.page === "balance") {
    clearTimeout(listsReload);
    listsReload = setTimeout(() => guard(() => Promise.all([readsBooks() ? loadLots() : null, loadSessions(sessionsFor())])), 250);
  }
}

// ---------------------------------------------------------------- router

function showPage(name) {
  for (const p of $$(".page")) p.hidden = p.id !== `page-${name}`;
  for (const a of $$("#nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

const LOADERS = {};

async function route() {
  if (!S.api) return showPage("signin");
  clearError();
  $("#new-key").hidden = true;
  $("#new-key-value").textContent = "";
  const name = location.hash.slice(1) || "balance";
  const page = PAGES[name] ? name : "balance";
  const moved = S.page !== page;
  S.page = page;
  if (!PAGES[page].includes(S.role)) {
    $("#denied-text").textContent = `Your role (${ROLE_NAMES[S.role]}) does not include ${PAGE_NAMES[page]}. Ask an account admin if you need it.`;
    showPage("denied");
    return;
  }
  showPage(page);
  if (moved) $(`#${page}-title`).focus({ preventScroll: true });
  if (S.role === "OPERATOR" && !S.accountId) {
    showError(new ApiError("There are no accounts yet. Create one with the createAccount mutation, then reload."));
    return;
  }
  await guard(LOADERS[page], $(`#page-${page}`));
}

// ---------------------------------------------------------------- balance

function renderBalance(balance, threshold) {
  S.balance = balance;
  if (threshold != null) S.threshold = threshold;
  const low = S.threshold != null && balance < S.threshold;
  $("#balance-available").textContent = int.format(balance);
  $("#fig-available").textContent = int.format(balance);
  $("#fig-threshold").textContent = S.threshold != null ? int.format(S.threshold) : "–";
  const card = $(".ring-card");
  card.classList.toggle("low", low);
  $("#ring-state").textContent = low
    ? `Below the low-balance threshold (${int.format(S.threshold)})`
    : "Above the low-balance threshold";
  // Of the tokens in unexpired lots; a member, who does not see the lots, sees the
  // ring full above the threshold and the way down to zero below it.
  const cap = S.capacity || (low ? S.threshold : balance) || 1;
  const frac = Math.max(0, Math.min(1, balance / cap));
  const c = 2 * Math.PI * 50;
  $("#ring-value").setAttribute("stroke-dasharray", `${(frac * c).toFixed(2)} ${c.toFixed(2)}`);
  $("#ring-label").textContent = `${int.format(balance)} tokens available${low ? ", below the low-balance threshold" : ""}`;
}

const LOT_FIELDS = "id quantity remaining used expired unitPriceMinor currency purchasedAt expiresAt status";

async function loadBalance() {
  const d = await S.api.gql(`query($a: ID) { account(id: $a) { id name balance lowBalanceThreshold planLevel } }`, { a: acct() });
  const a = accountOf(d);
  $("#who-account").textContent = a.name;
  $("#fig-plan").textContent = a.planLevel.charAt(0) + a.planLevel.slice(1).toLowerCase();
  $("#threshold-input").value = a.lowBalanceThreshold;
  await Promise.all([readsBooks() ? loadLots() : null, loadSessions(sessionsFor())]);
  renderBalance(a.balance, a.lowBalanceThreshold);
}

async function loadLots() {
  const lots = await allPages(async (after) => accountOf(await S.api.gql(
    `query($a: ID, $after: String) { account(id: $a) { balance lots(first: 500, after: $after) { edges { node { ${LOT_FIELDS} } } pageInfo { hasNextPage endCursor } } } }`,
    { a: acct(), after },
  )).lots);
  lots.sort((x, y) => x.expiresAt.localeCompare(y.expiresAt) || x.id - y.id);
  const now = Date.now();
  const live = lots.filter((l) => Date.parse(l.expiresAt) > now);
  S.capacity = live.reduce((s, l) => s + l.quantity, 0) || null;
  const sum = (k) => lots.reduce((s, l) => s + l[k], 0);
  $("#fig-used").textContent = int.format(sum("used"));
  $("#fig-purchased").textContent = int.format(sum("quantity"));
  $("#fig-expired").textContent = int.format(sum("expired"));
  if (lots[0]) S.currency = lots[0].currency;
  const tbody = $("#lots-table tbody");
  tbody.replaceChildren(...lots.map((l) => {
    const left = Math.ceil((Date.parse(l.expiresAt) - now) / DAY_MS);
    const soon = l.status === "ACTIVE" && left <= SOON_DAYS;
    return el("tr", { class: soon ? "soon" : null, "data-lot": l.id },
      el("td", { class: "date", text: day(l.purchasedAt) }),
      el("td", { class: "date" }, day(l.expiresAt), soon ? el("span", { class: "flag", text: `expires in ${left} day${left === 1 ? "" : "s"}` }) : null),
      el("td", { class: "num", text: int.format(l.quantity) }),
      el("td", { class: "num", text: int.format(l.remaining) }),
      el("td", { class: "num", text: int.format(l.used) }),
      el("td", { class: "num", text: int.format(l.expired) }),
      el("td", { class: "num", text: money(l.unitPriceMinor, l.currency) }),
      el("td", {}, el("span", { class: `status status-${l.status.toLowerCase()}`, text: l.status.charAt(0) + l.status.slice(1).toLowerCase() })));
  }));
  if (!lots.length) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "empty", text: "No lots yet: buy tokens to start." })));
  drawLots($("#chart-lots"), lots.filter((l) => l.status !== "EXPIRED" || l.expired > 0));
}
LOADERS.balance = loadBalance;

$("#threshold-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const tokens = Number($("#threshold-input").value);
  if (!Number.isInteger(tokens) || tokens < 0) {
    showError(new ApiError("The threshold must be a whole number of tokens, 0 or more."));
    return;
  }
  guard(async () => {
    const op = S.role === "OPERATOR";
    const d = await S.api.gql(
      op ? "mutation($t: Int!, $a: ID) { setLowBalanceThreshold(tokens: $t, accountId: $a) { balance lowBalanceThreshold } }"
        : "mutation($t: Int!) { setLowBalanceThreshold(tokens: $t) { balance lowBalanceThreshold } }",
      op ? { t: tokens, a: S.accountId } : { t: tokens },
    );
    renderBalance(d.setLowBalanceThreshold.balance, d.setLowBalanceThreshold.lowBalanceThreshold);
    announce(`Low-balance threshold set to ${int.format(tokens)} tokens`);
  }, $("#threshold-form"));
});

// ---------------------------------------------------------------- date ranges

const PRESETS = [
  ["last30", "Last 30 days"],
  ["last365", "Last 365 days"],
  ["m3", "Last 3 full months"],
  ["m6", "Last 6 full months"],
  ["m12", "Last 12 full months"],
  ["custom", "Custom range"],
];

/** The UTC days [from, to] of a preset, counted back from today. */
function presetRange(preset) {
  const today = utcToday();
  switch (preset) {
    case "last30": return [addDays(today, -29), today];
    case "last365": return [addDays(today, -364), today];
    case "m3": case "m6": case "m12": {
      const n = Number(preset.slice(1));
      const [y, m] = today.split("-").map(Number);
      const firstThisMonth = new Date(Date.UTC(y, m - 1, 1));
      const from = new Date(Date.UTC(y, m - 1 - n, 1)).toISOString().slice(0, 10);
      return [from, new Date(firstThisMonth - DAY_MS).toISOString().slice(0, 10)];
    }
    default: return [S.range.from, S.range.to];
  }
}

function currentRange() {
  if (S.range.preset !== "custom") [S.range.from, S.range.to] = presetRange(S.range.preset);
  return [S.range.from, S.range.to];
}

/** Builds the range picker into `form`; `reload` runs when the range changes. */
function rangeForm(form, prefix, reload) {
  const select = el("select", { id: `${prefix}-preset` }, PRESETS.map(([v, t]) => el("option", { value: v, text: t })));
  const from = el("input", { id: `${prefix}-from`, type: "date", required: true });
  const to = el("input", { id: `${prefix}-to`, type: "date", required: true });
  const custom = el("span", { class: "custom" },
    el("label", { for: `${prefix}-from`, text: "From" }), from,
    el("label", { for: `${prefix}-to`, text: "To" }), to,
    el("button", { type: "submit", text: "Show" }));
  const shown = el("span", { class: "range-text", id: `${prefix}-shown` });
  form.append(el("label", { for: `${prefix}-preset`, text: "Range" }), select, custom, shown);
  const sync = () => {
    select.value = S.range.preset;
    const [f, t] = currentRange();
    from.value = f || "";
    to.value = t || "";
    custom.hidden = S.range.preset !== "custom";
    shown.textContent = f && t ? `${f} to ${t} (UTC days)` : "";
  };
  form.sync = sync;
  select.addEventListener("change", () => {
    S.range.preset = select.value;
    if (select.value === "custom") {
      if (!S.range.from) [S.range.from, S.range.to] = presetRange("last30");
      sync();
      from.focus();
      return;
    }
    sync();
    guard(reload, form.closest(".page"));
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    // Daypass itself judges the range (any length, all time included; the order) and
    // says what is wrong.
    if (!from.value || !to.value) return showError(new ApiError("Choose both the first and the last day of the range."));
    clearError();
    S.range = { preset: "custom", from: from.value, to: to.value };
    sync();
    guard(reload, form.closest(".page"));
  });
}

// ---------------------------------------------------------------- usage

async function loadUsage() {
  $("#usage-range").sync();
  const [from, to] = currentRange();
  const d = await S.api.gql(`query($a: ID, $from: Date!, $to: Date!) { account(id: $a) {
      byDay: usageReport(from: $from, to: $to, groupBy: [DAY]) { period tokens opens denials }
      byProduct: usageReport(from: $from, to: $to, groupBy: [PRODUCT]) { product { id code name } tokens opens distinctUsers }
      byUser: usageReport(from: $from, to: $to, groupBy: [USER]) { user { id name email } tokens opens charges denials costMinor }
    } }`, { a: acct(), from, to });
  const a = accountOf(d);
  const byDay = new Map(a.byDay.map((r) => [r.period, r]));
  // A long range (all time, say) is charted from its first to its last day with
  // usage, as Daypass reads it, not as decades of empty days.
  const long = (Date.parse(to) - Date.parse(from)) / 86400000 > 400;
  const [start, end] = long && a.byDay.length ? [a.byDay[0].period, a.byDay.at(-1).period] : [from, to];
  const points = [];
  for (let dd = start; dd <= end; dd = addDays(dd, 1)) points.push({ day: dd, tokens: byDay.get(dd)?.tokens ?? 0 });
  drawDays($("#chart-days"), points);
  $("#days-table tbody").replaceChildren(...(a.byDay.length ? a.byDay.map((r) => el("tr", {},
    el("td", { text: r.period }), el("td", { class: "num", text: int.format(r.tokens) }),
    el("td", { class: "num", text: int.format(r.opens) }), el("td", { class: "num", text: int.format(r.denials) })))
    : [el("tr", {}, el("td", { colspan: 4, class: "empty", text: "No usage in this range." }))]));

  const products = a.byProduct.map((r) => ({ ...r, label: r.product ? r.product.name : "Unknown product codes" }))
    .sort((x, y) => y.tokens - x.tokens || x.label.localeCompare(y.label));
  drawProducts($("#chart-products"), products);
  $("#products-table tbody").replaceChildren(...(products.length ? products.map((r) => el("tr", {},
    el("td", { text: r.label }), el("td", { class: "num", text: int.format(r.tokens) }),
    el("td", { class: "num", text: int.format(r.opens) }), el("td", { class: "num", text: int.format(r.distinctUsers) })))
    : [el("tr", {}, el("td", { colspan: 4, class: "empty", text: "No usage in this range." }))]));

  S.usageByUser = a.byUser.map((r) => ({ ...r, name: r.user ? r.user.name : "(no user)", email: r.user?.email ?? "" }));
  renderUsageUsers();
}
LOADERS.usage = loadUsage;

function renderUsageUsers() {
  const { key, dir } = S.sort;
  const sign = dir === "ascending" ? 1 : -1;
  const rows = [...S.usageByUser].sort((x, y) => {
    const c = key === "name" ? x.name.localeCompare(y.name) : x[key] - y[key];
    return sign * c || x.name.localeCompare(y.name);
  });
  for (const th of $$("#users-usage-table th[data-sort]")) th.setAttribute("aria-sort", th.dataset.sort === key ? dir : "none");
  $("#users-usage-table tbody").replaceChildren(...(rows.length ? rows.map((r) => el("tr", { "data-user-email": r.email },
    el("th", { scope: "row" }, el("span", { class: "name", text: r.name }), el("span", { class: "sub", text: r.email })),
    el("td", { class: "num", "data-col": "tokens", text: int.format(r.tokens) }),
    el("td", { class: "num", "data-col": "opens", text: int.format(r.opens) }),
    el("td", { class: "num", "data-col": "denials", text: int.format(r.denials) }),
    el("td", { class: "num", "data-col": "cost", text: money(r.costMinor) })))
    : [el("tr", {}, el("td", { colspan: 5, class: "empty", text: "No usage in this range." }))]));
}

for (const th of $$("#users-usage-table th[data-sort]")) {
  th.querySelector("button").addEventListener("click", () => {
    const key = th.dataset.sort;
    S.sort = { key, dir: S.sort.key === key && S.sort.dir === "descending" ? "ascending" : (S.sort.key === key ? "descending" : (key === "name" ? "ascending" : "descending")) };
    renderUsageUsers();
    announce(`Sorted by ${th.textContent.trim()}, ${S.sort.dir}`);
  });
}

$("#csv-download").addEventListener("click", () => guard(async () => {
  const [from, to] = currentRange();
  const blob = await S.api.usageCsv({ from, to, accountId: acct() });
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: `usage-${from}-${to}.csv`, class: "visually-hidden" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  announce("The CSV file was downloaded");
}, $("#csv-download")));

// ---------------------------------------------------------------- spending

async function loadSpending() {
  $("#spending-range").sync();
  const [from, to] = currentRange();
  const h = Number($("#forecast-horizon").value);
  const d = await S.api.gql(`query($a: ID, $from: Date!, $to: Date!, $h: Int!) { account(id: $a) {
      spending(from: $from, to: $to) { tokens costMinor currency purchasedTokens purchasedMinor expiredTokens }
      forecast(horizonDays: $h) { horizonDays expectedTokens balance shortfall
        advice { user { id name email } product { id code name } flexCostMinor subscriptionCostMinor recommendSubscription } }
    } }`, { a: acct(), from, to, h });
  const { spending: sp, forecast: f } = accountOf(d);
  S.currency = sp.currency;
  $("#sp-cost").textContent = money(sp.costMinor, sp.currency);
  $("#sp-tokens").textContent = int.format(sp.tokens);
  $("#sp-purchased-minor").textContent = money(sp.purchasedMinor, sp.currency);
  $("#sp-purchased-tokens").textContent = int.format(sp.purchasedTokens);
  $("#sp-expired").textContent = int.format(sp.expiredTokens);
  $("#forecast-table tbody").replaceChildren(el("tr", { class: f.shortfall > 0 ? "short" : null },
    el("td", { text: `${f.horizonDays} days` }),
    el("td", { class: "num", text: int.format(f.expectedTokens) }),
    el("td", { class: "num", text: int.format(f.balance) }),
    el("td", { class: "num" }, f.shortfall > 0 ? el("strong", { text: `${int.format(f.shortfall)} tokens short` }) : "none")));
  $("#advice-table tbody").replaceChildren(...(f.advice.length ? f.advice.map((r) => el("tr", { class: r.recommendSubscription ? "recommend" : null },
    el("td", {}, el("span", { class: "name", text: r.user.name }), el("span", { class: "sub", text: r.user.email })),
    el("td", { text: r.product.name }),
    el("td", { class: "num", text: money(r.flexCostMinor) }),
    el("td", { class: "num", text: money(r.subscriptionCostMinor) }),
    el("td", { text: r.recommendSubscription ? `Subscribe: saves ${money(r.flexCostMinor - r.subscriptionCostMinor)} a year` : "Stay on pay-as-you-go" })))
    : [el("tr", {}, el("td", { colspan: 5, class: "empty", text: "No pay-as-you-go use of products with a subscription price in the last 28 days." }))]));
}
LOADERS.spending = loadSpending;
$("#forecast-horizon").addEventListener("change", () => guard(loadSpending, $("#page-spending")));

// ---------------------------------------------------------------- people

const PRODUCT_FIELDS = "id code name";

async function loadPeople() {
  const first = await S.api.gql(`query($a: ID) { products { ${PRODUCT_FIELDS} dailyRate } account(id: $a) { allowedProducts { ${PRODUCT_FIELDS} } } }`, { a: acct() });
  const users = await allPages(async (after) => accountOf(await S.api.gql(
    `query($a: ID, $after: String) { account(id: $a) { users(first: 500, after: $after) { edges { node {
        id name email role active flexAssigned allowedProducts { ${PRODUCT_FIELDS} } } } pageInfo { hasNextPage endCursor } } } }`,
    { a: acct(), after },
  )).users);
  S.people = { products: first.products, accountAllowed: accountOf(first).allowedProducts, users };
  renderPeople();
}
LOADERS.people = loadPeople;

function productList(list) {
  return list.length ? list.map((p) => p.name).join(", ") : "none";
}

function renderPeople() {
  const { accountAllowed, users } = S.people;
  const accountText = accountAllowed == null ? "Every catalog product." : `Only: ${productList(accountAllowed)}.`;
  $("#account-products").textContent = accountText;
  const manage = canManage();
  const me = S.viewer.user?.id;
  const tbody = $("#people-table tbody");
  tbody.replaceChildren(...users.map((u) => {
    const products = u.allowedProducts == null
      ? el("span", { class: "muted", text: "Account-wide setting" })
      : el("span", { text: `Only: ${productList(u.allowedProducts)}` });
    const flex = manage && u.active
      ? el("input", { type: "checkbox", checked: u.flexAssigned, "aria-label": `Pay-as-you-go for ${u.name}`, onchange: (ev) => setFlex(u, ev.target) })
      : el("span", { text: u.flexAssigned ? "Assigned" : "Not assigned" });
    const actions = manage ? el("td", { class: "row-actions" },
      u.active ? el("button", { type: "button", class: "button-small edit-products", "aria-label": `Edit products for ${u.name}`, text: "Products…", onclick: () => editProducts(u) }) : null,
      u.active && u.id !== me ? el("button", { type: "button", class: "button-small button-danger", "aria-label": `Deactivate ${u.name}`, text: "Deactivate", onclick: () => deactivate(u) }) : null) : null;
    return el("tr", { "data-user-id": u.id, "data-user-email": u.email, class: u.active ? null : "inactive" },
      el("th", { scope: "row", text: u.name }),
      el("td", { text: u.email }),
      el("td", { text: ROLE_NAMES[u.role] }),
      el("td", { text: u.active ? "Active" : "Deactivated" }),
      el("td", {}, flex),
      el("td", { "data-col": "products" }, products),
      actions);
  }));
}

function setFlex(user, box) {
  const assigned = box.checked;
  box.disabled = true;
  guard(async () => {
    try {
      await S.api.gql("mutation($ids: [ID!]!, $on: Boolean!) { assignFlex(userIds: $ids, assigned: $on) { id flexAssigned } }", { ids: [user.id], on: assigned });
      user.flexAssigned = assigned;
      announce(`${user.name} is ${assigned ? "now" : "no longer"} on pay-as-you-go`);
    } catch (e) {
      box.checked = !assigned;
      throw e;
    } finally {
      box.disabled = false;
    }
  });
}

function deactivate(user) {
  if (!window.confirm(`Deactivate ${user.name}? Their key stops working at once; this cannot be undone here.`)) return;
  guard(async () => {
    await S.api.gql("mutation($id: ID!) { deactivateUser(userId: $id) { id active } }", { id: user.id });
    announce(`${user.name} was deactivated`);
    await loadPeople();
  }, $("#page-people"));
}

/** The button that opens the product dialog for `user` (null: the whole account). */
function productsButton(user) {
  return user ? $(`#people-table tr[data-user-id="${user.id}"] .edit-products`) : $("#account-products-edit");
}

/**
 * The product dialog for one user (`user`) or the whole account (null). A modal
 * dialog: Escape or Cancel closes it without saving; focus starts on the chosen
 * option and goes back to the button that opened it (found again after a save,
 * which redraws the table).
 */
function editProducts(user) {
  const dialog = $("#products-dialog");
  const error = $("#products-error");
  const { products, accountAllowed } = S.people;
  const current = user ? user.allowedProducts : accountAllowed;
  $("#products-dialog-title").textContent = user ? `Products for ${user.name}` : "Products for the whole account";
  $("#products-dialog-legend").textContent = user ? `Which products may ${user.name} open on pay-as-you-go?` : "Which products may the account's users open on pay-as-you-go?";
  $("#products-inherit-label").textContent = user
    ? `Follow the account-wide setting (${accountAllowed == null ? "every product" : productList(accountAllowed)})`
    : "Every catalog product (no restriction)";
  const chosen = new Set((current || []).map((p) => p.id));
  $("#products-choices").replaceChildren(...products.map((p) => el("label", { class: "check" },
    el("input", { type: "checkbox", name: "product", value: p.id, checked: chosen.has(p.id) }),
    ` ${p.name} `, el("span", { class: "sub", text: `${p.code}, ${int.format(p.dailyRate)} tokens a day` }))));
  const mode = current == null ? "inherit" : "list";
  for (const r of $$("input[name=mode]", dialog)) r.checked = r.value === mode;
  const syncBoxes = () => {
    const list = $("input[name=mode][value=list]", dialog).checked;
    for (const b of $$("input[name=product]", dialog)) b.disabled = !list;
  };
  for (const r of $$("input[name=mode]", dialog)) r.onchange = syncBoxes;
  syncBoxes();
  error.hidden = true;
  error.textContent = "";
  const returnFocus = () => {
    const button = productsButton(user);
    (button && !button.closest("[hidden]") ? button : $("#people-title")).focus();
  };
  let saved = false;
  // After a save the table is redrawn first, then focus goes back (below).
  dialog.onclose = () => { if (!saved) returnFocus(); };
  $("#products-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const list = $("input[name=mode][value=list]", dialog).checked;
    const ids = list ? $$("input[name=product]:checked", dialog).map((b) => b.value) : null;
    error.hidden = true;
    dialog.setAttribute("aria-busy", "true");
    try {
      // The operator names the account for its account-wide list.
      await S.api.gql(
        "mutation($u: ID, $p: [ID!], $a: ID) { setAllowedProducts(userId: $u, productIds: $p, accountId: $a) }",
        { u: user ? user.id : null, p: ids, a: user ? null : acct() },
      );
    } catch (e) {
      // Shown in the dialog: the page behind a modal dialog is out of reach.
      error.textContent = e instanceof ApiError ? e.message : `Something went wrong in the console: ${e?.message || e}`;
      error.hidden = false;
      if (!(e instanceof ApiError)) console.error(e);
      return;
    } finally {
      dialog.removeAttribute("aria-busy");
    }
    saved = true;
    dialog.close();
    announce(user ? `Products for ${user.name} saved` : "Products for the account saved");
    await guard(loadPeople, $("#page-people"));
    returnFocus();
  };
  $("#products-cancel").onclick = () => dialog.close();
  dialog.showModal();
  $("input[name=mode]:checked", dialog).focus();
}
$("#account-products-edit").addEventListener("click", () => editProducts(null));

$("#create-user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("#cu-name").value.trim();
  const email = $("#cu-email").value.trim();
  const role = $("#cu-role").value;
  if (!name || !email || !$("#cu-email").checkValidity()) {
    showError(new ApiError("Give the new user a name and a valid e-mail address."));
    return;
  }
  guard(async () => {
    const op = S.role === "OPERATOR";
    const d = await S.api.gql(
      `mutation($i: CreateUserInput!) { createUser(input: $i) { user { id name } apiKey } }`,
      { i: op ? { name, email, role, accountId: S.accountId } : { name, email, role } },
    );
    $("#new-key-value").textContent = d.createUser.apiKey;
    $("#new-key").hidden = false;
    $("#create-user-form").reset();
    announce(`${d.createUser.user.name} was added; their key is shown once`);
    await loadPeople();
    $("#new-key-copy").focus();
  }, $("#create-user-form"));
});

$("#new-key-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("#new-key-value").textContent);
    announce("Key copied");
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("#new-key-value"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    announce("Copying is blocked here: the key is selected, copy it with the keyboard");
  }
});

// ---------------------------------------------------------------- buy

async function loadBuy() {
  const d = await S.api.gql("{ priceList { minQuantity maxQuantity unitPriceMinor selfService } unit: priceQuote(quantity: 1) { currency } }");
  S.currency = d.unit.currency;
  const self = d.priceList.filter((b) => b.selfService).map((b) => b.maxQuantity ?? b.minQuantity);
  S.selfServiceMax = self.length ? Math.max(...self) : 0;
  S.priceListTop = Math.max(...d.priceList.map((b) => b.maxQuantity ?? b.minQuantity));
  $("#price-table tbody").replaceChildren(...d.priceList.map((b) => el("tr", {},
    el("td", { text: b.maxQuantity == null ? `${int.format(b.minQuantity)} and more` : `${int.format(b.minQuantity)} – ${int.format(b.maxQuantity)}` }),
    el("td", { class: "num", text: money(b.unitPriceMinor) }),
    el("td", { text: b.selfService ? "Yes" : "From the vendor" }))));
  $("#buy-result").hidden = true;
  S.buyKey = null;
  await quote();
}
LOADERS.buy = loadBuy;

function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

let quoteSeq = 0;
async function quote() {
  const seq = ++quoteSeq;
  const input = $("#buy-quantity");
  const out = $("#buy-quote");
  const limit = $("#buy-limit");
  const submit = $("#buy-submit");
  const q = Number(input.value);
  S.buyKey = null;
  limit.hidden = true;
  submit.disabled = true;
  submit.textContent = "Buy";
  if (!input.value || !Number.isInteger(q) || q < 1) {
    out.textContent = "Enter a whole number of tokens, 1 or more.";
    return;
  }
  let p;
  try {
    p = (await S.api.gql("query($q: Int!) { priceQuote(quantity: $q) { quantity unitPriceMinor totalMinor currency selfService } }", { q })).priceQuote;
  } catch (e) {
    if (seq !== quoteSeq) return;
    if (e.code === "BAD_USER_INPUT") {
      out.textContent = `No list price for ${int.format(q)} tokens: the price list ends at ${int.format(S.priceListTop)}. The vendor sells larger quantities at a price they give.`;
      if (S.role !== "OPERATOR") showLimit(limit);
      return;
    }
    throw e;
  }
  if (seq !== quoteSeq) return;
  out.textContent = `${int.format(p.quantity)} tokens × ${money(p.unitPriceMinor, p.currency)} = ${money(p.totalMinor, p.currency)}`;
  out.dataset.totalMinor = p.totalMinor;
  if (!p.selfService && S.role !== "OPERATOR") {
    showLimit(limit);
    return;
  }
  S.buyKey = newIdempotencyKey();
  submit.disabled = false;
  submit.textContent = `Buy ${int.format(p.quantity)} tokens for ${money(p.totalMinor, p.currency)}`;
}

/** Above the self-service limit only the vendor sells (the quote says which). */
function showLimit(limit) {
  limit.textContent = `You can buy up to ${int.format(S.selfServiceMax)} tokens at a time here. Larger quantities are sold by the vendor: contact them, or buy in several purchases.`;
  limit.hidden = false;
}

let quoteTimer = null;
$("#buy-quantity").addEventListener("input", () => {
  clearTimeout(quoteTimer);
  // The price shown no longer holds: nothing is bought until the new quote is in.
  S.buyKey = null;
  $("#buy-submit").disabled = true;
  quoteTimer = setTimeout(() => guard(quote), 250);
});

// Enter in the quantity before the quote came (the Buy button is disabled then, so
// the form would ignore it): show the price now and move to the Buy button, so the
// person confirms a price they have seen.
$("#buy-quantity").addEventListener("keydown", (ev) => {
  if (ev.key !== "Enter" || S.buyKey) return;
  ev.preventDefault();
  clearTimeout(quoteTimer);
  guard(async () => {
    await quote();
    if (S.buyKey) $("#buy-submit").focus();
  });
});

$("#buy-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!S.buyKey) return;
  const quantity = Number($("#buy-quantity").value);
  const submit = $("#buy-submit");
  submit.disabled = true;
  guard(async () => {
    const input = { quantity, idempotencyKey: S.buyKey };
    if (S.role === "OPERATOR") input.accountId = S.accountId;
    let lot;
    try {
      lot = (await S.api.gql(`mutation($i: PurchaseTokensInput!) { purchaseTokens(input: $i) { ${LOT_FIELDS} } }`, { i: input })).purchaseTokens;
    } catch (e) {
      // The same key again buys once, so a retry after a lost answer is safe.
      submit.disabled = false;
      throw e;
    }
    S.buyKey = null;
    const r = $("#buy-result");
    r.textContent = `Bought ${int.format(lot.quantity)} tokens for ${money(lot.quantity * lot.unitPriceMinor, lot.currency)}. They expire on ${day(lot.expiresAt)}.`;
    r.hidden = false;
    submit.textContent = "Bought";
    // The button just pressed is disabled now: the receipt takes the focus (and is
    // read out), so a keyboard user does not lose their place.
    r.focus();
    const b = await S.api.gql("query($a: ID) { account(id: $a) { balance lowBalanceThreshold } }", { a: acct() });
    renderBalance(accountOf(b).balance, accountOf(b).lowBalanceThreshold);
  }, $("#buy-form"));
});

// ---------------------------------------------------------------- notifications

const KINDS = {
  LOW_BALANCE: "Balance fell below the threshold",
  TOKENS_EXHAUSTED: "Tokens ran out (an open was denied)",
  EXPIRY_REMINDER: "A lot expires in 90 days",
};

async function loadNotifications(more = false) {
  const after = more ? S.notificationsAfter : null;
  const conn = accountOf(await S.api.gql(`query($a: ID, $after: String) { account(id: $a) { notifications(first: 50, after: $after) {
      edges { node { id kind createdAt sentAt recipients state attempts lastError } } pageInfo { hasNextPage endCursor } } } }`,
  { a: acct(), after })).notifications;
  const rows = conn.edges.map(({ node: n }) => {
    const failed = n.state === "DEAD" || !!n.lastError;
    const delivery = n.state === "SENT" ? `Sent ${when(n.sentAt)}`
      : n.state === "DEAD" ? `Failed: gave up after ${n.attempts} attempts`
        : n.lastError ? "Failed, will retry" : "Waiting to be sent";
    return el("tr", { class: failed ? "failed" : null },
      el("td", { class: "date", text: when(n.createdAt) }),
      el("td", { text: KINDS[n.kind] || n.kind }),
      el("td", { text: n.recipients.join(", ") || "nobody (no active admin)" }),
      el("td", {}, el("span", { class: `status status-${n.state.toLowerCase()}`, text: delivery })),
      el("td", { class: "num", text: int.format(n.attempts) }),
      el("td", { class: "error-text", text: n.lastError || "" }));
  });
  const tbody = $("#notifications-table tbody");
  if (more) tbody.append(...rows);
  else tbody.replaceChildren(...rows);
  if (!tbody.children.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "empty", text: "No notifications yet." })));
  S.notificationsAfter = conn.pageInfo.endCursor;
  $("#notifications-more").hidden = !conn.pageInfo.hasNextPage;
}
LOADERS.notifications = () => loadNotifications(false);
$("#notifications-more").addEventListener("click", () => guard(() => loadNotifications(true), $("#page-notifications")));

// Alerts & webhooks: alerts.js and webhooks.js.
LOADERS.alerts = () => loadAlerts({ api: S.api, accountId: acct(), role: S.role, user: S.viewer.user, manage: canManage() });

// ---------------------------------------------------------------- keyboard

// The skip link goes to the page's heading. Followed as a link it would set the hash
// to "#main", which the router reads as a page name (and shows the balance).
$(".skip-link").addEventListener("click", (ev) => {
  ev.preventDefault();
  const shown = $$(".page").find((p) => !p.hidden);
  (shown ? $("h1", shown) : $("#main")).focus();
});

/**
 * A table wider than its box scrolls sideways (on a phone, say). Keyboard users can
 * scroll it only once it has the focus, so while it overflows its box is focusable,
 * a region named after the table's caption (WCAG 2.1.1).
 */
function fitScroll(wrap) {
  const scrolls = wrap.scrollWidth > wrap.clientWidth + 1;
  if (scrolls === wrap.hasAttribute("tabindex")) return;
  if (scrolls) {
    const name = $("caption", wrap)?.textContent.trim() || "Table";
    wrap.tabIndex = 0;
    wrap.setAttribute("role", "region");
    wrap.setAttribute("aria-label", `${name} (scrolls sideways)`);
  } else {
    for (const a of ["tabindex", "role", "aria-label"]) wrap.removeAttribute(a);
  }
}
const scrollWatch = new ResizeObserver((entries) => {
  for (const e of entries) fitScroll(e.target.closest(".table-wrap"));
});
for (const wrap of $$(".table-wrap")) {
  scrollWatch.observe(wrap);
  scrollWatch.observe($("table", wrap));
}

// ---------------------------------------------------------------- start

rangeForm($("#usage-range"), "usage", loadUsage);
rangeForm($("#spending-range"), "spending", loadSpending);

$("#signin-show").addEventListener("change", (ev) => { $("#signin-key").type = ev.target.checked ? "text" : "password"; });
$("#signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#signin-key").value.trim();
  const err = $("#signin-error");
  err.hidden = true;
  if (!key) {
    err.textContent = "Paste your API key first.";
    err.hidden = false;
    $("#signin-key").focus();
    return;
  }
  const button = $("#signin-submit");
  button.disabled = true;
  signIn(key)
    .catch((e) => {
      err.textContent = e instanceof ApiError ? e.message : String(e);
      err.hidden = false;
      $("#signin-key").focus();
    })
    .finally(() => { button.disabled = false; });
});
$("#sign-out").addEventListener("click", () => signOut());
$("#account-select").addEventListener("change", (ev) => {
  S.accountId = ev.target.value;
  S.capacity = null;
  sessionStorage.setItem(ACCOUNT_STORAGE, S.accountId);
  startLive();
  route();
});
window.addEventListener("hashchange", route);

const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) {
  signIn(saved, { quiet: true }).catch((e) => signOut(e instanceof ApiError ? e.message : String(e)));
} else {
  showPage("signin");
}
