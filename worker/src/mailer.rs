//! Where e-mail goes: an SMTP server (DAYPASS_SMTP_URL: plain, STARTTLS with
//! `?tls=required`, implicit TLS with `smtps://`, credentials in the URL), or `.eml`
//! files in DAYPASS_MAIL_DIR when no SMTP server is configured.

use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;
use std::time::Duration;

pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files {
        dir: PathBuf,
        transport: AsyncFileTransport<Tokio1Executor>,
    },
}

impl Mailer {
    pub fn from_config(smtp_url: Option<&str>, mail_dir: &str) -> anyhow::Result<Mailer> {
        match smtp_url.filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| anyhow::anyhow!("DAYPASS_SMTP_URL is not a valid SMTP URL: {e}"))?
                    .timeout(Some(Duration::from_secs(20)))
                    .build();
                Ok(Mailer::Smtp(transport))
            }
            None => {
                let dir = PathBuf::from(mail_dir);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    anyhow::anyhow!("cannot create mail directory {}: {e}", dir.display())
                })?;
                Ok(Mailer::Files {
                    transport: AsyncFileTransport::new(&dir),
                    dir,
                })
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Mailer::Smtp(_) => "SMTP".to_owned(),
            Mailer::Files { dir, .. } => format!(".eml files in {}", dir.display()),
        }
    }

    /// One attempt to hand the message over; the error says why it failed.
    pub async fn send(&self, message: Message) -> Result<(), String> {
        match self {
            Mailer::Smtp(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| format!("SMTP: {e}")),
            Mailer::Files { transport, .. } => transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| format!("mail file: {e}")),
        }
    }
}
