//! HTTP/1.1 and WebSocket serving on a monoio core.
//!
//! The node is thread-per-core: every core runs its own monoio runtime with its own
//! `SO_REUSEPORT` listener on the HTTP port ([`bind_reuseport`]) and calls [`serve`]
//! on it. Nothing in this module is `Send`; handlers are plain `Rc`s owned by the
//! core.
//!
//! Layers:
//! - [`serve`] accepts connections (with a per-core cap) and runs one task per
//!   connection. It returns on shutdown after draining in-flight work.
//! - The connection loop reads request heads with `httparse`, reads bodies
//!   (Content-Length or chunked), calls [`Handler::handle`], writes the response and
//!   loops for keep-alive/pipelining. Protocol errors produce a JSON envelope and
//!   close; timeouts just close.
//! - [`Reply::WebSocket`] turns the connection into a [`WebSocket`] (RFC 6455, server
//!   side) after the connection loop validated the upgrade and wrote the `101`.
//!
//! # Panics
//!
//! A panic inside a handler future is caught at the poll that raised it
//! ([`unwind`]): the client gets `500 internal_error` (the standard envelope) and the
//! connection is closed; a panic in a WebSocket session (or its reader task) closes
//! that socket. The core keeps serving every other connection. Handlers should still
//! turn their own failures into error responses: state a panicking handler left
//! half-updated is not repaired.
//!
//! # TLS and node-wide caps
//!
//! [`serve_with`] takes [`ServeOptions`]: an optional [`crate::tls::Acceptor`] (the
//! handshake runs in the connection's task, bounded by `header_timeout`) and the
//! node's [`NodeConnections`] (connections per client address; open WebSocket
//! sessions — over that cap an upgrade is answered `503 too_many_tails`).
//!
//! # Memory bounds
//!
//! Every buffer is capped by a [`Limits`] field: request heads by
//! `max_header_bytes`, bodies by `max_body`, WebSocket reads by a small fixed window
//! (frame payloads are discarded while they stream in, only control frames — at most
//! 125 bytes — are held), and the WebSocket event channel by [`WS_EVENT_CHANNEL`].

mod conn;
mod guard;
mod io;
mod parse;
mod request;
mod server;
mod stream;
pub(crate) mod unwind;
mod ws;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use guard::{IpSlot, NodeConnections, WebSocketSlot};
pub use request::{error_response, Handler, Reply, Request, Response, UpgradeFn};
pub use server::{bind_reuseport, serve, serve_with, ServeOptions, ShutdownSignal};
pub use stream::HttpStream;
pub use ws::{websocket_accept, WebSocket, WsEvent, WsReader, WsWriter, WS_EVENT_CHANNEL};

/// Default cap on the request head (request line + headers), in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = starcite_wire::limits::REQUEST_HEAD;
/// Default cap on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = starcite_wire::limits::REQUEST_HEADERS;
/// Default cap on a request body (the reference API's 8,000,000-byte limit).
pub const DEFAULT_MAX_BODY: usize = starcite_wire::limits::REQUEST_BODY;
/// Default time for a whole request head to arrive (slowloris protection).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time for a whole request body to arrive.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an idle keep-alive connection is kept open between requests.
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Default cap on one inbound WebSocket frame payload.
pub const DEFAULT_WS_MAX_FRAME: usize = starcite_wire::limits::WS_INBOUND_FRAME;
/// Default WebSocket idle timeout: no inbound frame for this long closes the socket
/// (the reference API's 120,000 ms).
pub const DEFAULT_WS_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default cap on concurrent connections per core.
pub const DEFAULT_MAX_CONNECTIONS_PER_CORE: usize = 10_000;
/// Default bound on one response / WebSocket frame write, so a client that stops
/// reading cannot pin a task forever.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time [`serve`] waits, after shutdown, for in-flight connections to finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Per-core resource limits of the HTTP/WebSocket layer.
///
/// Construct with `Limits { field: value, ..Limits::default() }` so that new fields do
/// not break callers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Cap on the request head in bytes; exceeding it answers `431` and closes.
    pub max_header_bytes: usize,
    /// Cap on the number of request headers; exceeding it answers `431` and closes.
    pub max_headers: usize,
    /// Cap on a request body; exceeding it answers `413` and closes without reading it.
    pub max_body: usize,
    /// The whole request head must arrive within this time (from the first byte of the
    /// request, or from accept for the first request of a connection); else close.
    pub header_timeout: Duration,
    /// The whole request body must arrive within this time after the head; else close.
    pub body_timeout: Duration,
    /// An idle keep-alive connection is closed after this time without a new request.
    pub keepalive_idle: Duration,
    /// Cap on one inbound WebSocket frame payload; larger frames end the socket
    /// (the writer should then close with 1009).
    pub ws_max_frame: usize,
    /// No inbound WebSocket frame for this long ends the socket.
    pub ws_idle_timeout: Duration,
    /// Connections beyond this many on one core are accepted and closed at once.
    pub max_connections_per_core: usize,
    /// Bound on writing one response or one WebSocket frame (`TimedOut` error).
    pub write_timeout: Duration,
    /// After shutdown, how long [`serve`] waits for in-flight connections (including
    /// WebSocket sessions) before it returns anyway.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body: DEFAULT_MAX_BODY,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            keepalive_idle: DEFAULT_KEEPALIVE_IDLE,
            ws_max_frame: DEFAULT_WS_MAX_FRAME,
            ws_idle_timeout: DEFAULT_WS_IDLE_TIMEOUT,
            max_connections_per_core: DEFAULT_MAX_CONNECTIONS_PER_CORE,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}
