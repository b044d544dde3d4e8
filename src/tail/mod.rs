//! Tails: one cursor state machine ([`engine`]) and the transports that deliver its
//! batches ("sinks"): the raw WebSocket tail ([`ws`]), the binary protocol's
//! subscriptions (`wire_server::sub`) and the Phoenix `tail:<id>` channel
//! (`phoenix::tail`).
//!
//! The engine owns everything transport-independent: where events come from
//! (the owner core's replica with live pushes, or remote replicas polled over the
//! cluster transport), the archive below the hot tier, the subscribe-retry loop,
//! replay → live, and the rule that every batch is exactly `cursor + 1 ..` (a
//! live gap or a dropped subscription goes back to replay; a hole in a read ends
//! the tail with `event_gap_detected`, never a silent skip). A sink only frames
//! batches, watches its own socket, shutdown and token expiry.

pub mod engine;
pub mod ws;

pub use engine::{frames_of, Engine, TailError, TailSource, MAX_FRAME_BYTES};
pub use ws::{run_tail, TailSpec};
