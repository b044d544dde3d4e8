//! Messages between cores. Everything here crosses threads (`Send`); replies come
//! back on one-shot flume channels so any runtime can await them.

use bytes::Bytes;
use starcite_shards::shard::{
    ArchiveWork, ArchivedFilter, ListRow, Proposal, ReadResult, SessionInfo,
};
use starcite_shards::state::machine::Outcome;
use starcite_shards::EngineError;

pub type Reply<T> = flume::Sender<T>;
pub type CommandResult = Result<Outcome, EngineError>;

/// Depth of every core's inbox; a full inbox makes callers wait (backpressure).
pub const CORE_INBOX_DEPTH: usize = 16_384;
/// Events buffered per tail subscriber before it is dropped back to replay.
pub const SUBSCRIBER_DEPTH: usize = 1_024;

/// A live event pushed to a tail subscriber.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub seq: u64,
    pub frame: Bytes,
}

pub struct Subscriber {
    pub id: u64,
    pub tx: flume::Sender<LiveEvent>,
}

/// A request to the core that owns a session's group.
pub enum CoreRequest {
    Propose {
        proposal: Proposal,
        reply: Reply<CommandResult>,
        /// When the requester queued it (the `handoff` stage).
        since: std::time::Instant,
        /// Slot (`Topology::slot`) of the node whose gateway received the
        /// client's request (leadership follows the writer:
        /// `writer_affinity`); `None` for the node's own commands (the
        /// archiver's).
        origin: Option<u64>,
    },
    Info {
        session: String,
        reply: Reply<Option<SessionInfo>>,
    },
    Read {
        session: String,
        after: u64,
        limit: usize,
        reply: Reply<Result<ReadResult, EngineError>>,
    },
    List {
        cursor: Option<String>,
        limit: usize,
        tenant: Option<String>,
        filters: Vec<(String, String)>,
        archived: ArchivedFilter,
        reply: Reply<Vec<ListRow>>,
    },
    /// A session's catalog entry, from the group leader only
    /// (`Shard::leader_row`).
    Get {
        session: String,
        reply: Reply<Result<Option<ListRow>, EngineError>>,
    },
    Subscribe {
        session: String,
        subscriber: Subscriber,
        reply: Reply<Option<SessionInfo>>,
    },
    Unsubscribe {
        session: String,
        id: u64,
    },
    Stats {
        reply: Reply<CoreStats>,
    },
    /// Committed, unarchived events and changed catalog entries of the groups
    /// this core leads, for the archiver (see `Shard::archive_scan`).
    ArchiveScan {
        after: Option<String>,
        per_session: usize,
        budget_bytes: usize,
        /// The catalog stamp the archiver's last complete pass started at
        /// (`Shard::archive_scan`'s `catalog_after`; the field keeps the name
        /// the engine loop destructures).
        empty_since_us: u64,
        reply: Reply<(Vec<ArchiveWork>, bool)>,
    },
    /// Raft messages from peers for groups this core owns.
    Raft {
        messages: Vec<(u32, raft::eraftpb::Message)>,
    },
    /// A group's commit index and log entries `(term, index, data)` (the
    /// simulator's checker compares replicas with it).
    LogView {
        group: u32,
        reply: Reply<Option<(u64, Vec<(u64, u64, Bytes)>)>>,
    },
    /// Every local group's applied membership (the simulator checks that
    /// replacements complete with it).
    Membership {
        reply: Reply<Vec<(u32, raft::eraftpb::ConfState)>>,
    },
    /// The node is stopping: hand this core's leaderships to other replicas.
    HandOff,
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct CoreStats {
    pub core: u32,
    pub groups: usize,
    pub leaders: usize,
    pub hot_bytes: u64,
    pub pending: usize,
    pub writes: u64,
    pub syncs: u64,
    pub entries_written: u64,
    pub write_bytes: u64,
    pub tail_subscribers: usize,
    /// Subscribers dropped back to replay for falling behind.
    pub tail_dropped: u64,
    pub elections_won: u64,
    /// Leadership transfers started because a group's writer is another node.
    pub follow_moves: u64,
    /// Committed but not yet applied entries, summed over groups.
    pub apply_lag: u64,
    pub commit_latency: super::metrics::Histogram,
    pub fsync_latency: super::metrics::Histogram,
    pub batch_commands: super::metrics::Histogram,
}

impl CoreStats {
    pub fn new(core: u32, groups: usize) -> Self {
        use super::metrics::{Histogram, BATCH_BUCKETS, LATENCY_BUCKETS};
        CoreStats {
            core,
            groups,
            leaders: 0,
            hot_bytes: 0,
            pending: 0,
            writes: 0,
            syncs: 0,
            entries_written: 0,
            write_bytes: 0,
            tail_subscribers: 0,
            tail_dropped: 0,
            elections_won: 0,
            follow_moves: 0,
            apply_lag: 0,
            commit_latency: Histogram::new(LATENCY_BUCKETS),
            fsync_latency: Histogram::new(LATENCY_BUCKETS),
            batch_commands: Histogram::new(BATCH_BUCKETS),
        }
    }
}
