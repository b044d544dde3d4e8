//! The per-core engine of a Starcite node.
//!
//! A [`shard::Shard`] owns the local replicas of the groups assigned to one core:
//! their Raft state (TiKV's `raft` crate, driven sans-IO), the replicated session
//! state machine, the hot tier and the producer windows. It performs no I/O: the
//! driver (the monoio core loop in production, a simulator in tests) feeds it
//! proposals, ticks and messages, writes the log bytes it prepares, syncs them,
//! and tells it when they are durable. Time comes in as a parameter.
//!
//! ```text
//!   driver                       Shard
//!   ------                       -----
//!   propose(op, waiter, now) --> RawNode::propose (group leader)
//!   tick()                   --> RawNode::tick (every group)
//!   collect(&mut buf)        --> Ready of every dirty group -> log records,
//!                                apply committed; Outputs (a leader's messages)
//!   prepare_write(&mut buf)  --> collect + checkpoints; seal the batch
//!   write(buf); fdatasync        (collect keeps forming the next batch)
//!   on_durable()             --> persisted; Outputs (messages that waited)
//!   Outputs.completions      --> answer clients (after quorum + apply)
//!   Outputs.notifications    --> tail subscribers
//! ```

pub mod checkpoint;
pub mod error;
pub mod fault;
pub mod group;
pub mod limits;
pub mod membership;
pub mod placement;
pub mod raft_storage;
pub mod recovery;
pub mod routing;
pub mod shard;
pub mod state;
pub mod time;

pub use error::EngineError;
