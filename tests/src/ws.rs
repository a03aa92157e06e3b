//! A small GraphQL-over-WebSocket client for `/graphql/ws`: the graphql-transport-ws
//! protocol (and the legacy graphql-ws one), enough to subscribe and read pushes.

use crate::TestServer;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The modern protocol (`next`, `complete`) and the legacy one (`data`, `stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    GraphqlTransportWs,
    LegacyGraphqlWs,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::GraphqlTransportWs => "graphql-transport-ws",
            Protocol::LegacyGraphqlWs => "graphql-ws",
        }
    }
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A protocol message (`connection_ack`, `next`, `complete`, …).
    Message(Value),
    /// The server closed the connection, with its close frame if it sent one.
    Closed(Option<(u16, String)>),
}

pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    protocol: Protocol,
    next_id: u32,
    /// Messages that arrived while waiting for a pong, in order.
    early: VecDeque<Incoming>,
}

/// The subscription of the contract, with what the tests read of the account.
pub const BALANCE_CHANGED: &str =
    "subscription($a: ID) { balanceChanged(accountId: $a) { id name balance } }";

/// How long a push may take: the SQLite feed reads the ledger every 250 ms.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to listen before concluding that nothing is coming.
pub const QUIET: Duration = Duration::from_millis(1500);

impl WsClient {
    /// Opens `/graphql/ws`, with `Authorization: Bearer <header_key>` on the upgrade
    /// request when given. A refused upgrade is the error.
    pub async fn connect(
        server: &TestServer,
        protocol: Protocol,
        header_key: Option<&str>,
    ) -> Result<WsClient, tungstenite::Error> {
        let url = format!(
            "{}/graphql/ws",
            server.base_url.replacen("http://", "ws://", 1)
        );
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(protocol.name()),
        );
        if let Some(key) = header_key {
            headers.insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
            );
        }
        let (socket, response) = tokio_tungstenite::connect_async(request).await?;
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol.name()),
            "the server speaks the protocol asked for"
        );
        Ok(WsClient {
            socket,
            protocol,
            next_id: 0,
            early: VecDeque::new(),
        })
    }

    /// Connects with graphql-transport-ws, sends the key in `connection_init` and
    /// waits for `connection_ack`.
    pub async fn open(server: &TestServer, key: &str) -> WsClient {
        let mut ws = Self::connect(server, Protocol::GraphqlTransportWs, None)
            .await
            .expect("WebSocket upgrade");
        let answer = ws
            .init(json!({"Authorization": format!("Bearer {key}")}))
            .await;
        assert_eq!(
            answer,
            Incoming::Message(json!({"type": "connection_ack"})),
            "connection_init with a valid key is acknowledged"
        );
        ws
    }

    /// Sends `connection_init` with `payload` and returns the answer.
    pub async fn init(&mut self, payload: Value) -> Incoming {
        self.send(json!({"type": "connection_init", "payload": payload}))
            .await;
        self.recv(PUSH_TIMEOUT)
            .await
            .expect("an answer to connection_init")
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("send a WebSocket message");
    }

    /// The next protocol message or the close, skipping pings; `None` after `timeout`
    /// of silence.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        if let Some(early) = self.early.pop_front() {
            return Some(early);
        }
        self.recv_frame(timeout).await
    }

    async fn recv_frame(&mut self, timeout: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Incoming::Closed(None)),
                Ok(Some(Err(e))) => match e {
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                        return Some(Incoming::Closed(None));
                    }
                    tungstenite::Error::Protocol(_) | tungstenite::Error::Io(_) => {
                        return Some(Incoming::Closed(None));
                    }
                    other => panic!("WebSocket error: {other}"),
                },
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
                    if value["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Some(Incoming::Message(value));
                }
                Message::Close(frame) => {
                    return Some(Incoming::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ));
                }
                _ => continue,
            }
        }
    }

    /// Subscribes and returns the operation id once the server has started the
    /// subscription (a ping sent after it is answered first or just before).
    pub async fn subscribe(&mut self, query: &str, variables: Value) -> String {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let kind = match self.protocol {
            Protocol::GraphqlTransportWs => "subscribe",
            Protocol::LegacyGraphqlWs => "start",
        };
        self.send(json!({
            "id": id, "type": kind,
            "payload": {"query": query, "variables": variables},
        }))
        .await;
        self.send(json!({"type": "ping"})).await;
        loop {
            match self.recv_frame(PUSH_TIMEOUT).await {
                Some(Incoming::Message(m)) if m["type"] == "pong" => break,
                // The subscription may already have answered (an error, say).
                Some(other) => self.early.push_back(other),
                None => panic!("no pong within {PUSH_TIMEOUT:?} after subscribing"),
            }
        }
        // The server starts a subscription when it has nothing else to read, at the
        // latest right after sending that pong: give it a moment to run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        id
    }

    /// Subscribes to `balanceChanged` (of `account_id` when given).
    pub async fn subscribe_balance(&mut self, account_id: Option<&str>) -> String {
        self.subscribe(BALANCE_CHANGED, json!({"a": account_id}))
            .await
    }

    /// The next push for `id`: the `payload` of a `next` (`data` in the legacy
    /// protocol) message. Panics on anything else or on silence.
    pub async fn next_payload(&mut self, id: &str) -> Value {
        let data_type = match self.protocol {
            Protocol::GraphqlTransportWs => "next",
            Protocol::LegacyGraphqlWs => "data",
        };
        match self.recv(PUSH_TIMEOUT).await {
            Some(Incoming::Message(m)) if m["type"] == data_type && m["id"] == id => {
                m["payload"].clone()
            }
            Some(other) => panic!("expected a push for subscription {id}, got {other:?}"),
            None => panic!("no push for subscription {id} within {PUSH_TIMEOUT:?}"),
        }
    }

    /// The next `balanceChanged` push for `id`, which must carry no errors.
    pub async fn next_balance(&mut self, id: &str) -> Value {
        let payload = self.next_payload(id).await;
        assert!(
            payload.get("errors").is_none(),
            "unexpected errors in a push: {payload:#}"
        );
        payload["data"]["balanceChanged"].clone()
    }

    /// The `complete` that ends subscription `id`.
    pub async fn expect_complete(&mut self, id: &str) {
        match self.recv(PUSH_TIMEOUT).await {
            Some(Incoming::Message(m)) if m["type"] == "complete" && m["id"] == id => {}
            other => panic!("expected subscription {id} to complete, got {other:?}"),
        }
    }

    /// The `error` message that refuses operation `id`: its payload (a list of
    /// GraphQL errors in graphql-transport-ws, one error in the legacy protocol).
    pub async fn expect_error(&mut self, id: &str) -> Value {
        match self.recv(PUSH_TIMEOUT).await {
            Some(Incoming::Message(m)) if m["type"] == "error" && m["id"] == id => {
                m["payload"].clone()
            }
            other => panic!("expected an error for operation {id}, got {other:?}"),
        }
    }

    /// Ends operation `id` (`complete`, or `stop` in the legacy protocol) and waits
    /// for the server's `complete`.
    pub async fn complete(&mut self, id: &str) {
        let kind = match self.protocol {
            Protocol::GraphqlTransportWs => "complete",
            Protocol::LegacyGraphqlWs => "stop",
        };
        self.send(json!({"id": id, "type": kind})).await;
        self.expect_complete(id).await;
    }

    /// Closes the connection the proper way (a close frame, then the server's) and
    /// returns once the server has answered or gone.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        while let Some(Incoming::Message(_)) = self.recv_frame(PUSH_TIMEOUT).await {}
    }

    /// Asserts that nothing arrives for [`QUIET`].
    pub async fn expect_quiet(&mut self, why: &str) {
        if let Some(m) = self.recv(QUIET).await {
            panic!("{why}: expected no message, got {m:?}");
        }
    }
}

/// The close code of a refused `connection_init` in graphql-transport-ws: async-graphql
/// closes with 1002 and the reason it was refused.
pub fn is_refusal(answer: &Incoming) -> bool {
    matches!(answer, Incoming::Closed(Some((code, reason)))
        if *code == u16::from(CloseCode::Protocol) && reason.starts_with("UNAUTHENTICATED"))
}
