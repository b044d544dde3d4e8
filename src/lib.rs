//! The `starcite` node: configuration, per-core runtime, HTTP/WebSocket gateway,
//! routing of requests to the core that owns a session's group.

pub mod api;
pub mod archive;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod node;
pub mod ops;
pub mod phoenix;
pub mod tail;
pub mod tls;
pub mod wire_server;
