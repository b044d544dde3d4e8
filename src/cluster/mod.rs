//! The inter-node transport: authenticated, batched TCP between cluster nodes.
//!
//! # Threading model
//!
//! Every core owns one [`Transport`] on its own monoio runtime (nothing here is
//! `Send` except [`Replier`]):
//!
//! - **Outbound**: the transport of core `c` keeps one connection to every peer,
//!   dialled by a task started with [`Transport::start`]. It carries the frames this
//!   core sends: Raft batches, requests, control messages and pings. The peer answers
//!   requests and pings on the same connection.
//! - **Inbound**: each core runs an accept loop on the cluster port
//!   ([`Transport::serve`] or [`serve_cluster`]). The frames a peer core sends
//!   arrive on whichever core accepted its connection and are handed to that
//!   core's [`Inbound`]; responses go back on the same connection.
//!
//! Each connection has a reader task and a writer task: monoio (io_uring) reads are
//! not cancel-safe, so a read is only ever abandoned when the connection is being
//! closed. The writer drains everything queued for the peer into one buffer per
//! flush, with all queued Raft messages in one [`PeerFrame::Raft`] frame (split only
//! past 4 MiB), and writes it with one `write_all`.
//!
//! # Lifecycle and liveness
//!
//! Connecting: TCP connect (bounded by `connect_timeout`), then the mutual HMAC
//! handshake ([`handshake`], bounded by [`HANDSHAKE_TIMEOUT`]), then a Ping at once
//! and every `heartbeat_interval`. The peer counts as connected
//! ([`Transport::is_connected`], [`Inbound::on_peer_state`]`(peer, true)`) from the
//! first frame received after authentication (normally the first Pong, one round
//! trip later) until the connection fails or stays silent for `peer_timeout`; then
//! `on_peer_state(peer, false)`, queued messages are dropped, pending requests fail
//! with [`TransportError::Closed`], and the task reconnects with exponential
//! backoff and jitter. Inbound connections are closed after `peer_timeout` without
//! a frame (the peer pings every `heartbeat_interval`).
//!
//! # Bounds
//!
//! Frames are at most [`MAX_PEER_FRAME`](starcite_wire::peer::MAX_PEER_FRAME)
//! (4 KiB before authentication); queued Raft bytes and queued request/control
//! bytes per peer are each bounded by `max_queued_raft_bytes_per_peer`; pending
//! requests per peer, and unanswered requests per inbound connection, by
//! [`MAX_PENDING_REQUESTS`]; connections per core by
//! [`inbound::MAX_INBOUND_CONNECTIONS`] (of which at most
//! [`inbound::MAX_HANDSHAKING`] unauthenticated).
//!
//! [`PeerFrame::Raft`]: starcite_wire::peer::PeerFrame::Raft

pub mod handshake;
pub mod inbound;
mod io;
mod sync;
pub mod transport;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use handshake::HANDSHAKE_TIMEOUT;
pub use inbound::serve_cluster;
pub use transport::{
    Inbound, NodeAddr, Replier, Transport, TransportConfig, TransportError, TransportStats,
    MAX_BODY, MAX_PENDING_REQUESTS, MAX_RAFT_MESSAGE, MAX_UNCHUNKED_RAFT_MESSAGE, RAFT_CHUNK,
};

/// Binds a cluster listener for one core with `SO_REUSEPORT` (every core may bind
/// the same port).
pub fn bind_cluster(addr: SocketAddr) -> std::io::Result<monoio::net::TcpListener> {
    crate::http::bind_reuseport(addr)
}
