//! Log compaction: per-group snapshots and segment reclamation.
//!
//! The log is a sequence of segments; the driver starts a new one when the
//! current one is full. Every group is *pinned* to the segment holding its
//! latest snapshot record (or, before its first snapshot, the first segment):
//! it needs that segment and every later one to recover. Segments older than
//! every pin are obsolete and the driver deletes them.
//!
//! When the live log outgrows `checkpoint_bytes` (or twice the state it
//! protects, whichever is larger, so rewriting state stays a bounded share of
//! the writes), each write batch carries snapshots of a few of the groups with
//! the oldest pins — bounded by `SNAPSHOT_BYTES_PER_BATCH` — so the oldest
//! segment frees up without ever stalling a core on one huge checkpoint. A
//! snapshot record holds the group's state machine at its applied index, its
//! hard state and its entries after the applied index; its pin moves to the
//! current segment once the batch is durable.

use starcite_wire::record::{encode_snapshot, LogRecord};

use crate::limits::SNAPSHOT_BYTES_PER_BATCH;
use crate::shard::Shard;

impl<W> Shard<W> {
    /// Whether the current segment is full and the driver should start the next.
    pub fn wants_new_segment(&self) -> bool {
        self.segment_sizes.get(&self.segment).copied().unwrap_or(0) >= self.cfg.segment_bytes
    }

    /// The driver started segment `seq` (after the current one). Records
    /// collected but not yet sealed go to the new segment.
    pub fn segment_started(&mut self, seq: u64) {
        assert!(seq > self.segment, "segments only move forward");
        let staged = self.staged.bytes;
        if let Some(size) = self.segment_sizes.get_mut(&self.segment) {
            *size = size.saturating_sub(staged);
        }
        self.segment = seq;
        self.segment_sizes
            .insert(seq, starcite_wire::log::SEGMENT_HEADER_LEN as u64 + staged);
        for pin in &mut self.staged.pins {
            pin.1 = seq;
        }
    }

    /// Segments with a lower number hold nothing any group needs.
    pub fn obsolete_before(&self) -> u64 {
        self.pins.values().copied().min().unwrap_or(self.segment)
    }

    /// Forgets the sizes of deleted segments.
    pub fn segments_deleted(&mut self, before: u64) {
        self.segment_sizes.retain(|seq, _| *seq >= before);
    }

    /// Bytes of the segments recovery would read.
    pub fn live_log_bytes(&self) -> u64 {
        self.segment_sizes.values().sum()
    }

    fn compaction_due(&self) -> bool {
        if self.obsolete_before() >= self.segment {
            return false; // every group already pinned to the current segment
        }
        let threshold = self.cfg.checkpoint_bytes.max(2 * self.hot_bytes());
        // The log as written before this batch: the batch's commands are not
        // applied yet, so its bytes would count without their state.
        let written = self.live_log_bytes().saturating_sub(self.staged.bytes);
        written >= threshold || crate::fault::point("shard.checkpoint.force")
    }

    /// Appends snapshot records of the oldest-pinned groups to `buf` when
    /// compaction is due. Their pins move when the batch is durable.
    pub(crate) fn compact_some(&mut self, buf: &mut Vec<u8>) {
        // Groups whose last snapshot predates a new learner (see
        // `GroupStorage::snapshot`) take a fresh one now.
        let wanted: Vec<u32> = self
            .groups
            .iter()
            .filter(|(_, g)| g.node.store().take_fresh_snapshot_wanted())
            .map(|(gid, _)| *gid)
            .collect();
        for gid in wanted {
            self.snapshot_group(gid, buf);
            self.staged.pins.push((gid, self.segment));
        }
        if !self.compaction_due() {
            return;
        }
        let current = self.segment;
        let mut oldest: Vec<(u64, u32)> = self
            .pins
            .iter()
            .filter(|(_, seg)| **seg < current)
            .map(|(g, seg)| (*seg, *g))
            .collect();
        oldest.sort_unstable();
        let start = buf.len();
        for (_, gid) in oldest {
            if buf.len() - start >= SNAPSHOT_BYTES_PER_BATCH {
                break;
            }
            self.snapshot_group(gid, buf);
            self.staged.pins.push((gid, current));
        }
    }

    fn snapshot_group(&mut self, gid: u32, buf: &mut Vec<u8>) {
        let Some(group) = self.groups.get_mut(&gid) else {
            return;
        };
        let applied = group.applied;
        let store = group.node.store();
        let term = if applied == store.snapshot_index() {
            store.snapshot_term()
        } else {
            raft::Storage::term(store, applied).expect("applied entry is in the log")
        };
        let state = encode_snapshot(&group.machine.snapshot());
        let conf = store.conf_state().clone();
        let voters = conf.voters.clone();
        let hs = store.hard_state().clone();
        let tail = store.entries_in(applied + 1, u64::MAX).to_vec();
        crate::recovery::push_snapshot(gid, applied, term, voters, &state, buf);
        crate::shard::push_small(&crate::membership::record(gid, applied, &conf), buf);
        let commit = hs.commit.max(applied);
        crate::shard::push_small(
            &LogRecord::HardState {
                group: gid,
                term: hs.term,
                vote: hs.vote,
                commit,
            },
            buf,
        );
        if !tail.is_empty() {
            crate::recovery::push_entries(gid, &tail, buf);
        }
        group
            .node
            .mut_store()
            .compact_to(applied, term, bytes::Bytes::from(state));
    }
}
