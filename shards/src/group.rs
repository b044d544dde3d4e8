//! One local replica of a Raft group: its `RawNode` (consensus), storage and
//! state machine. Owned by exactly one shard.

use raft::{Config, RawNode, StateRole};

use crate::limits::{
    ELECTION_TICKS, HEARTBEAT_TICKS, MAX_INFLIGHT_MSGS, MAX_SIZE_PER_MSG, SNAPSHOT_RETRY_TICKS,
};
use crate::raft_storage::GroupStorage;
use crate::state::GroupMachine;

pub struct Group {
    pub id: u32,
    pub node: RawNode<GroupStorage>,
    pub machine: GroupMachine,
    /// (term, role) when the election timeout was last chosen.
    timeout_chosen_for: (u64, StateRole),
    chosen_timeout: usize,
    /// Peers in raft's Snapshot state → ticks spent waiting.
    snapshot_waits: std::collections::BTreeMap<u64, usize>,
    /// A leader named a commit index beyond this replica's log: the replica
    /// lost entries it had acknowledged (a wiped disk started without a new
    /// incarnation). It refuses every vote and such heartbeats, and the node
    /// reports not ready; see `Shard::step`.
    pub lost_state: bool,
    /// Highest log index applied to `machine`.
    pub applied: u64,
    /// Local: the catalog stamp (`state::session::next_catalog_gen`) of the
    /// last time this replica became the group's leader, 0 if never. The
    /// archiver looks at every session of a group it has newly come to lead.
    pub led_gen: u64,
}

impl Group {
    /// Tells raft what the state machine has applied, once raft allows it:
    /// an installed snapshot counts only after it is persisted.
    pub fn report_applied(&mut self) {
        let log = &self.node.raft.raft_log;
        if self.applied > log.applied && self.applied <= log.committed.min(log.persisted) {
            self.node.advance_apply_to(self.applied);
        }
    }

    /// Builds the replica from recovered storage whose entries up to `applied` are
    /// already reflected in `machine`.
    pub fn new(
        id: u32,
        raft_id: u64,
        storage: GroupStorage,
        machine: GroupMachine,
        applied: u64,
        logger: &slog::Logger,
    ) -> raft::Result<Self> {
        let config = Config {
            id: raft_id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: MAX_SIZE_PER_MSG,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let node = RawNode::new(&config, storage, logger)?;
        let mut group = Self {
            id,
            node,
            machine,
            applied,
            timeout_chosen_for: (u64::MAX, StateRole::Follower),
            chosen_timeout: ELECTION_TICKS,
            snapshot_waits: Default::default(),
            lost_state: false,
            led_gen: 0,
        };

        group.choose_election_timeout(0);
        Ok(group)
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> Option<u64> {
        match self.node.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// Re-chooses the randomized election timeout after a term or role change.
    ///
    /// The `raft` crate picks it from a thread-local RNG, which would make a
    /// simulated run irreproducible; we override it with a value derived from
    /// `(salt, node, group, term)`, which is just as spread across nodes and
    /// terms, and deterministic for a given salt (a per-process random value
    /// in production, the seed in simulation).
    pub fn choose_election_timeout(&mut self, salt: u64) {
        // Raft may reset the timeout without a term or role change (e.g. a
        // follower hearing a leader), so the value is re-applied after every
        // call; it is recomputed only when (term, role) changes.
        let key = (self.node.raft.term, self.node.raft.state);
        if key == self.timeout_chosen_for {
            self.node
                .raft
                .set_randomized_election_timeout(self.chosen_timeout);
            return;
        }
        self.timeout_chosen_for = key;
        let mut bytes = [0u8; 20];
        bytes[..8].copy_from_slice(&salt.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.id.to_le_bytes());
        bytes[12..20]
            .copy_from_slice(&(self.node.raft.term ^ (self.node.raft.id << 48)).to_le_bytes());
        let h = xxhash_rust::xxh3::xxh3_64(&bytes);
        let timeout = ELECTION_TICKS + (h % ELECTION_TICKS as u64) as usize;
        self.chosen_timeout = timeout;
        self.node.raft.set_randomized_election_timeout(timeout);
    }

    /// A leader whose snapshot to a follower went unanswered (lost message,
    /// partition, crashed peer) would wait forever in raft's Snapshot state;
    /// after `SNAPSHOT_RETRY_TICKS` we report the send failed so raft probes
    /// and sends a fresh snapshot.
    pub fn snapshot_watchdog(&mut self) {
        if !self.is_leader() {
            self.snapshot_waits.clear();
            return;
        }
        let waiting: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_waits.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let ticks = self.snapshot_waits.entry(id).or_insert(0);
            *ticks += 1;
            if *ticks >= SNAPSHOT_RETRY_TICKS || crate::fault::point("group.snapshot.resend_early")
            {
                *ticks = 0;
                self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
            }
        }
    }

    /// One step of a replacement (see `crate::membership`), on a leader with
    /// no conf change pending: leave a joint configuration, replace an older
    /// incarnation by an approved one as a learner, or promote a caught-up
    /// learner. `replicas` are the slots placement gives this group;
    /// `approved` the approved replacement ids. Returns whether it proposed.
    pub fn membership_step(&mut self, replicas: &[u64], approved: &[u64]) -> bool {
        use crate::membership::{leave_joint, promotion, replacement_change};
        if !self.is_leader() || self.node.raft.has_pending_conf() {
            return false;
        }
        let cs = self.node.store().conf_state().clone();
        let cc = if crate::membership::is_joint(&cs) {
            Some(leave_joint())
        } else if let Some(cc) = approved
            .iter()
            .find_map(|id| replacement_change(&cs, replicas, *id))
        {
            Some(cc)
        } else {
            let committed = self.node.raft.raft_log.committed;
            cs.learners
                .iter()
                .copied()
                .find(|id| {
                    // `matched` only moves on the learner's own acknowledgement
                    // (an idle group may leave it in the probe state for good).
                    self.node.raft.prs().get(*id).is_some_and(|pr| {
                        pr.matched > 0 && pr.matched + crate::membership::PROMOTE_SLACK >= committed
                    })
                })
                .map(promotion)
        };
        let Some(cc) = cc else { return false };
        tracing::info!(group = self.id, change = ?cc, conf = ?cs, "proposing a membership change");
        match self.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(group = self.id, error = %e, "membership change dropped");
                false
            }
        }
    }

    /// A single-voter group elects itself at once instead of waiting for a timeout.
    pub fn campaign_if_sole_voter(&mut self) -> raft::Result<()> {
        let voters = self.node.store().voters();
        if voters.len() == 1 && voters[0] == self.node.raft.id && !self.is_leader() {
            self.node.campaign()?;
        }
        Ok(())
    }
}
