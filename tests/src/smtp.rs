//! A real SMTP server on loopback for e-mail tests: it speaks enough of RFC 5321
//! (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) for lettre, keeps every message,
//! and can be switched "down" (it then answers 421 and hangs up) or slow (it keeps a
//! message, then waits before confirming it, as a server under load would).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub raw: String,
    pub received_at: Instant,
}

impl ReceivedMail {
    /// A message read from an `.eml` file (the envelope taken from its headers).
    pub fn from_raw(raw: String) -> ReceivedMail {
        let (from, to) = {
            let msg = mail_parser::MessageParser::default()
                .parse(raw.as_bytes())
                .expect("a parsable message");
            let addrs = |a: Option<&mail_parser::Address>| -> Vec<String> {
                a.map(|a| {
                    a.iter()
                        .filter_map(|x| x.address().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
            };
            (addrs(msg.from()).join(","), addrs(msg.to()))
        };
        ReceivedMail {
            from,
            to,
            raw,
            received_at: Instant::now(),
        }
    }

    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(self.raw.as_bytes())
            .expect("a parsable message")
    }
    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_owned()
    }
    /// The Message-ID as written in the header, with its angle brackets.
    pub fn message_id(&self) -> String {
        let id = self.parsed().message_id().unwrap_or_default().to_owned();
        if id.is_empty() || id.starts_with('<') {
            id
        } else {
            format!("<{id}>")
        }
    }
    pub fn text(&self) -> String {
        self.parsed()
            .body_text(0)
            .map(|t| t.into_owned())
            .unwrap_or_default()
    }
    pub fn html(&self) -> String {
        self.parsed()
            .body_html(0)
            .map(|t| t.into_owned())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<ReceivedMail>>>,
    down: Arc<AtomicBool>,
    data_delay_ms: Arc<AtomicU64>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP");
        let port = listener.local_addr().unwrap().port();
        let server = SmtpServer {
            port,
            inbox: Arc::default(),
            down: Arc::default(),
            data_delay_ms: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    break;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(socket).await;
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// While down, every connection is refused with 421, and a session already open
    /// (a client's pooled connection) answers its next command with 421 and hangs up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// After the end of DATA the message is kept at once, but the reply confirming it
    /// comes only after `delay` (a slow server; a client killed meanwhile has handed
    /// the message over without learning so). Zero turns it off.
    pub fn set_data_delay(&self, delay: Duration) {
        self.data_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.inbox.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived (or panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} e-mails within {timeout:?}, got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn session(&self, socket: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read);
        if self.down.load(Ordering::SeqCst) {
            write
                .write_all(b"421 localhost Service not available\r\n")
                .await?;
            return Ok(());
        }
        write
            .write_all(b"220 localhost ESMTP daypass-test\r\n")
            .await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_owned();
            let upper = cmd.to_ascii_uppercase();
            if self.down.load(Ordering::SeqCst) {
                write
                    .write_all(b"421 localhost Service not available, closing channel\r\n")
                    .await?;
                return Ok(());
            }
            if upper.starts_with("EHLO") {
                write
                    .write_all(b"250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await?;
            } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                write.write_all(b"250 OK\r\n").await?;
            } else if upper.starts_with("MAIL FROM:") {
                from = address(&cmd[10..]);
                to.clear();
                write.write_all(b"250 OK\r\n").await?;
            } else if upper.starts_with("RCPT TO:") {
                to.push(address(&cmd[8..]));
                write.write_all(b"250 OK\r\n").await?;
            } else if upper == "DATA" {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut raw = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Undo dot-stuffing.
                    raw.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                self.inbox.lock().unwrap().push(ReceivedMail {
                    from: from.clone(),
                    to: to.clone(),
                    raw,
                    received_at: Instant::now(),
                });
                let delay = self.data_delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                write.write_all(b"250 OK queued\r\n").await?;
            } else if upper.starts_with("RSET") {
                from.clear();
                to.clear();
                write.write_all(b"250 OK\r\n").await?;
            } else if upper.starts_with("QUIT") {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            } else {
                write.write_all(b"502 Command not implemented\r\n").await?;
            }
        }
    }
}

/// Every `.eml` file in `dir` (the file mailer's output), oldest first.
pub fn mail_files(dir: &std::path::Path) -> Vec<ReceivedMail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| {
            let modified = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (modified, p)
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
        .map(ReceivedMail::from_raw)
        .collect()
}

fn address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(a, _)| a)
        .unwrap_or(arg);
    inner.trim().to_owned()
}
