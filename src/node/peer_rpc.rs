//! Requests one node makes of another, and their answers. Carried as the
//! opaque bodies of the transport's Request/Response frames (JSON inside the
//! rkyv-framed, CRC-checked peer frames).

use serde::{Deserialize, Serialize};
use starcite_shards::shard::{ArchivedFilter, ListRow, Proposal, SessionInfo};
use starcite_shards::state::machine::Outcome;
use starcite_shards::EngineError;

use super::control::Gossip;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Propose on this node's local replica (the sender believes it leads).
    Propose {
        proposal: Proposal,
    },
    Info {
        session: String,
    },
    Read {
        session: String,
        after: u64,
        limit: usize,
    },
    List {
        cursor: Option<String>,
        limit: usize,
        tenant: Option<String>,
        filters: Vec<(String, String)>,
        #[serde(default)]
        archived: ArchivedFilter,
    },
    /// A session's catalog entry, if the receiver leads its group.
    Get {
        session: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    Command(Result<Outcome, EngineError>),
    Info(Option<SessionInfo>),
    /// Events as `(seq, frame JSON)`.
    Read(Result<(Vec<(u64, String)>, u64), EngineError>),
    List(Vec<ListRow>),
    /// A catalog entry read on the group leader, or `NotLeader`.
    Row(Result<Option<ListRow>, EngineError>),
    /// The receiver could not serve it (e.g. it does not replicate the group).
    Unavailable,
}

/// One-way control messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlMessage {
    Gossip(Gossip),
    /// A session lifecycle event's body, for this node's lifecycle subscribers.
    Lifecycle(serde_json::Value),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data into a Vec cannot fail to serialise.
    serde_json::to_vec(value).expect("peer message serialises")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}
