//! The accept side: authenticated inbound connections carry a peer's frames to us
//! and our responses (and pongs) back.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::net::tcp::TcpOwnedWriteHalf;
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use starcite_wire::peer::{encode_peer_frame, PeerFrame, MAX_PEER_FRAME};

use super::handshake::{self, HANDSHAKE_TIMEOUT, MAX_HANDSHAKE_FRAME};
use super::io::{write_all_timeout, FrameReader, ReadError};
use super::sync::Latch;
use super::transport::{
    Counters, Inbound, Replier, TransportConfig, MAX_PENDING_REQUESTS, MAX_RAFT_MESSAGE,
    MAX_UNCHUNKED_RAFT_MESSAGE,
};

/// Cap on inbound cluster connections per core (each peer core opens one).
pub const MAX_INBOUND_CONNECTIONS: usize = 1024;
/// Cap on inbound connections still in their handshake, per core: unauthenticated
/// clients cannot hold more than this many sockets (each for at most
/// [`HANDSHAKE_TIMEOUT`], with at most a 4 KiB frame buffered).
pub const MAX_HANDSHAKING: usize = 64;
/// Pause after a failed accept (e.g. EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// After shutdown, how long the accept loop waits for its connections to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Capacity of a connection's outgoing queue (responses and pongs). Unanswered
/// requests are capped at [`MAX_PENDING_REQUESTS`], so responses always fit.
const OUTGOING_QUEUE: usize = MAX_PENDING_REQUESTS + 64;
/// One write gathers queued responses up to about this many bytes.
const WRITE_COALESCE: usize = 4 * 1024 * 1024;

/// What an inbound connection's writer sends.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Response { id: u64, body: Vec<u8> },
    Pong { at: u64 },
}

/// Accept loop for the cluster port on one core (bind with `SO_REUSEPORT`, e.g.
/// [`super::bind_cluster`], so every core may accept). Authenticated inbound
/// connections deliver frames to `inbound`; responses to requests go back on the
/// same connection. Returns after `shutdown` resolves and the connections have
/// closed (at most ~2 s later).
///
/// Counters of these connections are not visible anywhere; use
/// [`super::Transport::serve`] to count them into a transport's stats.
pub async fn serve_cluster(
    listener: TcpListener,
    cfg: Rc<TransportConfig>,
    inbound: Rc<dyn Inbound>,
    shutdown: impl Future<Output = ()> + 'static,
) {
    serve_with(listener, cfg, inbound, Rc::default(), shutdown).await;
}

/// Counts live connections; its drain sender lets the loop wait for "all gone".
struct CountGuard {
    count: Rc<Cell<usize>>,
    _drain: Option<flume::Sender<()>>,
}

impl CountGuard {
    fn new(count: &Rc<Cell<usize>>, drain: Option<flume::Sender<()>>) -> Self {
        count.set(count.get() + 1);
        Self {
            count: Rc::clone(count),
            _drain: drain,
        }
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.count.set(self.count.get().saturating_sub(1));
    }
}

pub(crate) async fn serve_with(
    listener: TcpListener,
    cfg: Rc<TransportConfig>,
    inbound: Rc<dyn Inbound>,
    counters: Rc<Counters>,
    shutdown: impl Future<Output = ()> + 'static,
) {
    let closing = Latch::new();
    let (drain_tx, drain_rx) = flume::bounded::<()>(1);
    let active = Rc::new(Cell::new(0usize));
    let handshaking = Rc::new(Cell::new(0usize));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = monoio::select! {
            _ = shutdown.as_mut() => break,
            res = listener.accept() => res,
        };
        match accepted {
            Ok((stream, addr)) => {
                if active.get() >= MAX_INBOUND_CONNECTIONS || handshaking.get() >= MAX_HANDSHAKING {
                    tracing::warn!(peer = %addr, "too many cluster connections on this core, closing");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let conn = InboundConn {
                    addr,
                    cfg: Rc::clone(&cfg),
                    inbound: Rc::clone(&inbound),
                    counters: Rc::clone(&counters),
                    closing: closing.clone(),
                    _active: CountGuard::new(&active, Some(drain_tx.clone())),
                };
                let hs_guard = CountGuard::new(&handshaking, None);
                monoio::spawn(conn.run(stream, hs_guard));
            }
            Err(err) => {
                tracing::warn!(%err, "cluster accept failed");
                monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    drop(listener);
    closing.fire();
    drop(drain_tx);
    let all_gone = async { while drain_rx.recv_async().await.is_ok() {} };
    if monoio::time::timeout(SHUTDOWN_GRACE, all_gone)
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = active.get(),
            "cluster connections still open after the shutdown grace"
        );
    }
}

struct InboundConn {
    addr: SocketAddr,
    cfg: Rc<TransportConfig>,
    inbound: Rc<dyn Inbound>,
    counters: Rc<Counters>,
    closing: Latch,
    _active: CountGuard,
}

impl InboundConn {
    async fn run(self, stream: TcpStream, hs_guard: CountGuard) {
        let addr = self.addr;
        let (rd, mut wr) = monoio::io::Splitable::into_split(stream);
        let mut rd = FrameReader::new(rd, MAX_HANDSHAKE_FRAME);
        let hs = monoio::select! {
            res = monoio::time::timeout(HANDSHAKE_TIMEOUT, handshake::acceptor(&mut rd, &mut wr, &self.cfg)) => res,
            _ = self.closing.wait() => return,
        };
        drop(hs_guard);
        let hello = match hs {
            Ok(Ok(hello)) => hello,
            Ok(Err(e)) => {
                if e.is_refusal() {
                    self.counters.add(|s| s.auth_failures += 1);
                }
                tracing::warn!(peer = %addr, error = %e, "cluster handshake failed, closing");
                return;
            }
            Err(_) => {
                self.counters.add(|s| s.auth_failures += 1);
                tracing::warn!(peer = %addr, "cluster handshake not completed within {HANDSHAKE_TIMEOUT:?}, closing");
                return;
            }
        };
        rd.set_max_frame(MAX_PEER_FRAME);
        let node = hello.node.clone();
        tracing::debug!(peer = %addr, %node, http_port = hello.http_port, "inbound cluster connection authenticated");

        let (tx, rx) = flume::bounded(OUTGOING_QUEUE);
        let closed = Latch::new();
        let writer = monoio::spawn(inbound_writer(
            wr,
            rx,
            closed.clone(),
            self.cfg.peer_timeout,
            Rc::clone(&self.counters),
        ));
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut assembly = ChunkAssembly::default();
        let timeout = self.cfg.peer_timeout;
        let end = loop {
            let bytes = std::mem::take(&mut rd.bytes_read);
            self.counters.add(|s| s.bytes_received += bytes);
            let deadline = Instant::now() + timeout;
            let res = monoio::select! {
                res = monoio::time::timeout_at(deadline, rd.next()) => res,
                _ = closed.wait() => break None,
                _ = self.closing.wait() => break None,
            };
            let frame = match res {
                Err(_) => {
                    break Some((false, format!("no frame from the peer within {timeout:?}")))
                }
                Ok(Err(ReadError::Decode(e))) => {
                    self.counters.add(|s| s.protocol_errors += 1);
                    break Some((true, e.to_string()));
                }
                Ok(Err(e)) => break Some((false, e.to_string())),
                Ok(Ok(frame)) => frame,
            };
            self.counters.add(|s| s.frames_received += 1);
            match frame {
                PeerFrame::Raft { messages } => {
                    let n = messages.len() as u64;
                    self.counters.add(|s| s.raft_messages_received += n);
                    self.inbound.on_raft(
                        &node,
                        messages.into_iter().map(|m| (m.group, m.data)).collect(),
                    );
                }
                PeerFrame::Request { id, body } => {
                    if inflight.load(Ordering::Relaxed) >= MAX_PENDING_REQUESTS {
                        self.counters.add(|s| s.inbound_requests_dropped += 1);
                        continue;
                    }
                    inflight.fetch_add(1, Ordering::Relaxed);
                    let reply = Replier {
                        id,
                        tx: tx.clone(),
                        inflight: Arc::clone(&inflight),
                    };
                    self.inbound.on_request(&node, body, reply);
                }
                PeerFrame::Control { body } => self.inbound.on_control(&node, body),
                PeerFrame::Ping { at } => {
                    let _ = tx.try_send(Outgoing::Pong { at });
                }
                PeerFrame::Pong { .. } => {}
                PeerFrame::RaftChunk {
                    group,
                    id,
                    total,
                    offset,
                    data,
                } => match assembly.push(group, id, total, offset, data) {
                    Ok(Some((group, message))) => {
                        self.counters.add(|s| s.raft_messages_received += 1);
                        self.inbound.on_raft(&node, vec![(group, message)]);
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        self.counters.add(|s| s.protocol_errors += 1);
                        break Some((true, reason));
                    }
                },
                other => {
                    self.counters.add(|s| s.protocol_errors += 1);
                    break Some((
                        true,
                        format!("unexpected {} frame on an inbound connection", other.kind()),
                    ));
                }
            }
        };
        closed.fire();
        writer.await;
        match end {
            Some((true, reason)) => {
                tracing::warn!(peer = %addr, %node, %reason, "closing inbound cluster connection")
            }
            Some((false, reason)) => {
                tracing::info!(peer = %addr, %node, %reason, "inbound cluster connection ended")
            }
            None => {}
        }
    }
}

/// Writes responses and pongs, coalescing whatever is queued into one write.
async fn inbound_writer(
    mut wr: TcpOwnedWriteHalf,
    rx: flume::Receiver<Outgoing>,
    closed: Latch,
    limit: Duration,
    counters: Rc<Counters>,
) {
    let mut out = Vec::new();
    loop {
        let first = monoio::select! {
            msg = rx.recv_async() => msg,
            _ = closed.wait() => break,
        };
        let Ok(first) = first else { break };
        let mut frames = 0u64;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let frame = match msg {
                Outgoing::Response { id, body } => PeerFrame::Response { id, body },
                Outgoing::Pong { at } => PeerFrame::Pong { at },
            };
            match encode_peer_frame(&frame, &mut out) {
                Ok(_) => frames += 1,
                Err(e) => tracing::warn!(error = %e, "cannot encode cluster response, dropped"),
            }
            if out.len() < WRITE_COALESCE {
                next = rx.try_recv().ok();
            }
        }
        if out.is_empty() {
            continue;
        }
        let len = out.len() as u64;
        let res = monoio::select! {
            res = write_all_timeout(&mut wr, std::mem::take(&mut out), limit) => res,
            _ = closed.wait() => break,
        };
        match res {
            Ok(buf) => {
                out = buf;
                counters.add(|s| {
                    s.frames_sent += frames;
                    s.bytes_sent += len;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "inbound cluster connection write failed");
                break;
            }
        }
    }
    closed.fire();
}

/// Reassembles the one Raft message a connection is receiving in `RaftChunk`s.
/// Its memory is bounded by the message being assembled (at most
/// [`MAX_RAFT_MESSAGE`]); a new message (offset 0) replaces a partial one whose
/// sender gave up on it.
#[derive(Default)]
pub(crate) struct ChunkAssembly {
    current: Option<(u32, u64, u64, Vec<u8>)>,
}

impl ChunkAssembly {
    /// Adds a chunk; returns the whole message once its last chunk arrived, and
    /// an error for chunks that break the protocol (out of order, over size).
    pub(crate) fn push(
        &mut self,
        group: u32,
        id: u64,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Option<(u32, Vec<u8>)>, String> {
        if total > MAX_RAFT_MESSAGE as u64 || total <= MAX_UNCHUNKED_RAFT_MESSAGE as u64 {
            return Err(format!("raft chunk of a {total}-byte message (chunked messages are {MAX_UNCHUNKED_RAFT_MESSAGE}..={MAX_RAFT_MESSAGE} bytes)"));
        }
        if offset == 0 {
            // Grow as chunks arrive: a peer cannot reserve memory it does not send.
            self.current = Some((group, id, total, Vec::new()));
        }
        let Some((g, i, t, buf)) = self.current.as_mut() else {
            return Err(format!("raft chunk at offset {offset} without its start"));
        };
        if (*g, *i, *t) != (group, id, total) || buf.len() as u64 != offset {
            return Err(format!(
                "raft chunk for message {id} at offset {offset} does not follow message {i} at {}",
                buf.len()
            ));
        }
        if offset + data.len() as u64 > total || data.is_empty() {
            return Err(format!(
                "raft chunk at offset {offset} of {} bytes overruns its {total}-byte message",
                data.len()
            ));
        }
        buf.extend_from_slice(&data);
        if buf.len() as u64 == total {
            let (group, _, _, message) = self.current.take().expect("set above");
            return Ok(Some((group, message)));
        }
        Ok(None)
    }
}
