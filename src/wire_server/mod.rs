//! The binary client protocol (`docs/wire-protocol.md`) on
//! `STARCITE_WIRE_PORT`, served on every core next to HTTP, over TLS when the
//! gateway has TLS (`STARCITE_TLS_CERT_FILE`/`STARCITE_TLS_KEY_FILE`, the same
//! acceptor).
//!
//! Every core binds the port with `SO_REUSEPORT` and runs [`serve`]. A
//! connection is handled by [`conn::run`], generic over the byte stream so a
//! TLS stream can be served the same way. Requests go through the same
//! [`Gateway`] functions as the HTTP routes (validation, authorization,
//! routing to the owner core or the leader node), so semantics and error
//! names are the HTTP API's.
//!
//! Memory per connection is bounded: at most `max_inflight` requests are
//! being processed or queued for writing (the reader stops reading beyond
//! that, which backpressures the client through TCP), a frame is at most
//! `max_frame` bytes (64 KiB before `Hello`), and each subscription holds at
//! most one subscriber buffer of the owner core.

mod body;
mod conn;
mod sub;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpListener;

use crate::node::gateway::Gateway;

pub use conn::run as run_connection;

/// Per-connection limits and timeouts.
#[derive(Debug, Clone)]
pub struct WireLimits {
    /// Largest frame payload accepted after `Hello`.
    pub max_frame: usize,
    /// Requests being processed or waiting to be written, per connection.
    pub max_inflight: usize,
    /// Live subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest events per `Events` message.
    pub max_batch: u32,
    /// The preface and `Hello` must arrive within this.
    pub hello_timeout: Duration,
    /// A connection with nothing in flight and no subscription, and no frame
    /// for this long, is closed.
    pub idle_timeout: Duration,
    /// Bound on one socket write (a client that stops reading is dropped).
    pub write_timeout: Duration,
    /// After Goaway or shutdown: how long in-flight requests get to finish.
    pub drain_grace: Duration,
    /// Connections per core beyond this are closed at once.
    pub max_connections_per_core: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_frame: starcite_wire::proto::MAX_FRAME,
            max_inflight: 1024,
            max_subscriptions: 64,
            max_batch: 1000,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(5),
            max_connections_per_core: 10_000,
        }
    }
}

/// Binds one core's listener on the wire port (IPv6 any, else IPv4 any).
pub fn bind(port: u16) -> std::io::Result<TcpListener> {
    use std::net::Ipv6Addr;
    crate::http::bind_reuseport(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| crate::http::bind_reuseport(SocketAddr::from(([0, 0, 0, 0], port))))
}

/// The accept loop of one core. Returns when `shutdown` resolves (after the
/// open connections have been told to go away and had `drain_grace`).
pub async fn serve(
    listener: TcpListener,
    gateway: Rc<Gateway>,
    limits: Rc<WireLimits>,
    tls: Option<crate::tls::Acceptor>,
    shutdown: impl Future<Output = ()> + 'static,
) {
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
                    tracing::debug!(%peer, "wire: connection cap reached, closing");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                active.set(active.get() + 1);
                let (gw, lim, act) = (gateway.clone(), limits.clone(), active.clone());
                let tls = tls.clone();
                monoio::spawn(async move {
                    match tls {
                        None => conn::run(stream, gw, lim).await,
                        // Same certificate and key as the HTTP gateway; the
                        // handshake is bounded like the preface.
                        Some(acceptor) => match acceptor.accept(stream, lim.hello_timeout).await {
                            Ok(tls) => conn::run(tls, gw, lim).await,
                            Err(err) => tracing::debug!(%err, "wire: TLS handshake failed"),
                        },
                    }
                    act.set(act.get() - 1);
                });
            }
            Err(err) => {
                tracing::warn!(%err, "wire: accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    // Connections watch the gateway's shutdown themselves (Goaway, then drain).
    let deadline = std::time::Instant::now() + limits.drain_grace + Duration::from_millis(500);
    while active.get() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}
