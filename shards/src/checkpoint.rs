//! Checkpoints: how the per-core log stays bounded.
//!
//! When enough log has been written since the last checkpoint, the shard writes a
//! new segment that starts with, for every group, a snapshot of its state machine
//! at the applied index (sessions, producer windows and unarchived events —
//! decision 7), its hard state, and the entries after the applied index. Once
//! that segment is durable every older segment is obsolete and the driver deletes
//! them. Recovery replays segments in order, so a crash at any point of this
//! leaves a log that recovers to the same state.

use starcite_wire::record::{encode, LogRecord};

use crate::recovery::encode_record;
use crate::shard::Shard;

impl<W> Shard<W> {
    /// Whether the log has grown enough to be worth a checkpoint. The threshold
    /// grows with the checkpoint itself so rewriting state stays a bounded
    /// fraction of the bytes written.
    pub fn wants_checkpoint(&self) -> bool {
        let threshold = self.cfg.checkpoint_bytes.max(2 * self.last_checkpoint_bytes);
        let due = self.log_bytes_since_checkpoint >= threshold
            || (self.log_bytes_since_checkpoint > 0 && crate::fault::point("shard.checkpoint.force"));
        due && !self.has_ready()
    }

    /// Writes the full checkpoint (the contents of a fresh segment after its
    /// header) into `buf` and compacts every group's in-memory log.
    pub fn checkpoint(&mut self, buf: &mut Vec<u8>) {
        let start = buf.len();
        for (gid, group) in self.groups.iter_mut() {
            let applied = group.applied;
            let store = group.node.store();
            let term = if applied == store.snapshot_index() {
                store.snapshot_term()
            } else {
                raft::Storage::term(store, applied).expect("applied entry is in the log")
            };
            let state = encode(&group.machine.snapshot()).to_vec();
            let voters = store.voters().to_vec();
            let hs = store.hard_state().clone();
            let tail: Vec<_> = store.entries_in(applied + 1, u64::MAX).to_vec();
            let record = LogRecord::Snapshot { group: *gid, index: applied, term, voters, state: state.clone() };
            encode_record(&record, buf);
            let commit = hs.commit.max(applied);
            let hs_record = LogRecord::HardState { group: *gid, term: hs.term, vote: hs.vote, commit };
            encode_record(&hs_record, buf);
            if !tail.is_empty() {
                crate::shard::push_entries_pub(*gid, &tail, buf);
            }
            group.node.mut_store().compact_to(applied, term, bytes::Bytes::from(state));
        }
        self.last_checkpoint_bytes = (buf.len() - start) as u64;
        self.log_bytes_since_checkpoint = 0;
    }
}
