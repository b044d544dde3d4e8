//! One local replica of a Raft group: its `RawNode` (consensus), storage and
//! state machine. Owned by exactly one shard.

use raft::{Config, RawNode, StateRole};

use crate::limits::{
    ELECTION_TICKS, HEARTBEAT_TICKS, MAX_INFLIGHT_MSGS, MAX_SIZE_PER_MSG, SNAPSHOT_RETRY_TICKS,
};
use crate::raft_storage::GroupStorage;
use crate::state::GroupMachine;

/// Rejoin progress of a replica that started with an empty log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rejoin {
    /// Highest commit index a leader has reported.
    pub target: u64,
    /// A leader has sent entries (or a snapshot) with its real commit index.
    pub heard_leader: bool,
    /// Ticks since then: rejoin lasts at least `REJOIN_MIN_TICKS`, so a deposed
    /// leader (lower term, shorter log, steps down within an election timeout
    /// by check-quorum) cannot end it before the real leader is heard.
    pub ticks_since_contact: usize,
}

/// Minimum rejoin duration after first leader contact (two election timeouts).
pub const REJOIN_MIN_TICKS: usize = 2 * ELECTION_TICKS;

pub struct Group {
    pub id: u32,
    pub node: RawNode<GroupStorage>,
    pub machine: GroupMachine,
    /// (term, role) when the election timeout was last chosen.
    timeout_chosen_for: (u64, StateRole),
    chosen_timeout: usize,
    /// Peers in raft's Snapshot state → ticks spent waiting.
    snapshot_waits: std::collections::BTreeMap<u64, usize>,
    /// Started with an empty log in a multi-voter group (a new or replaced
    /// replica): the highest commit index a leader has told it about. While
    /// set, it votes only for candidates with empty logs (see `should_drop`).
    pub rejoining: Option<Rejoin>,
    /// Highest log index applied to `machine`.
    pub applied: u64,
    /// Commit index advanced by a light ready that no log record holds yet.
    pub commit_unpersisted: bool,
}

impl Group {
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
            commit_unpersisted: false,
            timeout_chosen_for: (u64::MAX, StateRole::Follower),
            chosen_timeout: ELECTION_TICKS,
            snapshot_waits: Default::default(),
            rejoining: None,
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

    /// Rejoin safety. A replica that lost its disk and comes back empty (static
    /// membership: same identity) no longer holds entries it once helped
    /// commit. If it voted like an intact replica it could elect a leader that
    /// lacks them and an acknowledged append would be lost. So until it has
    /// applied everything committed when it came back, it refuses votes to
    /// candidates with non-empty logs (a brand-new cluster, where every log is
    /// empty, still elects its first leader). Returns whether to drop `msg`.
    pub fn rejoin_filter(&mut self, msg: &raft::eraftpb::Message) -> bool {
        use raft::eraftpb::MessageType;
        let Some(r) = self.rejoining.as_mut() else {
            return false;
        };
        match msg.get_msg_type() {
            // An append carries the leader's real commit index (a heartbeat
            // only min(commit, what the leader thinks this replica has)).
            MessageType::MsgAppend => {
                r.target = r.target.max(msg.commit);
                r.heard_leader = true;
                false
            }
            MessageType::MsgHeartbeat => {
                r.target = r.target.max(msg.commit);
                false
            }
            MessageType::MsgSnapshot => {
                r.target = r.target.max(msg.get_snapshot().get_metadata().index);
                r.heard_leader = true;
                false
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => msg.index > 0,
            _ => false,
        }
    }

    /// Ends rejoin mode once caught up with what was committed at rejoin.
    pub fn check_rejoined(&mut self) {
        if let Some(r) = self.rejoining.as_mut() {
            if r.heard_leader {
                r.ticks_since_contact += 1;
            }
            if r.heard_leader
                && r.ticks_since_contact >= REJOIN_MIN_TICKS
                && self.applied >= r.target
            {
                tracing::info!(
                    group = self.id,
                    applied = self.applied,
                    "replica caught up after rejoining; voting normally"
                );
                self.rejoining = None;
            }
        }
    }

    /// Enters rejoin mode if this replica's log is empty (see `rejoin_filter`).
    pub fn start_rejoin_if_empty(&mut self) {
        let store = self.node.store();
        if store.voters().len() > 1 && store.last_index_now() == 0 && store.snapshot_index() == 0 {
            self.rejoining = Some(Rejoin::default());
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
