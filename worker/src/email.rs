//! How each notification reads as an e-mail: subject, plain text and HTML.

use chrono::SecondsFormat;
use daypass_domain::notifications::{Delivery, NotificationKind};
use daypass_domain::scheduled_reports::ReportSchedule;
use lettre::Message;
use lettre::message::{Mailbox, MessageBuilder, MultiPart, header};

/// Sender and links for every e-mail.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub from: String,
    pub public_url: String,
}

/// The Message-ID of a notification's e-mail: the same on every attempt, so a
/// resend after a crash is recognisable as the same message.
pub fn message_id(id: i32, public_url: &str) -> String {
    let host = public_url
        .split("://")
        .nth(1)
        .unwrap_or(public_url)
        .split(['/', ':'])
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or("daypass.local");
    format!("<notification-{id}@{host}>")
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `n` with thousands separators: 12,345.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The console page that shows what an e-mail is about.
fn page_of(d: &Delivery) -> &'static str {
    match d.kind {
        NotificationKind::LowBalance if d.facts.alert.is_some() => "alerts",
        NotificationKind::WebhookDisabled => "alerts",
        NotificationKind::ScheduledReport => "usage",
        NotificationKind::LowBalance
        | NotificationKind::TokensExhausted
        | NotificationKind::ExpiryReminder => "balance",
    }
}

/// Subject, and body paragraphs (plain text; HTML is derived from them).
pub(crate) fn wording(d: &Delivery) -> (String, Vec<String>) {
    let f = &d.facts;
    let name = &f.account_name;
    match d.kind {
        NotificationKind::LowBalance => {
            let threshold = thousands(f.threshold.unwrap_or_default());
            let which = match &f.alert {
                Some(a) if a.unit == "PERCENT" => format!(
                    "the alert threshold of {threshold} tokens ({}% of the tokens bought in unexpired lots)",
                    a.setting
                ),
                Some(_) => format!("the alert threshold of {threshold} tokens"),
                None => format!("its low-balance threshold of {threshold} tokens"),
            };
            (
                format!(
                    "Daypass: {name} is low on tokens ({} left)",
                    thousands(f.balance)
                ),
                vec![
                    format!("The token balance of {name} fell below {which}."),
                    format!("Balance now: {} tokens.", thousands(f.balance)),
                    "Buy tokens to keep your users' products open.".to_owned(),
                ],
            )
        }
        NotificationKind::TokensExhausted => (
            format!("Daypass: {name} has run out of tokens"),
            vec![
                format!(
                    "A user of {name} was refused a product because the account has too few tokens."
                ),
                format!("Balance now: {} tokens.", thousands(f.balance)),
                "Access returns as soon as tokens are bought.".to_owned(),
            ],
        ),
        NotificationKind::WebhookDisabled => {
            let (url, since, error) = f.webhook.as_ref().map_or_else(
                || (String::new(), String::new(), None),
                |w| {
                    (
                        w.url.clone(),
                        w.failing_since.to_rfc3339_opts(SecondsFormat::Secs, true),
                        w.last_error.clone(),
                    )
                },
            );
            let mut lines = vec![
                format!(
                    "Daypass stopped sending webhooks of {name} to {url}: every delivery has failed since {since}."
                ),
                "Events are kept: fix the endpoint, enable it again and replay the deliveries you need."
                    .to_owned(),
            ];
            if let Some(error) = error {
                lines.insert(1, format!("The last attempt: {error}."));
            }
            (
                format!("Daypass: a webhook endpoint of {name} was disabled"),
                lines,
            )
        }
        // The subject and the opening line; the figures and the attachment come from
        // the report's content (`report_email`).
        NotificationKind::ScheduledReport => {
            let (every, from, to) = match &f.report {
                Some(r) => {
                    let every = match r.schedule.parse() {
                        Ok(ReportSchedule::Monthly) => "monthly",
                        _ => "weekly",
                    };
                    (every, r.from.to_string(), r.to.to_string())
                }
                None => ("", String::new(), String::new()),
            };
            (
                format!("Daypass: {every} usage report of {name}, {from} to {to}"),
                vec![format!(
                    "Usage of {name} from {from} to {to} (UTC days, both included)."
                )],
            )
        }
        NotificationKind::ExpiryReminder => {
            let mut lines = vec![format!(
                "Tokens of {name} expire soon; unused tokens do not roll over."
            )];
            for lot in &f.lots {
                lines.push(format!(
                    "Lot {}: {} tokens left, expiring {}.",
                    lot.lot_id,
                    thousands(lot.remaining),
                    lot.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
                ));
            }
            lines.push(format!("Balance now: {} tokens.", thousands(f.balance)));
            let left: i64 = f.lots.iter().map(|l| l.remaining).sum();
            (
                format!(
                    "Daypass: {} tokens of {name} expire within 90 days",
                    thousands(left)
                ),
                lines,
            )
        }
    }
}

/// The link to the console page an e-mail is about.
pub(crate) fn link_of(d: &Delivery, settings: &MailSettings) -> String {
    format!(
        "{}/#{}",
        settings.public_url.trim_end_matches('/'),
        page_of(d)
    )
}

/// The e-mail for one delivery, to every recipient.
pub fn render(d: &Delivery, settings: &MailSettings) -> Result<Message, String> {
    let (subject, paragraphs) = wording(d);
    let link = link_of(d, settings);
    let text = format!("{}\n\nOpen Daypass: {link}\n", paragraphs.join("\n\n"));
    let html = format!(
        "<!doctype html><html><body><h1>{}</h1>{}<p><a href=\"{}\">Open Daypass</a></p></body></html>",
        escape(&subject),
        paragraphs
            .iter()
            .map(|p| format!("<p>{}</p>", escape(p)))
            .collect::<String>(),
        escape(&link)
    );
    envelope(d, settings, subject)?
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| format!("building the e-mail: {e}"))
}

/// Sender, subject, Message-ID and recipients of a delivery's e-mail.
pub(crate) fn envelope(
    d: &Delivery,
    settings: &MailSettings,
    subject: String,
) -> Result<MessageBuilder, String> {
    let from: Mailbox = settings
        .from
        .parse()
        .map_err(|e| format!("DAYPASS_MAIL_FROM {:?}: {e}", settings.from))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(message_id(d.id, &settings.public_url)))
        .header(header::MIME_VERSION_1_0);
    // An alert rule's recipients may be people outside the account: none of them
    // sees the others' addresses.
    let hidden = d.facts.alert.is_some();
    let mut addressed = 0;
    for r in &d.recipients {
        // One address the mail system refuses must not silence the others.
        match r.parse::<Mailbox>() {
            Ok(mailbox) if hidden => builder = builder.bcc(mailbox),
            Ok(mailbox) => builder = builder.to(mailbox),
            Err(e) => {
                tracing::warn!(notification = d.id, error = %e, "a recipient that cannot be mailed is left out");
                continue;
            }
        }
        addressed += 1;
    }
    if addressed == 0 {
        return Err("no recipient can be mailed".to_owned());
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use daypass_domain::notifications::Facts;

    #[test]
    fn numbers_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1234567), "-1,234,567");
    }

    #[test]
    fn low_balance_mail_names_account_balance_threshold_and_link() {
        let d = Delivery {
            id: 42,
            kind: NotificationKind::LowBalance,
            recipients: vec!["ann@acme.test".into()],
            facts: Facts {
                account_id: 1,
                account_name: "Acme <R&D>".into(),
                balance: 15,
                threshold: Some(20),
                lots: vec![],
                at: "2026-01-01T00:00:00Z".parse().unwrap(),
                ..Facts::default()
            },
            attempt: 1,
        };
        let settings = MailSettings {
            from: "Daypass <no-reply@localhost>".into(),
            public_url: "https://daypass.example/".into(),
        };
        let raw = String::from_utf8(render(&d, &settings).unwrap().formatted()).unwrap();
        assert!(raw.contains("Message-ID: <notification-42@daypass.example>"));
        assert!(raw.contains("To: ann@acme.test"));
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
        assert!(raw.contains("threshold of 20 tokens"));
        assert!(
            raw.contains("Acme &lt;R&amp;D&gt;"),
            "HTML part escapes the name"
        );
        assert!(raw.contains("https://daypass.example/#balance"));
    }
}
