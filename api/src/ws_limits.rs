//! GraphQL over WebSocket within limits: one connection runs at most
//! [`MAX_OPERATIONS_PER_CONNECTION`] operations at once, and one caller keeps at most
//! [`MAX_CONNECTIONS_PER_CALLER`] connections open in this process. Without them one
//! key opened 200 connections, and 300 subscriptions on one of them, each a task
//! re-reading the database at every push.
//!
//! async-graphql's `WebSocket` speaks the protocols; [`serve`] runs it between the
//! socket and the limits. The client's messages pass a gate that counts operations
//! by id (`subscribe`, or `start` in the legacy protocol, takes a place; `complete`
//! or `stop` frees it), the server's `complete` frees its id too, and an operation
//! past the cap is answered with an `error` message for its id and never starts,
//! while the connection's other operations run on. A connection past its caller's
//! cap is refused at `connection_init` and closed with
//! [`TOO_MANY_CONNECTIONS_CLOSE`]. What a connection holds is dropped with it,
//! however it ends, and that frees its place.

use crate::graphql::AppSchema;
use async_graphql::Data;
use async_graphql::http::{
    ClientMessage, WebSocket as GraphQLWebSocket, WebSocketProtocols, WsMessage,
};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt, future};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Operations (subscriptions, and queries or mutations sent over the socket) one
/// connection may run at once. The console runs one subscription, a launcher one or
/// two; an operator's dashboard watching many accounts opens more connections.
pub const MAX_OPERATIONS_PER_CONNECTION: usize = 20;

/// WebSocket connections one caller (a user, all of their keys together, or the
/// operator) may hold open in one process: a console in a few tabs and a launcher
/// on each of a few machines, with room to spare.
pub const MAX_CONNECTIONS_PER_CALLER: usize = 20;

/// The close code of a connection refused for its caller's cap (4000–4999 are the
/// application's; 429 as in HTTP's Too Many Requests).
pub const TOO_MANY_CONNECTIONS_CLOSE: u16 = 4429;

/// `extensions.reason` of an operation refused for the connection's cap, beside
/// `code: FORBIDDEN` (as `RATE_LIMITED` for the mutation rate).
pub const TOO_MANY_SUBSCRIPTIONS: &str = "TOO_MANY_SUBSCRIPTIONS";

/// The close frame's reason (at most 123 bytes).
fn too_many_connections() -> String {
    format!(
        "TOO_MANY_CONNECTIONS: at most {MAX_CONNECTIONS_PER_CALLER} open WebSocket connections per caller; close one first"
    )
}

/// The `error` message for operation `id`, refused for the connection's cap:
/// graphql-transport-ws carries a list of GraphQL errors, the legacy graphql-ws one.
fn too_many_operations(protocol: WebSocketProtocols, id: &str) -> String {
    let error = json!({
        "message": format!(
            "too many subscriptions: a connection runs at most {MAX_OPERATIONS_PER_CONNECTION} operations at once; complete one first"
        ),
        "extensions": {"code": "FORBIDDEN", "reason": TOO_MANY_SUBSCRIPTIONS},
    });
    let payload = match protocol {
        WebSocketProtocols::GraphQLWS => json!([error]),
        WebSocketProtocols::SubscriptionsTransportWS => error,
    };
    json!({"id": id, "type": "error", "payload": payload}).to_string()
}

/// A poisoned lock still counts: the counts are plain numbers and sets, never left
/// half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Open WebSocket connections per caller ([`crate::graphql::context::limit_key`]),
/// across this process.
#[derive(Clone, Default)]
pub struct CallerConnections {
    open: Arc<Mutex<HashMap<i64, usize>>>,
}

impl CallerConnections {
    /// A place among `caller`'s open connections, held until the slot is dropped;
    /// `None` when the caller holds [`MAX_CONNECTIONS_PER_CALLER`] already.
    pub fn admit(&self, caller: i64) -> Option<CallerSlot> {
        let mut open = lock(&self.open);
        let n = open.entry(caller).or_default();
        if *n >= MAX_CONNECTIONS_PER_CALLER {
            return None;
        }
        *n += 1;
        Some(CallerSlot {
            connections: self.clone(),
            caller,
        })
    }

    #[cfg(test)]
    fn open(&self, caller: i64) -> usize {
        lock(&self.open).get(&caller).copied().unwrap_or(0)
    }
}

/// One connection's place among its caller's; dropping it frees the place.
pub struct CallerSlot {
    connections: CallerConnections,
    caller: i64,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.connections.open);
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// What one connection holds against the limits.
#[derive(Default)]
struct Connection {
    /// Ids of the operations running.
    operations: HashSet<String>,
    /// Its place among its caller's connections, from `connection_init` on.
    slot: Option<CallerSlot>,
    /// `connection_init` was refused: the caller holds too many connections.
    caller_over_cap: bool,
}

impl Connection {
    /// Whether operation `id` may start. An id that is running already takes no new
    /// place: async-graphql replaces that operation.
    fn admit(&mut self, id: &str) -> bool {
        if self.operations.contains(id) {
            return true;
        }
        if self.operations.len() >= MAX_OPERATIONS_PER_CONNECTION {
            return false;
        }
        self.operations.insert(id.to_owned());
        true
    }

    fn finish(&mut self, id: &str) {
        self.operations.remove(id);
    }
}

type Shared = Arc<Mutex<Connection>>;

/// Serves one upgraded connection until either side ends it. `authenticate` reads
/// `connection_init`'s payload: the connection's data, and the caller
/// ([`crate::graphql::context::limit_key`]) it counts against; its error refuses the
/// connection as before.
pub async fn serve<Auth, AuthFut>(
    socket: WebSocket,
    schema: AppSchema,
    protocol: WebSocketProtocols,
    callers: CallerConnections,
    authenticate: Auth,
) where
    Auth: FnOnce(Value) -> AuthFut + Send + 'static,
    AuthFut: Future<Output = async_graphql::Result<(Data, i64)>> + Send + 'static,
{
    let conn = Shared::default();
    let (mut sink, frames) = socket.split();
    let messages = frames
        .take_while(|frame| future::ready(frame.is_ok()))
        .filter_map(|frame| {
            future::ready(match frame {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    Some(ClientMessage::from_bytes(m.into_data()))
                }
                _ => None,
            })
        });
    let (refusals, mut refused) = mpsc::channel::<String>(1);
    let admitted = admit_operations(messages, conn.clone(), refusals);
    let on_init = {
        let conn = conn.clone();
        move |payload| async move {
            let (data, caller) = authenticate(payload).await?;
            let mut held = lock(&conn);
            match callers.admit(caller) {
                Some(slot) => {
                    held.slot = Some(slot);
                    Ok(data)
                }
                None => {
                    tracing::warn!(
                        caller,
                        "WebSocket connection refused: the caller's cap is reached"
                    );
                    held.caller_over_cap = true;
                    Err(async_graphql::Error::new(too_many_connections()))
                }
            }
        }
    };
    let server = GraphQLWebSocket::from_message_stream(schema, admitted, protocol)
        .on_connection_init(on_init);
    futures::pin_mut!(server);
    let mut closed = false;
    loop {
        let frame = tokio::select! {
            biased;
            Some(id) = refused.next() => Message::Text(too_many_operations(protocol, &id).into()),
            message = server.next() => match message {
                Some(message) => outgoing(&conn, message),
                None => break,
            },
        };
        closed |= matches!(frame, Message::Close(_));
        if sink.send(frame).await.is_err() {
            return;
        }
    }
    // The legacy protocol refuses `connection_init` with a message: close after it.
    if !closed && lock(&conn).caller_over_cap {
        let _ = sink
            .send(close(TOO_MANY_CONNECTIONS_CLOSE, too_many_connections()))
            .await;
    }
}

/// The client's messages, but an operation past the cap: its id goes to `refusals`
/// (for [`serve`] to answer) and the message no further. `refusals` holds one id at
/// a time, so a client that subscribes past the cap faster than it reads the
/// refusals is read no faster.
fn admit_operations<S>(
    messages: S,
    conn: Shared,
    refusals: mpsc::Sender<String>,
) -> impl Stream<Item = serde_json::Result<ClientMessage>> + Send
where
    S: Stream<Item = serde_json::Result<ClientMessage>> + Send + Unpin,
{
    futures::stream::unfold((messages, refusals), move |(mut messages, mut refusals)| {
        let conn = conn.clone();
        async move {
            loop {
                let message = messages.next().await?;
                let refused = match &message {
                    Ok(ClientMessage::Start { id, .. }) => {
                        (!lock(&conn).admit(id)).then(|| id.clone())
                    }
                    Ok(ClientMessage::Stop { id }) => {
                        lock(&conn).finish(id);
                        None
                    }
                    _ => None,
                };
                match refused {
                    Some(id) => refusals.send(id).await.ok()?,
                    None => return Some((message, (messages, refusals))),
                }
            }
        }
    })
}

/// The server's message as a frame. A `complete` frees its id; the close of a
/// connection refused for its caller's cap gets its own code and reason.
fn outgoing(conn: &Shared, message: WsMessage) -> Message {
    match message {
        WsMessage::Text(text) => {
            if let Some(id) = completed_id(&text) {
                lock(conn).finish(&id);
            }
            Message::Text(text.into())
        }
        WsMessage::Close(code, reason) => {
            if lock(conn).caller_over_cap {
                close(TOO_MANY_CONNECTIONS_CLOSE, too_many_connections())
            } else {
                close(code, reason)
            }
        }
    }
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// The id of a `complete` message; anything else (a push, say) is not parsed.
/// async-graphql writes the `type` first.
fn completed_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Complete {
        id: String,
    }
    if !text.starts_with(r#"{"type":"complete""#) {
        return None;
    }
    serde_json::from_str::<Complete>(text).ok().map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_the_cap_and_a_dropped_slot_frees_its_place() {
        let callers = CallerConnections::default();
        let mut held: Vec<CallerSlot> = (0..MAX_CONNECTIONS_PER_CALLER)
            .map(|_| callers.admit(7).expect("under the cap"))
            .collect();
        assert!(callers.admit(7).is_none());
        // Another caller, the operator included, is not affected.
        assert!(callers.admit(8).is_some());
        assert!(callers.admit(-1).is_some());
        held.pop();
        assert_eq!(callers.open(7), MAX_CONNECTIONS_PER_CALLER - 1);
        held.push(callers.admit(7).expect("a place was freed"));
        drop(held);
        assert_eq!(callers.open(7), 0);
        assert!(lock(&callers.open).is_empty(), "no caller left behind");
    }

    #[test]
    fn a_connection_counts_operations_by_id() {
        let mut conn = Connection::default();
        for i in 0..MAX_OPERATIONS_PER_CONNECTION {
            assert!(conn.admit(&i.to_string()));
        }
        assert!(!conn.admit("extra"));
        // Reusing a running id replaces that operation: no new place.
        assert!(conn.admit("0"));
        conn.finish("0");
        conn.finish("never started");
        assert!(conn.admit("extra"));
        assert!(!conn.admit("one more"));
    }

    #[test]
    fn the_refusals_say_why_in_each_protocol() {
        let reason = too_many_connections();
        assert!(reason.len() <= 123, "{} bytes: {reason}", reason.len());
        assert!(reason.contains("at most 20"), "{reason}");

        let modern: Value =
            serde_json::from_str(&too_many_operations(WebSocketProtocols::GraphQLWS, "7")).unwrap();
        assert_eq!(modern["type"], "error");
        assert_eq!(modern["id"], "7");
        assert_eq!(modern["payload"][0]["extensions"]["code"], "FORBIDDEN");
        assert_eq!(
            modern["payload"][0]["extensions"]["reason"],
            TOO_MANY_SUBSCRIPTIONS
        );
        let legacy: Value = serde_json::from_str(&too_many_operations(
            WebSocketProtocols::SubscriptionsTransportWS,
            "7",
        ))
        .unwrap();
        assert_eq!(legacy["type"], "error");
        assert_eq!(legacy["payload"]["extensions"]["code"], "FORBIDDEN");
        assert!(
            legacy["payload"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 20")
        );
    }

    #[test]
    fn only_complete_messages_free_an_id() {
        assert_eq!(
            completed_id(r#"{"type":"complete","id":"3"}"#).as_deref(),
            Some("3")
        );
        assert_eq!(
            completed_id(r#"{"type":"next","id":"3","payload":{"data":null}}"#),
            None
        );
    }
}
