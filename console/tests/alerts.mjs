// The Alerts & webhooks page in the browser, for run.mjs: the admin's alert rules,
// a webhook endpoint whose URL is a real receiver on loopback (started by
// tests/tests/processes/console.rs; `seed.webhookLog` lists what it received), its
// secret shown once, a test event delivered and checked against that secret, a
// rotation and a replay; then what an analyst, a member and the operator find there.
// Each function takes `t`, run.mjs's helpers and the page signed in as the role it is
// about.

import { createHmac } from "node:crypto";

const ENDPOINT_FIELDS = "id url events enabled disabledReason";

/** `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` under a `whsec_` secret. */
function sign(secret, id, timestamp, body) {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  return `v1,${createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64")}`;
}

/** What the receiver got: the POSTs to the endpoint's path whose body is a TEST event. */
async function receivedTests(t) {
  const resp = await fetch(t.seed.webhookLog);
  const all = await resp.json();
  const path = new URL(t.seed.webhookUrl).pathname;
  return all.filter((r) => r.method === "POST" && r.path === path)
    .map((r) => ({ ...r, event: JSON.parse(r.body) }))
    .filter((r) => r.event.type === "TEST");
}

/** The rules table: threshold, recipients and state by row. */
const rulesShown = (page) => page.$$eval("#rules-table tbody tr[data-rule-id]", (rows) => rows.map((r) => ({
  threshold: r.querySelector("[data-col=threshold]").textContent,
  recipients: r.querySelector("[data-col=recipients]").textContent,
  armed: r.querySelector("[data-col=armed]").textContent,
})));

/** The delivery log's rows, newest first. */
const deliveriesShown = (page) => page.$$eval("#deliveries-table tbody tr[data-delivery-id]", (rows) => rows.map((r) => ({
  id: r.dataset.deliveryId,
  event: r.dataset.event,
  state: r.dataset.state,
  shown: r.querySelector("[data-col=state] .status").textContent,
})));

/** Reads the log with its Refresh button until `test(rows)` holds. */
async function refreshUntil(t, what, test) {
  const { page } = t;
  return t.waitFor(what, async () => {
    await page.click("#deliveries-refresh");
    await page.waitForFunction(() => !document.querySelector("#deliveries-card").hasAttribute("aria-busy"));
    const rows = await deliveriesShown(page);
    return test(rows) && rows;
  }, 30_000);
}

async function apiRules(t) {
  return (await t.gql(t.seed.adminKey, "{ account { alertRules { threshold unit includeAdmins extraRecipients } } }")).account.alertRules;
}
async function apiEndpoints(t) {
  return (await t.gql(t.seed.adminKey, `{ account { webhookEndpoints { ${ENDPOINT_FIELDS} } } }`)).account.webhookEndpoints;
}

/** Whether the served schema has report subscriptions yet (they come from another branch). */
async function hasReports(t) {
  try {
    await t.gql(t.seed.adminKey, "{ account { reportSubscriptions { id } } }");
    return true;
  } catch (e) {
    if (/Unknown field \\?"reportSubscriptions\\?"/.test(e.message)) return false;
    throw e;
  }
}

/** Answers the next confirm() with `accept`, and returns its question once asked. */
function confirmNext(page, accept) {
  let asked = null;
  page.once("dialog", (d) => { asked = d.message(); return accept ? d.accept() : d.dismiss(); });
  return () => asked;
}

export async function adminAlerts(t) {
  const { page, step, eq, assert, waitFor, text, visible, seed, E } = t;
  const row = `#endpoints-table tr[data-endpoint-id]`;
  let secret = null;
  let endpointId = null;

  await step("alerts: the admin adds alert rules in tokens and in percent; a refusal shows beside the form, the input kept", async () => {
    await t.go(page, "alerts");
    await t.focusIs(page, "the Alerts & webhooks heading", (f) => f.id === "alerts-title");
    eq(await rulesShown(page), [], "no rules at first");
    eq(await visible(page, "#alerts-read-note"), false, "no read-only note for the admin");
    await page.fill("#rule-threshold", "150");
    await page.click("#rule-submit");
    await waitFor("the first rule", async () => (await rulesShown(page)).length === 1);
    await page.fill("#rule-threshold", "15");
    await page.selectOption("#rule-unit", "PERCENT");
    await page.uncheck("#rule-admins");
    await page.fill("#rule-extra", "ops@acme.test,\ncfo@acme.test");
    await page.click("#rule-submit");
    await waitFor("the second rule", async () => (await rulesShown(page)).length === 2);
    eq(await rulesShown(page), [
      { threshold: "150 tokens", recipients: "Admins", armed: "Armed" },
      { threshold: "15 % of tokens bought", recipients: "ops@acme.test, cfo@acme.test", armed: "Armed" },
    ], "the rules listed");
    eq(await page.inputValue("#rule-threshold"), "", "the form is empty again after a rule is added");
    eq(await page.isChecked("#rule-admins"), true, "admins included again by default");
    eq(await apiRules(t), [
      { threshold: 150, unit: "TOKENS", includeAdmins: true, extraRecipients: [] },
      { threshold: 15, unit: "PERCENT", includeAdmins: false, extraRecipients: ["ops@acme.test", "cfo@acme.test"] },
    ], "alertRules over the API");

    // Daypass refuses 150 %: the reason beside the form, what was typed still there.
    await page.fill("#rule-threshold", "150");
    await page.selectOption("#rule-unit", "PERCENT");
    await page.fill("#rule-extra", "ops@acme.test");
    await page.click("#rule-submit");
    await waitFor("the refusal beside the form", () => visible(page, "#rule-error"));
    const refusal = await text(page, "#rule-error");
    assert(/^Daypass did not accept this: .*between 1 and 100/.test(refusal), `the refusal: ${refusal}`);
    eq([await page.inputValue("#rule-threshold"), await page.inputValue("#rule-unit"), await page.inputValue("#rule-extra")],
      ["150", "PERCENT", "ops@acme.test"], "the input kept");
    eq(await visible(page, "#alert"), false, "not in the page's alert");
    eq((await apiRules(t)).length, 2, "nothing added");
    await t.shot(page, "alerts-rules", "Alerts & webhooks: two rules, a refused third beside its form");
    await t.a11y(page, "Alerts & webhooks (admin) with a refusal beside the rule form");

    // Delete asks first: Cancel keeps the rule, OK deletes it.
    const del = '#rules-table tr[data-rule-id]:first-child button[data-action=delete]';
    eq(await page.getAttribute(del, "aria-label"), "Delete the alert rule at 150 tokens", "the Delete button's name");
    let asked = confirmNext(page, false);
    await page.click(del);
    await waitFor("the question", () => asked());
    assert(asked().startsWith("Delete the alert rule at 150 tokens"), `the question: ${asked()}`);
    eq((await apiRules(t)).length, 2, "Cancel deleted nothing");
    asked = confirmNext(page, true);
    await page.click(del);
    await waitFor("the rule gone", async () => (await rulesShown(page)).length === 1);
    eq((await apiRules(t)).map((r) => r.threshold), [15], "the 150-token rule deleted over the API");
    await t.focusIs(page, "the remaining rule's Delete button", (f) => f.label === "Delete the alert rule at 15 % of tokens bought");
    await page.fill("#rule-threshold", "");
    await page.fill("#rule-extra", "");
    await page.selectOption("#rule-unit", "TOKENS");
  });

  await step("webhooks: the admin adds an endpoint on a real receiver; its secret is shown once", async () => {
    // A refusal first: the URL stays for the person to correct.
    await page.fill("#endpoint-url", "ftp://example.com/hooks");
    await page.click("#endpoint-submit");
    await waitFor("the refusal beside the form", () => visible(page, "#endpoint-error"));
    assert(/http or https/.test(await text(page, "#endpoint-error")), "says why");
    eq(await page.inputValue("#endpoint-url"), "ftp://example.com/hooks", "the URL kept");

    await page.fill("#endpoint-url", seed.webhookUrl);
    eq(await page.$$eval("#endpoint-events input:checked", (b) => b.map((x) => x.value)), ["BALANCE_LOW", "TOKENS_EXHAUSTED"], "the events chosen by default");
    await page.check("#endpoint-events input[value=PURCHASE_COMPLETED]");
    await page.click("#endpoint-submit");
    await waitFor("the secret", () => visible(page, "#webhook-secret"));
    eq(await visible(page, "#endpoint-error"), false, "no refusal left");
    secret = await text(page, "#webhook-secret-value");
    assert(/^whsec_[A-Za-z0-9+/]{43}=$/.test(secret), `the secret: ${secret}`);
    assert(/shown this once/.test(await text(page, "#webhook-secret-text")), "says it is shown once");
    await t.focusIs(page, "the Copy button", (f) => f.id === "webhook-secret-copy");
    const shown = await page.$$eval(row, (rows) => rows.map((r) => ({
      url: r.querySelector("[data-col=url]").textContent, events: r.querySelector("[data-col=events]").textContent, status: r.querySelector("[data-col=status]").textContent })));
    eq(shown, [{ url: seed.webhookUrl, events: "Balance low, Tokens exhausted, Purchase completed", status: "Enabled" }], "the endpoint listed");
    const [ep] = await apiEndpoints(t);
    endpointId = ep.id;
    eq(ep, { id: ep.id, url: seed.webhookUrl, events: ["BALANCE_LOW", "TOKENS_EXHAUSTED", "PURCHASE_COMPLETED"], enabled: true, disabledReason: null }, "the endpoint over the API");
    await t.shot(page, "alerts-secret", "Alerts & webhooks: a new endpoint, its secret shown once");
    await t.a11y(page, "Alerts & webhooks (admin) with a new endpoint's secret");

    // Once: back on the page, the secret is nowhere.
    await t.go(page, "balance");
    await t.go(page, "alerts");
    eq(await visible(page, "#webhook-secret"), false, "the secret box is gone");
    assert(!(await page.content()).includes(secret), "the secret is nowhere in the page");
  });

  await step("webhooks: Send test event reaches the receiver, signed with that secret; the log shows it DELIVERED with an HTTP 200 attempt", async () => {
    await page.click(`${row} button[data-action=test]`);
    await waitFor("the test delivery in the log", async () => (await deliveriesShown(page)).some((d) => d.event === "TEST"));
    // The embedded workers deliver within a second; running the due jobs makes sure.
    await t.gql(seed.operatorKey, "mutation { runMaintenance }");
    const rows = await refreshUntil(t, "the test event DELIVERED", (rs) => rs.length === 1 && rs[0].state === "DELIVERED");
    eq(rows.map(({ event, state, shown: s }) => ({ event, state, shown: s })), [{ event: "TEST", state: "DELIVERED", shown: "Delivered" }], "the delivery log");
    const details = `#deliveries-table tr[data-delivery-id="${rows[0].id}"] button[data-action=details]`;
    eq(await page.getAttribute(details, "aria-expanded"), "false", "details closed at first");
    await page.click(details);
    eq(await page.getAttribute(details, "aria-expanded"), "true", "details open");
    const detail = `#deliveries-table tr[data-detail-of="${rows[0].id}"]`;
    assert(await visible(page, detail), "the attempts and payload are shown");
    const attempts = await page.$$eval(`${detail} table.attempts tbody tr`, (rs) => rs.map((r) => r.querySelector("[data-col=status]").textContent));
    eq(attempts, ["200"], "one attempt, HTTP 200");
    const payload = JSON.parse(await text(page, `${detail} pre.payload`));
    eq({ type: payload.type, accountId: payload.accountId, endpointId: payload.data?.endpointId }, { type: "TEST", accountId: E.accountId, endpointId }, "the payload shown");

    const [got] = await receivedTests(t);
    assert(got, "the receiver got the test event");
    const h = got.headers;
    eq(h["webhook-id"], payload.id, "webhook-id is the event's id");
    assert(/^\d+$/.test(h["webhook-timestamp"]), `webhook-timestamp: ${h["webhook-timestamp"]}`);
    eq(h["webhook-signature"], sign(secret, h["webhook-id"], h["webhook-timestamp"], got.body), "signed with the secret the page showed");
    eq(JSON.parse(got.body), payload, "the body POSTed is the payload shown");
    await t.shot(page, "alerts-delivered", "Alerts & webhooks: the test event delivered, its attempt and payload open");
    await t.a11y(page, "Alerts & webhooks (admin) with a delivery's details open");
  });

  await step("webhooks: the admin edits the events, disables and enables, rotates the secret and replays with the same webhook-id", async () => {
    // The events dialog, saved.
    await page.click(`${row} button[data-action=events]`);
    await page.waitForSelector("#events-dialog[open]");
    await t.a11y(page, "Alerts & webhooks: the events dialog");
    await page.uncheck("#events-choices input[value=TOKENS_EXHAUSTED]");
    await page.click("#events-save");
    await page.waitForSelector("#events-dialog:not([open])", { state: "attached" });
    await waitFor("the events shown", async () => (await text(page, `${row} [data-col=events]`)) === "Balance low, Purchase completed");
    await t.focusIs(page, "the Events button again", (f) => f.label === `Edit the events of ${seed.webhookUrl}`);
    eq((await apiEndpoints(t))[0].events, ["BALANCE_LOW", "PURCHASE_COMPLETED"], "the events over the API");

    // Disabled, nothing is sent (Daypass says why); enabled again.
    await page.click(`${row} button[data-action=toggle]`);
    await waitFor("Disabled", async () => (await text(page, `${row} [data-col=status] .status`)) === "Disabled");
    eq(await text(page, `${row} [data-col=status] .sub`), "disabled by an admin", "says why");
    eq((await apiEndpoints(t))[0].enabled, false, "disabled over the API");
    await t.focusIs(page, "the toggle, now Enable", (f) => f.label === `Enable ${seed.webhookUrl}`);
    await page.click(`${row} button[data-action=test]`);
    await waitFor("the refusal", () => visible(page, "#alert"));
    assert(/disabled/.test(await text(page, "#alert")), "a disabled endpoint gets no test event");
    await page.click("#alert button");
    await page.click(`${row} button[data-action=toggle]`);
    await waitFor("Enabled", async () => (await text(page, `${row} [data-col=status]`)) === "Enabled");
    eq((await apiEndpoints(t))[0].enabled, true, "enabled over the API");

    // A rotation: the new secret once, the old one still signing for a day.
    const asked = confirmNext(page, true);
    await page.click(`${row} button[data-action=rotate]`);
    await waitFor("the new secret", async () => visible(page, "#webhook-secret") && (await text(page, "#webhook-secret-value")) !== "");
    assert(/24 hours/.test(asked()), `the question: ${asked()}`);
    const rotated = await text(page, "#webhook-secret-value");
    assert(/^whsec_/.test(rotated) && rotated !== secret, "a new secret");
    assert(/new signing secret.*shown this once.*old secret keeps signing beside it for 24 hours/.test(await text(page, "#webhook-secret-text")), "says the old one signs for 24 hours");

    // Replayed: a new delivery of the same event, with the same webhook-id, signed by both.
    const [first] = await deliveriesShown(page);
    await page.click(`#deliveries-table tr[data-delivery-id="${first.id}"] button[data-action=replay]`);
    await waitFor("the replay in the log", async () => (await deliveriesShown(page)).length === 2);
    await t.gql(seed.operatorKey, "mutation { runMaintenance }");
    const rows = await refreshUntil(t, "both DELIVERED", (rs) => rs.length === 2 && rs.every((d) => d.state === "DELIVERED"));
    eq(rows.map((d) => d.event), ["TEST", "TEST"], "the same event twice");
    const got = await waitFor("the replay at the receiver", async () => { const g = await receivedTests(t); return g.length === 2 && g; });
    eq(got[1].headers["webhook-id"], got[0].headers["webhook-id"], "the same webhook-id");
    const h = got[1].headers;
    const expected = [sign(rotated, h["webhook-id"], h["webhook-timestamp"], got[1].body), sign(secret, h["webhook-id"], h["webhook-timestamp"], got[1].body)];
    eq(h["webhook-signature"].split(" ").sort(), expected.sort(), "signed with the new secret and the old one");
    await t.shot(page, "alerts-rotated", "Alerts & webhooks: a rotated secret, the test event replayed");
    await t.a11y(page, "Alerts & webhooks (admin) after a rotation and a replay");
  });

  await step("webhooks: deleting an endpoint asks first", async () => {
    const spare = `${seed.webhookUrl}-spare`;
    await page.fill("#endpoint-url", spare);
    await page.click("#endpoint-submit");
    await waitFor("the spare endpoint", async () => (await page.$$(row)).length === 2);
    const del = `${row}:nth-child(2) button[data-action=delete]`;
    eq(await page.getAttribute(del, "aria-label"), `Delete ${spare}`, "the Delete button's name");
    let asked = confirmNext(page, false);
    await page.click(del);
    await waitFor("the question", () => asked());
    eq((await apiEndpoints(t)).length, 2, "Cancel deleted nothing");
    asked = confirmNext(page, true);
    await page.click(del);
    await waitFor("the spare endpoint gone", async () => (await page.$$(row)).length === 1);
    eq((await apiEndpoints(t)).map((e) => e.url), [seed.webhookUrl], "deleted over the API");
    eq(await visible(page, "#webhook-secret"), false, "the deleted endpoint's secret is gone too");
  });

  await step("on a phone: Alerts & webhooks fits the width", async () => {
    const phone = await t.phone(seed.adminKey);
    await t.go(phone.page, "alerts");
    await waitFor("the delivery log", async () => (await deliveriesShown(phone.page)).length === 2);
    await phone.page.click("#deliveries-table tr[data-delivery-id] button[data-action=details]");
    eq(await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth), 0, "no sideways scrolling");
    // A table wider than the phone scrolls in its own box, which the keyboard reaches.
    for (const [id, name] of [["rules-table", "Alert rules"], ["endpoints-table", "Webhook endpoints"], ["deliveries-table", "Webhook deliveries, newest first"]]) {
      await waitFor(`#${id} to fit, or to scroll in a box the keyboard reaches`, () => phone.page.$eval(`#${id}`, (table, n) => {
        const w = table.closest(".table-wrap");
        return w.scrollWidth <= w.clientWidth + 1 || (w.tabIndex === 0 && w.getAttribute("aria-label") === `${n} (scrolls sideways)`);
      }, name), 5_000);
    }
    await t.shot(phone.page, "phone-alerts", "Alerts & webhooks at phone width (390×844), a delivery's details open");
    await t.a11y(phone.page, "Alerts & webhooks at phone width");
    await phone.done();
  });

  await step("scheduled reports: shown when Daypass has them, hidden otherwise", async () => {
    if (!(await hasReports(t))) {
      eq(await visible(page, "#reports-card"), false, "no report section on a server without report subscriptions");
      return;
    }
    await reportSubscribe(t, seed.adminKey, E.adminEmail);
  });
}

/**
 * `key`'s holder subscribes to the weekly report, to their own address (`email`, the
 * default recipient), then unsubscribes; the API agrees at each step.
 */
export async function reportSubscribe(t, key, email) {
  const { page, eq, waitFor, visible } = t;
  const ids = () => page.$$eval("#reports-table tr[data-report-id]", (rows) => rows.map((r) => r.dataset.reportId));
  const apiSubs = async () => (await t.gql(key, "{ account { reportSubscriptions { id schedule recipients } } }")).account.reportSubscriptions;
  await waitFor("the report section", () => visible(page, "#reports-card"));
  eq(await page.inputValue("#report-recipients"), email, "recipients default to the caller");
  const before = await ids();
  await page.selectOption("#report-schedule", "WEEKLY");
  await page.click("#report-submit");
  const after = await waitFor("the subscription", async () => { const a = await ids(); return a.length === before.length + 1 && a; });
  const id = after.find((x) => !before.includes(x));
  const row = `#reports-table tr[data-report-id="${id}"]`;
  eq([await page.getAttribute(row, "data-schedule"), await t.text(page, `${row} [data-col=recipients]`)], ["WEEKLY", email], "the subscription listed");
  eq((await apiSubs()).find((s) => s.id === id), { id, schedule: "WEEKLY", recipients: [email] }, "the subscription over the API");
  await t.a11y(page, `Alerts & webhooks with a report subscription (${email})`);
  confirmNext(page, true);
  await page.click(`${row} button[data-action=unsubscribe]`);
  await waitFor("the subscription gone", async () => !(await ids()).includes(id));
  eq((await apiSubs()).some((s) => s.id === id), false, "unsubscribed over the API");
}

export async function analystAlerts(t) {
  const { page, step, eq, assert, waitFor, visible, seed, E } = t;
  await step("an analyst reads Alerts & webhooks: rules, the endpoint and its deliveries, and no control to change them", async () => {
    await t.go(page, "alerts");
    assert(await visible(page, "#alerts-read-note"), "says the analyst reads");
    eq((await rulesShown(page)).map((r) => r.threshold), ["15 % of tokens bought"], "the rule");
    eq(await page.$$eval("#endpoints-table tbody [data-col=url]", (c) => c.map((x) => x.textContent)), [seed.webhookUrl], "the endpoint");
    eq((await deliveriesShown(page)).map((d) => d.state), ["DELIVERED", "DELIVERED"], "the deliveries");
    for (const form of ["#rule-form", "#endpoint-form"]) eq(await visible(page, form), false, `no ${form}`);
    eq(await page.$$eval("#rules-table button, #endpoints-table button, #deliveries-table button[data-action=replay]", (b) => b.length), 0, "no delete, test, toggle, rotate or replay button");
    eq(await visible(page, "#webhook-secret"), false, "no secret");
    const buttons = await page.$$eval("#page-alerts button", (bs) => bs.filter((b) => b.offsetParent !== null && !b.disabled).map((b) => b.textContent.trim()));
    const allowed = new Set(["Details", "Refresh", "Show older", "Subscribe", "Unsubscribe"]);
    eq(buttons.filter((b) => !allowed.has(b)), [], "only reading (and scheduled reports) buttons");
    // Reading the attempts is allowed.
    await page.click("#deliveries-table tr[data-delivery-id] button[data-action=details]");
    assert(await visible(page, "#deliveries-table tr.delivery-detail:not([hidden]) pre.payload"), "the payload");
    await t.shot(page, "analyst-alerts", "Alerts & webhooks as an analyst: read-only");
    await t.a11y(page, "Alerts & webhooks (analyst)");
    if (await hasReports(t)) await reportSubscribe(t, seed.analystKey, E.analystEmail);
    else eq(await visible(page, "#reports-card"), false, "no report section on a server without report subscriptions");
  });
}

export async function memberAlerts(t) {
  const { page, step, eq, assert, seed } = t;
  await step("a member has no Alerts & webhooks", async () => {
    eq(await page.$$eval("#nav li:not([hidden]) a[data-page=alerts]", (a) => a.length), 0, "no #alerts in the navigation");
    await page.goto(`${seed.url}/#alerts`);
    await page.waitForSelector("#page-denied:not([hidden])");
    assert(/does not include alerts and webhooks/.test(await t.text(page, "#denied-text")), "says why");
    eq(await page.isVisible("#page-alerts"), false, "the page stays hidden");
    await t.a11y(page, "Alerts & webhooks (member): not available");
  });
}

export async function operatorAlerts(t) {
  const { page, step, eq, waitFor, seed } = t;
  await step("the operator reads the chosen account's alerts and webhooks, with the admin's controls", async () => {
    await t.go(page, "alerts");
    await waitFor("the account's rule", async () => (await rulesShown(page)).length === 1);
    eq(await page.$$eval("#endpoints-table tbody [data-col=url]", (c) => c.map((x) => x.textContent)), [seed.webhookUrl], "the endpoint");
    eq(await page.$$eval("#endpoints-table tbody button", (b) => b.map((x) => x.dataset.action)), ["test", "toggle", "events", "rotate", "delete"], "the admin's controls");
    eq((await deliveriesShown(page)).length, 2, "the deliveries");
    await t.shot(page, "operator-alerts", "Alerts & webhooks as the operator");
    await t.a11y(page, "Alerts & webhooks (operator)");
  });
}
