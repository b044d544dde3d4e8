//! Rebuilding a core's groups from its log segments.
//!
//! Segments are replayed in order. A `Snapshot` record resets a group (its log
//! restarts after the snapshot index, keeping the entries after it that agree
//! with it), `Entries` append with Raft's suffix replacement, `HardState`
//! replaces the hard state. A snapshot too large for
//! one frame arrives as `SnapshotPart`s closed by a `ChunkedSnapshot`. A torn
//! tail in the LAST segment is truncated (the driver does the file operation); a
//! torn or corrupt frame anywhere else stops start-up with the file name and
//! offset, and so does a gap in a group's entries that no later snapshot covers.

use std::collections::BTreeMap;

use raft::eraftpb::{Entry, EntryType, HardState};
use rkyv::util::AlignedVec;
use starcite_wire::log::{decode_segment, LogError};
use starcite_wire::record::{ArchivedLogRecord, EntryRecord, LogRecord};

use crate::limits::{ENTRIES_RECORD_BYTES, SNAPSHOT_CHUNK};

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
    /// The oldest segment this group needs: the one holding the latest
    /// snapshot record (or the group's first record), or an older one that
    /// holds entries after that snapshot which no later record rewrote (a
    /// checkpoint whose copy of them a crash cut off).
    pub pin_segment: Option<u64>,
    /// `first index → segment` of each run of entries as last written.
    runs: BTreeMap<u64, u64>,
    /// Parts of a chunked snapshot read so far: (index, bytes).
    parts: Option<(u64, Vec<u8>)>,
    /// `(file, offset, expected index, found index)` of the first `Entries`
    /// record that did not connect to the log. Only a later snapshot (which
    /// replaces the whole log) clears it; at the end of recovery it is an error.
    gap: Option<(String, u64, u64, u64)>,
    /// While `gap` is set: the consecutive entries read since (Raft's suffix
    /// replacement applied), and `first index → segment` of their runs. A
    /// checkpoint's snapshot at an index this run holds, with the same term,
    /// connects them again: the entries after it are the log's tail (their
    /// earlier records went with deleted segments).
    floating: Vec<Entry>,
    floating_runs: BTreeMap<u64, u64>,
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
    #[error("log segment {file}: entries record at offset {offset} for group {group} starts at index {found}, but the log holds entries only up to {} (a gap: records are missing)", expected - 1)]
    Gap {
        file: String,
        offset: u64,
        group: u32,
        expected: u64,
        found: u64,
    },
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
            let last_before = g.storage.last_index_now();
            replay(g, record, &seg.name, seg.seq, offset).map_err(|reason| {
                RecoveryError::BadRecord {
                    file: seg.name.clone(),
                    offset,
                    reason,
                }
            })?;
            if let ArchivedLogRecord::Entries { entries, .. } = record {
                let last = g.storage.last_index_now();
                if g.gap.is_none() && (last != last_before || !entries.is_empty()) {
                    let first = entries
                        .first()
                        .map_or(last, |e| e.index.to_native())
                        .max(g.storage.snapshot_index() + 1);
                    if first <= last {
                        g.runs.split_off(&first);
                        g.runs.insert(first, seg.seq);
                    }
                }
            }
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
    for g in out.groups.values_mut() {
        // Entries after the snapshot still live where they were last written.
        let next = g.storage.snapshot_index() + 1;
        if g.storage.last_index_now() >= next {
            if let Some((_, &seg)) = g.runs.range(..=next).next_back() {
                g.pin_segment = g.pin_segment.map(|p| p.min(seg));
            }
        }
        g.runs.clear();
    }
    for (&group, g) in &out.groups {
        if let Some((file, offset, expected, found)) = &g.gap {
            return Err(RecoveryError::Gap {
                file: file.clone(),
                offset: *offset,
                group,
                expected: *expected,
                found: *found,
            });
        }
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
        | ArchivedLogRecord::SnapshotPart { group, .. }
        | ArchivedLogRecord::ChunkedSnapshot { group, .. }
        | ArchivedLogRecord::Membership { group, .. } => group.to_native(),
    }
}

fn replay(
    g: &mut RecoveredGroup,
    record: &ArchivedLogRecord,
    file: &str,
    seq: u64,
    offset: u64,
) -> Result<(), String> {
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
            if ents.windows(2).any(|w| w[1].index != w[0].index + 1) {
                return Err("entries in one record are not consecutive".into());
            }
            let Some(head) = ents.first().map(|e| e.index) else {
                return Ok(());
            };
            if g.gap.is_some() {
                // Nothing connects to the log until a snapshot resets it; keep
                // the run aside for a checkpoint that connects it.
                float(g, ents, seq);
                return Ok(());
            }
            let expected = g.storage.last_index_now() + 1;
            if head > expected {
                g.gap = Some((file.to_string(), offset, expected, head));
                float(g, ents, seq);
                return Ok(());
            }
            g.storage.append(&ents);
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
            g.parts = None;
            let voters = voters.iter().map(|v| v.to_native()).collect();
            install(
                g,
                index.to_native(),
                term.to_native(),
                voters,
                bytes::Bytes::copy_from_slice(state),
            );
        }
        ArchivedLogRecord::SnapshotPart {
            index,
            offset: part_offset,
            data,
            ..
        } => {
            let (index, part_offset) = (index.to_native(), part_offset.to_native());
            if part_offset == 0 {
                // A new snapshot starts (parts of an earlier one that never got
                // its end were cut off by a crash and are dropped).
                g.parts = Some((index, data.to_vec()));
                return Ok(());
            }
            match &mut g.parts {
                Some((i, bytes)) if *i == index && bytes.len() as u64 == part_offset => {
                    bytes.extend_from_slice(data);
                }
                other => {
                    return Err(format!(
                        "snapshot part at index {index}, offset {part_offset} does not follow the parts before it ({:?})",
                        other.as_ref().map(|(i, b)| (*i, b.len()))
                    ))
                }
            }
        }
        ArchivedLogRecord::ChunkedSnapshot {
            index,
            term,
            voters,
            len,
            ..
        } => {
            let (index, len) = (index.to_native(), len.to_native());
            let state = match g.parts.take() {
                Some((i, bytes)) if i == index && bytes.len() as u64 == len => bytes,
                other => {
                    return Err(format!(
                        "chunked snapshot at index {index} of {len} bytes, but its parts hold {:?}",
                        other.as_ref().map(|(i, b)| (*i, b.len()))
                    ))
                }
            };
            let voters = voters.iter().map(|v| v.to_native()).collect();
            install(
                g,
                index,
                term.to_native(),
                voters,
                bytes::Bytes::from(state),
            );
        }
        ArchivedLogRecord::Membership {
            index, conf_state, ..
        } => {
            let cs = crate::membership::decode_conf_state(conf_state)
                .map_err(|e| format!("membership record at index {index}: {e}"))?;
            g.storage.restore_membership(index.to_native(), cs);
        }
    }
    Ok(())
}

/// Adds a record's entries to the run kept aside while the log has a gap:
/// suffix replacement when it starts inside (or right after) the run, a new
/// run otherwise.
fn float(g: &mut RecoveredGroup, ents: Vec<Entry>, seq: u64) {
    let head = ents[0].index;
    let run_first = g.floating.first().map(|e| e.index);
    match run_first {
        Some(first) if head >= first && head <= first + g.floating.len() as u64 => {
            g.floating.truncate((head - first) as usize);
            g.floating_runs.split_off(&head);
        }
        _ => {
            g.floating.clear();
            g.floating_runs.clear();
        }
    }
    g.floating.extend(ents);
    g.floating_runs.insert(head, seq);
}

fn install(g: &mut RecoveredGroup, index: u64, term: u64, voters: Vec<u64>, data: bytes::Bytes) {
    // The full membership follows in a `Membership` record (older logs: voters only).
    let conf = raft::eraftpb::ConfState {
        voters,
        ..Default::default()
    };
    let had_gap = g.gap.take().is_some();
    let floating = std::mem::take(&mut g.floating);
    let floating_runs = std::mem::take(&mut g.floating_runs);
    g.storage.apply_snapshot(index, term, conf, data.clone());
    g.snapshot_state = Some(data);
    // A checkpoint may sit after the entries it keeps (those after its
    // index): written in the same batch, or re-read after a torn checkpoint
    // lost its own copy of them. When the segments before those entries are
    // gone, they were read while the log had a gap. They are the log this
    // checkpoint was taken from when they connect to it (storage.md,
    // Recovery): the run holds the snapshot's own entry with its term, or it
    // starts right after it with no older term.
    if had_gap && g.storage.last_index_now() == index {
        if let Some(keep) = connects(&floating, index, term) {
            if !keep.is_empty() {
                g.storage.append(keep);
                g.runs = floating_runs;
            }
        }
    }
}

/// The entries of `run` that follow a snapshot at `(index, term)` when the run
/// continues that snapshot's log; `None` when it does not connect.
fn connects(run: &[Entry], index: u64, term: u64) -> Option<&[Entry]> {
    let first = run.first()?;
    if first.index == index + 1 {
        return (first.term >= term).then_some(run);
    }
    let at = run.iter().position(|e| e.index == index)?;
    (run[at].term == term).then(|| &run[at + 1..])
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
///
/// Every record the engine writes is bounded below the log frame by
/// construction, never by luck: `Entries` records are cut at
/// [`ENTRIES_RECORD_BYTES`] plus one entry (a proposal is at most [`MAX_ENTRY`](crate::limits::MAX_ENTRY),
/// an entry from a peer at most `MAX_STORED_ENTRY`; larger ones are refused),
/// snapshots are cut
/// into [`SNAPSHOT_CHUNK`] parts, and `starcite_wire::limits` checks at compile
/// time that each of these fits a frame. A record over the limit would
/// therefore be a bug in this crate, and is reported as an error.
pub fn encode_record(
    record: &LogRecord,
    out: &mut Vec<u8>,
) -> Result<(), starcite_wire::log::LogError> {
    let bytes = starcite_wire::record::encode(record);
    starcite_wire::log::encode_frame(&bytes, out)
}

/// Appends one group's entries as `Entries` records of at most
/// [`ENTRIES_RECORD_BYTES`] (plus one entry) each.
pub(crate) fn push_entries(gid: u32, entries: &[Entry], buf: &mut Vec<u8>) {
    let mut chunk: Vec<EntryRecord> = Vec::new();
    let mut bytes = 0usize;
    let flush = |chunk: &mut Vec<EntryRecord>, buf: &mut Vec<u8>| {
        if chunk.is_empty() {
            return;
        }
        let record = LogRecord::Entries {
            group: gid,
            entries: std::mem::take(chunk),
        };
        if let Err(e) = encode_record(&record, buf) {
            // Unreachable (see `encode_record`); refusing to continue is the
            // only safe answer, as the entries cannot be made durable.
            tracing::error!(group = gid, error = %e, "entries record over the frame limit");
            panic!("group {gid}: entries record over the log frame limit: {e}");
        }
    };
    for e in entries {
        let size = e.data.len() + e.context.len() + ENTRY_RECORD_OVERHEAD;
        if !chunk.is_empty() && bytes + size > ENTRIES_RECORD_BYTES {
            flush(&mut chunk, buf);
            bytes = 0;
        }
        bytes += size;
        chunk.push(EntryRecord {
            term: e.term,
            index: e.index,
            kind: entry_kind(e.get_entry_type()),
            data: e.data.to_vec(),
            context: e.context.to_vec(),
        });
    }
    flush(&mut chunk, buf);
}

/// Archived bytes of an `EntryRecord` beyond its data and context.
const ENTRY_RECORD_OVERHEAD: usize = 64;

/// Appends a group's snapshot: one `Snapshot` record if the state fits a
/// [`SNAPSHOT_CHUNK`], else `SnapshotPart`s of that size and a `ChunkedSnapshot`.
pub(crate) fn push_snapshot(
    gid: u32,
    index: u64,
    term: u64,
    voters: Vec<u64>,
    state: &[u8],
    buf: &mut Vec<u8>,
) {
    let put = |record: &LogRecord, buf: &mut Vec<u8>| {
        if let Err(e) = encode_record(record, buf) {
            // Unreachable: every record here carries at most SNAPSHOT_CHUNK bytes.
            panic!("group {gid}: snapshot record over the log frame limit: {e}");
        }
    };
    if state.len() <= SNAPSHOT_CHUNK {
        let record = LogRecord::Snapshot {
            group: gid,
            index,
            term,
            voters,
            state: state.to_vec(),
        };
        put(&record, buf);
        return;
    }
    let mut offset = 0u64;
    for part in state.chunks(SNAPSHOT_CHUNK) {
        let record = LogRecord::SnapshotPart {
            group: gid,
            index,
            offset,
            data: part.to_vec(),
        };
        put(&record, buf);
        offset += part.len() as u64;
    }
    let record = LogRecord::ChunkedSnapshot {
        group: gid,
        index,
        term,
        voters,
        len: state.len() as u64,
    };
    put(&record, buf);
}
