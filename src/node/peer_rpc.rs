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

/// First byte of a binary-encoded append proposal (JSON bodies start with `{`
/// or `"`, never with it).
const BINARY_PROPOSE: u8 = 0xB1;
/// First byte of a binary-encoded command answer.
const BINARY_COMMAND: u8 = 0xB2;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data into a Vec cannot fail to serialise.
    serde_json::to_vec(value).expect("peer message serialises")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

/// Encodes a request. Forwarded appends — the hot path — travel in a compact
/// binary form (bincode: the event body is copied once, not escaped into a
/// JSON string inside JSON); everything else as JSON.
pub fn encode_request(req: &PeerRequest) -> Vec<u8> {
    if let PeerRequest::Propose {
        proposal: proposal @ Proposal::Append { .. },
    } = req
    {
        let mut out = Vec::with_capacity(64 + proposal_len(proposal));
        out.push(BINARY_PROPOSE);
        if bincode::serialize_into(&mut out, proposal).is_ok() {
            return out;
        }
    }
    encode(req)
}

pub fn decode_request(bytes: &[u8]) -> Option<PeerRequest> {
    match bytes.split_first() {
        Some((&BINARY_PROPOSE, rest)) => bincode::deserialize::<Proposal>(rest)
            .ok()
            .filter(|p| matches!(p, Proposal::Append { .. }))
            .map(|proposal| PeerRequest::Propose { proposal }),
        _ => decode(bytes),
    }
}

/// Encodes a response; an append's answer (or any command error) is binary.
pub fn encode_response(resp: &PeerResponse) -> Vec<u8> {
    if let PeerResponse::Command(result @ (Ok(Outcome::Appended { .. }) | Err(_))) = resp {
        let mut out = vec![BINARY_COMMAND];
        if bincode::serialize_into(&mut out, result).is_ok() {
            return out;
        }
    }
    encode(resp)
}

pub fn decode_response(bytes: &[u8]) -> Option<PeerResponse> {
    match bytes.split_first() {
        Some((&BINARY_COMMAND, rest)) => bincode::deserialize(rest).ok().map(PeerResponse::Command),
        _ => decode(bytes),
    }
}

fn proposal_len(p: &Proposal) -> usize {
    match p {
        Proposal::Append {
            session,
            producer_id,
            body,
            ..
        } => session.len() + producer_id.len() + body.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append() -> Proposal {
        Proposal::Append {
            session: "s-1".into(),
            producer_id: "writer \"1\"".into(),
            producer_seq: 7,
            fingerprint: [9; 16],
            expected_seq: Some(6),
            body: r#"{"type":"m","payload":{"t":"é\n"}}"#.into(),
        }
    }

    #[test]
    fn forwarded_appends_are_binary_and_round_trip() {
        let bytes = encode_request(&PeerRequest::Propose { proposal: append() });
        assert_eq!(bytes[0], BINARY_PROPOSE);
        match decode_request(&bytes) {
            Some(PeerRequest::Propose { proposal }) => {
                assert_eq!(format!("{proposal:?}"), format!("{:?}", append()))
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn other_requests_stay_json() {
        let req = PeerRequest::Info {
            session: "s".into(),
        };
        let bytes = encode_request(&req);
        assert_eq!(bytes[0], b'{');
        assert!(
            matches!(decode_request(&bytes), Some(PeerRequest::Info { session }) if session == "s")
        );
    }

    #[test]
    fn command_answers_round_trip() {
        for result in [
            Ok(Outcome::Appended {
                seq: 3,
                last_seq: 4,
                deduped: true,
            }),
            Err(EngineError::NotLeader { leader: Some(2) }),
            Err(EngineError::ProducerSeqConflict {
                producer_id: "p".into(),
                expected: 1,
                got: 3,
            }),
            Ok(Outcome::Created { created_at_us: 5 }),
        ] {
            let bytes = encode_response(&PeerResponse::Command(result.clone()));
            match decode_response(&bytes) {
                Some(PeerResponse::Command(r)) => assert_eq!(r, result),
                other => panic!("decoded {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode_request(&[BINARY_PROPOSE, 1, 2]).is_none());
        assert!(decode_response(&[BINARY_COMMAND]).is_none());
        assert!(decode_request(b"nonsense").is_none());
    }
}
