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
//!   prepare_write(&mut buf)  --> Ready of every dirty group -> log records
//!   write(buf); fdatasync    
//!   on_durable()             --> advance; apply committed; Outputs
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
