//! The e-mail of a scheduled report (rule 27): plain text and HTML with the
//! period's totals and its top users and products, and the period's rows attached
//! as the usage export's CSV. What it says comes from `domain`
//! (`scheduled_reports::report_content`); here it is only laid out.

use crate::email::{MailSettings, envelope, escape, link_of, thousands, wording};
use daypass_domain::notifications::Delivery;
use daypass_domain::scheduled_reports::ReportContent;
use lettre::Message;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Attachment, Body, MultiPart};

/// `minor` currency units as money with two decimals: `1,234.50 EUR`.
pub fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    // `abs / 100` is below i64::MAX.
    let units = thousands((abs / 100) as i64);
    format!("{sign}{units}.{:02} {currency}", abs % 100)
}

/// Label and value of each total, in the order shown.
fn totals(c: &ReportContent) -> [(&'static str, String); 6] {
    let t = &c.totals;
    [
        ("Tokens charged", thousands(t.tokens)),
        ("Spending", money(t.spending_minor, &c.currency)),
        ("Opens", thousands(t.opens)),
        ("Charges", thousands(t.charges)),
        ("Distinct users", thousands(t.distinct_users)),
        ("Denials", thousands(t.denials)),
    ]
}

/// Rows of two cells: a label and its figure.
type Lines = Vec<(String, String)>;

/// The top users and products as (who, tokens) lines.
fn top_lines(c: &ReportContent) -> (Lines, Lines) {
    let users = c
        .top_users
        .iter()
        .map(|u| (format!("{} ({})", u.name, u.email), thousands(u.tokens)))
        .collect();
    let products = c
        .top_products
        .iter()
        .map(|p| (format!("{} ({})", p.name, p.code), thousands(p.tokens)))
        .collect();
    (users, products)
}

fn text_body(c: &ReportContent, intro: &[String], link: &str) -> String {
    let mut out = intro.join("\n\n");
    out.push_str("\n\nTotals\n");
    for (label, value) in totals(c) {
        out.push_str(&format!("  {label}: {value}\n"));
    }
    let (users, products) = top_lines(c);
    for (title, lines) in [
        ("Top users by tokens", users),
        ("Top products by tokens", products),
    ] {
        out.push_str(&format!("\n{title}\n"));
        if lines.is_empty() {
            out.push_str("  No tokens charged.\n");
        }
        for (i, (who, tokens)) in lines.iter().enumerate() {
            out.push_str(&format!("  {}. {who}: {tokens} tokens\n", i + 1));
        }
    }
    out.push_str(&format!(
        "\nThe period's rows (day, user, product) are attached as {}, the same file as the usage export.\n\nOpen the usage page: {link}\n",
        c.csv_filename
    ));
    out
}

fn html_table(head: [&str; 2], rows: &[(String, String)], empty: &str) -> String {
    let mut out = format!(
        "<table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\" style=\"text-align:right\">{}</th></tr></thead><tbody>",
        head[0], head[1]
    );
    if rows.is_empty() {
        out.push_str(&format!("<tr><td colspan=\"2\">{empty}</td></tr>"));
    }
    for (left, right) in rows {
        out.push_str(&format!(
            "<tr><td>{}</td><td style=\"text-align:right\">{}</td></tr>",
            escape(left),
            escape(right)
        ));
    }
    out.push_str("</tbody></table>");
    out
}

fn html_body(c: &ReportContent, subject: &str, intro: &[String], link: &str) -> String {
    let totals: Lines = totals(c)
        .into_iter()
        .map(|(label, value)| (label.to_owned(), value))
        .collect();
    let (users, products) = top_lines(c);
    format!(
        "<!doctype html><html><body><h1>{}</h1>{}<h2>Totals</h2>{}<h2>Top users by tokens</h2>{}<h2>Top products by tokens</h2>{}<p>The period's rows (day, user, product) are attached as {}, the same file as the usage export.</p><p><a href=\"{}\">Open the usage page</a></p></body></html>",
        escape(subject),
        intro
            .iter()
            .map(|p| format!("<p>{}</p>", escape(p)))
            .collect::<String>(),
        html_table(["Measure", "This period"], &totals, ""),
        html_table(["User", "Tokens"], &users, "No tokens charged."),
        html_table(["Product", "Tokens"], &products, "No tokens charged."),
        escape(&c.csv_filename),
        escape(link)
    )
}

/// The report's e-mail to every recipient: the text and HTML alternative, and the
/// CSV attached byte for byte (base64, so no transport touches its line ends).
pub fn render_report(
    d: &Delivery,
    content: &ReportContent,
    settings: &MailSettings,
) -> Result<Message, String> {
    let (subject, intro) = wording(d);
    let link = link_of(d, settings);
    let text = text_body(content, &intro, &link);
    let html = html_body(content, &subject, &intro, &link);
    let csv = Body::new_with_encoding(content.csv.clone(), ContentTransferEncoding::Base64)
        .map_err(|_| "the CSV cannot be encoded".to_owned())?;
    let content_type = ContentType::parse("text/csv; charset=utf-8")
        .map_err(|e| format!("the CSV's content type: {e}"))?;
    let attachment = Attachment::new(content.csv_filename.clone()).body(csv, content_type);
    envelope(d, settings, subject)?
        .multipart(
            MultiPart::mixed()
                .multipart(MultiPart::alternative_plain_html(text, html))
                .singlepart(attachment),
        )
        .map_err(|e| format!("building the e-mail: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use daypass_domain::notifications::{Facts, NotificationKind, ReportFact};
    use daypass_domain::scheduled_reports::{ReportSchedule, ReportTotals, TopProduct, TopUser};

    #[test]
    fn money_has_two_decimals_and_thousands() {
        assert_eq!(money(0, "EUR"), "0.00 EUR");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(123_456_789, "USD"), "1,234,567.89 USD");
        assert_eq!(money(-250, "EUR"), "-2.50 EUR");
    }

    #[test]
    fn the_report_mail_has_both_parts_the_figures_and_the_csv() {
        let from = "2026-11-30".parse().unwrap();
        let to = "2026-12-06".parse().unwrap();
        let d = Delivery {
            id: 9,
            kind: NotificationKind::ScheduledReport,
            recipients: vec!["ann@acme.test".into()],
            facts: Facts {
                account_id: 1,
                account_name: "Acme <R&D>".into(),
                at: "2026-12-07T00:00:00Z".parse().unwrap(),
                report: Some(ReportFact {
                    subscription_id: 3,
                    schedule: "WEEKLY".into(),
                    from,
                    to,
                }),
                ..Facts::default()
            },
            attempt: 1,
        };
        let content = ReportContent {
            account_name: "Acme <R&D>".into(),
            schedule: ReportSchedule::Weekly,
            from,
            to,
            totals: ReportTotals {
                tokens: 12_345,
                opens: 2_000,
                charges: 1_500,
                distinct_users: 12,
                denials: 3,
                spending_minor: 1_234_550,
            },
            currency: "EUR".into(),
            top_users: vec![TopUser {
                email: "bob@acme.test".into(),
                name: "Bob <b>".into(),
                tokens: 10_000,
            }],
            top_products: vec![TopProduct {
                code: "cad".into(),
                name: "CAD Suite".into(),
                tokens: 12_345,
            }],
            csv: b"day,user_id\r\n2026-12-01,1\r\n".to_vec(),
            csv_filename: "daypass-usage-2026-11-30_2026-12-06.csv".into(),
        };
        let settings = MailSettings {
            from: "Daypass <no-reply@localhost>".into(),
            public_url: "https://daypass.example/".into(),
        };
        let raw =
            String::from_utf8(render_report(&d, &content, &settings).unwrap().formatted()).unwrap();
        assert!(raw.contains("multipart/mixed") && raw.contains("multipart/alternative"));
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
        assert!(raw.contains("text/csv"));
        assert!(raw.contains("daypass-usage-2026-11-30_2026-12-06.csv"));
        assert!(raw.contains("Content-Transfer-Encoding: base64"));
        // The attachment's base64: "day,user_id\r\n2026-12-01,1\r\n".
        assert!(
            raw.contains("ZGF5LHVzZXJfaWQNCjIwMjYtMTItMDEsMQ0K"),
            "{raw}"
        );
        let text = text_body(&content, &wording(&d).1, "https://daypass.example/#usage");
        for expected in [
            "Acme <R&D>",
            "2026-11-30 to 2026-12-06",
            "Tokens charged: 12,345",
            "Spending: 12,345.50 EUR",
            "Opens: 2,000",
            "Distinct users: 12",
            "1. Bob <b> (bob@acme.test): 10,000 tokens",
            "1. CAD Suite (cad): 12,345 tokens",
            "https://daypass.example/#usage",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        let html = html_body(
            &content,
            "s",
            &wording(&d).1,
            "https://daypass.example/#usage",
        );
        assert!(html.contains("Acme &lt;R&amp;D&gt;") && html.contains("Bob &lt;b&gt;"));
        assert!(!html.contains("<b>"), "names are escaped: {html}");
        assert!(html.contains("href=\"https://daypass.example/#usage\""));
    }
}
