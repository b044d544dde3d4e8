//! A group's Raft log as the `raft` crate sees it: the entries since the last
//! snapshot, the hard state and the membership. It lives in memory and is owned by
//! the group's `RawNode`; durability is the per-core log file, written by the
//! driver from the records the shard prepares.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Debug, Default)]
pub struct GroupStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last snapshot (everything at or below is compacted).
    snapshot_meta: SnapshotMetadata,
    /// Serialised state-machine snapshot at `snapshot_meta.index` (for followers).
    snapshot_data: bytes::Bytes,
    /// `entries[i].index == snapshot_meta.index + 1 + i`.
    entries: Vec<Entry>,
    /// Raft asked for a snapshot for a peer the last snapshot's membership
    /// does not include (a learner added since): the shard takes a fresh one.
    fresh_snapshot_wanted: std::cell::Cell<bool>,
}

impl GroupStorage {
    pub fn new(voters: Vec<u64>) -> Self {
        let mut s = Self::default();
        s.conf_state.voters = voters;
        s
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn set_voters(&mut self, voters: Vec<u64>) {
        self.conf_state.voters = voters;
    }

    pub fn voters(&self) -> &[u64] {
        &self.conf_state.voters
    }

    /// The membership as of the applied index (voters, learners, joint state).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Records the membership after a conf change was applied (or recovered).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_meta.index
    }

    pub fn snapshot_term(&self) -> u64 {
        self.snapshot_meta.term
    }

    /// Index of the last entry held (the snapshot index when there are none).
    pub fn last_index_now(&self) -> u64 {
        self.last()
    }

    fn first(&self) -> u64 {
        self.snapshot_meta.index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_meta.index + self.entries.len() as u64
    }

    /// Entries with index in `low..=high` (persisted ones only).
    pub fn entries_in(&self, low: u64, high: u64) -> &[Entry] {
        let first = self.first();
        let lo = low.max(first);
        let hi = high.min(self.last());
        if lo > hi {
            return &[];
        }
        &self.entries[(lo - first) as usize..=(hi - first) as usize]
    }

    /// Appends entries, replacing any conflicting suffix (Raft log matching).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(head) = ents.first() else { return };
        assert!(
            head.index >= self.first(),
            "append below the snapshot: {} < {}",
            head.index,
            self.first()
        );
        assert!(
            head.index <= self.last() + 1,
            "gap in the log: {} > {}",
            head.index,
            self.last() + 1
        );
        let keep = (head.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
    }

    /// Installs a snapshot: the log restarts after it.
    pub fn apply_snapshot(&mut self, index: u64, term: u64, conf: ConfState, data: bytes::Bytes) {
        // Keep entries after the snapshot if they agree with it (restart from a
        // checkpoint); otherwise the log restarts empty. The snapshot already
        // held (a checkpoint written again at the same index) keeps them all.
        let same_point = index == self.snapshot_meta.index && term == self.snapshot_meta.term;
        let tail: Vec<Entry> = if same_point {
            std::mem::take(&mut self.entries)
        } else if index >= self.first() && index <= self.last() {
            let at = (index - self.first()) as usize;
            if self.entries[at].term == term {
                self.entries[at + 1..].to_vec()
            } else {
                Vec::new()
            }
        } else {
            Vec::new()
        };
        self.snapshot_meta.index = index;
        self.snapshot_meta.term = term;
        self.conf_state = conf;
        self.snapshot_meta.set_conf_state(self.conf_state.clone());
        self.snapshot_data = data;
        self.entries = tail;
        self.hard_state.term = self.hard_state.term.max(term);
        self.hard_state.commit = self.hard_state.commit.max(index);
    }

    /// The full membership of the snapshot at `index` (the `Membership` record
    /// that follows a snapshot record in the log).
    pub fn restore_membership(&mut self, index: u64, cs: ConfState) {
        if index == self.snapshot_meta.index {
            self.snapshot_meta.set_conf_state(cs.clone());
            self.conf_state = cs;
        }
    }

    /// Whether raft needs a snapshot newer than the last one (and clears it).
    pub fn take_fresh_snapshot_wanted(&self) -> bool {
        self.fresh_snapshot_wanted.replace(false)
    }

    /// Records a local checkpoint at `index` (applied) and drops entries up to it.
    pub fn compact_to(&mut self, index: u64, term: u64, data: bytes::Bytes) {
        if index < self.first() {
            return;
        }
        let drop = ((index - self.first()) + 1).min(self.entries.len() as u64) as usize;
        self.entries.drain(..drop);
        self.snapshot_meta.index = index;
        self.snapshot_meta.term = term;
        self.snapshot_meta.set_conf_state(self.conf_state.clone());
        self.snapshot_data = data;
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let first = self.first();
        let mut ents = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Raft refuses a snapshot whose membership does not include the
        // receiver: a learner added after the last checkpoint needs a newer one.
        let cs = self.snapshot_meta.get_conf_state();
        let member = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|id| *id == to);
        if !member {
            self.fresh_snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        if self.snapshot_meta.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot_meta.clone());
        snap.data = self.snapshot_data.clone();
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_replaces_conflicting_suffix() {
        let mut s = GroupStorage::new(vec![1]);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        s.append(&[entry(2, 2)]);
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.entries_in(1, 9).len(), 2);
    }

    #[test]
    fn compaction_keeps_term_of_snapshot_index() {
        let mut s = GroupStorage::new(vec![1]);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]);
        s.compact_to(2, 1, bytes::Bytes::new());
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(s.term(1).is_err());
        assert_eq!(
            s.entries(3, 4, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            1
        );
        assert!(s
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .is_err());
    }
}
