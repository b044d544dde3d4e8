//! Messages between cores. Everything here crosses threads (`Send`); replies come
//! back on one-shot flume channels so any runtime can await them.

use bytes::Bytes;
use starcite_shards::shard::{ListRow, Proposal, ReadResult, SessionInfo};
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
        reply: Reply<Vec<ListRow>>,
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
    /// Raft messages from peers for groups this core owns.
    Raft {
        messages: Vec<(u32, raft::eraftpb::Message)>,
    },
    /// The node is stopping: hand this core's leaderships to other replicas.
    HandOff,
    Shutdown,
}

#[derive(Debug, Clone, Default)]
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
}
