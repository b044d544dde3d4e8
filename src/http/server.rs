//! The per-core accept loop, connection accounting and shutdown.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use std::sync::Arc;

use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use super::conn::{reject_connection, Conn};
use super::guard::NodeConnections;
use super::request::{error_response, Handler, Response};
use super::stream::HttpStream;
use super::unwind::{catch_unwind_future, panic_message};
use super::Limits;
use crate::tls::Acceptor;

/// Listen backlog of each core's listener.
const LISTEN_BACKLOG: i32 = 4096;
/// Pause after a failed accept (e.g. EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listener for one core: `SO_REUSEPORT` + `SO_REUSEADDR`, backlog 4096, so
/// every core can bind the same port and the kernel spreads connections across them.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(LISTEN_BACKLOG);
    TcpListener::bind_with_config(addr, &opts)
}

/// Server shutdown as seen by connections and WebSocket sessions: cheap to clone,
/// [`wait`](Self::wait) is cancel-safe (use it in `monoio::select!`).
///
/// Built on a flume channel that never carries a message: shutdown drops the only
/// sender, which wakes every receiver.
#[derive(Clone, Debug)]
pub struct ShutdownSignal {
    rx: flume::Receiver<()>,
}

/// The triggering side; dropping it triggers shutdown.
pub(crate) struct ShutdownTrigger {
    _tx: flume::Sender<()>,
}

impl ShutdownSignal {
    pub(crate) fn new() -> (ShutdownTrigger, ShutdownSignal) {
        let (tx, rx) = flume::bounded(1);
        (ShutdownTrigger { _tx: tx }, ShutdownSignal { rx })
    }

    /// Resolves once the server is shutting down.
    pub async fn wait(&self) {
        while self.rx.recv_async().await.is_ok() {}
    }

    pub fn is_triggered(&self) -> bool {
        self.rx.is_disconnected()
    }
}

/// Counts a live connection; dropped when its task ends. Holding a clone of the drain
/// sender lets [`serve`] wait for "all connections gone" without polling.
struct ConnGuard {
    active: Rc<Cell<usize>>,
    _drain: flume::Sender<()>,
}

impl ConnGuard {
    fn new(active: &Rc<Cell<usize>>, drain: &flume::Sender<()>) -> Self {
        active.set(active.get() + 1);
        Self {
            active: Rc::clone(active),
            _drain: drain.clone(),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.set(self.active.get().saturating_sub(1));
    }
}

/// What a core's accept loop shares with the rest of the node.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Serve HTTPS/WSS: every accepted connection first completes a TLS handshake
    /// (within `header_timeout`); `None` serves plaintext.
    pub tls: Option<Acceptor>,
    /// Node-wide per-address connection cap and WebSocket cap, shared by every core.
    pub node: Arc<NodeConnections>,
}

/// The answer to a connection over its address's cap (plaintext only: a TLS
/// connection is closed without a handshake).
fn too_many_connections() -> Response {
    error_response(
        503,
        "too_many_connections",
        "Too many connections from this address",
    )
}

/// Accept loop for one core, plaintext, with no node-wide caps: [`serve_with`] with
/// default [`ServeOptions`].
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Rc<H>,
    limits: Rc<Limits>,
    shutdown: impl Future<Output = ()> + 'static,
) {
    serve_with(listener, handler, limits, ServeOptions::default(), shutdown).await
}

/// Accept loop for one core.
///
/// Each connection runs in its own task. When `shutdown` resolves: the listener is
/// closed (no more accepts), idle keep-alive connections close, in-flight requests
/// finish (their responses carry `connection: close`), WebSocket sessions see
/// [`ShutdownSignal::wait`] resolve (via [`super::WebSocket::shutdown_signal`]) and
/// should close with 1001; `serve` returns when every connection task has ended or
/// after `limits.shutdown_grace`, whichever comes first.
///
/// Connections over the per-core cap are closed at once. Connections over the
/// per-address cap of `opts.node` get a `503 too_many_connections` (plaintext) or are
/// closed (TLS). A panic in a connection's task (handler, WebSocket session) is caught
/// there: it ends that connection only.
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Rc<H>,
    limits: Rc<Limits>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + 'static,
) {
    let (trigger, signal) = ShutdownSignal::new();
    let (drain_tx, drain_rx) = flume::bounded::<()>(1);
    let active = Rc::new(Cell::new(0usize));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = monoio::select! {
            _ = shutdown.as_mut() => break,
            res = listener.accept() => res,
        };
        match accepted {
            Ok((stream, peer)) => {
                if active.get() >= limits.max_connections_per_core {
                    tracing::debug!(%peer, "connection cap reached, closing");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let guard = ConnGuard::new(&active, &drain_tx);
                let Some(ip_slot) = opts.node.admit(peer.ip()) else {
                    tracing::debug!(%peer, "per-address connection cap reached");
                    if opts.tls.is_none() {
                        let limits = Rc::clone(&limits);
                        monoio::spawn(async move {
                            let _guard = guard;
                            reject_connection(stream, &limits, too_many_connections()).await;
                        });
                    }
                    continue;
                };
                let handler = Rc::clone(&handler);
                let limits = Rc::clone(&limits);
                let signal = signal.clone();
                let tls = opts.tls.clone();
                let node = Arc::clone(&opts.node);
                monoio::spawn(async move {
                    let _guard = guard;
                    let _ip_slot = ip_slot;
                    let task = async move {
                        let Some(stream) = establish(stream, tls.as_ref(), &limits).await else {
                            return;
                        };
                        Conn::new(stream, peer, handler, limits, signal, node)
                            .run()
                            .await;
                    };
                    if let Err(payload) = catch_unwind_future(task).await {
                        tracing::error!(
                            %peer,
                            panic = panic_message(payload.as_ref()),
                            "connection task panicked; connection closed"
                        );
                    }
                });
            }
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    drop(listener);
    drop(trigger);
    drop(drain_tx);
    drain(drain_rx, &active, limits.shutdown_grace).await;
}

/// The connection's stream: the TCP stream itself, or a TLS stream once the handshake
/// completed within `header_timeout` (`None`: handshake failed, the socket is dropped).
async fn establish(
    stream: TcpStream,
    tls: Option<&Acceptor>,
    limits: &Limits,
) -> Option<HttpStream> {
    let Some(acceptor) = tls else {
        return Some(HttpStream::Plain(stream));
    };
    match acceptor.accept(stream, limits.header_timeout).await {
        Ok(s) => Some(HttpStream::Tls(Box::new(s))),
        Err(err) => {
            tracing::debug!(%err, "TLS handshake failed");
            None
        }
    }
}

/// Waits until every connection guard is gone, bounded by `grace`.
async fn drain(drain_rx: flume::Receiver<()>, active: &Cell<usize>, grace: Duration) {
    let all_gone = async { while drain_rx.recv_async().await.is_ok() {} };
    if monoio::time::timeout(grace, all_gone).await.is_err() {
        tracing::warn!(
            remaining = active.get(),
            "shutdown grace elapsed with connections still open"
        );
    }
}
