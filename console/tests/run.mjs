// Browser tests of the console: Debian's Chromium, headless, driven by playwright-core
// against the real daypass binary. tests/tests/processes/console.rs starts the server
// and a webhook receiver, seeds the server over GraphQL and runs this file with the
// seed in DAYPASS_CONSOLE_SEED (JSON):
//   { url, adminKey, analystKey, memberKey, operatorKey, now, webhookUrl, webhookLog,
//     expect: {...} }
// The Alerts & webhooks page's steps are in alerts.mjs.
// Screenshots go to DAYPASS_CONSOLE_SCREENSHOTS (printed at the start and the end).
// Every page the story visits is also checked with axe-core against WCAG 2.0/2.1 A
// and AA; a violation fails its step. Exit 0 when every step passed.

import { chromium } from "playwright-core";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { adminAlerts, analystAlerts, memberAlerts, operatorAlerts } from "./alerts.mjs";

const seed = JSON.parse(process.env.DAYPASS_CONSOLE_SEED || "null");
if (!seed) {
  console.error("DAYPASS_CONSOLE_SEED is not set: run this through `cargo test -p daypass-tests --test processes console`");
  process.exit(2);
}
const SHOTS = process.env.DAYPASS_CONSOLE_SCREENSHOTS || join(process.cwd(), "screenshots");
const CHROMIUM = process.env.DAYPASS_CHROMIUM || "/usr/bin/chromium";
const E = seed.expect;
rmSync(SHOTS, { recursive: true, force: true });
mkdirSync(SHOTS, { recursive: true });
console.log(`console browser tests: ${seed.url}, screenshots in ${SHOTS}`);

// ------------------------------------------------------------------ helpers

const LAPTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

function assert(cond, message) {
  if (!cond) throw new Error(message);
}
/** JSON with object keys sorted, so key order never matters. */
function canon(v) {
  return JSON.stringify(v, (_, x) => (x && typeof x === "object" && !Array.isArray(x)
    ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]])) : x));
}
function eq(actual, expected, what) {
  const a = canon(actual);
  const b = canon(expected);
  if (a !== b) throw new Error(`${what}: expected ${b}, got ${a}`);
}
const num = (text) => Number(String(text).replace(/[^\d-]/g, ""));

// ------------------------------------------------------------------ accessibility

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const AXE_VERSION = JSON.parse(readFileSync(require.resolve("axe-core/package.json"), "utf8")).version;
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
const axeChecked = [];

/**
 * Runs axe-core on the page as it is now and fails on any WCAG 2.0/2.1 A or AA
 * violation, naming the rule, its impact, its help text and the elements. axe goes in
 * through page.evaluate (the DevTools protocol), which the page's policy
 * (`script-src 'self'`) does not govern: the served CSP stays as it is, and the
 * context does not bypass it either, so the last step still catches any CSP
 * violation of the console itself. `exclude` takes CSS selectors (none so far).
 */
async function a11y(page, where, { exclude = [] } = {}) {
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(`${AXE_SOURCE}\n;undefined`);
  // Let layout and the console's resize observers settle first.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  const violations = await page.evaluate(async ({ tags, exclude: ex }) => {
    const context = ex.length ? { include: [document], exclude: ex.map((sel) => [sel]) } : document;
    const r = await window.axe.run(context, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => `${n.target.join(" ")}${n.failureSummary ? `\n        ${n.failureSummary.replace(/\n/g, "\n        ")}` : ""}`),
    }));
  }, { tags: AXE_TAGS, exclude });
  if (violations.length) {
    const lines = violations.map((v) => `  ${v.id} (${v.impact}): ${v.help}\n${v.nodes.map((n) => `      ${n}`).join("\n")}`);
    throw new Error(`axe-core ${AXE_VERSION}: ${violations.length} accessibility violation(s) on ${where}:\n${lines.join("\n")}`);
  }
  axeChecked.push(where);
}

// ------------------------------------------------------------------ keyboard

/** What has the keyboard focus, in terms a test can match. */
const focusInfo = (page) => page.evaluate(() => {
  const a = document.activeElement;
  if (!a || a === document.body) return null;
  return {
    tag: a.tagName.toLowerCase(),
    id: a.id,
    cls: typeof a.className === "string" ? a.className : "",
    type: a.getAttribute("type"),
    value: a.value ?? null,
    page: a.dataset.page ?? null,
    row: a.closest("tr")?.dataset.userEmail ?? null,
    label: a.getAttribute("aria-label"),
    text: (a.textContent || "").trim().slice(0, 40),
    inDialog: !!a.closest("dialog[open]"),
  };
});
const describe = (f) => (f ? (f.id ? `#${f.id}` : `${f.tag}${f.cls ? `.${f.cls.split(" ").join(".")}` : ""}(${f.label || f.text || f.value || ""})`) : "body");

/** Presses Tab (Shift+Tab with `back`) until `test(focusInfo)` holds; at most `max` times. */
async function tabTo(page, what, test, { back = false, max = 40 } = {}) {
  const path = [];
  for (let i = 0; i < max; i += 1) {
    await page.keyboard.press(back ? "Shift+Tab" : "Tab");
    const f = await focusInfo(page);
    path.push(describe(f));
    if (f && test(f)) return f;
  }
  throw new Error(`${what}: not reached with ${max} × ${back ? "Shift+Tab" : "Tab"}: ${path.join(" → ")}`);
}

/** Waits until the focus is where `test` wants it. */
async function focusIs(page, what, test) {
  let last = null;
  await waitFor(`the focus on ${what}`, async () => {
    last = await focusInfo(page);
    return last && test(last);
  }, 10_000).catch((e) => { throw new Error(`${e.message}; it is on ${describe(last)}`); });
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `ms`. */
async function waitFor(what, fn, ms = 30_000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? ` (${last.message})` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function gql(key, query, variables = {}) {
  const resp = await fetch(`${seed.url}/graphql`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await resp.json();
  if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

let shotNo = 0;
const shots = [];
async function shot(page, name, what) {
  shotNo += 1;
  const file = join(SHOTS, `${String(shotNo).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  shots.push(`${file}  (${what})`);
}

let passed = 0;
async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
  } catch (e) {
    console.log(`not ok - ${name}: ${e.message}`);
    for (const p of pages) {
      try { await p.screenshot({ path: join(SHOTS, `FAILED-${passed + 1}-${pages.indexOf(p)}.png`), fullPage: true }); } catch { /* closed */ }
    }
    throw e;
  }
  passed += 1;
  console.log(`ok - ${name} (${Date.now() - started} ms)`);
}

const pages = [];
const consoleErrors = [];

async function newPage(browser, viewport, label) {
  const context = await browser.newContext({ viewport, locale: "en-US", timezoneId: "UTC", acceptDownloads: true });
  // CI runs the whole suite at once on two cores: be patient.
  context.setDefaultTimeout(60_000);
  const page = await context.newPage();
  // The console counts days from the browser's clock; the seeded server runs on a
  // test clock moved forward, so the browser is given the server's time.
  await page.clock.setSystemTime(new Date(seed.now));
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${label}: ${m.text()}`); });
  page.on("pageerror", (e) => consoleErrors.push(`${label}: ${e.message}`));
  pages.push(page);
  return page;
}

async function signIn(page, key) {
  await page.goto(seed.url);
  await page.fill("#signin-key", key);
  await page.press("#signin-key", "Enter");
  await page.waitForSelector("#nav:not([hidden])");
}

async function go(page, name) {
  await page.click(`#nav a[data-page=${name}]`);
  await page.waitForFunction((n) => !document.querySelector(`#page-${n}`).hidden
    && !document.querySelector(`#page-${n}`).hasAttribute("aria-busy"), name);
}

const text = (page, sel) => page.textContent(sel).then((t) => (t || "").trim());
const visible = (page, sel) => page.isVisible(sel);
const chartData = (page, id) => page.evaluate((i) => {
  const c = window.Chart.getChart(document.getElementById(i));
  return c ? { labels: c.data.labels, sets: c.data.datasets.map((d) => d.data) } : null;
}, id);

/** The usage-by-user table as {email: {tokens, opens, denials}}. */
async function usageTable(page) {
  return page.$$eval("#users-usage-table tbody tr[data-user-email]", (rows) => Object.fromEntries(rows.map((r) => {
    const n = (c) => Number(r.querySelector(`[data-col=${c}]`).textContent.replace(/[^\d-]/g, ""));
    return [r.dataset.userEmail, { tokens: n("tokens"), opens: n("opens"), denials: n("denials") }];
  })));
}

/** The "Open now" table: who has what open, on which device, in use or idle. */
async function openSessions(page) {
  return page.$$eval("#sessions-open-table tbody tr[data-session-id]", (rows) => rows.map((r) => ({
    id: r.dataset.sessionId,
    email: r.dataset.userEmail,
    device: r.dataset.device,
    product: r.cells[1].querySelector(".name").textContent,
    use: r.querySelector("[data-col=use]").textContent,
    close: r.querySelector("button.close-session")?.getAttribute("aria-label") ?? null,
  })));
}

/** The "Ended lately" table: state, tokens and the refund badge by session. */
async function endedSessions(page) {
  return page.$$eval("#sessions-recent-table tbody tr[data-session-id]", (rows) => rows.map((r) => ({
    id: r.dataset.sessionId,
    email: r.dataset.userEmail,
    device: r.dataset.device,
    state: r.dataset.state,
    shown: r.querySelector(".status").textContent,
    tokens: r.querySelector("[data-col=tokens]").firstChild.textContent,
    refunded: !!r.querySelector(".flag-refunded"),
  })));
}
const byDevice = (rows) => [...rows].sort((a, b) => a.device.localeCompare(b.device));

/** RFC 4180 rows (quoted fields, CRLF). */
function parseCsv(body) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < body.length; i += 1) {
    const c = body[i];
    if (quoted) {
      if (c === '"' && body[i + 1] === '"') { field += '"'; i += 1; } else if (c === '"') quoted = false; else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; } else if (c === "\r") { /* CRLF */ } else if (c === "\n") { row.push(field); rows.push(row); row = []; field = ""; } else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}

// ------------------------------------------------------------------ the story

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
let exitCode = 0;
try {
  const page = await newPage(browser, LAPTOP, "laptop");
  let balance = E.balance;
  /** What alerts.mjs needs of this file. */
  const t = {
    seed, E, page, step, eq, assert, waitFor, text, visible, gql, go, shot, a11y, focusIs,
    /** A phone-sized window signed in with `key`; `done()` closes it. */
    phone: async (key) => {
      const p = await newPage(browser, PHONE, "phone");
      await signIn(p, key);
      return { page: p, done: async () => { await p.context().close(); pages.splice(pages.indexOf(p), 1); } };
    },
  };

  await step("the sign-in page is served at / with its assets under a strict CSP", async () => {
    const resp = await page.goto(seed.url);
    eq(resp.status(), 200, "GET /");
    assert(/script-src 'self'/.test(resp.headers()["content-security-policy"] || ""), "CSP header");
    await page.waitForSelector("#signin-key");
    eq(await page.getAttribute("#signin-key", "type"), "password", "key input type");
    eq(await text(page, "label[for=signin-key]"), "API key", "key label");
    await shot(page, "signin", "sign-in page");
    await a11y(page, "the sign-in page");
  });

  await step("a wrong key is refused in words", async () => {
    await page.fill("#signin-key", "dp_not-a-real-key");
    await page.click("#signin-submit");
    await waitFor("the sign-in error", () => visible(page, "#signin-error"));
    assert(/not recognised/.test(await text(page, "#signin-error")), "explains the wrong key");
    eq(await page.evaluate(() => sessionStorage.length), 0, "nothing stored");
    await a11y(page, "the sign-in page with its error");
  });

  await step("the admin signs in with the keyboard; the key is in session storage, not the URL", async () => {
    await page.fill("#signin-key", "");
    await page.focus("#signin-key");
    await page.keyboard.type(seed.adminKey);
    await page.keyboard.press("Tab"); // the "show the key" box
    await page.keyboard.press("Tab"); // the button
    eq(await page.evaluate(() => document.activeElement.id), "signin-submit", "focus on the button");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#nav:not([hidden])");
    assert(!page.url().includes(seed.adminKey), "the key is not in the URL");
    eq(await page.evaluate(() => sessionStorage.getItem("daypass.apiKey")), seed.adminKey, "session storage");
    eq(await text(page, "#who-role"), "Admin", "role badge");
    eq(await text(page, "#who-account"), E.accountName, "account name");
    // The router moves the focus to the page's heading, where reading starts.
    await focusIs(page, "the Balance heading", (f) => f.id === "balance-title");
  });

  await step("balance: available, used and purchased match the seed; the ring is red below the threshold", async () => {
    await waitFor("the balance", async () => num(await text(page, "#balance-available")) === balance);
    eq(num(await text(page, "#fig-used")), E.used, "used");
    eq(num(await text(page, "#fig-purchased")), E.purchased, "purchased");
    eq(num(await text(page, "#fig-threshold")), E.threshold, "threshold");
    assert(balance < E.threshold, "the seed ends below the threshold");
    assert(await page.$eval(".ring-card", (n) => n.classList.contains("low")), "the ring is red");
    assert(/Below the low-balance threshold/.test(await text(page, "#ring-state")), "says so in words");
    eq((await page.$$("#lots-table tbody tr[data-lot]")).length, E.lots, "lots listed");
    const soon = await page.$$eval("#lots-table tbody tr.soon", (rows) => rows.map((r) => r.textContent));
    eq(soon.length, 1, "one lot flagged as expiring within 90 days");
    assert(/expires in \d+ days/.test(soon[0]), `flag text: ${soon[0]}`);
    await waitFor("the live indicator", async () => (await text(page, "#live-text")) === "live");
    // "live" means the server accepted the connection; the subscribe message that
    // follows has no answer of its own, so give the server a moment to start it.
    await new Promise((r) => setTimeout(r, 500));
    const open = await openSessions(page);
    eq(byDevice(open).map(({ email, device, product, use }) => ({ email, device, product, use })), byDevice(E.sessions.open), "sessions open now");
    for (const o of open) {
      assert(o.close && o.close.startsWith(`Close ${o.product} for `) && o.close.endsWith(` on ${o.device}`), `Close button named: ${o.close}`);
    }
    eq(await page.getAttribute("#sessions-open-table th.manage-only", "hidden"), null, "the actions column is shown to the admin");
    const ended = await endedSessions(page);
    assert(ended.length > 2 && ended.length <= 10, `ended lately: ${ended.length} rows`);
    const lapsed = ended.find((r) => r.device === E.sessions.lapsedDevice);
    const seen = (r) => r && { state: r.state, shown: r.shown, tokens: r.tokens, refunded: r.refunded };
    eq(seen(lapsed), { state: "LAPSED", shown: "Lapsed", tokens: "3", refunded: false }, "the lapsed session, charged");
    const short = ended.find((r) => r.device === E.sessions.refundedDevice);
    eq(seen(short), { state: "CLOSED", shown: "Closed", tokens: "10", refunded: true }, "the short launch, refunded");
    eq(ended.filter((r) => r.refunded).length, 1, "only the short launch is marked refunded");
    assert(ended.every((r) => ["CLOSED", "LAPSED", "DENIED"].includes(r.state)), "only ended sessions under Ended lately");
    await shot(page, "balance", "Balance (admin): ring below the threshold, lots, one expiring soon, sessions open now and ended lately");
    await a11y(page, "Balance (admin)");
  });

  await step("a purchase made elsewhere shows up live, without a reload", async () => {
    await page.evaluate(() => { window.notReloaded = true; });
    const before = await chartData(page, "chart-lots");
    await gql(seed.adminKey, 'mutation { purchaseTokens(input: {quantity: 100, idempotencyKey: "console-live-1"}) { id } }');
    balance += 100;
    await waitFor("the pushed balance", async () => num(await text(page, "#balance-available")) === balance);
    await waitFor("the new lot in the list", async () => (await page.$$("#lots-table tbody tr[data-lot]")).length === E.lots + 1);
    const after = await chartData(page, "chart-lots");
    eq(after.labels.length, before.labels.length + 1, "the lot chart has one more bar");
    assert(await page.evaluate(() => window.notReloaded === true), "the page was not reloaded");
  });

  await step("a short launch elsewhere shows up live under Ended lately, refunded, the balance as it was", async () => {
    await page.evaluate(() => { window.notReloaded = true; });
    const S = E.sessions;
    const opened = (await gql(S.liveKey, "mutation($i: OpenProductInput!) { openProduct(input: $i) { granted session { id } } }",
      { i: { productCode: S.liveProduct, deviceId: S.liveDevice } })).openProduct;
    assert(opened.granted, "the open was granted");
    await gql(S.liveKey, "mutation($id: ID!) { closeProduct(sessionId: $id) { state } }", { id: opened.session.id });
    const row = await waitFor("the short launch under Ended lately", async () => {
      const r = (await endedSessions(page)).find((x) => x.id === opened.session.id);
      return r && r.refunded && r;
    });
    eq({ device: row.device, state: row.state, refunded: row.refunded }, { device: S.liveDevice, state: "CLOSED", refunded: true }, "the live short launch");
    assert(!(await openSessions(page)).some((o) => o.id === opened.session.id), "no longer open");
    await waitFor("the balance back as it was", async () => num(await text(page, "#balance-available")) === balance);
    assert(await page.evaluate(() => window.notReloaded === true), "the page was not reloaded");
  });

  await step("keyboard only: the admin closes a session on the Balance page, and the API has it CLOSED", async () => {
    const S = E.sessions;
    const opener = (f) => f.row === S.closeEmail && f.cls.includes("close-session");
    const state = async () => {
      const { account } = await gql(seed.adminKey, "{ account { sessions(first: 100) { edges { node { id state charges { refunded } } } } } }");
      return account.sessions.edges.map((e) => e.node).find((n) => n.id === S.closeId);
    };
    await page.focus("#sessions-open-title");
    await tabTo(page, `the Close button of ${S.closeDevice}`, opener, { max: 5 });
    // Asked first; Cancel closes nothing and leaves the focus where it was.
    let asked = null;
    page.once("dialog", (d) => { asked = d.message(); d.dismiss(); });
    await page.keyboard.press("Enter");
    await waitFor("the question", () => asked);
    assert(asked.startsWith(`Close CAM Mill for Dev Drafter on ${S.closeDevice}?`), `the question: ${asked}`);
    eq((await state()).state, "OPEN", "Cancel closed nothing");
    await focusIs(page, "the same Close button", opener);
    page.once("dialog", (d) => d.accept());
    await page.keyboard.press("Enter");
    await waitFor("the closed session under Ended lately", async () => (await endedSessions(page)).some((r) => r.id === S.closeId && r.state === "CLOSED"));
    eq(await state(), { id: S.closeId, state: "CLOSED", charges: [{ refunded: false }] }, "CLOSED over the API, its charge kept");
    const open = await openSessions(page);
    eq(open.map((o) => o.device), E.sessions.open.map((o) => o.device).filter((d) => d !== S.closeDevice), "still open");
    // The row is gone: the focus moves on to the next session's Close button.
    await focusIs(page, "the next Close button", (f) => f.cls.includes("close-session") && f.row === open[0].email);
    await waitFor("the announcement", async () => (await text(page, "#status")) === `Closed CAM Mill for Dev Drafter on ${S.closeDevice}`);
    eq(num(await text(page, "#balance-available")), balance, "no refund past five minutes");
    await shot(page, "balance-session-closed", "Balance (admin): a session closed with the keyboard, the focus on the next Close button");
    await a11y(page, "Balance (admin) after closing a session");
  });

  await step("usage: the day chart, product bars and user table match the seed over 365 days", async () => {
    await go(page, "usage");
    eq(await page.inputValue("#usage-preset"), "last365", "default range");
    const days = await waitFor("the day chart", () => chartData(page, "chart-days"));
    eq(days.labels.length, 365, "one point a day");
    eq(days.sets[0].reduce((s, v) => s + v, 0), E.used, "tokens in the day chart");
    eq(days.labels.at(-1), seed.now.slice(0, 10), "the chart ends today");
    const products = await chartData(page, "chart-products");
    eq(Object.fromEntries(products.labels.map((l, i) => [l, products.sets[0][i]])), E.byProduct, "tokens by product");
    const table = await usageTable(page);
    eq(Object.fromEntries(Object.entries(table).map(([k, v]) => [k, v.tokens])), E.byUser, "tokens by user");
    eq(table[E.deniedEmail].denials, 1, "the denial is counted");
    await shot(page, "usage", "Usage (admin), last 365 days: day chart, product bars, user table");
    await a11y(page, "Usage (admin)");
    await page.click("#page-usage details.data-table summary");
    await a11y(page, "Usage (admin) with the day table open");
    await page.click("#page-usage details.data-table summary");
  });

  await step("the user table sorts by a column, with aria-sort", async () => {
    await page.click("#users-usage-table th[data-sort=name] button");
    const names = await page.$$eval("#users-usage-table tbody th .name", (n) => n.map((x) => x.textContent));
    eq(names, [...names].sort((a, b) => a.localeCompare(b)), "sorted by name");
    eq(await page.getAttribute("#users-usage-table th[data-sort=name]", "aria-sort"), "ascending", "aria-sort");
    await page.click("#users-usage-table th[data-sort=tokens] button");
    const tokens = await page.$$eval("#users-usage-table tbody td[data-col=tokens]", (n) => n.map((x) => Number(x.textContent.replace(/\D/g, ""))));
    eq(tokens, [...tokens].sort((a, b) => b - a), "sorted by tokens, most first");
  });

  await step("the CSV download holds the same rows as the table for the last 30 days", async () => {
    const shown = await text(page, "#usage-shown");
    await page.selectOption("#usage-preset", "last30");
    await waitFor("the 30-day report", async () => (await text(page, "#usage-shown")) !== shown
      && !(await page.$("#page-usage[aria-busy]")));
    const days = await chartData(page, "chart-days");
    eq(days.labels.length, 30, "30 points");
    const table = await usageTable(page);
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#csv-download")]);
    const file = join(SHOTS, download.suggestedFilename());
    await download.saveAs(file);
    assert(/^usage-\d{4}-\d{2}-\d{2}-\d{4}-\d{2}-\d{2}\.csv$/.test(download.suggestedFilename()), `file name ${download.suggestedFilename()}`);
    const [header, ...rows] = parseCsv(readFileSync(file, "utf8"));
    const col = Object.fromEntries(header.map((h, i) => [h, i]));
    const sums = {};
    for (const r of rows) {
      const s = (sums[r[col.user_email]] ||= { tokens: 0, opens: 0, denials: 0 });
      s.tokens += Number(r[col.tokens]);
      s.opens += Number(r[col.opens]);
      s.denials += Number(r[col.denials]);
    }
    assert(rows.length > Object.keys(table).length, "the CSV has a row per day, user and product");
    eq(sums, table, "CSV sums by user against the table");
    eq(days.sets[0].reduce((s, v) => s + v, 0), Object.values(table).reduce((s, v) => s + v.tokens, 0), "chart and table agree");
    await page.selectOption("#usage-preset", "last365");
    await page.waitForFunction(() => !document.querySelector("#page-usage").hasAttribute("aria-busy"));
  });

  await step("buy: a live quote, a clear message above the self-service limit, then the purchase", async () => {
    await go(page, "buy");
    assert((await page.$$("#price-table tbody tr")).length >= 2, "price list shown");
    await page.fill("#buy-quantity", "20000");
    await waitFor("the limit message", () => visible(page, "#buy-limit"));
    assert(/up to 10,000 tokens/.test(await text(page, "#buy-limit")), "names the limit");
    assert(await page.isDisabled("#buy-submit"), "no purchase above the limit");
    await shot(page, "buy-above-limit", "Buy tokens: 20,000 is above the self-service limit");
    await a11y(page, "Buy tokens above the self-service limit");
    const q = (await gql(seed.adminKey, "{ priceQuote(quantity: 1000) { totalMinor } }")).priceQuote;
    await page.fill("#buy-quantity", "1000");
    await waitFor("the quote", async () => !(await page.isDisabled("#buy-submit")));
    eq(Number(await page.getAttribute("#buy-quote", "data-total-minor")), q.totalMinor, "quoted total");
    assert(/^1,000 tokens × .+ = .+/.test(await text(page, "#buy-quote")), "quote in words");
    await page.click("#buy-submit");
    await waitFor("the receipt", () => visible(page, "#buy-result"));
    assert(/^Bought 1,000 tokens/.test(await text(page, "#buy-result")), "receipt");
    balance += 1000;
    await shot(page, "buy", "Buy tokens: the purchase done");
    await a11y(page, "Buy tokens after the purchase");
  });

  await step("after buying, the balance, the ring and the lot chart changed", async () => {
    await go(page, "balance");
    await waitFor("the new balance", async () => num(await text(page, "#balance-available")) === balance);
    assert(balance >= E.threshold, "now above the threshold");
    assert(!(await page.$eval(".ring-card", (n) => n.classList.contains("low"))), "the ring is no longer red");
    eq((await page.$$("#lots-table tbody tr[data-lot]")).length, E.lots + 2, "two more lots");
    eq((await chartData(page, "chart-lots")).labels.length, E.lots + 2, "two more bars in the lot chart");
    await shot(page, "balance-after-purchase", "Balance after buying 1,100 tokens: ring green, two new lots");
  });

  await step("spending: money and tokens in the range, the forecast and the advice", async () => {
    await go(page, "spending");
    eq(num(await text(page, "#sp-tokens")), E.used, "tokens used in the range");
    eq(num(await text(page, "#sp-purchased-tokens")), E.purchased + 1100, "tokens purchased in the range");
    assert(/^\$[\d,]+\.\d\d$/.test(await text(page, "#sp-cost")), "spent, as money");
    eq((await page.$$("#forecast-table tbody tr")).length, 1, "forecast row");
    assert((await page.$$("#advice-table tbody tr.recommend")).length >= 1, "at least one user should subscribe");
    await shot(page, "spending", "Spending: range figures, forecast, subscription advice");
    await a11y(page, "Spending (admin)");
  });

  await step("people: the admin restricts a user's products and the API enforces it", async () => {
    await go(page, "people");
    const row = `#people-table tr[data-user-email="${E.restrictEmail}"]`;
    await page.click(`${row} button:has-text("Products")`);
    await page.waitForSelector("#products-dialog[open]");
    await page.check("#products-dialog input[name=mode][value=list]");
    for (const box of await page.$$("#products-dialog input[name=product]")) {
      if ((await box.getAttribute("value")) === E.allowedProductId) await box.check();
      else await box.uncheck();
    }
    await shot(page, "people-restrict", "People: restricting a user's products (dialog)");
    await a11y(page, "People: the restrict-products dialog");
    await page.click("#products-save");
    await page.waitForSelector("#products-dialog:not([open])", { state: "attached" });
    await waitFor("the row to show the restriction", async () => (await text(page, `${row} td[data-col=products]`)) === `Only: ${E.allowedProductName}`);
    const denied = (await gql(seed.restrictKey, 'mutation { openProduct(input: {productCode: "cad"}) { granted denyReason } }')).openProduct;
    eq(denied, { granted: false, denyReason: "PRODUCT_RESTRICTED" }, "opening another product");
    const users = (await gql(seed.adminKey, "{ account { users { edges { node { email allowedProducts { id } } } } } }")).account.users.edges;
    eq(users.find((e) => e.node.email === E.restrictEmail).node.allowedProducts, [{ id: E.allowedProductId }], "allowedProducts over the API");
  });

  await step("people: adding a user shows the new key once, and it works", async () => {
    await page.fill("#cu-name", "Eve Example");
    await page.fill("#cu-email", "eve@acme.test");
    await page.selectOption("#cu-role", "MEMBER");
    await page.click("#create-user-form button[type=submit]");
    await waitFor("the new key", () => visible(page, "#new-key"));
    const key = await text(page, "#new-key-value");
    eq((await gql(key, "{ viewer { role user { email } } }")).viewer, { role: "MEMBER", user: { email: "eve@acme.test" } }, "the new key");
    await page.waitForSelector('#people-table tr[data-user-email="eve@acme.test"]');
    await page.check('#people-table tr[data-user-email="eve@acme.test"] input[type=checkbox]');
    await waitFor("pay-as-you-go for Eve", async () => {
      const us = (await gql(seed.adminKey, "{ account { users { edges { node { email flexAssigned } } } } }")).account.users.edges;
      return us.find((e) => e.node.email === "eve@acme.test").node.flexAssigned;
    });
    await shot(page, "people", "People (admin): restriction saved, new user with the key shown once");
    await a11y(page, "People (admin) with a new user's key");
    await go(page, "balance");
    eq(await page.isVisible("#new-key"), false, "the key is gone once the admin moves on");
  });

  await step("notifications: what was sent to whom, and what failed", async () => {
    await go(page, "notifications");
    const rows = await page.$$eval("#notifications-table tbody tr", (rs) => rs.map((r) => ({
      text: r.textContent, failed: r.classList.contains("failed"), error: r.cells[5].textContent })));
    eq(rows.length, 3, "notifications listed");
    const low = rows.filter((r) => /Balance fell below the threshold/.test(r.text));
    eq(low.length, 2, "two low-balance e-mails");
    assert(low.every((r) => r.text.includes(E.adminEmail) && /Sent \d{4}-/.test(r.text) && !r.failed), "sent to the admin");
    const reminder = rows.find((r) => /A lot expires in 90 days/.test(r.text));
    assert(reminder && reminder.failed && /Failed/.test(reminder.text) && reminder.error.length > 0,
      `the reminder failed, with its error: ${JSON.stringify(reminder)}`);
    await shot(page, "notifications", "Notifications: two e-mails sent to the admin, the expiry reminder failing");
    await a11y(page, "Notifications");
  });

  await step("keyboard only: to Buy tokens through the navigation, a quantity, the Buy button", async () => {
    // The page heading has the focus (the router put it there); the navigation is
    // just before the page.
    await focusIs(page, "the Notifications heading", (f) => f.id === "notifications-title");
    const link = await tabTo(page, "the navigation", (f) => f.page != null, { back: true, max: 5 });
    eq(link.page, "alerts", "the navigation's last link comes first going back");
    await tabTo(page, "the Buy tokens link", (f) => f.page === "buy", { back: true, max: 3 });
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => !document.querySelector("#page-buy").hidden
      && !document.querySelector("#page-buy").hasAttribute("aria-busy"));
    await focusIs(page, "the Buy tokens heading", (f) => f.id === "buy-title");
    await tabTo(page, "the quantity", (f) => f.id === "buy-quantity", { max: 3 });
    await page.keyboard.press("Control+A");
    const before = (await gql(seed.adminKey, "{ account { balance } }")).account.balance;
    // Enter right after typing, while the quote is slow to come: nothing is bought
    // at a price not yet shown (the previous quote's no longer holds); the console
    // shows the new price and moves to the Buy button.
    const slowQuote = async (route) => {
      if ((route.request().postData() || "").includes("priceQuote")) {
        await new Promise((resolve) => setTimeout(resolve, 1500));
      }
      await route.continue();
    };
    await page.route("**/graphql", slowQuote);
    await page.keyboard.type(String(E.keyboardQuantity));
    await page.keyboard.press("Enter");
    await waitFor("the quote", async () => (await text(page, "#buy-quote")).startsWith(`${E.keyboardQuantity} tokens × `)
      && !(await page.isDisabled("#buy-submit")));
    await page.unroute("**/graphql", slowQuote);
    await focusIs(page, "the Buy button", (f) => f.id === "buy-submit");
    eq((await gql(seed.adminKey, "{ account { balance } }")).account.balance, before, "Enter before the quote bought nothing");
    assert(!(await visible(page, "#buy-result")), "no receipt");
    await shot(page, "keyboard-buy", "Buy tokens with the keyboard: the focused Buy button, quantity typed");
    await page.keyboard.press("Space");
    await waitFor("the receipt", () => visible(page, "#buy-result"));
    assert((await text(page, "#buy-result")).startsWith(`Bought ${E.keyboardQuantity} tokens`), "receipt");
    eq((await gql(seed.adminKey, "{ account { balance } }")).account.balance, before + E.keyboardQuantity, "balance over the API");
    balance += E.keyboardQuantity;
    // The pressed button is disabled now; the receipt holds the focus instead.
    await focusIs(page, "the receipt", (f) => f.id === "buy-result");
    // The skip link goes to the current page's heading, not to another page.
    await tabTo(page, "the skip link", (f) => f.cls === "skip-link", { back: true, max: 15 });
    await page.keyboard.press("Enter");
    await focusIs(page, "the Buy tokens heading", (f) => f.id === "buy-title");
    eq(new URL(page.url()).hash, "#buy", "still on Buy tokens");
    assert(await visible(page, "#page-buy"), "Buy tokens shown");
  });

  await step("keyboard only: the products dialog opens, works, and closes with Escape", async () => {
    await tabTo(page, "the People link", (f) => f.page === "people", { back: true, max: 6 });
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => !document.querySelector("#page-people").hidden
      && !document.querySelector("#page-people").hasAttribute("aria-busy"));
    await focusIs(page, "the People heading", (f) => f.id === "people-title");
    const opener = (f) => f.row === E.keyboardEmail && f.cls.includes("edit-products");
    await tabTo(page, `the Products button of ${E.keyboardEmail}`, opener, { max: 40 });
    const allowed = async () => (await gql(seed.adminKey, "{ account { users { edges { node { id email allowedProducts { id } } } } } }"))
      .account.users.edges.map((e) => e.node).find((u) => u.email === E.keyboardEmail);
    eq((await allowed()).allowedProducts, null, "no restriction at first");

    // Open, choose "only these products" with an arrow key, tick the first one with
    // Space, then Escape: nothing is saved and the focus is back on the button.
    const operate = async () => {
      await page.keyboard.press("Enter");
      await page.waitForSelector("#products-dialog[open]");
      await focusIs(page, "the chosen option in the dialog", (f) => f.inDialog && f.type === "radio" && f.value === "inherit");
      await page.keyboard.press("ArrowDown");
      eq(await page.isChecked("#products-dialog input[name=mode][value=list]"), true, "arrow key chose a list");
      const box = await tabTo(page, "the first product", (f) => f.inDialog && f.type === "checkbox", { max: 2 });
      await page.keyboard.press("Space");
      eq(await page.isChecked(`#products-dialog input[name=product][value="${box.value}"]`), true, "Space ticked the box");
      return box.value;
    };
    await operate();
    await shot(page, "keyboard-dialog", "People: the products dialog used with the keyboard");
    await page.keyboard.press("Escape");
    await page.waitForSelector("#products-dialog:not([open])", { state: "attached" });
    await focusIs(page, "the button that opened the dialog", opener);
    eq((await allowed()).allowedProducts, null, "Escape saved nothing");

    // Again, and save with Enter on Save: the focus comes back to the (redrawn) button.
    const product = await operate();
    await tabTo(page, "Save", (f) => f.id === "products-save", { max: 8 });
    await page.keyboard.press("Enter");
    await page.waitForSelector("#products-dialog:not([open])", { state: "attached" });
    const user = await waitFor("the saved restriction", async () => {
      const u = await allowed();
      return u.allowedProducts?.length === 1 && u.allowedProducts[0].id === product && u;
    });
    await focusIs(page, "the button that opened the dialog, after the save", opener);
    // Undone, so the user is as seeded for the rest of the story.
    await gql(seed.adminKey, "mutation($u: ID) { setAllowedProducts(userId: $u, productIds: null) }", { u: user.id });
  });

  await step("an error from the API is shown in words", async () => {
    await go(page, "usage");
    await page.selectOption("#usage-preset", "custom");
    // The last day before the first: Daypass refuses the range and says why.
    await page.fill("#usage-from", seed.now.slice(0, 10));
    await page.fill("#usage-to", "2000-01-01");
    await page.click("#usage-range button[type=submit]");
    await waitFor("the alert", () => visible(page, "#alert"));
    const alert = await text(page, "#alert");
    assert(/^Daypass did not accept this: .*from must not be after to/.test(alert), `alert: ${alert}`);
    assert(/Dismiss$/.test(alert), "the alert can be dismissed");
    await a11y(page, "Usage with an error shown");
    await page.click("#alert button");
    // All time is a range like any other: the days with usage, no error.
    await page.fill("#usage-from", "2000-01-01");
    await page.fill("#usage-to", seed.now.slice(0, 10));
    await page.click("#usage-range button[type=submit]");
    await waitFor("the all-time day chart", async () => (await text(page, "#usage-shown")).startsWith("2000-01-01 to "));
    await waitFor("the all-time day chart's data", () => chartData(page, "chart-days"));
    assert(!(await visible(page, "#alert")), "no error for an all-time range");
    // Charted from the first day with usage, not from 2000-01-01.
    const allTime = await chartData(page, "chart-days");
    assert(allTime.labels.length < 400, `all time charted over ${allTime.labels.length} days`);
    await page.selectOption("#usage-preset", "last365");
  });

  await step("on a phone: balance and usage fit the width", async () => {
    const phone = await newPage(browser, PHONE, "phone");
    await signIn(phone, seed.adminKey);
    await waitFor("the balance", async () => num(await text(phone, "#balance-available")) === balance);
    const overflow = () => phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    eq(await overflow(), 0, "no sideways scrolling on the balance page");
    await waitFor("the open sessions", async () => (await openSessions(phone)).length === E.sessions.open.length - 1);
    // A table wider than the phone scrolls in its own box, which the keyboard reaches.
    await waitFor("the sessions table to fit, or to scroll in a box the keyboard reaches", () => phone.$eval("#sessions-open-table", (t) => {
      const w = t.closest(".table-wrap");
      return w.scrollWidth <= w.clientWidth + 1 || (w.tabIndex === 0 && w.getAttribute("aria-label") === "Sessions open now (scrolls sideways)");
    }), 5_000);
    await shot(phone, "phone-balance", "Balance at phone width (390×844), the sessions included");
    await a11y(phone, "Balance at phone width");
    await go(phone, "usage");
    await waitFor("the day chart", () => chartData(phone, "chart-days"));
    eq(await overflow(), 0, "no sideways scrolling on the usage page");
    await shot(phone, "phone-usage", "Usage at phone width (390×844)");
    await a11y(phone, "Usage at phone width");
    await phone.context().close();
    pages.splice(pages.indexOf(phone), 1);
  });

  await adminAlerts(t);

  await step("sign out forgets the key", async () => {
    await page.click("#sign-out");
    await page.waitForSelector("#signin-key");
    eq(await page.evaluate(() => sessionStorage.getItem("daypass.apiKey")), null, "key removed");
    eq(await page.isVisible("#nav"), false, "navigation hidden");
  });

  await step("an analyst reads everything but finds no purchase and no edit controls", async () => {
    await signIn(page, seed.analystKey);
    eq(await text(page, "#who-role"), "Analyst", "role badge");
    eq(await page.isVisible("#nav a[data-page=buy]"), false, "no Buy tokens in the navigation");
    await waitFor("the balance", async () => num(await text(page, "#balance-available")) > 0);
    eq(await page.isVisible("#threshold-form"), false, "no threshold form");
    await waitFor("the open sessions", async () => (await openSessions(page)).length === E.sessions.open.length - 1);
    eq((await openSessions(page)).filter((o) => o.close).length, 0, "no Close button for an analyst");
    eq(await page.isVisible("#sessions-open-table th.manage-only"), false, "no actions column");
    assert((await endedSessions(page)).length > 0, "the analyst reads the ended sessions");
    await a11y(page, "Balance (analyst) with the sessions");
    await go(page, "people");
    eq((await page.$$("#people-table tbody tr")).length, E.users + 1, "every user listed");
    eq(await page.$$eval("#people-table tbody button, #people-table tbody input", (n) => n.length), 0, "no edit controls in the table");
    eq(await page.isVisible("#create-user-form"), false, "no add-user form");
    eq(await page.isVisible("#account-products-edit"), false, "no account-wide products button");
    await shot(page, "analyst-people", "People as an analyst: read-only");
    await a11y(page, "People (analyst)");
    await page.goto(`${seed.url}/#buy`);
    await page.waitForSelector("#page-denied:not([hidden])");
    assert(/does not include buying tokens/.test(await text(page, "#denied-text")), "says why");
    eq(await page.$$eval("#buy-submit", (b) => b.filter((x) => x.offsetParent !== null).length), 0, "no visible Buy button");
    await shot(page, "analyst-buy", "Buy tokens as an analyst: not available");
    await a11y(page, "Buy tokens (analyst): not available");
    await go(page, "spending");
    assert(num(await text(page, "#sp-tokens")) > 0, "the analyst reads spending");
    await a11y(page, "Spending (analyst)");
  });
  await analystAlerts(t);

  await step("a member sees the balance and their own usage only", async () => {
    await page.click("#sign-out");
    await signIn(page, seed.memberKey);
    const links = await page.$$eval("#nav li:not([hidden]) a", (a) => a.map((x) => x.dataset.page));
    eq(links, ["balance", "usage"], "pages for a member");
    await waitFor("the balance", async () => num(await text(page, "#balance-available")) > 0);
    eq(await page.isVisible("#lots-card"), false, "no lots");
    const open = await waitFor("their open session", async () => { const o = await openSessions(page); return o.length && o; });
    eq(open.map(({ email, device, close }) => ({ email, device, close })), [{ email: E.memberEmail, device: "cleo-laptop", close: null }], "their own open session, no Close button");
    const ended = await endedSessions(page);
    assert(ended.length > 0 && ended.every((r) => r.email === E.memberEmail), "their own ended sessions only");
    assert(await page.isVisible("#sessions-own-note"), "says they see their own");
    await shot(page, "member-balance", "Balance as a member: no lots, their own sessions");
    await a11y(page, "Balance (member)");
    await go(page, "usage");
    const table = await usageTable(page);
    eq(Object.keys(table), [E.memberEmail], "only their own row");
    await shot(page, "member-usage", "Usage as a member: their own");
    await a11y(page, "Usage (member)");
  });
  await memberAlerts(t);

  await step("the operator picks an account and sees its balance", async () => {
    await page.click("#sign-out");
    await signIn(page, seed.operatorKey);
    eq(await text(page, "#who-role"), "Operator", "role badge");
    await page.selectOption("#account-select", E.accountId);
    await go(page, "balance");
    await waitFor("the account's balance", async () => num(await text(page, "#balance-available")) > 0);
    eq(await page.$eval("#account-select", (s) => s.selectedOptions[0].textContent), `${E.accountName} (#${E.accountId})`, "account chosen");
    await waitFor("the account's open sessions", async () => (await openSessions(page)).length === E.sessions.open.length - 1);
    assert((await openSessions(page)).every((o) => o.close), "the operator may close them");
    eq(await page.isVisible("#sessions-own-note"), false, "not the member's note");
    await shot(page, "operator-balance", "Balance as the operator, with the account picker");
    await a11y(page, "Balance (operator) with the account picker");
  });

  await step("the operator changes the account-wide product list on People, and the API has it", async () => {
    const listed = async () => {
      const a = (await gql(seed.operatorKey, "query($id: ID) { account(id: $id) { allowedProducts { code } } }", { id: E.accountId })).account;
      return a.allowedProducts && a.allowedProducts.map((p) => p.code).sort();
    };
    eq(await listed(), null, "no account-wide list at first");
    await go(page, "people");
    eq(await text(page, "#account-products"), "Every catalog product.", "the page says so");
    eq((await page.$$("#people-table tbody tr")).length, E.users + 1, "the chosen account's users");
    await a11y(page, "People (operator)");
    const { products } = await gql(seed.operatorKey, "{ products { id code name } }");
    const want = ["cad", "viz"];
    const edit = async (list) => {
      await page.click("#account-products-edit");
      await page.waitForSelector("#products-dialog[open]");
      eq(await text(page, "#products-dialog-title"), "Products for the whole account", "dialog title");
      if (!list) return page.check("#products-dialog input[name=mode][value=inherit]");
      await page.check("#products-dialog input[name=mode][value=list]");
      for (const p of products) {
        const box = `#products-dialog input[name=product][value="${p.id}"]`;
        if (list.includes(p.code)) await page.check(box); else await page.uncheck(box);
      }
      return undefined;
    };
    await edit(want);
    await shot(page, "operator-account-products", "People as the operator: the account-wide products dialog");
    await a11y(page, "People (operator): the account-wide products dialog");
    await page.click("#products-save");
    await page.waitForSelector("#products-dialog:not([open])", { state: "attached" });
    const names = products.filter((p) => want.includes(p.code)).map((p) => p.name).join(", ");
    await waitFor("the account-wide list on the page", async () => (await text(page, "#account-products")) === `Only: ${names}.`);
    eq(await listed(), want, "the account's allowedProducts over the API (operator key)");
    // Back to every product, through the same dialog.
    await edit(null);
    await page.click("#products-save");
    await page.waitForSelector("#products-dialog:not([open])", { state: "attached" });
    await waitFor("every product again on the page", async () => (await text(page, "#account-products")) === "Every catalog product.");
    eq(await listed(), null, "the account-wide list removed over the API");
  });
  await operatorAlerts(t);

  await step("no script error, CSP violation or failed load in the browser console", async () => {
    eq(consoleErrors, [], "browser console errors");
  });
} catch (e) {
  exitCode = 1;
  if (consoleErrors.length) console.log(`browser console errors:\n  ${consoleErrors.join("\n  ")}`);
} finally {
  await browser.close();
}

console.log(`axe-core ${AXE_VERSION} (WCAG 2.0/2.1 A and AA) found no violation on ${axeChecked.length} views: ${axeChecked.join("; ")}`);
console.log(`screenshots in ${SHOTS}:`);
for (const s of shots) console.log(`  ${s}`);
console.log(exitCode === 0 ? `console: all ${passed} steps passed` : `console: failed after ${passed} steps`);
process.exit(exitCode);
