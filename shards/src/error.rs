/// Outcomes of a command that are not successes. Business errors are decided by
/// the replicated state machine, so every replica agrees on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum EngineError {
    #[error("session not found")]
    SessionNotFound,
    #[error("session exists")]
    SessionExists,
    #[error("expected seq {expected}, current seq is {current}")]
    ExpectedSeqConflict { expected: u64, current: u64 },
    #[error("producer {producer_id} expected seq {expected}, got {got}")]
    ProducerSeqConflict {
        producer_id: String,
        expected: u64,
        got: u64,
    },
    #[error("producer sequence was already used with different event content")]
    ProducerReplayConflict,
    #[error("hot tier is full")]
    Backpressure,
    #[error("not the leader")]
    NotLeader { leader: Option<u64> },
    #[error("group unavailable")]
    Unavailable,
    /// The command is larger than a log entry may be (`limits::MAX_ENTRY`).
    #[error("command too large")]
    TooLarge,
    #[error("archive read unavailable")]
    ArchiveReadUnavailable,
    /// The cursor is below the hot tier: events up to `archived_seq` are only in
    /// the archive (the caller reads them there, §9.5).
    #[error("events up to {archived_seq} are archived")]
    Archived { archived_seq: u64 },
}
