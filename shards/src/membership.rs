//! Raft membership: replica identities and the replacement of a replica that
//! lost its disk, as a Raft membership change (ConfChangeV2, joint consensus).
//!
//! **Identity.** A replica's Raft id is `incarnation << SLOT_BITS | slot`:
//! `slot` is the node's place in `STARCITE_WRITE_NODE_IDS` (1-based) and
//! `incarnation` is 0 for a node's original disk. A node that comes back with
//! an empty disk takes a new, higher incarnation, so it is a NEW member: it
//! never votes or counts toward a quorum with the state its old incarnation
//! acknowledged and lost.
//!
//! **Replacement.** The initial membership of every group is its placement
//! (incarnation 0 of each replica). Once a replacement is approved (the
//! operator's `starcite ops replace-node`), each group's leader, one step per
//! tick and only with no conf change pending:
//! 1. proposes `[RemoveNode old, AddLearnerNode new]`: two changes, so raft
//!    enters a joint configuration and leaves it automatically (a new leader
//!    that finds the group still joint proposes the leave itself);
//! 2. once the learner has caught up (it acknowledged entries up to within
//!    `PROMOTE_SLACK` of the commit index), proposes `[AddNode new]`.
//!
//! Every replica applies committed conf changes in log order and keeps the
//! resulting `ConfState` in its storage; snapshots carry it (a `Membership`
//! record follows each snapshot record in the log) and recovery re-applies
//! the conf-change entries after the snapshot.

use raft::prelude::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
};
use starcite_wire::record::LogRecord;

/// Bits of a Raft id that hold the node's slot.
pub const SLOT_BITS: u32 = 16;
/// A learner within this many entries of the commit index may be promoted.
pub const PROMOTE_SLACK: u64 = 16;

/// The Raft id of incarnation `incarnation` of the node in `slot` (1-based).
pub fn raft_id(slot: u64, incarnation: u64) -> u64 {
    debug_assert!(slot > 0 && slot < (1 << SLOT_BITS));
    (incarnation << SLOT_BITS) | slot
}

/// The node slot (1-based index into the write nodes) of a Raft id.
pub fn slot_of(id: u64) -> u64 {
    id & ((1 << SLOT_BITS) - 1)
}

/// The incarnation of a Raft id (0 = the node's original disk).
pub fn incarnation_of(id: u64) -> u64 {
    id >> SLOT_BITS
}

/// Every member (voter, learner, outgoing voter) of a configuration.
pub fn members(cs: &ConfState) -> Vec<u64> {
    let mut all: Vec<u64> = cs
        .voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Whether the configuration is joint (a change is half done).
pub fn is_joint(cs: &ConfState) -> bool {
    !cs.voters_outgoing.is_empty()
}

fn single(id: u64, ty: ConfChangeType) -> ConfChangeSingle {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(ty);
    c.node_id = id;
    c
}

fn change(changes: Vec<ConfChangeSingle>) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    cc.set_transition(ConfChangeTransition::Auto);
    cc.set_changes(changes.into());
    cc
}

/// The change that replaces every older incarnation of `new`'s slot in `cs`
/// by `new` as a learner, or `None` if there is nothing to replace (`new`
/// already a member, or a member of that slot is as new as `new`).
/// `replicas` are the slots of the group's placement: a node that does not
/// replicate the group is never added.
pub fn replacement_change(cs: &ConfState, replicas: &[u64], new: u64) -> Option<ConfChangeV2> {
    let slot = slot_of(new);
    if !replicas.contains(&slot) || is_joint(cs) {
        return None;
    }
    let all = members(cs);
    let same_slot: Vec<u64> = all
        .iter()
        .copied()
        .filter(|m| slot_of(*m) == slot)
        .collect();
    if same_slot
        .iter()
        .any(|m| incarnation_of(*m) >= incarnation_of(new))
    {
        return None; // already replaced (or the approval is stale)
    }
    let mut changes: Vec<ConfChangeSingle> = same_slot
        .iter()
        .map(|old| single(*old, ConfChangeType::RemoveNode))
        .collect();
    changes.push(single(new, ConfChangeType::AddLearnerNode));
    Some(change(changes))
}

/// The change that promotes learner `id` to voter.
pub fn promotion(id: u64) -> ConfChangeV2 {
    change(vec![single(id, ConfChangeType::AddNode)])
}

/// The empty change that leaves a joint configuration.
pub fn leave_joint() -> ConfChangeV2 {
    change(Vec::new())
}

/// The `Membership` log record of a group's configuration at `index`.
pub fn record(group: u32, index: u64, cs: &ConfState) -> LogRecord {
    use protobuf::Message as _;
    LogRecord::Membership {
        group,
        index,
        conf_state: cs.write_to_bytes().expect("a ConfState always encodes"),
    }
}

/// The `ConfState` a `Membership` record holds.
pub fn decode_conf_state(bytes: &[u8]) -> Result<ConfState, String> {
    use protobuf::Message as _;
    let mut cs = ConfState::default();
    cs.merge_from_bytes(bytes).map_err(|e| e.to_string())?;
    Ok(cs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_state(
        voters: Vec<u64>,
        learners: Vec<u64>,
        voters_outgoing: Vec<u64>,
        learners_next: Vec<u64>,
        auto_leave: bool,
    ) -> ConfState {
        let mut cs = ConfState::default();
        cs.voters = voters;
        cs.learners = learners;
        cs.voters_outgoing = voters_outgoing;
        cs.learners_next = learners_next;
        cs.auto_leave = auto_leave;
        cs
    }

    fn cs(voters: &[u64], learners: &[u64]) -> ConfState {
        conf_state(voters.to_vec(), learners.to_vec(), vec![], vec![], false)
    }

    #[test]
    fn membership_records_round_trip() {
        let joint = conf_state(vec![1, 2], vec![raft_id(3, 5)], vec![1, 2, 3], vec![], true);
        let LogRecord::Membership { conf_state, .. } = record(0, 7, &joint) else {
            panic!("a membership record");
        };
        assert_eq!(decode_conf_state(&conf_state).unwrap(), joint);
    }

    #[test]
    fn ids_carry_slot_and_incarnation() {
        let id = raft_id(3, 1_764_000_000_000);
        assert_eq!(slot_of(id), 3);
        assert_eq!(incarnation_of(id), 1_764_000_000_000);
        assert_eq!(raft_id(2, 0), 2, "original incarnations keep the old ids");
    }

    #[test]
    fn replacement_removes_older_incarnations_and_adds_a_learner() {
        let new = raft_id(3, 7);
        let cc = replacement_change(&cs(&[1, 2, 3], &[]), &[1, 2, 3], new).expect("a change");
        let kinds: Vec<(u64, ConfChangeType)> = cc
            .changes
            .iter()
            .map(|c| (c.node_id, c.get_change_type()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (3, ConfChangeType::RemoveNode),
                (new, ConfChangeType::AddLearnerNode)
            ]
        );
        assert_eq!(cc.enter_joint(), Some(true), "two changes: joint consensus");
        // Done already, stale, or not a replica of this group: nothing.
        assert!(replacement_change(&cs(&[1, 2], &[new]), &[1, 2, 3], new).is_none());
        assert!(replacement_change(&cs(&[1, 2, new], &[]), &[1, 2, 3], new).is_none());
        assert!(replacement_change(&cs(&[1, 2, raft_id(3, 9)], &[]), &[1, 2, 3], new).is_none());
        assert!(replacement_change(&cs(&[1, 2, 3], &[]), &[1, 2, 4], raft_id(3, 1)).is_none());
        let joint = conf_state(vec![1, 2], vec![new], vec![1, 2, 3], vec![], true);
        assert!(replacement_change(&joint, &[1, 2, 3], raft_id(3, 8)).is_none());
        assert!(
            promotion(new).enter_joint().is_none(),
            "promotion is simple"
        );
        assert!(leave_joint().leave_joint());
    }
}
