//! One local replica of a Raft group: its `RawNode` (consensus), storage and
//! state machine. Owned by exactly one shard.

use raft::{Config, RawNode, StateRole};

use crate::limits::{ELECTION_TICKS, HEARTBEAT_TICKS, MAX_INFLIGHT_MSGS, MAX_SIZE_PER_MSG};
use crate::raft_storage::GroupStorage;
use crate::state::GroupMachine;

pub struct Group {
    pub id: u32,
    pub node: RawNode<GroupStorage>,
    pub machine: GroupMachine,
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
        Ok(Self { id, node, machine, applied, commit_unpersisted: false })
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

    /// A single-voter group elects itself at once instead of waiting for a timeout.
    pub fn campaign_if_sole_voter(&mut self) -> raft::Result<()> {
        let voters = self.node.store().voters();
        if voters.len() == 1 && voters[0] == self.node.raft.id && !self.is_leader() {
            self.node.campaign()?;
        }
        Ok(())
    }
}
