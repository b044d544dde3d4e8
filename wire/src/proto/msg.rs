//! The messages of the wire protocol. Variant order is part of the protocol
//! (rkyv archives an enum's variant as its index): append new variants at the
//! end only, and bump the protocol version for any other change.

use rkyv::{Archive, Deserialize, Serialize};

/// The fields of an append, as in the HTTP body of
/// `POST /v1/sessions/{id}/append`. `payload`, `metadata` and `refs` are JSON
/// documents (UTF-8 bytes); `None` means the field is absent.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct AppendFields {
    /// `type`: required, non-empty.
    pub event_type: String,
    /// `payload`: a JSON object.
    pub payload: Vec<u8>,
    pub producer_id: String,
    /// At least 1.
    pub producer_seq: u64,
    pub actor: Option<String>,
    pub source: Option<String>,
    /// A JSON object.
    pub metadata: Option<Vec<u8>>,
    /// A JSON object.
    pub refs: Option<Vec<u8>>,
    pub idempotency_key: Option<String>,
    pub expected_seq: Option<u64>,
}

/// Client to server. Every message but `Hello` needs a prior successful
/// `Hello`; every request carries a client-chosen `request_id`, echoed in its
/// answer. Ids need not be unique, but answers can only be told apart if they
/// are; the client library numbers requests 1, 2, 3, ...
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// Kind 0. Authenticates the connection: `token` is a JWT (auth mode
    /// `jwt`), or `None` (mode `none`). Answered by `HelloOk` or `Error`.
    Hello {
        request_id: u64,
        token: Option<String>,
        /// Free-form client name and version, for logs.
        client: String,
    },
    /// Kind 1. `POST /v1/sessions`: answered by `SessionCreated` or `Error`.
    CreateSession {
        request_id: u64,
        id: Option<String>,
        title: Option<String>,
        /// A JSON object.
        metadata: Option<Vec<u8>>,
    },
    /// Kind 2. `POST /v1/sessions/{session}/append`: answered by `AppendAck`
    /// or `Error`.
    Append {
        request_id: u64,
        session: String,
        fields: AppendFields,
    },
    /// Kind 3. A tail (`GET /v1/sessions/{session}/tail?cursor=&batch_size=`):
    /// every event with `seq > cursor`, replayed then live, in order and
    /// without gaps, as `Events` messages of at most `max_batch` events
    /// carrying `subscription = request_id`. Ends with an `Error` carrying
    /// `request_id` (or `Unsubscribed`).
    Subscribe {
        request_id: u64,
        session: String,
        cursor: u64,
        /// 1..=1000.
        max_batch: u32,
    },
    /// Kind 4. Ends the subscription started by the `Subscribe` whose
    /// request id was `subscription`; answered by `Unsubscribed`.
    Unsubscribe { request_id: u64, subscription: u64 },
    /// Kind 5. Answered by `Pong` with the same `payload`.
    Ping { request_id: u64, payload: u64 },
}

/// One event of a subscription: its seq and its JSON document, exactly the
/// text frame the HTTP tail sends for it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub json: Vec<u8>,
}

/// Server to client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// Kind 0. `Hello` accepted.
    HelloOk {
        request_id: u64,
        /// The version in use (also computable from the prefaces).
        version: u16,
        /// This node's id (`name@host:port`), as used in `leader` hints.
        node: String,
        /// Largest frame payload the server accepts.
        max_frame: u32,
        /// Requests a connection may have unanswered; more are not read
        /// until answers have been written (TCP backpressure).
        max_inflight: u32,
        /// Live subscriptions per connection.
        max_subscriptions: u32,
        /// Largest `max_batch` of a subscription.
        max_batch: u32,
    },
    /// Kind 1. The session exists now.
    SessionCreated {
        request_id: u64,
        id: String,
        /// The HTTP 201 body (`{"id":…,"title":…,…}`).
        json: Vec<u8>,
    },
    /// Kind 2. The append is committed (or was a duplicate: `deduped`).
    AppendAck {
        request_id: u64,
        seq: u64,
        last_seq: u64,
        deduped: bool,
        /// When another node leads the session's group: its node id. Sending
        /// the session's appends to that node saves a hop.
        leader: Option<String>,
    },
    /// Kind 3. A request failed, or a subscription ended (`request_id` = its
    /// id), or (with `request_id` 0) the connection is being closed. `code`
    /// is the HTTP API's error name (`session_not_found`, ...) or one of the
    /// protocol's own (docs/wire-protocol.md).
    Error {
        request_id: u64,
        code: String,
        message: String,
        /// HTTP status the same failure has on the HTTP API (0 for protocol
        /// errors).
        status: u16,
        /// The group leader's node id when known (for `raft_*` failures).
        leader: Option<String>,
    },
    /// Kind 4. Events of a subscription, `seq` ascending and contiguous.
    Events {
        subscription: u64,
        events: Vec<Event>,
    },
    /// Kind 5. Answer to `Unsubscribe`.
    Unsubscribed { request_id: u64, subscription: u64 },
    /// Kind 6. Answer to `Ping`.
    Pong { request_id: u64, payload: u64 },
    /// Kind 7. The node is draining or stopping: requests already read are
    /// still answered, nothing more is read, then the server closes.
    /// Reconnect elsewhere (subscriptions resume from their last seq).
    Goaway { code: String, message: String },
}

impl ClientMsg {
    pub fn request_id(&self) -> u64 {
        match self {
            ClientMsg::Hello { request_id, .. }
            | ClientMsg::CreateSession { request_id, .. }
            | ClientMsg::Append { request_id, .. }
            | ClientMsg::Subscribe { request_id, .. }
            | ClientMsg::Unsubscribe { request_id, .. }
            | ClientMsg::Ping { request_id, .. } => *request_id,
        }
    }

    /// Short name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::CreateSession { .. } => "create_session",
            ClientMsg::Append { .. } => "append",
            ClientMsg::Subscribe { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } => "unsubscribe",
            ClientMsg::Ping { .. } => "ping",
        }
    }
}

impl ServerMsg {
    /// The request this answers (0 for `Goaway`; the subscription for `Events`).
    pub fn request_id(&self) -> u64 {
        match self {
            ServerMsg::HelloOk { request_id, .. }
            | ServerMsg::SessionCreated { request_id, .. }
            | ServerMsg::AppendAck { request_id, .. }
            | ServerMsg::Error { request_id, .. }
            | ServerMsg::Unsubscribed { request_id, .. }
            | ServerMsg::Pong { request_id, .. } => *request_id,
            ServerMsg::Events { subscription, .. } => *subscription,
            ServerMsg::Goaway { .. } => 0,
        }
    }

    /// A protocol-level error (no HTTP equivalent).
    pub fn protocol_error(request_id: u64, code: &str, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            request_id,
            code: code.to_owned(),
            message: message.into(),
            status: 0,
            leader: None,
        }
    }
}

/// Error codes of the protocol itself (the HTTP API's names are used for
/// everything the HTTP API can also answer).
pub mod codes {
    /// A frame failed its checksum, was truncated or is not a valid message.
    pub const INVALID_FRAME: &str = "invalid_frame";
    /// A frame's length is above the announced `max_frame`.
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    /// A request other than `Hello` before `Hello` succeeded, or a second `Hello`.
    pub const HELLO_REQUIRED: &str = "hello_required";
    pub const DUPLICATE_HELLO: &str = "duplicate_hello";
    /// `Hello` did not arrive in time, or the connection was idle too long.
    pub const TIMEOUT: &str = "timeout";
    /// More live subscriptions than `max_subscriptions`.
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
    /// `Unsubscribe` of an unknown subscription, or `Subscribe` reusing a live one's id.
    pub const UNKNOWN_SUBSCRIPTION: &str = "unknown_subscription";
    pub const DUPLICATE_SUBSCRIPTION: &str = "duplicate_subscription";
    /// The token expired: the connection is closed (Goaway code).
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// Goaway codes.
    pub const DRAINING: &str = "draining";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// Client-side only: the connection was lost before an answer arrived.
    pub const CONNECTION_LOST: &str = "connection_lost";
}
