//! A running node: one thread per core, each with its own monoio runtime.
//!
//! ```text
//!   core c thread (monoio, io_uring)
//!   +-----------------------------------------------------------+
//!   | HTTP accept loop (SO_REUSEPORT) -> connection tasks       |
//!   |    gateway: validate, render, route by group -> core      |
//!   |                          | flume (CoreRequest)            |
//!   | engine loop: Shard (groups g % cores == c)  <-------------+-- other cores' gateways
//!   |    group commit -> raft-c-N.log (write + fdatasync)       |
//!   |    completions -> reply channels; events -> tail subscribers|
//!   +-----------------------------------------------------------+
//! ```

pub mod bootstrap;
pub mod control;
pub mod direct_io;
pub mod engine_io;
pub mod engine_loop;
pub mod gateway;
pub mod heartbeats;
pub mod identity;
pub mod messages;
pub mod metrics;
pub mod ops_backend;
pub mod peer_inbound;
pub mod peer_rpc;
pub mod segment_log;
pub mod shutdown;
pub mod stages;
pub mod topology;
pub mod writer_affinity;

pub use bootstrap::run;
