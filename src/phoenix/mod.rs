//! The Phoenix Channels socket of the current API generation:
//! `GET /v1/socket/websocket?vsn=2.0.0&token=<jwt>` (docs/api.md, "Phoenix
//! socket").
//!
//! One WebSocket multiplexes channels: `tail:<session_id>` ([`tail`]) and
//! `lifecycle` ([`lifecycle`]). The socket authenticates once, at the handshake,
//! from the `token` parameter only (absent in auth mode `none`; `access_token`
//! is refused, as upstream does); a missing or invalid token answers 403 and no
//! upgrade.
//!
//! ```text
//!  client ──frames──> reader task ──WsEvent──> socket loop ──direct replies──> writer
//!                                                │  heartbeat, unmatched topic,
//!                                                │  phx_leave of no channel
//!                                  phx_join ─────┴──> channel task (one per topic)
//!                                                       join checks, reply, pushes
//!                                                       ──bounded out queue──> socket loop ──> writer
//! ```
//!
//! Memory per socket is bounded: the reader keeps at most one text message of
//! [`MAX_MESSAGE`] bytes, channel tasks share an out queue of [`OUT_DEPTH`]
//! frames (each at most about 1 MiB of events) and wait when it is full, so a
//! slow client makes its tails fall behind and resume by replay (bounded
//! subscription buffers) rather than grow memory; a client that stops reading
//! for the write timeout loses the socket. At most [`MAX_CHANNELS`] channels
//! per socket.

pub mod frame;
pub mod lifecycle;
pub mod tail;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use bytes::Bytes;
use serde_json::Value;

use self::frame::{encode, reason_json, reply_payload, Inbound, Vsn};
use crate::api::principal::AuthContext;
use crate::api::query::parse_query;
use crate::http::{error_response, Reply, Request, Response, WebSocket, WsEvent, WsWriter};
use crate::node::gateway::Gateway;

/// Largest client message (joins and heartbeats are small).
pub const MAX_MESSAGE: usize = starcite_wire::limits::WS_INBOUND_FRAME;
/// Frames queued from channel tasks to the socket writer.
pub const OUT_DEPTH: usize = 32;
/// Channels one socket may have joined at once.
pub const MAX_CHANNELS: usize = 256;
/// Queued frames written together in one write.
const WRITE_BURST: usize = 64;

const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_INVALID: u16 = 1007;

thread_local! {
    /// This core's gateway: channel tasks outlive the handler call that
    /// upgraded the socket, so they hold an `Rc` of it.
    static GATEWAY: RefCell<Weak<Gateway>> = const { RefCell::new(Weak::new()) };
}

/// Registers the core's gateway (once per core, at start).
pub fn install(gw: &Rc<Gateway>) {
    GATEWAY.with(|g| *g.borrow_mut() = Rc::downgrade(gw));
}

/// What every channel of one socket shares.
pub struct SocketCtx {
    pub gw: Rc<Gateway>,
    pub vsn: Vsn,
    pub auth: AuthContext,
    /// The token's `exp` (Unix seconds); channels end with `token_expired` then.
    pub expires_at: Option<u64>,
    /// Channel tasks → writer.
    pub out: flume::Sender<Bytes>,
    /// Channel tasks → socket loop: `(topic, generation)` of a channel that ended.
    pub done: flume::Sender<(String, u64)>,
}

impl SocketCtx {
    pub fn frame(
        &self,
        join_ref: &Value,
        msg_ref: &Value,
        topic: &str,
        event: &str,
        payload: &[u8],
    ) -> Bytes {
        encode(self.vsn, join_ref, msg_ref, topic, event, payload)
    }
}

/// What the socket loop tells a channel task (dropping the sender stops it
/// silently: the socket closed, or a duplicate join replaced it).
pub enum Ctl {
    /// `phx_leave`: reply ok to this ref, send `phx_close`, stop.
    Leave(Value),
}

struct Joined {
    generation: u64,
    ctl: flume::Sender<Ctl>,
    join_ref: Value,
}

fn forbidden(message: &str) -> Response {
    error_response(403, "unauthorized", message)
}

/// The handshake: version, authentication, then the upgrade.
pub async fn upgrade(req: &Request) -> Reply {
    let Some(gw) = GATEWAY.with(|g| g.borrow().upgrade()) else {
        return Reply::Http(error_response(
            503,
            "raft_unavailable",
            "the node is not serving sockets",
        ));
    };
    if !req.is_websocket_upgrade() {
        return Reply::Http(error_response(
            400,
            "invalid_websocket_upgrade",
            "WebSocket upgrade required",
        ));
    }
    let query = parse_query(req.query.as_deref().unwrap_or("").as_bytes());
    let param = |name: &str| query.get(name);
    let vsn = match param("vsn") {
        None => Vsn::parse(None),
        Some(Value::String(v)) => Vsn::parse(Some(v)),
        Some(_) => None,
    };
    let Some(vsn) = vsn else {
        return Reply::Http(error_response(
            400,
            "unsupported_vsn",
            "vsn must be 1.x or 2.x (Phoenix JSON serializers)",
        ));
    };
    if param("access_token").is_some() {
        return Reply::Http(forbidden(
            "the socket authenticates with the token parameter, not access_token",
        ));
    }
    let (auth, expires_at) = match &gw.auth {
        None => (AuthContext::none(), None),
        Some(service) => {
            let token = match param("token") {
                Some(Value::String(t)) if !t.trim().is_empty() => t.trim().to_owned(),
                _ => return Reply::Http(forbidden("missing token")),
            };
            match service.authenticate(token).await {
                Ok(a) => (a.context, Some(a.expires_at)),
                Err(_) => return Reply::Http(forbidden("invalid token")),
            }
        }
    };
    Reply::WebSocket(Box::new(move |ws| {
        Box::pin(run_socket(ws, gw, vsn, auth, expires_at))
    }))
}

async fn run_socket(
    ws: WebSocket,
    gw: Rc<Gateway>,
    vsn: Vsn,
    auth: AuthContext,
    expires_at: Option<u64>,
) {
    let (mut reader, mut writer) = ws.split_keeping_text(MAX_MESSAGE);
    let (out_tx, out_rx) = flume::bounded::<Bytes>(OUT_DEPTH);
    let (done_tx, done_rx) = flume::unbounded::<(String, u64)>();
    let shutdown = gw.shutdown.clone();
    let ctx = Rc::new(SocketCtx {
        gw,
        vsn,
        auth,
        expires_at,
        out: out_tx,
        done: done_tx,
    });
    let mut socket = Socket {
        ctx,
        channels: HashMap::new(),
        generation: Cell::new(0),
        direct: Vec::new(),
    };
    let close = loop {
        monoio::select! {
            inbound = reader.next() => match inbound {
                WsEvent::Text(text) => {
                    let Some(msg) = frame::decode(&text) else {
                        break Some((CLOSE_INVALID, "invalid_message"));
                    };
                    socket.handle(msg);
                }
                WsEvent::Message => break Some((CLOSE_UNSUPPORTED, "binary_not_supported")),
                WsEvent::Ping(payload) => match writer.send_pong(payload).await {
                    Ok(()) => {}
                    Err(_) => break None,
                },
                WsEvent::Pong => {}
                WsEvent::Close(_) => break Some((CLOSE_NORMAL, "")),
                WsEvent::Closed => break reader.suggested_close_code().map(|c| (c, "")),
            },
            first = out_rx.recv_async() => {
                let Ok(first) = first else { break None };
                socket.direct.push(first);
                while socket.direct.len() < WRITE_BURST {
                    let Ok(more) = out_rx.try_recv() else { break };
                    socket.direct.push(more);
                }
            },
            ended = done_rx.recv_async() => {
                if let Ok((topic, generation)) = ended {
                    if socket.channels.get(&topic).is_some_and(|c| c.generation == generation) {
                        socket.channels.remove(&topic);
                    }
                }
            },
            _ = shutdown.wait() => break Some((CLOSE_GOING_AWAY, "going_away")),
        }
        if !socket.flush(&mut writer).await {
            break None;
        }
    };
    // Stop every channel task before closing.
    socket.channels.clear();
    if let Some((code, reason)) = close {
        let _ = writer.close(code, reason).await;
    }
}

struct Socket {
    ctx: Rc<SocketCtx>,
    channels: HashMap<String, Joined>,
    generation: Cell<u64>,
    /// Frames to write now (the socket loop's own replies, then queued pushes).
    direct: Vec<Bytes>,
}

impl Socket {
    async fn flush(&mut self, writer: &mut WsWriter) -> bool {
        if self.direct.is_empty() {
            return true;
        }
        let frames = std::mem::take(&mut self.direct);
        writer.send_texts(frames).await.is_ok()
    }

    fn reply(&mut self, join_ref: &Value, msg: &Inbound, ok: bool, response: &str) {
        let f = self.ctx.frame(
            join_ref,
            &msg.msg_ref,
            &msg.topic,
            "phx_reply",
            &reply_payload(ok, response),
        );
        self.direct.push(f);
    }

    /// Phoenix's answer to a message for a topic it cannot route (no join_ref).
    fn unmatched(&mut self, msg: &Inbound) {
        self.reply(&Value::Null, msg, false, &reason_json("unmatched topic"));
    }

    fn handle(&mut self, msg: Inbound) {
        if msg.topic == "phoenix" && msg.event == "heartbeat" {
            self.reply(&Value::Null, &msg, true, "{}");
            return;
        }
        match msg.event.as_str() {
            "phx_join" => self.join(msg),
            "phx_leave" => match self.channels.remove(&msg.topic) {
                Some(joined) => {
                    if joined
                        .ctl
                        .try_send(Ctl::Leave(msg.msg_ref.clone()))
                        .is_err()
                    {
                        // The task is gone already: answer for it.
                        self.reply(&joined.join_ref, &msg, true, "{}");
                    }
                }
                None => self.reply(&msg.join_ref, &msg, true, "{}"),
            },
            // Channels ignore client messages; an unjoined topic is unmatched.
            _ if self.channels.contains_key(&msg.topic) => {}
            _ => self.unmatched(&msg),
        }
    }

    fn join(&mut self, msg: Inbound) {
        if let Some(old) = self.channels.remove(&msg.topic) {
            // A duplicate join closes the existing channel first (as Phoenix).
            let f = self
                .ctx
                .frame(&old.join_ref, &old.join_ref, &msg.topic, "phx_close", b"{}");
            self.direct.push(f);
        }
        let kind = if msg.topic == "lifecycle" {
            Kind::Lifecycle
        } else if let Some(session) = msg.topic.strip_prefix("tail:") {
            Kind::Tail(session.to_owned())
        } else {
            return self.unmatched(&msg);
        };
        if self.channels.len() >= MAX_CHANNELS {
            let response = reason_json("too_many_channels");
            return self.reply(&msg.join_ref, &msg, false, &response);
        }
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let (ctl_tx, ctl_rx) = flume::bounded(1);
        self.channels.insert(
            msg.topic.clone(),
            Joined {
                generation,
                ctl: ctl_tx,
                join_ref: msg.join_ref.clone(),
            },
        );
        let channel = Channel {
            ctx: self.ctx.clone(),
            topic: msg.topic,
            join_ref: msg.join_ref,
            generation,
        };
        let join_msg_ref = msg.msg_ref;
        let payload = msg.payload;
        match kind {
            Kind::Tail(session) => {
                monoio::spawn(tail::run(channel, join_msg_ref, session, payload, ctl_rx));
            }
            Kind::Lifecycle => {
                monoio::spawn(lifecycle::run(channel, join_msg_ref, ctl_rx));
            }
        }
    }
}

enum Kind {
    Tail(String),
    Lifecycle,
}

/// One joined (or joining) channel, as its task sees it.
pub struct Channel {
    pub ctx: Rc<SocketCtx>,
    pub topic: String,
    pub join_ref: Value,
    generation: u64,
}

impl Channel {
    /// Queues a frame of this channel; false once the socket is gone.
    async fn send(&self, msg_ref: &Value, event: &str, payload: &[u8]) -> bool {
        let f = self
            .ctx
            .frame(&self.join_ref, msg_ref, &self.topic, event, payload);
        self.ctx.out.send_async(f).await.is_ok()
    }

    pub async fn reply(&self, msg_ref: &Value, ok: bool, response: &str) -> bool {
        self.send(msg_ref, "phx_reply", &reply_payload(ok, response))
            .await
    }

    /// A server push (`ref` null).
    pub async fn push(&self, event: &str, payload: &[u8]) -> bool {
        self.send(&Value::Null, event, payload).await
    }

    /// `phx_close` (the channel ended normally) or `phx_error` (it failed; the
    /// client rejoins), both with `ref` = `join_ref`.
    pub async fn end(&self, event: &str) {
        let join_ref = self.join_ref.clone();
        let _ = self.send(&join_ref, event, b"{}").await;
        self.ended();
    }

    /// Tells the socket this channel is over.
    pub fn ended(&self) {
        let _ = self.ctx.done.send((self.topic.clone(), self.generation));
    }
}
