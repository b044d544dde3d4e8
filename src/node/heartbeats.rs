//! Coalesced heartbeats: one message per peer per tick for all groups.
//!
//! Raft produces a heartbeat (and a heartbeat response) per group. Sent as
//! they are, a node with 256 groups would send hundreds of protobuf messages
//! per peer per interval. Instead the engine loop packs every heartbeat (and
//! every response) for one peer into a single envelope of fixed 40-byte
//! records, which the receiver unpacks back into Raft messages. Idle groups
//! cost 40 bytes per interval on the wire and no protobuf work.

use raft::eraftpb::{Message, MessageType};

/// Envelope "group" marking a packed heartbeat batch.
pub const HEARTBEAT_BATCH_GROUP: u32 = u32::MAX;
const RECORD: usize = 40;

/// Whether a message can travel in a heartbeat batch (no payload beyond these fields).
pub fn is_packable(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
    ) && m.context.is_empty()
        && m.entries.is_empty()
}

/// Packs `(group, message)` heartbeats into one envelope body:
/// per record: group u32, kind u8 (0 heartbeat, 1 response), 3 reserved bytes,
/// term u64, commit u64, from u64, to u64 (little endian; Raft ids carry an
/// incarnation above the node slot, see `starcite_shards::membership`).
pub fn pack(beats: &[(u32, &Message)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(beats.len() * RECORD);
    for (group, m) in beats {
        out.extend_from_slice(&group.to_le_bytes());
        let kind = u8::from(m.get_msg_type() == MessageType::MsgHeartbeatResponse);
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(&m.term.to_le_bytes());
        out.extend_from_slice(&m.commit.to_le_bytes());
        out.extend_from_slice(&m.from.to_le_bytes());
        out.extend_from_slice(&m.to.to_le_bytes());
    }
    out
}

/// Unpacks a heartbeat batch; `None` if the body is malformed.
pub fn unpack(body: &[u8]) -> Option<Vec<(u32, Message)>> {
    if body.len() % RECORD != 0 {
        return None;
    }
    body.chunks_exact(RECORD)
        .map(|r| {
            let u32_at = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
            let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or([0; 8]));
            let kind = match r[4] {
                0 => MessageType::MsgHeartbeat,
                1 => MessageType::MsgHeartbeatResponse,
                _ => return None,
            };
            let mut m = Message::default();
            m.set_msg_type(kind);
            m.term = u64_at(8);
            m.commit = u64_at(16);
            m.from = u64_at(24);
            m.to = u64_at(32);
            Some((u32_at(0), m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(kind: MessageType, term: u64, commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.term = term;
        m.commit = commit;
        m.from = 1;
        // A replaced node's id: incarnation above the 16-bit slot.
        m.to = (1_764_000_000_000 << 16) | 3;
        m
    }

    #[test]
    fn heartbeats_round_trip_in_one_body() {
        let a = beat(MessageType::MsgHeartbeat, 7, 42);
        let b = beat(MessageType::MsgHeartbeatResponse, 8, 0);
        let body = pack(&[(5, &a), (250, &b)]);
        assert_eq!(body.len(), 80);
        let back = unpack(&body).unwrap();
        assert_eq!(back, vec![(5, a), (250, b)]);
        assert!(unpack(&body[..41]).is_none());
        let mut bad = body.clone();
        bad[4] = 9;
        assert!(unpack(&bad).is_none());
    }

    #[test]
    fn only_plain_heartbeats_are_packed() {
        assert!(is_packable(&beat(MessageType::MsgHeartbeat, 1, 1)));
        let mut with_ctx = beat(MessageType::MsgHeartbeat, 1, 1);
        with_ctx.context = bytes::Bytes::from_static(b"read-index");
        assert!(!is_packable(&with_ctx));
        assert!(!is_packable(&beat(MessageType::MsgAppend, 1, 1)));
    }
}
