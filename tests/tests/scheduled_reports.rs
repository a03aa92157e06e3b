//! Rule 27 through the real binary: weekly and monthly usage e-mails at the real SMTP
//! receiver, one per subscription and period, with the totals, the top users and
//! products, and the period's rows attached as the very bytes of
//! `GET /reports/usage.csv`; never a second e-mail for a period, also with two
//! servers running the due pass at the same moment; who may subscribe whom.

use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, Utc, Weekday};
use daypass_tests::json::{at, id, int};
use daypass_tests::server::{OPERATOR_KEY, unique_queue_name};
use daypass_tests::smtp::{ReceivedMail, SmtpServer};
use daypass_tests::{Api, TestServer};
use futures::future::join_all;
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const OP: Option<&str> = Some(OPERATOR_KEY);
const PUBLIC_URL: &str = "https://daypass.test";

/// A server with the test clock, mailing to `smtp`, with `extra` settings.
async fn server(smtp: &SmtpServer, extra: &[(&str, &str)]) -> TestServer {
    let url = smtp.url();
    let mut env = vec![
        ("DAYPASS_TEST_CLOCK", "1"),
        ("DAYPASS_SMTP_URL", url.as_str()),
        ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
    ];
    env.extend_from_slice(extra);
    TestServer::start_with(&env).await
}

async fn advance_minutes(s: &impl Api, minutes: i64) -> DateTime<Utc> {
    let d = s
        .ok(
            OP,
            "mutation($m: Int!) { advanceClock(hours: 0, minutes: $m) }",
            json!({"m": minutes}),
        )
        .await;
    at(&d["advanceClock"])
}

async fn now(s: &impl Api) -> DateTime<Utc> {
    advance_minutes(s, 0).await
}

/// Moves the server's clock to just after `target` (within a minute).
async fn advance_to(s: &impl Api, target: DateTime<Utc>) -> DateTime<Utc> {
    let behind = target - now(s).await;
    let minutes = (behind.num_seconds() + 59).div_euclid(60).max(0);
    let reached = advance_minutes(s, minutes).await;
    assert!(reached >= target, "{reached} is not past {target}");
    reached
}

async fn run_maintenance(s: &impl Api) {
    let d = s.ok(OP, "mutation { runMaintenance }", json!({})).await;
    assert_eq!(d["runMaintenance"], true);
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap().and_utc()
}

/// 02:00 UTC on the first Monday after `t` that is at most the 14th of its month:
/// the two weeks after it end inside that month.
fn quiet_monday_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let mut day = t.date_naive().succ_opt().unwrap();
    while day.weekday() != Weekday::Mon || day.day() > 14 {
        day = day.succ_opt().unwrap();
    }
    midnight(day) + Days::hours(2)
}

/// The 1st of the month after `day`.
fn first_of_next_month(day: NaiveDate) -> NaiveDate {
    let (y, m) = if day.month() == 12 {
        (day.year() + 1, 1)
    } else {
        (day.year(), day.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap()
}

/// The Monday of `day`'s ISO week.
fn monday_of(day: NaiveDate) -> NaiveDate {
    day - Days::days(i64::from(day.weekday().num_days_from_monday()))
}

/// `n` with thousands separators, written here apart from the worker's.
fn grouped(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A report's e-mail as a reader sees it.
struct ReportMail {
    to: BTreeSet<String>,
    subject: String,
    text: String,
    html: String,
    message_id: String,
    attachment_name: String,
    attachment_type: String,
    /// The attachment's bytes, decoded here from its base64 text.
    csv: Vec<u8>,
}

fn report_mail(mail: &ReceivedMail) -> ReportMail {
    use base64::Engine;
    let parsed = MessageParser::default()
        .parse(mail.raw.as_bytes())
        .expect("a parsable message");
    assert_eq!(parsed.attachment_count(), 1, "one attachment: {}", mail.raw);
    let part = parsed.attachment(0).unwrap();
    assert_eq!(part.content_transfer_encoding(), Some("base64"));
    let ct = part.content_type().expect("a content type");
    let encoded: String = mail.raw[part.offset_body as usize..part.offset_end as usize]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let encoded = encoded.split("--").next().unwrap_or_default();
    let csv = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("the attachment is base64: {e}"));
    assert_eq!(csv, part.contents(), "mail-parser reads the same bytes");
    ReportMail {
        to: mail.to.iter().cloned().collect(),
        subject: mail.subject(),
        text: mail.text(),
        html: mail.html(),
        message_id: mail.message_id(),
        attachment_name: part.attachment_name().unwrap_or_default().to_owned(),
        attachment_type: format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()),
        csv,
    }
}

/// The report e-mails that arrived since the last call.
struct Inbox {
    smtp: SmtpServer,
    seen: usize,
}

impl Inbox {
    fn new_reports(&mut self) -> Vec<ReportMail> {
        let all = self.smtp.messages();
        let fresh = all[self.seen..].to_vec();
        self.seen = all.len();
        fresh
            .iter()
            .filter(|m| m.subject().contains("usage report"))
            .map(report_mail)
            .collect()
    }
}

/// `GET /reports/usage.csv` as the holder of `key`.
async fn export(s: &TestServer, key: &str, from: NaiveDate, to: NaiveDate) -> Vec<u8> {
    let resp = s
        .client()
        .get(format!(
            "{}/reports/usage.csv?from={from}&to={to}",
            s.base_url
        ))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET /reports/usage.csv");
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

/// The account's totals for the days, as `usageReport` and `spending` give them.
async fn totals(s: &impl Api, key: &str, from: NaiveDate, to: NaiveDate) -> Value {
    let d = s
        .ok(
            Some(key),
            "query($f: Date!, $t: Date!) { account {
               usageReport(from: $f, to: $t, groupBy: []) {
                 tokens opens charges denials distinctUsers costMinor
               }
               spending(from: $f, to: $t) { costMinor currency }
             } }",
            json!({"f": from.to_string(), "t": to.to_string()}),
        )
        .await;
    let mut row = d["account"]["usageReport"][0].clone();
    row["currency"] = d["account"]["spending"]["currency"].clone();
    assert_eq!(
        row["costMinor"], d["account"]["spending"]["costMinor"],
        "spending is the cost of the tokens charged"
    );
    row
}

/// An account with its admin, an analyst and members.
struct Acct {
    id: String,
    admin: String,
    admin_email: String,
    analyst: String,
    analyst_email: String,
    /// (key, e-mail, name) of each member.
    members: Vec<(String, String, String)>,
}

async fn account(s: &impl Api, name: &str, tag: &str, members: usize) -> Acct {
    let admin_email = format!("admin@{tag}.test");
    let d = s
        .ok(
            OP,
            "mutation($n: String!, $e: String!) {
               createAccount(input: {name: $n, adminEmail: $e, adminName: \"Ada Admin\"}) {
                 account { id } adminApiKey
               }
             }",
            json!({"n": name, "e": admin_email}),
        )
        .await;
    let admin = id(&d["createAccount"]["adminApiKey"]);
    let analyst_email = format!("analyst@{tag}.test");
    let (_, analyst) = s
        .create_user(&admin, &analyst_email, "Ann Analyst", "ANALYST")
        .await;
    let mut list = Vec::new();
    let mut ids = Vec::new();
    for i in 0..members {
        let email = format!("m{i}@{tag}.test");
        let name = format!("Member {i}");
        let (uid, key) = s.create_user(&admin, &email, &name, "MEMBER").await;
        ids.push(uid);
        list.push((key, email, name));
    }
    if !ids.is_empty() {
        s.ok(
            Some(&admin),
            "mutation($ids: [ID!]!) { assignFlex(userIds: $ids, assigned: true) { id } }",
            json!({"ids": ids}),
        )
        .await;
    }
    Acct {
        id: id(&d["createAccount"]["account"]["id"]),
        admin,
        admin_email,
        analyst,
        analyst_email,
        members: list,
    }
}

async fn buy(s: &impl Api, admin: &str, quantity: i64) {
    s.ok(
        Some(admin),
        "mutation($q: Int!, $k: String!) { purchaseTokens(input: {quantity: $q, idempotencyKey: $k}) { id } }",
        json!({"q": quantity, "k": format!("buy-{:016x}", rand::random::<u64>())}),
    )
    .await;
}

async fn open(s: &impl Api, key: &str, code: &str) -> Value {
    let d = s
        .ok(
            Some(key),
            "mutation($c: String!) { openProduct(input: {productCode: $c}) { granted tokensCharged } }",
            json!({"c": code}),
        )
        .await;
    d["openProduct"].clone()
}

async fn subscribe(
    s: &impl Api,
    key: &str,
    schedule: &str,
    recipients: Option<Vec<&str>>,
) -> Value {
    let d = s
        .ok(
            Some(key),
            "mutation($s: ReportSchedule!, $r: [String!]) {
               subscribeToReport(schedule: $s, recipients: $r) {
                 id schedule recipients nextRunAt createdBy { email }
               }
             }",
            json!({"s": schedule, "r": recipients}),
        )
        .await;
    d["subscribeToReport"].clone()
}

/// The account's SCHEDULED_REPORT notifications.
async fn report_notifications(s: &impl Api, account: &str) -> Vec<Value> {
    let d = s
        .ok(
            OP,
            "query($a: ID!) { account(id: $a) { notifications(first: 500) { edges { node {
               id kind sentAt recipients
             } } } } }",
            json!({"a": account}),
        )
        .await;
    d["account"]["notifications"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .filter(|n| n["kind"] == "SCHEDULED_REPORT")
        .collect()
}

fn addresses(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// What one report e-mail must say: its period, totals, top lists and link, and the
/// export's bytes attached.
async fn check_report(
    s: &TestServer,
    acct: &Acct,
    mail: &ReportMail,
    (from, to): (NaiveDate, NaiveDate),
    name: &str,
) {
    assert_eq!(
        mail.attachment_name,
        format!("daypass-usage-{from}_{to}.csv"),
        "{}",
        mail.subject
    );
    assert_eq!(mail.attachment_type, "text/csv");
    let csv = export(s, &acct.analyst, from, to).await;
    assert!(
        mail.csv == csv,
        "the attachment is the export's bytes:\n{}\n---\n{}",
        String::from_utf8_lossy(&mail.csv),
        String::from_utf8_lossy(&csv)
    );
    assert_eq!(export(s, &acct.admin, from, to).await, csv);
    assert!(mail.subject.contains(name), "{}", mail.subject);
    assert!(
        mail.subject.contains(&format!("{from} to {to}")),
        "{}",
        mail.subject
    );
    let t = totals(s, &acct.admin, from, to).await;
    let minor = int(&t["costMinor"]);
    let money = format!(
        "{}.{:02} {}",
        grouped(minor / 100),
        minor % 100,
        t["currency"].as_str().unwrap()
    );
    for line in [
        format!("Tokens charged: {}", grouped(int(&t["tokens"]))),
        format!("Spending: {money}"),
        format!("Opens: {}", grouped(int(&t["opens"]))),
        format!("Charges: {}", grouped(int(&t["charges"]))),
        format!("Distinct users: {}", grouped(int(&t["distinctUsers"]))),
        format!("Denials: {}", grouped(int(&t["denials"]))),
        format!("{PUBLIC_URL}/#usage"),
        name.to_owned(),
    ] {
        assert!(
            mail.text.contains(&line),
            "{line:?} in the text:\n{}",
            mail.text
        );
    }
    let escaped = name.replace('&', "&amp;");
    assert!(mail.html.contains(&escaped), "{}", mail.html);
    assert!(mail.html.contains(&money), "{}", mail.html);
    assert!(
        mail.html.contains(&format!("href=\"{PUBLIC_URL}/#usage\"")),
        "{}",
        mail.html
    );
}

/// The rule end to end: weekly and monthly e-mails after their boundaries, one per
/// subscription and period, to the right people; nothing more until the next
/// boundary; a period missed is not sent late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weekly_and_monthly_reports_once_per_period_with_the_export_attached() {
    let smtp = SmtpServer::start().await;
    let s = server(&smtp, &[]).await;
    let mut inbox = Inbox {
        smtp: smtp.clone(),
        seen: 0,
    };
    let t0 = advance_to(&s, quiet_monday_after(now(&s).await)).await;
    let week = (t0.date_naive(), t0.date_naive() + Days::days(6));
    s.upsert_product("cad", 1200).await;
    s.upsert_product("sim", 4).await;
    s.upsert_product("viz", 1).await;
    let name = "Acme & Sons";
    let acct = account(&s, name, "acme", 6).await;
    let other = account(&s, "Other Co", "other", 1).await;
    buy(&s, &acct.admin, 10_000).await;
    buy(&s, &other.admin, 2_000).await;

    let weekly = subscribe(&s, &acct.admin, "WEEKLY", None).await;
    assert_eq!(weekly["recipients"], json!([acct.admin_email]));
    assert_eq!(weekly["createdBy"]["email"], acct.admin_email);
    assert_eq!(at(&weekly["nextRunAt"]), midnight(week.1 + Days::days(1)));
    let analyst_email_upper = acct.analyst_email.to_uppercase();
    let monthly = subscribe(
        &s,
        &acct.admin,
        "MONTHLY",
        Some(vec![
            &analyst_email_upper,
            &acct.admin_email,
            &acct.analyst_email,
        ]),
    )
    .await;
    assert_eq!(
        monthly["recipients"],
        json!([acct.analyst_email, acct.admin_email]),
        "lower case, duplicates dropped"
    );
    let month_end = first_of_next_month(t0.date_naive());
    assert_eq!(at(&monthly["nextRunAt"]), midnight(month_end));
    let own = subscribe(&s, &acct.analyst, "WEEKLY", None).await;
    assert_eq!(own["recipients"], json!([acct.analyst_email]));

    // Six members charged different amounts; a seventh is refused (not assigned).
    let plan: [&[&str]; 6] = [
        &["cad", "sim", "viz"],
        &["cad", "sim"],
        &["cad"],
        &["sim", "viz"],
        &["sim"],
        &["viz"],
    ];
    for (member, codes) in acct.members.iter().zip(plan) {
        for code in codes {
            assert_eq!(open(&s, &member.0, code).await["granted"], true);
        }
    }
    let stranger = s
        .create_user(&acct.admin, "refused@acme.test", "Refused", "MEMBER")
        .await
        .1;
    assert_eq!(open(&s, &stranger, "cad").await["granted"], false);
    assert_eq!(open(&s, &other.members[0].0, "cad").await["granted"], true);

    // Nothing is due before the boundary.
    run_maintenance(&s).await;
    assert!(inbox.new_reports().is_empty());

    // Monday: both weekly subscriptions send, once each.
    advance_to(&s, t0 + Days::days(7)).await;
    run_maintenance(&s).await;
    let mails = inbox.new_reports();
    assert_eq!(mails.len(), 2, "one e-mail per weekly subscription");
    let tos: BTreeSet<BTreeSet<String>> = mails.iter().map(|m| m.to.clone()).collect();
    assert_eq!(
        tos,
        [
            addresses(&[&acct.admin_email]),
            addresses(&[&acct.analyst_email])
        ]
        .into()
    );
    for mail in &mails {
        check_report(&s, &acct, mail, week, name).await;
        assert!(mail.subject.contains("weekly"), "{}", mail.subject);
        assert!(mail.text.contains("Tokens charged: 3,619"), "{}", mail.text);
        // The top five by tokens, in order; the sixth (1 token) is left out.
        let mut last = 0;
        for (i, tokens) in ["1,205", "1,204", "1,200", "5", "4"].iter().enumerate() {
            let (_, email, member) = &acct.members[i];
            let line = format!("{}. {member} ({email}): {tokens} tokens", i + 1);
            let pos = mail
                .text
                .find(&line)
                .unwrap_or_else(|| panic!("{line:?} in {}", mail.text));
            assert!(pos > last);
            last = pos;
        }
        assert!(!mail.text.contains(&acct.members[5].1), "{}", mail.text);
        for line in [
            "1. cad (cad): 3,600 tokens",
            "2. sim (sim): 16 tokens",
            "3. viz (viz): 3 tokens",
        ] {
            assert!(mail.text.contains(line), "{line:?} in {}", mail.text);
        }
        let csv = String::from_utf8(mail.csv.clone()).unwrap();
        assert!(csv.lines().count() >= 11, "{csv}");
        assert!(
            csv.contains("m0@acme.test") && !csv.contains("other.test"),
            "{csv}"
        );
    }

    // Again, and hours later: nothing more for the same period.
    run_maintenance(&s).await;
    advance_minutes(&s, 5 * 60).await;
    run_maintenance(&s).await;
    assert!(
        inbox.new_reports().is_empty(),
        "no second e-mail for a period"
    );
    assert_eq!(report_notifications(&s, &acct.id).await.len(), 2);
    assert!(report_notifications(&s, &other.id).await.is_empty());

    // The next Monday: the next week's e-mails, a quiet week.
    advance_to(&s, t0 + Days::days(14)).await;
    run_maintenance(&s).await;
    let quiet = (week.0 + Days::days(7), week.1 + Days::days(7));
    let mails = inbox.new_reports();
    assert_eq!(mails.len(), 2);
    for mail in &mails {
        check_report(&s, &acct, mail, quiet, name).await;
        assert!(mail.text.contains("Tokens charged: 0"), "{}", mail.text);
        assert!(mail.text.contains("No tokens charged."), "{}", mail.text);
    }

    // The 1st: the month's e-mail to both its recipients. Weekly runs passed
    // meanwhile send the latest week only, once.
    let reached = advance_to(&s, midnight(month_end) + Days::hours(1)).await;
    run_maintenance(&s).await;
    let mails = inbox.new_reports();
    let month = (
        t0.date_naive().with_day(1).unwrap(),
        month_end - Days::days(1),
    );
    let (monthly_mails, weekly_mails): (Vec<&ReportMail>, Vec<&ReportMail>) =
        mails.iter().partition(|m| m.subject.contains("monthly"));
    assert_eq!(monthly_mails.len(), 1);
    let mail = monthly_mails[0];
    assert_eq!(
        mail.to,
        addresses(&[&acct.analyst_email, &acct.admin_email])
    );
    check_report(&s, &acct, mail, month, name).await;
    assert!(mail.text.contains("Tokens charged: 3,619"), "{}", mail.text);
    let last_monday = monday_of(reached.date_naive());
    let weekly_due = midnight(last_monday) > t0 + Days::days(14);
    assert_eq!(weekly_mails.len(), if weekly_due { 2 } else { 0 });
    for mail in weekly_mails {
        let latest = (last_monday - Days::days(7), last_monday - Days::days(1));
        check_report(&s, &acct, mail, latest, name).await;
    }
    run_maintenance(&s).await;
    assert!(inbox.new_reports().is_empty());
    let sent = report_notifications(&s, &acct.id).await;
    assert!(sent.iter().all(|n| !n["sentAt"].is_null()), "{sent:#?}");
    let subs = s
        .ok(
            Some(&acct.analyst),
            "{ account { reportSubscriptions { id schedule nextRunAt } } }",
            json!({}),
        )
        .await;
    let list = subs["account"]["reportSubscriptions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(list.len(), 3);
    for sub in list {
        assert!(at(&sub["nextRunAt"]) > reached, "{sub}");
    }
}

/// Two servers on one database run the due pass at the same moment, many times:
/// each subscription's period is e-mailed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_running_the_due_pass_at_once_send_each_report_once() {
    let smtp = SmtpServer::start().await;
    let queue = unique_queue_name("reports");
    let env = [
        ("DAYPASS_WORKERS", "external"),
        ("DAYPASS_QUEUE_NAME", queue.as_str()),
    ];
    let s1 = server(&smtp, &env).await;
    let url = smtp.url();
    let s2 = TestServer::start_on(
        &s1.database_url,
        &[
            ("DAYPASS_TEST_CLOCK", "1"),
            ("DAYPASS_SMTP_URL", url.as_str()),
            ("DAYPASS_PUBLIC_URL", PUBLIC_URL),
            ("DAYPASS_WORKERS", "external"),
            ("DAYPASS_QUEUE_NAME", queue.as_str()),
        ],
    )
    .await;
    s1.upsert_product("cad", 10).await;
    let mut accounts = Vec::new();
    for i in 0..3 {
        let acct = account(&s1, &format!("Race {i}"), &format!("race{i}"), 1).await;
        buy(&s1, &acct.admin, 100).await;
        assert_eq!(open(&s1, &acct.members[0].0, "cad").await["granted"], true);
        subscribe(&s1, &acct.admin, "WEEKLY", None).await;
        subscribe(&s1, &acct.analyst, "MONTHLY", None).await;
        accounts.push(acct);
    }
    // Past a Monday and a 1st on both servers' clocks.
    advance_minutes(&s1, 40 * 24 * 60).await;
    advance_minutes(&s2, 40 * 24 * 60).await;
    for _ in 0..2 {
        let passes = (0..8).flat_map(|_| [&s1, &s2]).map(run_maintenance);
        join_all(passes).await;
    }
    let mails: Vec<ReportMail> = smtp
        .messages()
        .iter()
        .filter(|m| m.subject().contains("usage report"))
        .map(report_mail)
        .collect();
    assert_eq!(mails.len(), 6, "one e-mail per subscription");
    let ids: BTreeSet<&String> = mails.iter().map(|m| &m.message_id).collect();
    assert_eq!(ids.len(), 6);
    for acct in &accounts {
        let sent = report_notifications(&s2, &acct.id).await;
        assert_eq!(sent.len(), 2, "{sent:#?}");
        for to in [&acct.admin_email, &acct.analyst_email] {
            assert_eq!(
                mails.iter().filter(|m| m.to == addresses(&[to])).count(),
                1,
                "{to}"
            );
        }
    }
}

/// Who may subscribe whom, and the refusals' codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_subscribe_whom_and_bad_input_is_refused() {
    let smtp = SmtpServer::start().await;
    let s = server(&smtp, &[("DAYPASS_WORKERS", "external")]).await;
    let mut inbox = Inbox {
        smtp: smtp.clone(),
        seen: 0,
    };
    let a = account(&s, "Alpha", "alpha", 1).await;
    let b = account(&s, "Beta", "beta", 0).await;
    let member = a.members[0].0.as_str();
    let member_email = a.members[0].1.as_str();
    let sub = "mutation($s: ReportSchedule!, $r: [String!]) {
                 subscribeToReport(schedule: $s, recipients: $r) { id }
               }";
    let code = |key: &str, vars: Value| {
        let key = key.to_owned();
        let s = &s;
        async move { s.error_code(Some(&key), sub, vars).await }
    };

    // Members and the operator do not subscribe; analysts subscribe themselves.
    assert_eq!(code(member, json!({"s": "WEEKLY"})).await, "FORBIDDEN");
    assert_eq!(
        code(OPERATOR_KEY, json!({"s": "WEEKLY"})).await,
        "FORBIDDEN"
    );
    assert_eq!(
        code(&a.analyst, json!({"s": "WEEKLY", "r": [a.admin_email]})).await,
        "FORBIDDEN"
    );
    let mine = id(&subscribe(&s, &a.analyst, "MONTHLY", None).await["id"]);
    let admins = id(&subscribe(&s, &a.admin, "WEEKLY", Some(vec![&a.analyst_email])).await["id"]);

    // Addresses: of the account's admins and analysts, 1 to 10, well formed.
    let long = format!("{}@alpha.test", "x".repeat(100_000));
    let eleven: Vec<String> = (0..11).map(|i| format!("u{i}@alpha.test")).collect();
    let many: Vec<String> = (0..10_000).map(|i| format!("u{i}@alpha.test")).collect();
    for (recipients, names) in [
        (json!([]), None),
        (json!(["nobody@alpha.test"]), Some("nobody@alpha.test")),
        (json!([b.admin_email]), Some(b.admin_email.as_str())),
        (json!([member_email]), Some(member_email)),
        (json!(["not an address"]), None),
        (json!(["a@b.test\r\nBcc: all@evil.test"]), None),
        (json!([long]), None),
        (json!(eleven), None),
        (json!(many), None),
    ] {
        let resp = s
            .gql(Some(&a.admin), sub, json!({"s": "WEEKLY", "r": recipients}))
            .await;
        let err = &resp["errors"][0];
        assert_eq!(err["extensions"]["code"], "BAD_USER_INPUT", "{resp:.300}");
        if let Some(address) = names {
            assert!(err["message"].as_str().unwrap().contains(address), "{resp}");
        }
    }
    assert_eq!(
        code(&a.admin, json!({"s": "DAILY"})).await,
        "BAD_USER_INPUT"
    );

    // Reading: admins and analysts of the account; members no; other tenants no.
    let list =
        "query($a: ID) { account(id: $a) { reportSubscriptions { id createdBy { email } } } }";
    let d = s.ok(Some(&a.analyst), list, json!({})).await;
    assert_eq!(
        d["account"]["reportSubscriptions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.error_code(Some(member), list, json!({})).await,
        "FORBIDDEN"
    );
    let other = s.error_code(Some(&b.admin), list, json!({"a": a.id})).await;
    assert!(other == "FORBIDDEN" || other == "NOT_FOUND", "{other}");
    let d = s.ok(OP, list, json!({"a": a.id})).await;
    assert_eq!(
        d["account"]["reportSubscriptions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Ending one: another tenant's is not found; an analyst ends their own only.
    let unsub = "mutation($id: ID!) { unsubscribeFromReport(id: $id) }";
    assert_eq!(
        s.error_code(Some(&b.admin), unsub, json!({"id": mine}))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        s.error_code(Some(member), unsub, json!({"id": mine})).await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.error_code(Some(&a.analyst), unsub, json!({"id": admins}))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.error_code(Some(&a.admin), unsub, json!({"id": "x"}))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        s.error_code(Some(&a.admin), unsub, json!({"id": "999999"}))
            .await,
        "NOT_FOUND"
    );
    let d = s.ok(Some(&a.analyst), unsub, json!({"id": mine})).await;
    assert_eq!(d["unsubscribeFromReport"], true);
    assert_eq!(
        s.error_code(Some(&a.analyst), unsub, json!({"id": mine}))
            .await,
        "NOT_FOUND"
    );

    // At most 20 an account.
    for _ in 1..20 {
        subscribe(&s, &a.admin, "MONTHLY", None).await;
    }
    assert_eq!(code(&a.admin, json!({"s": "WEEKLY"})).await, "CONFLICT");
    assert_eq!(code(&a.analyst, json!({"s": "WEEKLY"})).await, "CONFLICT");

    // A recipient deactivated since gets nothing: the admin's weekly one to the
    // analyst alone is skipped, the admin's own monthly ones go.
    let analyst_id = id(&s
        .ok(Some(&a.analyst), "{ viewer { user { id } } }", json!({}))
        .await["viewer"]["user"]["id"]);
    s.ok(
        Some(&a.admin),
        "mutation($u: ID!) { deactivateUser(userId: $u) { active } }",
        json!({"u": analyst_id}),
    )
    .await;
    let t = now(&s).await;
    advance_to(
        &s,
        midnight(first_of_next_month(t.date_naive()) + Days::days(7)) + Days::hours(1),
    )
    .await;
    run_maintenance(&s).await;
    let mails = inbox.new_reports();
    assert_eq!(mails.len(), 19, "the admin's 19 monthly subscriptions");
    assert!(mails.iter().all(|m| m.to == addresses(&[&a.admin_email])));
    assert_eq!(report_notifications(&s, &a.id).await.len(), 19);
}
