//! Rust client of the binary protocol (`docs/wire-protocol.md`).
//!
//! ```no_run
//! use starcite_wire::client::{Client, ClientConfig};
//! use starcite_wire::proto::AppendFields;
//!
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:4001"])).unwrap();
//! client.create_session(Some("ses_demo"), None, None).unwrap();
//! let ack = client
//!     .append("ses_demo", AppendFields {
//!         event_type: "message".into(),
//!         payload: br#"{"text":"hi"}"#.to_vec(),
//!         producer_id: "writer-1".into(),
//!         producer_seq: 1,
//!         ..Default::default()
//!     })
//!     .unwrap();
//! println!("seq {}", ack.seq);
//! ```
//!
//! # Model
//!
//! - [`Client::connect`] opens a connection to every reachable node of the
//!   list (preface, `Hello`), learning each node's id. Each connection has a
//!   reader thread; requests are written by the submitting thread (a short
//!   blocking write), answers come back on channels, so it works from plain
//!   threads and from any async runtime alike:
//!   [`Client::append`] blocks, [`Client::append_async`] returns a [`Pending`]
//!   at once (it only waits for an in-flight slot), to be `.wait()`ed or
//!   `.recv().await`ed.
//! - At most `max_inflight` requests are unanswered at once (client-wide,
//!   capped by each server's announced limit); further submissions wait.
//! - Appends of a session travel on one connection while any is unanswered
//!   (so they are proposed in order); when the server names another leader
//!   node (`AppendAck::leader`), the session moves to that node's connection
//!   at its next quiet moment.
//! - Unacknowledged appends are sent again, in their original order, when
//!   their connection is lost or answers `raft_timeout`/`raft_unavailable`
//!   (also after `Goaway`), for up to `retry_for`. This is safe because of
//!   the producer dedupe window: a retried append that had been committed is
//!   answered `deduped: true` with its original seq. So every acknowledged
//!   append is in the log exactly once.
//! - Subscriptions resume after a reconnect from the last seq delivered.

mod conn;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::proto::{codes, AppendFields, ClientMsg, Event, ServerMsg};

use conn::ConnHandle;

/// Cap on `max_inflight`: requests are written by the submitting thread, so
/// the client must never have more unanswered requests than the server reads
/// (1024 per connection) or a write could wait on answers it holds up.
pub const MAX_CLIENT_INFLIGHT: usize = 1000;

/// Client settings. `nodes` are `host:port` addresses of wire ports.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub nodes: Vec<String>,
    /// A JWT for auth mode `jwt`; `None` in mode `none`.
    pub token: Option<String>,
    /// Unanswered requests at once, client-wide (at most
    /// [`MAX_CLIENT_INFLIGHT`], below the server's per-connection limit).
    pub max_inflight: usize,
    pub connect_timeout: Duration,
    /// How long unacknowledged appends are retried (reconnects included).
    pub retry_for: Duration,
    /// Sent in `Hello`, for server logs.
    pub client_name: String,
}

impl ClientConfig {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(nodes: I) -> ClientConfig {
        ClientConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            token: None,
            max_inflight: 256,
            connect_timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(30),
            client_name: format!("starcite-wire-rs/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n.clamp(1, MAX_CLIENT_INFLIGHT);
        self
    }

    pub fn retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server's answer: `code` is the HTTP API's error name
    /// (`producer_seq_conflict`, ...) or a protocol code.
    #[error("{code}: {message}")]
    Server {
        code: String,
        message: String,
        status: u16,
    },
    /// No node could be reached (or none accepted `Hello`).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection was lost and the request could not be retried.
    #[error("connection lost")]
    ConnectionLost,
    /// The client is closed.
    #[error("client closed")]
    Closed,
}

impl ClientError {
    /// The error name: the server's code, or `connection_lost`/`closed`/`connect_failed`.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Server { code, .. } => code,
            ClientError::Connect(_) => "connect_failed",
            ClientError::ConnectionLost => codes::CONNECTION_LOST,
            ClientError::Closed => "closed",
        }
    }
}

/// An acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub last_seq: u64,
    pub deduped: bool,
}

/// A created session: its id and the HTTP API's 201 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub json: Vec<u8>,
}

/// An answer to come: [`wait`](Self::wait) blocks, [`recv`](Self::recv) is
/// a future for any runtime.
pub struct Pending<T> {
    rx: flume::Receiver<Result<T, ClientError>>,
}

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T, ClientError> {
        self.rx.recv().unwrap_or(Err(ClientError::Closed))
    }

    pub async fn recv(self) -> Result<T, ClientError> {
        self.rx
            .recv_async()
            .await
            .unwrap_or(Err(ClientError::Closed))
    }

    /// The answer if it is there already.
    pub fn try_take(&self) -> Option<Result<T, ClientError>> {
        self.rx.try_recv().ok()
    }
}

/// A live subscription: batches of events, in seq order without gaps,
/// across reconnects. Ends with an `Err` (then the channel closes).
pub struct Subscription {
    client: Client,
    handle: u64,
    rx: flume::Receiver<Result<Vec<Event>, ClientError>>,
}

impl Subscription {
    /// The next batch (blocking); `None` once the subscription ended.
    pub fn next(&self) -> Option<Result<Vec<Event>, ClientError>> {
        self.rx.recv().ok()
    }

    pub fn next_timeout(&self, d: Duration) -> Option<Result<Vec<Event>, ClientError>> {
        self.rx.recv_timeout(d).ok()
    }

    pub async fn next_async(&self) -> Option<Result<Vec<Event>, ClientError>> {
        self.rx.recv_async().await.ok()
    }

    /// The receiving channel itself (for `select`s).
    pub fn receiver(&self) -> &flume::Receiver<Result<Vec<Event>, ClientError>> {
        &self.rx
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.unsubscribe(self.handle);
    }
}

/// The client: cheap to clone, usable from many threads.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: ClientConfig,
    state: Mutex<State>,
    /// In-flight slots: a bounded channel used as a semaphore.
    slots_tx: flume::Sender<()>,
    slots_rx: flume::Receiver<()>,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_rid: u64,
    next_conn: u64,
    conns: Vec<Arc<ConnHandle>>,
    /// Node id → address, learned from `HelloOk`.
    node_addr: HashMap<String, String>,
    /// Unanswered requests by request id (global, increasing).
    pending: BTreeMap<u64, Pending2>,
    /// Per session: the connection its unanswered appends use, and how many.
    lanes: HashMap<String, (u64, usize)>,
    /// Per session: the leader node id last named by a server.
    hints: HashMap<String, String>,
    /// Live subscriptions by their current request id.
    subs: HashMap<u64, SubState>,
    /// Per session: appends refused with `producer_seq_conflict` while an
    /// earlier append of their producer was unanswered, waiting for it.
    parked: HashMap<String, Vec<Pending2>>,
    /// Highest acknowledged producer_seq per (session, producer).
    acked: HashMap<(String, String), u64>,
    next_handle: u64,
}

struct Pending2 {
    conn: u64,
    req: Req,
    /// First submission: retries stop after `retry_for`.
    since: Instant,
}

enum Req {
    Create {
        msg: ClientMsg,
        reply: flume::Sender<Result<Created, ClientError>>,
    },
    Append {
        session: String,
        fields: AppendFields,
        reply: flume::Sender<Result<Ack, ClientError>>,
    },
    Ping {
        reply: flume::Sender<Result<u64, ClientError>>,
    },
    Unsubscribe,
}

struct SubState {
    handle: u64,
    conn: u64,
    session: String,
    cursor: u64,
    max_batch: u32,
    tx: flume::Sender<Result<Vec<Event>, ClientError>>,
}

/// Codes after which an append is sent again (its fate is unknown or it was
/// provably not applied, and the dedupe window makes a second try safe).
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "raft_timeout" | "raft_unavailable" | codes::CONNECTION_LOST
    )
}

impl Client {
    /// Connects to every reachable node of the list (at least one is needed).
    pub fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.nodes.is_empty() {
            return Err(ClientError::Connect("no nodes given".into()));
        }
        let (slots_tx, slots_rx) = flume::bounded(cfg.max_inflight.clamp(1, MAX_CLIENT_INFLIGHT));
        let inner = Arc::new(Inner {
            cfg,
            state: Mutex::new(State::default()),
            slots_tx,
            slots_rx,
        });
        let client = Client { inner };
        let mut errors = Vec::new();
        for addr in client.inner.cfg.nodes.clone() {
            if let Err(e) = client.inner.open(&addr) {
                errors.push(format!("{addr}: {e}"));
            }
        }
        if client.inner.lock().conns.is_empty() {
            return Err(ClientError::Connect(errors.join("; ")));
        }
        Ok(client)
    }

    /// Node ids of the live connections.
    pub fn connected_nodes(&self) -> Vec<String> {
        let st = self.inner.lock();
        st.conns
            .iter()
            .filter(|c| c.usable())
            .map(|c| c.node.clone())
            .collect()
    }

    /// The node id believed to lead the session's group (from the last
    /// acknowledged append), if known.
    pub fn leader_hint(&self, session: &str) -> Option<String> {
        self.inner.lock().hints.get(session).cloned()
    }

    pub fn create_session(
        &self,
        id: Option<&str>,
        title: Option<&str>,
        metadata: Option<&[u8]>,
    ) -> Result<Created, ClientError> {
        self.create_session_async(id, title, metadata).wait()
    }

    pub fn create_session_async(
        &self,
        id: Option<&str>,
        title: Option<&str>,
        metadata: Option<&[u8]>,
    ) -> Pending<Created> {
        let (tx, rx) = flume::bounded(1);
        let msg = ClientMsg::CreateSession {
            request_id: 0,
            id: id.map(str::to_owned),
            title: title.map(str::to_owned),
            metadata: metadata.map(<[u8]>::to_vec),
        };
        self.inner.acquire_slot();
        self.inner.submit(Req::Create { msg, reply: tx }, None);
        Pending { rx }
    }

    /// Appends and waits for the acknowledgement.
    pub fn append(&self, session: &str, fields: AppendFields) -> Result<Ack, ClientError> {
        self.append_async(session, fields).wait()
    }

    /// Sends an append; waits only for an in-flight slot.
    pub fn append_async(&self, session: &str, fields: AppendFields) -> Pending<Ack> {
        self.inner.acquire_slot();
        self.append_with_slot(session, fields)
    }

    /// Appends `batch` to `session` in order, pipelined like
    /// [`append_async`](Self::append_async), with the requests of each
    /// connection written together (one `write` for the batch instead of one
    /// per event). Waits for in-flight slots as `append_async` does; a batch
    /// larger than `max_inflight` goes out in parts of at most that size.
    /// Each append is still its own request: its own ack, dedupe and errors.
    pub fn append_batch(&self, session: &str, batch: Vec<AppendFields>) -> Vec<Pending<Ack>> {
        let mut out = Vec::with_capacity(batch.len());
        let mut batch = batch.into_iter().peekable();
        let part_max = self.inner.cfg.max_inflight.clamp(1, MAX_CLIENT_INFLIGHT);
        while batch.peek().is_some() {
            let part: Vec<AppendFields> = batch.by_ref().take(part_max).collect();
            for _ in 0..part.len() {
                self.inner.acquire_slot();
            }
            let mut st = self.inner.lock();
            let corked: Vec<Arc<ConnHandle>> = st.conns.clone();
            for c in &corked {
                c.cork();
            }
            let since = Instant::now();
            for fields in part {
                let (tx, rx) = flume::bounded(1);
                let req = Req::Append {
                    session: session.to_owned(),
                    fields,
                    reply: tx,
                };
                st = self.inner.send_req(st, req, None, since);
                out.push(Pending { rx });
            }
            for c in &corked {
                c.uncork();
            }
            drop(st);
        }
        out
    }

    /// Like [`append_async`](Self::append_async), awaiting the in-flight slot
    /// without blocking the thread.
    pub async fn append_async_nb(&self, session: &str, fields: AppendFields) -> Pending<Ack> {
        let _ = self.inner.slots_tx.send_async(()).await;
        self.append_with_slot(session, fields)
    }

    fn append_with_slot(&self, session: &str, fields: AppendFields) -> Pending<Ack> {
        let (tx, rx) = flume::bounded(1);
        let req = Req::Append {
            session: session.to_owned(),
            fields,
            reply: tx,
        };
        self.inner.submit(req, None);
        Pending { rx }
    }

    /// Round trip to a server (returns the echoed payload).
    pub fn ping(&self, payload: u64) -> Result<u64, ClientError> {
        let (tx, rx) = flume::bounded(1);
        self.inner.acquire_slot();
        self.inner.submit(Req::Ping { reply: tx }, Some(payload));
        Pending { rx }.wait()
    }

    /// Every event with `seq > cursor`, then live ones, in batches of at most
    /// `max_batch` (1..=1000).
    pub fn subscribe(
        &self,
        session: &str,
        cursor: u64,
        max_batch: u32,
    ) -> Result<Subscription, ClientError> {
        let (tx, rx) = flume::bounded(1024);
        let mut st = self.inner.lock();
        if st.closed {
            return Err(ClientError::Closed);
        }
        st.next_handle += 1;
        let handle = st.next_handle;
        let sub = SubState {
            handle,
            conn: 0,
            session: session.to_owned(),
            cursor,
            max_batch,
            tx,
        };
        let (st, r) = self.inner.start_sub(st, sub);
        drop(st);
        r?;
        Ok(Subscription {
            client: self.clone(),
            handle,
            rx,
        })
    }

    fn unsubscribe(&self, handle: u64) {
        let mut st = self.inner.lock();
        let Some(rid) = st
            .subs
            .iter()
            .find(|(_, s)| s.handle == handle)
            .map(|(r, _)| *r)
        else {
            return;
        };
        let Some(sub) = st.subs.remove(&rid) else {
            return;
        };
        if let Some(conn) = st.conns.iter().find(|c| c.id == sub.conn).cloned() {
            st.next_rid += 1;
            let request_id = st.next_rid;
            st.pending.insert(
                request_id,
                Pending2 {
                    conn: conn.id,
                    req: Req::Unsubscribe,
                    since: Instant::now(),
                },
            );
            conn.send(&ClientMsg::Unsubscribe {
                request_id,
                subscription: rid,
            });
        }
    }

    /// Closes every connection; unanswered requests fail with `Closed`.
    pub fn close(&self) {
        let conns = {
            let mut st = self.inner.lock();
            st.closed = true;
            std::mem::take(&mut st.conns)
        };
        for c in conns {
            c.close();
        }
        let mut st = self.inner.lock();
        let pending = std::mem::take(&mut st.pending);
        for (_, p) in pending {
            self.inner.fail(p.req, ClientError::Closed);
        }
        for (_, parked) in std::mem::take(&mut st.parked) {
            for p in parked {
                self.inner.fail(p.req, ClientError::Closed);
            }
        }
        for (_, s) in std::mem::take(&mut st.subs) {
            let _ = s.tx.try_send(Err(ClientError::Closed));
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire_slot(&self) {
        let _ = self.slots_tx.send(());
    }

    fn release_slot(&self) {
        let _ = self.slots_rx.try_recv();
    }

    /// Opens a connection to `addr` and registers it.
    fn open(self: &Arc<Self>, addr: &str) -> Result<Arc<ConnHandle>, ClientError> {
        let id = {
            let mut st = self.lock();
            st.next_conn += 1;
            st.next_conn
        };
        let conn = conn::open(self.clone(), id, addr, &self.cfg)?;
        let mut st = self.lock();
        if st.closed {
            conn.close();
            return Err(ClientError::Closed);
        }
        st.node_addr.insert(conn.node.clone(), addr.to_owned());
        st.conns.retain(|c| c.addr != addr || c.usable());
        st.conns.push(conn.clone());
        Ok(conn)
    }

    /// A usable connection, preferring `node`; connects (blocking) when none
    /// is open, trying the list in order, until `deadline`.
    fn pick<'a>(
        self: &'a Arc<Self>,
        mut st: MutexGuard<'a, State>,
        prefer: Option<u64>,
        deadline: Instant,
    ) -> (MutexGuard<'a, State>, Option<Arc<ConnHandle>>) {
        let mut round = 0u32;
        loop {
            if st.closed {
                return (st, None);
            }
            let found = prefer
                .and_then(|id| st.conns.iter().find(|c| c.id == id && c.usable()))
                .or_else(|| st.conns.iter().find(|c| c.usable()))
                .cloned();
            if found.is_some() {
                return (st, found);
            }
            if Instant::now() >= deadline {
                return (st, None);
            }
            // Nothing open: reconnect (without the lock held while connecting).
            drop(st);
            let opened = self.cfg.nodes.iter().any(|addr| self.open(addr).is_ok());
            if !opened {
                round += 1;
                std::thread::sleep(Duration::from_millis(50 * u64::from(round.min(10))));
            }
            st = self.lock();
        }
    }

    fn submit(self: &Arc<Self>, req: Req, ping: Option<u64>) {
        let st = self.lock();
        let since = Instant::now();
        drop(self.send_req(st, req, ping, since));
    }

    /// Routes and sends one request (the state lock is held, so requests of
    /// a session go out in submission order, retries included).
    fn send_req<'a>(
        self: &'a Arc<Self>,
        st: MutexGuard<'a, State>,
        req: Req,
        ping: Option<u64>,
        since: Instant,
    ) -> MutexGuard<'a, State> {
        let deadline = since + self.cfg.retry_for;
        let prefer = match &req {
            Req::Append { session, .. } => {
                let lane = st.lanes.get(session).copied();
                match lane {
                    Some((conn, n)) if n > 0 => Some(conn),
                    _ => st
                        .hints
                        .get(session)
                        .and_then(|node| st.conns.iter().find(|c| c.node == *node && c.usable()))
                        .map(|c| c.id),
                }
            }
            _ => None,
        };
        let (mut st, conn) = self.pick(st, prefer, deadline);
        let Some(conn) = conn else {
            let e = if st.closed {
                ClientError::Closed
            } else {
                ClientError::ConnectionLost
            };
            self.fail(req, e);
            return st;
        };
        st.next_rid += 1;
        let request_id = st.next_rid;
        let msg = match &req {
            Req::Create { msg, .. } => match msg.clone() {
                ClientMsg::CreateSession {
                    id,
                    title,
                    metadata,
                    ..
                } => ClientMsg::CreateSession {
                    request_id,
                    id,
                    title,
                    metadata,
                },
                other => other,
            },
            Req::Append {
                session, fields, ..
            } => {
                let lane = st.lanes.entry(session.clone()).or_insert((conn.id, 0));
                if lane.1 == 0 {
                    lane.0 = conn.id;
                }
                lane.1 += 1;
                ClientMsg::Append {
                    request_id,
                    session: session.clone(),
                    fields: fields.clone(),
                }
            }
            Req::Ping { .. } => ClientMsg::Ping {
                request_id,
                payload: ping.unwrap_or(0),
            },
            Req::Unsubscribe => return st,
        };
        st.pending.insert(
            request_id,
            Pending2 {
                conn: conn.id,
                req,
                since,
            },
        );
        conn.send(&msg);
        st
    }

    fn start_sub<'a>(
        self: &'a Arc<Self>,
        st: MutexGuard<'a, State>,
        mut sub: SubState,
    ) -> (MutexGuard<'a, State>, Result<(), ClientError>) {
        let deadline = Instant::now() + self.cfg.retry_for;
        let (mut st, conn) = self.pick(st, None, deadline);
        let Some(conn) = conn else {
            let _ = sub.tx.try_send(Err(ClientError::ConnectionLost));
            return (st, Err(ClientError::ConnectionLost));
        };
        st.next_rid += 1;
        let request_id = st.next_rid;
        sub.conn = conn.id;
        conn.send(&ClientMsg::Subscribe {
            request_id,
            session: sub.session.clone(),
            cursor: sub.cursor,
            max_batch: sub.max_batch,
        });
        st.subs.insert(request_id, sub);
        (st, Ok(()))
    }

    fn fail(&self, req: Req, e: ClientError) {
        match req {
            Req::Create { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Req::Append { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Req::Ping { reply } => {
                let _ = reply.send(Err(e));
            }
            Req::Unsubscribe => return,
        }
        self.release_slot();
    }

    /// Sends a session's parked appends again, in submission order (after
    /// an append of the session was answered).
    fn flush_parked<'a>(
        self: &'a Arc<Self>,
        mut st: MutexGuard<'a, State>,
        session: &str,
    ) -> MutexGuard<'a, State> {
        let Some(mut parked) = st.parked.remove(session) else {
            return st;
        };
        parked.sort_by_key(|p| p.since);
        for p in parked {
            st = self.send_req(st, p.req, None, p.since);
        }
        st
    }

    fn lane_done(st: &mut State, session: &str) {
        if let Some(l) = st.lanes.get_mut(session) {
            l.1 = l.1.saturating_sub(1);
            if l.1 == 0 {
                st.lanes.remove(session);
            }
        }
    }

    /// One message from connection `conn` (called by its reader thread).
    fn on_message(self: &Arc<Self>, conn: &Arc<ConnHandle>, msg: ServerMsg) {
        let mut st = self.lock();
        match msg {
            ServerMsg::Events {
                subscription,
                events,
            } => {
                let Some(sub) = st.subs.get_mut(&subscription) else {
                    return;
                };
                // Drop what a resumed subscription already delivered.
                let fresh: Vec<Event> = events.into_iter().filter(|e| e.seq > sub.cursor).collect();
                if let Some(last) = fresh.last() {
                    sub.cursor = last.seq;
                    let tx = sub.tx.clone();
                    drop(st);
                    // Blocking: a consumer that does not keep up slows this connection.
                    let _ = tx.send(Ok(fresh));
                }
            }
            ServerMsg::Goaway { .. } => {
                conn.set_draining();
            }
            ServerMsg::Error {
                request_id,
                code,
                message,
                status,
                ..
            } if request_id != 0 => {
                if let Some(sub) = st.subs.remove(&request_id) {
                    let _ = sub.tx.try_send(Err(ClientError::Server {
                        code,
                        message,
                        status,
                    }));
                    return;
                }
                let Some(p) = st.pending.remove(&request_id) else {
                    return;
                };
                let mut flush = None;
                if let Req::Append {
                    session, fields, ..
                } = &p.req
                {
                    let session = session.clone();
                    Self::lane_done(&mut st, &session);
                    let in_time = p.since + self.cfg.retry_for > Instant::now();
                    if retryable(&code) && in_time {
                        // Fate unknown or provably not applied: send again
                        // (deduped if it had been committed).
                        st.hints.remove(&session);
                        drop(st);
                        std::thread::sleep(Duration::from_millis(20));
                        let st = self.lock();
                        drop(self.send_req(st, p.req, None, p.since));
                        return;
                    }
                    // Refused only because an earlier append of the same
                    // producer is still on its way (being retried): park it
                    // until that one is answered.
                    let earlier_unanswered = code == "producer_seq_conflict"
                        && st.pending.values().any(|q| {
                            q.since < p.since
                                && matches!(&q.req, Req::Append { session: s, fields: f, .. }
                                    if *s == session && f.producer_id == fields.producer_id)
                        });
                    if earlier_unanswered && in_time {
                        st.parked.entry(session).or_default().push(p);
                        return;
                    }
                    // Refused although the previous producer_seq was
                    // acknowledged: the answering replica has not applied it
                    // yet (right after a leader change). Try again shortly.
                    let key = (session.clone(), fields.producer_id.clone());
                    let previous_acked = code == "producer_seq_conflict"
                        && st
                            .acked
                            .get(&key)
                            .is_some_and(|m| m.saturating_add(1) >= fields.producer_seq);
                    if previous_acked && in_time {
                        drop(st);
                        std::thread::sleep(Duration::from_millis(20));
                        let st = self.lock();
                        drop(self.send_req(st, p.req, None, p.since));
                        return;
                    }
                    flush = Some(session);
                }
                self.fail(
                    p.req,
                    ClientError::Server {
                        code,
                        message,
                        status,
                    },
                );
                if let Some(session) = flush {
                    drop(self.flush_parked(st, &session));
                }
            }
            ServerMsg::Error { .. } => {
                // Connection-level: the server closes; the reader sees EOF.
            }
            ServerMsg::AppendAck {
                request_id,
                seq,
                last_seq,
                deduped,
                leader,
            } => {
                let Some(p) = st.pending.remove(&request_id) else {
                    return;
                };
                if let Req::Append {
                    session,
                    reply,
                    fields,
                } = p.req
                {
                    Self::lane_done(&mut st, &session);
                    let acked = st
                        .acked
                        .entry((session.clone(), fields.producer_id))
                        .or_insert(0);
                    *acked = (*acked).max(fields.producer_seq);
                    // The leader is the named node, or else the one that answered.
                    let node = leader.unwrap_or_else(|| conn.node.clone());
                    if st.node_addr.contains_key(&node) {
                        st.hints.insert(session.clone(), node);
                    } else {
                        st.hints.remove(&session);
                    }
                    let _ = reply.send(Ok(Ack {
                        seq,
                        last_seq,
                        deduped,
                    }));
                    self.release_slot();
                    drop(self.flush_parked(st, &session));
                }
            }
            ServerMsg::SessionCreated {
                request_id,
                id,
                json,
            } => {
                if let Some(Pending2 {
                    req: Req::Create { reply, .. },
                    ..
                }) = st.pending.remove(&request_id)
                {
                    drop(st);
                    let _ = reply.send(Ok(Created { id, json }));
                    self.release_slot();
                }
            }
            ServerMsg::Pong {
                request_id,
                payload,
            } => {
                if let Some(Pending2 {
                    req: Req::Ping { reply },
                    ..
                }) = st.pending.remove(&request_id)
                {
                    drop(st);
                    let _ = reply.send(Ok(payload));
                    self.release_slot();
                }
            }
            ServerMsg::Unsubscribed { request_id, .. } => {
                st.pending.remove(&request_id);
            }
            ServerMsg::HelloOk { .. } => {}
        }
    }

    /// Connection `conn` is gone: its unanswered appends and subscriptions
    /// move to another connection, in order; other requests fail.
    fn on_lost(self: &Arc<Self>, conn: &Arc<ConnHandle>) {
        let mut st = self.lock();
        st.conns.retain(|c| c.id != conn.id);
        let rids: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn.id)
            .map(|(r, _)| *r)
            .collect();
        let mut moved: Vec<(u64, Pending2)> = Vec::new();
        for rid in rids {
            if let Some(p) = st.pending.remove(&rid) {
                if let Req::Append { session, .. } = &p.req {
                    let session = session.clone();
                    Self::lane_done(&mut st, &session);
                    st.hints.remove(&session);
                }
                moved.push((rid, p));
            }
        }
        // Original submission order (a retried append has a newer request id).
        moved.sort_by_key(|(rid, p)| (p.since, *rid));
        let subs: Vec<u64> = st
            .subs
            .iter()
            .filter(|(_, s)| s.conn == conn.id)
            .map(|(r, _)| *r)
            .collect();
        let subs: Vec<SubState> = subs
            .into_iter()
            .filter_map(|r| st.subs.remove(&r))
            .collect();
        if st.closed {
            drop(st);
            for (_, p) in moved {
                self.fail(p.req, ClientError::Closed);
            }
            return;
        }
        for (_, p) in moved {
            match p.req {
                Req::Append { .. } if p.since + self.cfg.retry_for > Instant::now() => {
                    st = self.send_req(st, p.req, None, p.since);
                }
                Req::Unsubscribe => {}
                other => self.fail(other, ClientError::ConnectionLost),
            }
        }
        for s in subs {
            st = self.start_sub(st, s).0;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for c in st.conns.drain(..) {
            c.close();
        }
    }
}
