//! The per-core inter-node transport: outbound connections, queues, requests.
//!
//! See the module docs of [`crate::cluster`] for the threading model and the
//! connection lifecycle.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use starcite_wire::peer::{encode_peer_frame, PeerFrame, RaftEnvelope, MAX_PEER_FRAME};
use thiserror::Error;

use super::handshake::{self, HandshakeError, HANDSHAKE_TIMEOUT, MAX_HANDSHAKE_FRAME};
pub use super::inbound::serve_cluster;
use super::inbound::{serve_with, Outgoing};
use super::io::{write_all_timeout, FrameReader};
use super::sync::{oneshot, Latch, Notify, OneshotSender};

/// Default bound on establishing a TCP connection to a peer.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on a request's round trip.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default reconnect backoff: first delay, and the cap it doubles up to.
pub const DEFAULT_RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(2));
/// Default bound on the Raft bytes queued for one peer (and, separately, on the
/// request and control bytes queued for it).
pub const DEFAULT_MAX_QUEUED_RAFT_BYTES: usize = 32 * 1024 * 1024;
/// Default interval between pings on an outbound connection.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Default time without any frame after which a connection is considered dead.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// At most this many requests per peer may await their response; more fail at once
/// with [`TransportError::Overloaded`]. The acceptor holds at most this many
/// unanswered requests per connection too (extra ones are dropped).
pub const MAX_PENDING_REQUESTS: usize = 4096;
/// Largest request, response or control body.
pub const MAX_BODY: usize = starcite_wire::limits::PEER_BODY;
/// Largest Raft message sent whole in a Raft frame. Larger ones (a snapshot for a
/// follower) are sent as [`RAFT_CHUNK`]-byte `RaftChunk` frames, up to
/// [`MAX_RAFT_MESSAGE`]; beyond that they are dropped and counted.
pub const MAX_UNCHUNKED_RAFT_MESSAGE: usize = starcite_wire::limits::MAX_UNCHUNKED_RAFT_MESSAGE;
pub const MAX_RAFT_MESSAGE: usize = starcite_wire::limits::MAX_RAFT_MESSAGE;
pub const RAFT_CHUNK: usize = starcite_wire::limits::RAFT_CHUNK;
/// A Raft frame is closed once it holds this many bytes; the rest of the queue
/// goes in the next frame of the same write.
const RAFT_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Accounted per queued message on top of its data (archived envelope header).
const ENVELOPE_OVERHEAD: usize = 16;

/// A cluster node and the address of its cluster port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub name: String,
    pub addr: SocketAddr,
}

/// Configuration of one core's transport (and of its accept loop).
#[derive(Clone)]
pub struct TransportConfig {
    /// This node's name, as listed in the other nodes' `peers`.
    pub me: String,
    /// This node's HTTP port, told to peers in the handshake.
    pub http_port: u16,
    /// Every other cluster node. Only these may connect to us.
    pub peers: Vec<NodeAddr>,
    /// `SECRET_KEY_BASE`: the HMAC-SHA256 key of the handshake.
    pub secret: Vec<u8>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// (first delay, cap) between reconnect attempts; doubles, with jitter.
    pub reconnect_backoff: (Duration, Duration),
    pub max_queued_raft_bytes_per_peer: usize,
    /// Interval between pings on outbound connections.
    pub heartbeat_interval: Duration,
    /// A connection without any frame for this long is closed as dead. Also bounds
    /// every write.
    pub peer_timeout: Duration,
}

impl TransportConfig {
    /// A configuration with the default timeouts and bounds.
    pub fn new(
        me: impl Into<String>,
        http_port: u16,
        peers: Vec<NodeAddr>,
        secret: Vec<u8>,
    ) -> Self {
        Self {
            me: me.into(),
            http_port,
            peers,
            secret,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reconnect_backoff: DEFAULT_RECONNECT_BACKOFF,
            max_queued_raft_bytes_per_peer: DEFAULT_MAX_QUEUED_RAFT_BYTES,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
        }
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("me", &self.me)
            .field("http_port", &self.http_port)
            .field("peers", &self.peers)
            .field("secret", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .field(
                "max_queued_raft_bytes_per_peer",
                &self.max_queued_raft_bytes_per_peer,
            )
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("peer_timeout", &self.peer_timeout)
            .finish()
    }
}

/// What a core does with frames from peers. Called on the core whose accept loop
/// took the connection (for `on_peer_state`: the core that owns the transport),
/// synchronously from the connection's reader: implementations must not block
/// (hand work to a channel or spawn a task).
pub trait Inbound: 'static {
    fn on_raft(&self, from: &str, messages: Vec<(u32, Vec<u8>)>);
    /// Handle a request; answer by calling `reply.send(body)` (possibly later, from a
    /// spawned task or another thread: [`Replier`] is `Send`). Dropping the
    /// replier without sending leaves the requester to time out.
    fn on_request(&self, from: &str, body: Vec<u8>, reply: Replier);
    fn on_control(&self, from: &str, body: Vec<u8>);
    /// Our outbound connection to `peer` became usable (`true`) or was lost (`false`).
    fn on_peer_state(&self, peer: &str, connected: bool);
}

/// Answers one request on the connection it came in on. `Send`, so the owning core
/// of the data may answer directly.
pub struct Replier {
    pub(crate) id: u64,
    pub(crate) tx: flume::Sender<Outgoing>,
    pub(crate) inflight: Arc<AtomicUsize>,
}

impl Replier {
    /// Queues the response. Never blocks; if the connection is gone (or the body is
    /// over [`MAX_BODY`]) the response is dropped and the requester times out.
    pub fn send(self, body: Vec<u8>) {
        if body.len() > MAX_BODY {
            tracing::warn!(
                len = body.len(),
                max = MAX_BODY,
                "cluster response too large, dropped"
            );
            return;
        }
        let _ = self.tx.try_send(Outgoing::Response { id: self.id, body });
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Replier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replier").field("id", &self.id).finish()
    }
}

/// Why a request failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    #[error("unknown peer")]
    UnknownPeer,
    #[error("peer not connected")]
    NotConnected,
    #[error("request timed out")]
    Timeout,
    #[error("connection closed before the response arrived")]
    Closed,
    /// Too many requests pending for this peer, or its request queue is full.
    #[error("too many pending requests")]
    Overloaded,
    /// The body is larger than [`MAX_BODY`].
    #[error("request body too large")]
    TooLarge,
}

/// Counters of one transport (and of the accept loop started with [`Transport::serve`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub raft_frames_sent: u64,
    pub raft_messages_sent: u64,
    pub raft_messages_received: u64,
    /// Raft messages dropped: peer down, queue over its byte bound, or too large.
    pub raft_messages_dropped: u64,
    pub control_dropped: u64,
    pub requests_sent: u64,
    pub request_timeouts: u64,
    /// Requests refused at once: not connected, overloaded or too large.
    pub requests_rejected: u64,
    /// Requests from peers dropped because too many were unanswered.
    pub inbound_requests_dropped: u64,
    /// Authenticated outbound connections established.
    pub connects: u64,
    /// Of those, the ones after the first to the same peer.
    pub reconnects: u64,
    /// Established outbound connections lost.
    pub disconnects: u64,
    /// Outbound attempts that failed before authentication (network errors).
    pub connect_failures: u64,
    /// Handshakes refused, either side: bad MAC, unknown node, wrong version or
    /// frame, timeout.
    pub auth_failures: u64,
    /// Authenticated connections closed for a bad or unexpected frame.
    pub protocol_errors: u64,
}

#[derive(Default)]
pub(crate) struct Counters(Cell<TransportStats>);

impl Counters {
    pub(crate) fn add(&self, f: impl FnOnce(&mut TransportStats)) {
        let mut stats = self.0.get();
        f(&mut stats);
        self.0.set(stats);
    }

    pub(crate) fn get(&self) -> TransportStats {
        self.0.get()
    }
}

/// One peer as seen by this core's transport.
struct Peer {
    name: String,
    addr: SocketAddr,
    st: RefCell<PeerState>,
    /// Wakes the outbound writer when something was queued.
    wake: Notify,
}

#[derive(Default)]
struct PeerState {
    /// The outbound connection is authenticated and has seen a frame recently.
    connected: bool,
    http_port: Option<u16>,
    raft: Vec<RaftEnvelope>,
    raft_bytes: usize,
    /// One Raft message too large for a frame, being sent in chunks (at most
    /// one per peer at a time; others are dropped and Raft sends them again).
    bulk: Option<Bulk>,
    control: VecDeque<Vec<u8>>,
    requests: VecDeque<(u64, Vec<u8>)>,
    /// Bytes of `control` and `requests`.
    other_bytes: usize,
    pending: HashMap<u64, OneshotSender<Vec<u8>>>,
    /// Whether a connection to this peer was ever established (for `reconnects`).
    ever_connected: bool,
    /// Whether the current outage was already logged at warn level.
    outage_logged: bool,
}

/// A Raft message sent as [`RAFT_CHUNK`]-byte `RaftChunk` frames, one per flush
/// so other traffic to the peer (heartbeats) is not held up behind it.
struct Bulk {
    group: u32,
    id: u64,
    data: Vec<u8>,
    sent: usize,
}

/// The transport of one core. Lives on that core's monoio runtime.
pub struct Transport {
    cfg: Rc<TransportConfig>,
    inbound: Rc<dyn Inbound>,
    peers: Vec<Rc<Peer>>,
    by_name: HashMap<String, usize>,
    counters: Rc<Counters>,
    shutdown: Latch,
    next_id: Cell<u64>,
    started: Cell<bool>,
    epoch: Instant,
}

impl Transport {
    pub fn new(cfg: TransportConfig, inbound: Rc<dyn Inbound>) -> Rc<Transport> {
        if cfg.secret.is_empty() {
            tracing::warn!(
                "cluster secret is empty: any host that can reach the cluster port can join"
            );
        }
        let mut seen = std::collections::HashSet::new();
        let peers: Vec<Rc<Peer>> = cfg
            .peers
            .iter()
            .filter(|p| p.name != cfg.me && seen.insert(p.name.clone()))
            .map(|p| {
                Rc::new(Peer {
                    name: p.name.clone(),
                    addr: p.addr,
                    st: RefCell::default(),
                    wake: Notify::default(),
                })
            })
            .collect();
        let by_name = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Rc::new(Transport {
            cfg: Rc::new(cfg),
            inbound,
            peers,
            by_name,
            counters: Rc::default(),
            shutdown: Latch::new(),
            next_id: Cell::new(1),
            started: Cell::new(false),
            epoch: Instant::now(),
        })
    }

    pub fn config(&self) -> &Rc<TransportConfig> {
        &self.cfg
    }

    /// Starts outbound connection tasks to every peer (`monoio::spawn`); they
    /// reconnect forever with backoff until `shutdown` resolves. Calling it again
    /// does nothing.
    pub fn start(self: &Rc<Self>, shutdown: impl Future<Output = ()> + 'static) {
        if self.started.replace(true) {
            return;
        }
        let latch = self.shutdown.clone();
        monoio::spawn(async move {
            shutdown.await;
            latch.fire();
        });
        for peer in &self.peers {
            monoio::spawn(Rc::clone(self).run_peer(Rc::clone(peer)));
        }
    }

    /// Accept loop for this core's cluster listener, delivering to this transport's
    /// `Inbound` and counting into its [`stats`](Self::stats). Same as
    /// [`serve_cluster`](super::serve_cluster) otherwise.
    pub async fn serve(
        self: &Rc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + 'static,
    ) {
        serve_with(
            listener,
            Rc::clone(&self.cfg),
            Rc::clone(&self.inbound),
            Rc::clone(&self.counters),
            shutdown,
        )
        .await;
    }

    fn peer(&self, name: &str) -> Option<&Rc<Peer>> {
        self.by_name.get(name).and_then(|&i| self.peers.get(i))
    }

    /// Queues Raft messages for `peer`; the writer sends everything queued as one
    /// Raft frame per flush. Never blocks: if the peer is down, unknown, or its queue
    /// is over its byte bound, messages are dropped (Raft retransmits) and counted.
    pub fn send_raft(&self, peer: &str, messages: Vec<(u32, Vec<u8>)>) {
        if messages.is_empty() {
            return;
        }
        let Some(p) = self.peer(peer) else {
            self.counters
                .add(|s| s.raft_messages_dropped += messages.len() as u64);
            return;
        };
        let mut dropped = 0u64;
        {
            let mut st = p.st.borrow_mut();
            if !st.connected {
                dropped = messages.len() as u64;
            } else {
                let bound = self.cfg.max_queued_raft_bytes_per_peer;
                for (group, data) in messages {
                    let size = data.len() + ENVELOPE_OVERHEAD;
                    if data.len() > MAX_RAFT_MESSAGE {
                        tracing::warn!(
                            peer,
                            group,
                            len = data.len(),
                            max = MAX_RAFT_MESSAGE,
                            "raft message too large for the transport, dropped"
                        );
                        dropped += 1;
                    } else if data.len() > MAX_UNCHUNKED_RAFT_MESSAGE {
                        if st.bulk.is_some() {
                            // One large message at a time: Raft resends this one.
                            dropped += 1;
                        } else {
                            let id = self.next_id.get();
                            self.next_id.set(id + 1);
                            st.bulk = Some(Bulk {
                                group,
                                id,
                                data,
                                sent: 0,
                            });
                        }
                    } else if st.raft_bytes + size > bound {
                        dropped += 1;
                    } else {
                        st.raft_bytes += size;
                        st.raft.push(RaftEnvelope { group, data });
                    }
                }
            }
        }
        if dropped > 0 {
            self.counters.add(|s| s.raft_messages_dropped += dropped);
        }
        p.wake.notify();
    }

    /// Queues a one-way control message. Dropped (and counted) if the peer is down
    /// or unknown, its queue is full, or the body is over [`MAX_BODY`].
    pub fn send_control(&self, peer: &str, body: Vec<u8>) {
        let Some(p) = self.peer(peer) else {
            self.counters.add(|s| s.control_dropped += 1);
            return;
        };
        let queued = {
            let mut st = p.st.borrow_mut();
            let fits = body.len() <= MAX_BODY
                && st.other_bytes + body.len() <= self.cfg.max_queued_raft_bytes_per_peer;
            if st.connected && fits {
                st.other_bytes += body.len();
                st.control.push_back(body);
                true
            } else {
                false
            }
        };
        if queued {
            p.wake.notify();
        } else {
            self.counters.add(|s| s.control_dropped += 1);
        }
    }

    /// Sends a request and awaits its response, bounded by `request_timeout`.
    /// Cancel-safe: dropping the future forgets the request.
    pub async fn request(&self, peer: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let p = self.peer(peer).ok_or(TransportError::UnknownPeer)?;
        let id = self.next_id.get();
        let rx = {
            let mut st = p.st.borrow_mut();
            let refused = if !st.connected {
                Some(TransportError::NotConnected)
            } else if body.len() > MAX_BODY {
                Some(TransportError::TooLarge)
            } else if st.pending.len() >= MAX_PENDING_REQUESTS
                || st.other_bytes + body.len() > self.cfg.max_queued_raft_bytes_per_peer
            {
                Some(TransportError::Overloaded)
            } else {
                None
            };
            if let Some(err) = refused {
                drop(st);
                self.counters.add(|s| s.requests_rejected += 1);
                return Err(err);
            }
            self.next_id.set(id.wrapping_add(1));
            let (tx, rx) = oneshot();
            st.pending.insert(id, tx);
            st.other_bytes += body.len();
            st.requests.push_back((id, body));
            rx
        };
        self.counters.add(|s| s.requests_sent += 1);
        p.wake.notify();
        let _forget = PendingGuard {
            peer: Rc::clone(p),
            id,
        };
        match monoio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(TransportError::Closed),
            Err(_) => {
                self.counters.add(|s| s.request_timeouts += 1);
                Err(TransportError::Timeout)
            }
        }
    }

    /// Whether our outbound connection to `peer` is authenticated and alive.
    pub fn is_connected(&self, peer: &str) -> bool {
        self.peer(peer).is_some_and(|p| p.st.borrow().connected)
    }

    /// The peer's HTTP port, learned in the handshake of our outbound connection.
    pub fn peer_http_port(&self, peer: &str) -> Option<u16> {
        self.peer(peer).and_then(|p| p.st.borrow().http_port)
    }

    /// Names of the peers this transport connects to.
    pub fn peer_names(&self) -> impl Iterator<Item = &str> {
        self.peers.iter().map(|p| p.name.as_str())
    }

    pub fn stats(&self) -> TransportStats {
        self.counters.get()
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Connects to `peer` forever (with backoff) until shutdown.
    async fn run_peer(self: Rc<Self>, peer: Rc<Peer>) {
        let (min, max) = self.cfg.reconnect_backoff;
        let max = max.max(min);
        let mut backoff = min;
        while !self.shutdown.is_fired() {
            let attempt = monoio::select! {
                _ = self.shutdown.wait() => break,
                res = self.dial(&peer) => res,
            };
            match attempt {
                Ok((rd, wr)) => {
                    backoff = min;
                    let reconnect = {
                        let mut st = peer.st.borrow_mut();
                        st.outage_logged = false;
                        std::mem::replace(&mut st.ever_connected, true)
                    };
                    self.counters.add(|s| {
                        s.connects += 1;
                        if reconnect {
                            s.reconnects += 1;
                        }
                    });
                    tracing::debug!(peer = %peer.name, addr = %peer.addr, "cluster connection authenticated");
                    self.run_connection(&peer, rd, wr).await;
                }
                Err(err) => self.log_dial_failure(&peer, &err),
            }
            let delay = jitter(backoff);
            backoff = (backoff * 2).min(max);
            monoio::select! {
                _ = self.shutdown.wait() => break,
                _ = monoio::time::sleep(delay) => {}
            }
        }
    }

    fn log_dial_failure(&self, peer: &Peer, err: &DialError) {
        match err {
            DialError::Handshake(e) if e.is_refusal() => {
                self.counters.add(|s| s.auth_failures += 1);
                tracing::warn!(peer = %peer.name, addr = %peer.addr, error = %e, "cluster handshake refused");
            }
            _ => {
                self.counters.add(|s| s.connect_failures += 1);
                let first = !std::mem::replace(&mut peer.st.borrow_mut().outage_logged, true);
                if first {
                    tracing::warn!(peer = %peer.name, addr = %peer.addr, error = %err, "cannot connect to cluster peer; retrying");
                } else {
                    tracing::debug!(peer = %peer.name, addr = %peer.addr, error = %err, "cannot connect to cluster peer");
                }
            }
        }
    }

    /// TCP connect + handshake, each bounded.
    async fn dial(
        &self,
        peer: &Peer,
    ) -> Result<(FrameReader<TcpOwnedReadHalf>, TcpOwnedWriteHalf), DialError> {
        let stream = match monoio::time::timeout(
            self.cfg.connect_timeout,
            TcpStream::connect_addr(peer.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(DialError::Connect(e)),
            Err(_) => return Err(DialError::ConnectTimeout),
        };
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = monoio::io::Splitable::into_split(stream);
        let mut rd = FrameReader::new(rd, MAX_HANDSHAKE_FRAME);
        let hs = handshake::connector(&mut rd, &mut wr, &self.cfg, &peer.name);
        let http_port = match monoio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
            Ok(Ok(port)) => port,
            Ok(Err(e)) => return Err(DialError::Handshake(e)),
            Err(_) => return Err(DialError::Handshake(HandshakeError::Timeout)),
        };
        rd.set_max_frame(MAX_PEER_FRAME);
        self.counters.add(|s| s.bytes_received += rd.bytes_read);
        rd.bytes_read = 0;
        peer.st.borrow_mut().http_port = Some(http_port);
        Ok((rd, wr))
    }

    /// Runs one authenticated outbound connection until it fails or shutdown.
    async fn run_connection(
        self: &Rc<Self>,
        peer: &Rc<Peer>,
        rd: FrameReader<TcpOwnedReadHalf>,
        mut wr: TcpOwnedWriteHalf,
    ) {
        let closed = Latch::new();
        let reader =
            monoio::spawn(Rc::clone(self).outbound_reader(Rc::clone(peer), rd, closed.clone()));
        let write_end = monoio::select! {
            end = self.outbound_writer(peer, &mut wr, &closed) => end,
            _ = self.shutdown.wait() => None,
        };
        closed.fire();
        let read_end = reader.await;
        drop(wr);

        let (was_connected, dropped, pending) = {
            let mut st = peer.st.borrow_mut();
            let was = std::mem::replace(&mut st.connected, false);
            let dropped = st.raft.len() as u64 + u64::from(st.bulk.take().is_some());
            st.raft = Vec::new();
            st.raft_bytes = 0;
            st.control.clear();
            st.requests.clear();
            st.other_bytes = 0;
            (was, dropped, std::mem::take(&mut st.pending))
        };
        // Requesters still waiting see `Closed`.
        drop(pending);
        self.counters.add(|s| s.raft_messages_dropped += dropped);
        let reason = read_end.or(write_end);
        if was_connected {
            self.counters.add(|s| s.disconnects += 1);
            if !self.shutdown.is_fired() {
                tracing::warn!(peer = %peer.name, addr = %peer.addr, reason = reason.as_deref().unwrap_or("closed"), "lost cluster connection");
            }
            self.inbound.on_peer_state(&peer.name, false);
        } else if let Some(reason) = reason {
            tracing::debug!(peer = %peer.name, addr = %peer.addr, %reason, "cluster connection closed before its first frame");
        }
    }

    /// Reads Pongs and Responses until the connection fails, goes quiet for
    /// `peer_timeout`, or `closed` fires. Returns why it ended (`None`: told to close).
    async fn outbound_reader(
        self: Rc<Self>,
        peer: Rc<Peer>,
        mut rd: FrameReader<TcpOwnedReadHalf>,
        closed: Latch,
    ) -> Option<String> {
        let timeout = self.cfg.peer_timeout;
        let end = loop {
            let deadline = Instant::now() + timeout;
            let res = monoio::select! {
                res = monoio::time::timeout_at(deadline, rd.next()) => res,
                _ = closed.wait() => break None,
            };
            let frame = match res {
                Err(_) => break Some(format!("no frame from the peer within {timeout:?}")),
                Ok(Err(e)) => {
                    if matches!(e, super::io::ReadError::Decode(_)) {
                        self.counters.add(|s| s.protocol_errors += 1);
                    }
                    break Some(e.to_string());
                }
                Ok(Ok(frame)) => frame,
            };
            let bytes = std::mem::take(&mut rd.bytes_read);
            self.counters.add(|s| {
                s.frames_received += 1;
                s.bytes_received += bytes;
            });
            let became_connected = {
                let mut st = peer.st.borrow_mut();
                !std::mem::replace(&mut st.connected, true)
            };
            if became_connected {
                tracing::info!(peer = %peer.name, addr = %peer.addr, "cluster peer connected");
                self.inbound.on_peer_state(&peer.name, true);
            }
            match frame {
                PeerFrame::Pong { .. } => {}
                PeerFrame::Response { id, body } => {
                    let waiter = peer.st.borrow_mut().pending.remove(&id);
                    if let Some(tx) = waiter {
                        tx.send(body);
                    }
                }
                other => {
                    self.counters.add(|s| s.protocol_errors += 1);
                    break Some(format!(
                        "unexpected {} frame on an outbound connection",
                        other.kind()
                    ));
                }
            }
        };
        closed.fire();
        end
    }

    /// Sends pings and everything queued for `peer`, one write per flush. Returns
    /// why it ended (`None`: told to close).
    async fn outbound_writer(
        &self,
        peer: &Peer,
        wr: &mut TcpOwnedWriteHalf,
        closed: &Latch,
    ) -> Option<String> {
        let mut out = Vec::new();
        let mut next_ping = Instant::now();
        loop {
            let now = Instant::now();
            let ping = (now >= next_ping).then(|| {
                next_ping = now + self.cfg.heartbeat_interval;
                self.now_us()
            });
            self.fill(peer, &mut out, ping);
            if !out.is_empty() {
                let len = out.len() as u64;
                let res = monoio::select! {
                    res = write_all_timeout(wr, std::mem::take(&mut out), self.cfg.peer_timeout) => res,
                    _ = closed.wait() => return None,
                };
                match res {
                    Ok(buf) => {
                        out = buf;
                        self.counters.add(|s| s.bytes_sent += len);
                    }
                    Err(e) => return Some(format!("write failed: {e}")),
                }
                continue;
            }
            monoio::select! {
                _ = peer.wake.notified() => {}
                _ = monoio::time::sleep_until(next_ping) => {}
                _ = closed.wait() => return None,
            }
        }
    }

    /// Drains `peer`'s queues into `out` as frames: an optional Ping, the Raft
    /// messages (one frame, or more when over [`RAFT_BATCH_BYTES`]), control
    /// messages and requests still awaited.
    fn fill(&self, peer: &Peer, out: &mut Vec<u8>, ping: Option<u64>) {
        let (raft, control, requests, chunk) = {
            let mut guard = peer.st.borrow_mut();
            let st = &mut *guard;
            let chunk = st.bulk.as_mut().map(|b| {
                let end = (b.sent + RAFT_CHUNK).min(b.data.len());
                let frame = PeerFrame::RaftChunk {
                    group: b.group,
                    id: b.id,
                    total: b.data.len() as u64,
                    offset: b.sent as u64,
                    data: b.data[b.sent..end].to_vec(),
                };
                b.sent = end;
                (frame, end == b.data.len())
            });
            if chunk.as_ref().is_some_and(|(_, last)| *last) {
                st.bulk = None;
            }
            st.raft_bytes = 0;
            st.other_bytes = 0;
            let requests: Vec<(u64, Vec<u8>)> = st
                .requests
                .drain(..)
                .filter(|(id, _)| st.pending.contains_key(id))
                .collect();
            (
                std::mem::take(&mut st.raft),
                std::mem::take(&mut st.control),
                requests,
                chunk,
            )
        };
        let mut frames = 0u64;
        let mut raft_frames = 0u64;
        let mut encode = |frame: &PeerFrame, out: &mut Vec<u8>| match encode_peer_frame(frame, out)
        {
            Ok(_) => {
                frames += 1;
                true
            }
            Err(e) => {
                tracing::warn!(peer = %peer.name, kind = frame.kind(), error = %e, "cannot encode cluster frame, dropped");
                false
            }
        };
        if let Some(at) = ping {
            encode(&PeerFrame::Ping { at }, out);
        }
        let raft_count = raft.len() as u64;
        let mut dropped = 0u64;
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut iter = raft.into_iter().peekable();
        while let Some(env) = iter.next() {
            batch_bytes += env.data.len() + ENVELOPE_OVERHEAD;
            batch.push(env);
            let full = iter.peek().is_some_and(|next| {
                batch_bytes + next.data.len() + ENVELOPE_OVERHEAD > RAFT_BATCH_BYTES
            });
            if full || iter.peek().is_none() {
                let n = batch.len() as u64;
                if encode(
                    &PeerFrame::Raft {
                        messages: std::mem::take(&mut batch),
                    },
                    out,
                ) {
                    raft_frames += 1;
                } else {
                    dropped += n;
                }
                batch_bytes = 0;
            }
        }
        let mut chunk_msgs = 0u64;
        if let Some((frame, last)) = chunk {
            if encode(&frame, out) {
                raft_frames += 1;
                chunk_msgs += u64::from(last);
            } else {
                // Cannot happen (RAFT_CHUNK fits a frame); the receiver drops
                // the partial message when the next one starts.
                peer.st.borrow_mut().bulk = None;
                dropped += 1;
            }
        }
        let mut control_dropped = 0u64;
        for body in control {
            if !encode(&PeerFrame::Control { body }, out) {
                control_dropped += 1;
            }
        }
        for (id, body) in requests {
            // The requester times out if this fails (cannot: sizes are checked).
            encode(&PeerFrame::Request { id, body }, out);
        }
        self.counters.add(|s| {
            s.frames_sent += frames;
            s.raft_frames_sent += raft_frames;
            s.raft_messages_sent += (raft_count + chunk_msgs).saturating_sub(dropped);
            s.raft_messages_dropped += dropped;
            s.control_dropped += control_dropped;
        });
    }
}

/// Removes a request's pending entry when its caller stops waiting.
struct PendingGuard {
    peer: Rc<Peer>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.peer.st.try_borrow_mut() {
            st.pending.remove(&self.id);
        }
    }
}

#[derive(Debug)]
enum DialError {
    Connect(std::io::Error),
    ConnectTimeout,
    Handshake(HandshakeError),
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Connect(e) => write!(f, "connect failed: {e}"),
            DialError::ConnectTimeout => f.write_str("connect timed out"),
            DialError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// A random delay in `[d/2, d]`, so that cores and nodes do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}
