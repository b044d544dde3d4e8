//! Every bound of the engine in one place. Byte bounds shared with the HTTP
//! layer, the transport and the log format live in `starcite_wire::limits`
//! (re-exported here), where they are checked against each other.

pub use starcite_wire::limits::*;

/// Producer entries kept per session before the least recently used is dropped.
pub const PRODUCERS_PER_SESSION: usize = 10_000;
/// Default per-producer dedupe window (decision 2); configurable per node, must be
/// identical on every replica because it is part of the state machine.
pub const DEFAULT_DEDUPE_WINDOW: usize = 128;
/// Largest tail read served in one request (contract §12.3).
pub const MAX_READ_EVENTS: usize = 1_000;
/// Accounting overhead per hot event on top of its rendered bytes.
pub const HOT_EVENT_OVERHEAD: u64 = 64;
/// Live log size beyond which groups are snapshotted so old segments free up.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Size at which the driver starts a new log segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Snapshot bytes added to one write batch at most (beyond the first group), so
/// compaction never stalls a core.
pub const SNAPSHOT_BYTES_PER_BATCH: usize = 4 * 1024 * 1024;
/// Raft ticks: the driver ticks every `TICK_MS`.
pub const TICK_MS: u64 = 100;
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;
/// Ticks a leader waits for a follower to apply a snapshot before resending.
pub const SNAPSHOT_RETRY_TICKS: usize = 30;
/// Raft message and in-flight limits.
pub const MAX_SIZE_PER_MSG: u64 = starcite_wire::limits::RAFT_MAX_SIZE_PER_MSG as u64;
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// Proposals waiting for apply per core; beyond it appends answer 503.
pub const MAX_PENDING_PROPOSALS: usize = 65_536;
