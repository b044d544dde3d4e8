//! Rebuilding a core's groups from its log segments.
//!
//! Segments are replayed in order. A `Snapshot` record resets a group (its log
//! restarts after the snapshot index), `Entries` append with Raft's suffix
//! replacement, `HardState` replaces the hard state. A torn tail in the LAST
//! segment is truncated (the driver does the file operation); a torn or corrupt
//! frame anywhere else stops start-up with the file name and offset.

use std::collections::BTreeMap;

use raft::eraftpb::{Entry, EntryType, HardState};
use rkyv::util::AlignedVec;
use starcite_wire::log::{decode_segment, LogError};
use starcite_wire::record::{ArchivedLogRecord, LogRecord};

use crate::raft_storage::GroupStorage;

/// One segment file handed to recovery, in segment order.
pub struct SegmentInput {
    pub name: String,
    pub seq: u64,
    pub bytes: AlignedVec<16>,
}

/// What the log says about one group.
#[derive(Default)]
pub struct RecoveredGroup {
    pub storage: GroupStorage,
    /// State-machine snapshot at `storage.snapshot_index()`, if any.
    pub snapshot_state: Option<bytes::Bytes>,
    /// The segment holding the latest snapshot record (or the group's first
    /// record): the oldest segment this group needs.
    pub pin_segment: Option<u64>,
}

pub struct Recovered {
    pub groups: BTreeMap<u32, RecoveredGroup>,
    /// `(file name, valid length)` of a torn last segment to truncate.
    pub truncate: Option<(String, u64)>,
    /// Sequence number of the last segment (the one to keep appending to).
    pub last_segment: Option<u64>,
    /// `(segment, valid length)` of every segment, in order.
    pub segments: Vec<(u64, u64)>,
    pub records: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("log segment {file}: {source}")]
    Segment { file: String, source: LogError },
    #[error("log segment {file}: torn frame at offset {offset} in a segment that is not the last ({reason})")]
    TornInMiddle {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("log segment {file}: record at offset {offset} does not validate: {reason}")]
    BadRecord {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("log segment {file}: record for group {group}, which core {core} does not own (was STARCITE_NUM_GROUPS or STARCITE_CORES changed?)")]
    ForeignGroup { file: String, group: u32, core: u32 },
}

/// Replays `segments`; `owns(group)` says whether this core owns a group.
pub fn recover(
    segments: &[SegmentInput],
    core: u32,
    owns: impl Fn(u32) -> bool,
) -> Result<Recovered, RecoveryError> {
    let mut out = Recovered {
        groups: BTreeMap::new(),
        truncate: None,
        last_segment: None,
        segments: Vec::new(),
        records: 0,
    };
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let decoded = decode_segment(&seg.bytes).map_err(|source| RecoveryError::Segment {
            file: seg.name.clone(),
            source,
        })?;
        if let Some(torn) = &decoded.torn {
            if !is_last {
                return Err(RecoveryError::TornInMiddle {
                    file: seg.name.clone(),
                    offset: torn.offset,
                    reason: torn.reason.clone(),
                });
            }
            out.truncate = Some((seg.name.clone(), decoded.valid_len));
        }
        for (offset, payload) in decoded.frames {
            let record = access_record(payload).map_err(|reason| RecoveryError::BadRecord {
                file: seg.name.clone(),
                offset,
                reason,
            })?;
            let group = record_group(record);
            if !owns(group) {
                return Err(RecoveryError::ForeignGroup {
                    file: seg.name.clone(),
                    group,
                    core,
                });
            }
            let g = out.groups.entry(group).or_default();
            if g.pin_segment.is_none() || matches!(record, ArchivedLogRecord::Snapshot { .. }) {
                g.pin_segment = Some(seg.seq);
            }
            replay(g, record);
            out.records += 1;
        }
        out.last_segment = Some(seg.seq);
        out.segments.push((
            seg.seq,
            decoded
                .valid_len
                .max(starcite_wire::log::SEGMENT_HEADER_LEN as u64),
        ));
    }
    Ok(out)
}

fn access_record(payload: &[u8]) -> Result<&ArchivedLogRecord, String> {
    rkyv::access::<ArchivedLogRecord, rkyv::rancor::Error>(payload).map_err(|e| e.to_string())
}

fn record_group(record: &ArchivedLogRecord) -> u32 {
    match record {
        ArchivedLogRecord::Entries { group, .. }
        | ArchivedLogRecord::HardState { group, .. }
        | ArchivedLogRecord::Snapshot { group, .. }
        | ArchivedLogRecord::Membership { group, .. } => group.to_native(),
    }
}

fn replay(g: &mut RecoveredGroup, record: &ArchivedLogRecord) {
    match record {
        ArchivedLogRecord::Entries { entries, .. } => {
            let first = g.storage.snapshot_index() + 1;
            let ents: Vec<Entry> = entries
                .iter()
                .filter(|e| e.index.to_native() >= first)
                .map(|e| Entry {
                    term: e.term.to_native(),
                    index: e.index.to_native(),
                    entry_type: entry_type(e.kind),
                    data: bytes::Bytes::copy_from_slice(&e.data),
                    context: bytes::Bytes::copy_from_slice(&e.context),
                    ..Default::default()
                })
                .collect();
            if ents
                .first()
                .is_some_and(|e| e.index <= g.storage.last_index_now() + 1)
            {
                g.storage.append(&ents);
            }
        }
        ArchivedLogRecord::HardState {
            term, vote, commit, ..
        } => {
            // A snapshot is committed by definition: never let a hard state
            // move the commit index below it.
            let commit = commit.to_native().max(g.storage.snapshot_index());
            g.storage.set_hard_state(HardState {
                term: term.to_native(),
                vote: vote.to_native(),
                commit,
                ..Default::default()
            });
        }
        ArchivedLogRecord::Snapshot {
            index,
            term,
            voters,
            state,
            ..
        } => {
            let data = bytes::Bytes::copy_from_slice(state);
            let mut conf = raft::eraftpb::ConfState::default();
            conf.voters = voters.iter().map(|v| v.to_native()).collect();
            g.storage
                .apply_snapshot(index.to_native(), term.to_native(), conf, data.clone());
            g.snapshot_state = Some(data);
        }
        ArchivedLogRecord::Membership {
            index,
            voters,
            learners,
            voters_outgoing,
            learners_next,
            auto_leave,
            ..
        } => {
            let ids = |v: &rkyv::vec::ArchivedVec<rkyv::rend::u64_le>| {
                v.iter().map(|x| x.to_native()).collect::<Vec<u64>>()
            };
            let cs = crate::membership::conf_state(
                ids(voters),
                ids(learners),
                ids(voters_outgoing),
                ids(learners_next),
                *auto_leave,
            );
            g.storage.restore_membership(index.to_native(), cs);
        }
    }
}

pub fn entry_type(kind: u8) -> EntryType {
    match kind {
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    }
}

pub fn entry_kind(t: EntryType) -> u8 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// Frames one record into `out` (the caller keeps `out` 16-byte aligned).
pub fn encode_record(record: &LogRecord, out: &mut Vec<u8>) {
    let bytes = starcite_wire::record::encode(record);
    // A record over the frame limit is a bug in the caller's batching.
    starcite_wire::log::encode_frame(&bytes, out).expect("log record within the frame size limit");
}
