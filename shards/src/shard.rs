//! The engine of one core: every local group replica it owns, driven sans-IO.
//!
//! Pipelined group commit (raft's asynchronous `Ready`): `collect` takes the
//! `Ready` of every group with work into a buffer of log records, applies what
//! is committed (and durable here) and returns the answers and the messages a
//! leader may send before its own write; `prepare_write` collects once more,
//! adds checkpoints and seals the batch; the driver appends it to the current
//! segment and syncs once; `on_durable` tells the groups their entries are
//! persisted and releases the messages that had to wait for the disk. While a
//! sealed batch is being written the shard keeps taking proposals, messages
//! and reads, and `collect` forms the next batch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::StateRole;
use starcite_wire::record::{
    decode_command, decode_snapshot, AppendCommand, Command, CreateCommand, LogRecord, Origin,
    PatchCommand, SetArchivedCommand,
};

use crate::error::EngineError;
use crate::group::Group;
use crate::limits::{MAX_PENDING_PROPOSALS, MAX_READ_EVENTS};
use crate::placement::group_of;
use crate::recovery::{encode_record, push_entries, push_snapshot, Recovered};
use crate::state::machine::{Notification, Outcome};
use crate::state::{GroupMachine, Session};

/// Static configuration of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub core: u32,
    pub cores: u32,
    pub num_groups: u32,
    /// This node's Raft id in every group (slot and incarnation, see
    /// `crate::membership`).
    pub raft_id: u64,
    /// The local groups and their placement voters (original incarnations):
    /// a group's initial membership, before any conf change in its log.
    pub groups: Vec<(u32, Vec<u64>)>,
    pub dedupe_window: usize,
    pub producer_cap: usize,
    /// Hot-tier bytes this core may hold before appends answer 429.
    pub hot_bytes_limit: u64,
    /// Random per process start: tells this incarnation's proposals apart.
    pub incarnation: u64,
    /// Live log size beyond which groups are snapshotted (see `checkpoint`).
    pub checkpoint_bytes: u64,
    /// Segment size at which the driver starts the next segment.
    pub segment_bytes: u64,
}

/// A client command before it is stamped and proposed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Proposal {
    Create {
        id: String,
        tenant_id: String,
        title: Option<String>,
        metadata_json: String,
        principal_id: String,
        principal_type: String,
    },
    Append {
        session: String,
        producer_id: String,
        producer_seq: u64,
        fingerprint: [u8; 16],
        expected_seq: Option<u64>,
        body: String,
    },
    /// The archive holds every event up to `upto`: evict them (§9.4).
    AckArchived { session: String, upto: u64 },
    /// PATCH: a new title (`set_title`; `None` clears it) and/or metadata
    /// merged one level, if the version is `expected_version` (when given).
    Patch {
        session: String,
        set_title: bool,
        title: Option<String>,
        metadata_json: Option<String>,
        expected_version: Option<u64>,
    },
    /// Archive (`true`) or unarchive (`false`); idempotent.
    SetArchived { session: String, archived: bool },
}

impl Proposal {
    pub fn session(&self) -> &str {
        match self {
            Proposal::Create { id, .. } => id,
            Proposal::Append { session, .. } => session,
            Proposal::AckArchived { session, .. } => session,
            Proposal::Patch { session, .. } => session,
            Proposal::SetArchived { session, .. } => session,
        }
    }
}

/// Committed, unarchived events of one session this replica leads, for the
/// archiver.
#[derive(Debug, Clone)]
pub struct ArchiveWork {
    pub session: ListRow,
    pub archived_seq: u64,
    /// Hot events `archived_seq + 1 ..`, ascending, as stored frames.
    pub events: Vec<(u64, Bytes)>,
}

/// Everything the driver must do after a step of the shard.
pub struct Outputs<W> {
    pub completions: Vec<(W, Result<Outcome, EngineError>)>,
    pub notifications: Vec<Notification>,
    /// Raft messages to peers, with the group they belong to.
    pub messages: Vec<(u32, Message)>,
}

impl<W> Default for Outputs<W> {
    fn default() -> Self {
        Self {
            completions: Vec::new(),
            notifications: Vec::new(),
            messages: Vec::new(),
        }
    }
}

impl<W> Outputs<W> {
    pub fn extend(&mut self, other: Outputs<W>) {
        self.completions.extend(other.completions);
        self.notifications.extend(other.notifications);
        self.messages.extend(other.messages);
    }
}

/// A page of events read from applied state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub events: Vec<(u64, Bytes)>,
    pub last_seq: u64,
}

/// What a tail or an append needs to know about a session before acting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub tenant_id: String,
    pub last_seq: u64,
}

/// A list row (contract §4.2 plus `last_seq`, `updated_at`, `version`,
/// `archived`); the gateway renders it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListRow {
    pub id: String,
    pub title: Option<String>,
    pub tenant_id: String,
    pub principal_id: String,
    pub principal_type: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub last_seq: u64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    /// Absent in rows from a node of the first release: version 1.
    #[serde(default = "first_version")]
    pub version: u64,
    #[serde(default)]
    pub archived: bool,
}

fn first_version() -> u64 {
    1
}

/// Which sessions a list returns by their `archived` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ArchivedFilter {
    /// Not archived (the default).
    #[default]
    Active,
    Archived,
    All,
}

impl ArchivedFilter {
    pub fn admits(self, archived: bool) -> bool {
        match self {
            ArchivedFilter::Active => !archived,
            ArchivedFilter::Archived => archived,
            ArchivedFilter::All => true,
        }
    }
}

struct Pending<W> {
    waiter: W,
    group: u32,
    /// Hot bytes reserved by an append until it is applied or fails.
    reserved: u64,
}

/// Log records collected for one write, and what their durability releases.
#[derive(Default)]
pub(crate) struct Batch {
    /// Each group's `Ready` numbers in it (`RawNode::on_persist_ready`).
    readies: Vec<(u32, u64)>,
    /// Messages to send once the batch is durable (a follower's acks, votes).
    persisted: Vec<(u32, Message)>,
    /// Pins that move once the batch is durable (see `checkpoint`).
    pub(crate) pins: Vec<(u32, u64)>,
    needs_sync: bool,
    /// Bytes of log records in it.
    pub(crate) bytes: u64,
    /// `Shard::conf_applied` when it was sealed.
    conf_applied: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.readies.is_empty() && self.bytes == 0 && self.pins.is_empty()
    }
}

pub struct Shard<W> {
    pub(crate) cfg: ShardConfig,
    pub(crate) groups: BTreeMap<u32, Group>,
    /// Every session of this core → its group, for O(page) listing.
    index: BTreeMap<String, u32>,
    pending: BTreeMap<u64, Pending<W>>,
    next_token: u64,
    hot_bytes: u64,
    reserved_bytes: u64,
    dirty: BTreeSet<u32>,
    /// The batch `collect` is filling.
    pub(crate) staged: Batch,
    /// Batches handed to the driver, oldest first, not yet durable.
    sealed: VecDeque<Batch>,
    /// The segment the driver appends to, and the bytes of every live segment.
    pub(crate) segment: u64,
    pub(crate) segment_sizes: BTreeMap<u64, u64>,
    /// Each group's oldest needed segment (see `checkpoint`).
    pub(crate) pins: BTreeMap<u32, u64>,
    /// Conf changes applied so far, and how many of them a synced batch
    /// covers (see `conf_unsynced`).
    conf_applied: u64,
    conf_synced: u64,
    /// Times a local replica became leader (metrics).
    elections_won: u64,
    /// Approved replacements (Raft ids of new incarnations): leaders move
    /// their groups' membership to them (see `crate::membership`).
    approved: Vec<u64>,
}

impl<W> Shard<W> {
    /// Builds the shard from what recovery found (empty for a fresh data dir).
    pub fn new(
        cfg: ShardConfig,
        mut recovered: Recovered,
        logger: &slog::Logger,
    ) -> Result<Self, String> {
        let mut shard = Shard {
            groups: BTreeMap::new(),
            index: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_token: 1,
            hot_bytes: 0,
            reserved_bytes: 0,
            dirty: BTreeSet::new(),
            staged: Batch::default(),
            sealed: VecDeque::new(),
            segment: recovered.segments.last().map_or(1, |s| s.0),
            segment_sizes: recovered.segments.iter().copied().collect(),
            pins: BTreeMap::new(),
            conf_applied: 0,
            conf_synced: 0,
            elections_won: 0,
            approved: Vec::new(),
            cfg,
        };
        if shard.segment_sizes.is_empty() {
            shard
                .segment_sizes
                .insert(shard.segment, starcite_wire::log::SEGMENT_HEADER_LEN as u64);
        }
        let first_segment = shard
            .segment_sizes
            .keys()
            .next()
            .copied()
            .unwrap_or(shard.segment);
        for (gid, voters) in shard.cfg.groups.clone() {
            let rec = recovered.groups.remove(&gid).unwrap_or_default();
            shard
                .pins
                .insert(gid, rec.pin_segment.unwrap_or(first_segment));
            let group = shard.rebuild_group(gid, voters, rec, logger)?;
            shard.hot_bytes += group.machine.hot_bytes();
            for id in group.machine.sessions.keys() {
                shard.index.insert(id.clone(), gid);
            }
            shard.groups.insert(gid, group);
            shard.dirty.insert(gid);
        }
        Ok(shard)
    }

    fn rebuild_group(
        &self,
        gid: u32,
        voters: Vec<u64>,
        rec: crate::recovery::RecoveredGroup,
        logger: &slog::Logger,
    ) -> Result<Group, String> {
        let mut storage = rec.storage;
        if storage.voters().is_empty() {
            // No snapshot yet: the initial membership is the placement.
            storage.set_voters(voters);
        }
        let machine = match rec.snapshot_state {
            Some(data) => decode_snapshot(&data)
                .map(|s| GroupMachine::restore(s, self.cfg.dedupe_window, self.cfg.producer_cap))
                .map_err(|e| format!("group {gid}: snapshot does not decode: {e}"))?,
            None => GroupMachine::new(self.cfg.dedupe_window, self.cfg.producer_cap),
        };
        let from = storage.snapshot_index();
        let commit = storage
            .hard_state()
            .commit
            .min(storage.last_index_now())
            .max(from);
        // Re-apply what was committed after the snapshot: commands to the
        // state machine, conf changes to the membership (through a raft node
        // that starts at the snapshot; the real one then starts at `commit`
        // with the resulting membership).
        let mut replay = Group::new(gid, self.cfg.raft_id, storage, machine, from, logger)
            .map_err(|e| format!("group {gid}: raft: {e}"))?;
        let entries = replay.node.store().entries_in(from + 1, commit).to_vec();
        for entry in &entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => apply_entry_to(&mut replay.machine, entry),
                _ => apply_conf_entry(&mut replay, entry),
            }
        }
        let storage = std::mem::take(replay.node.mut_store());
        let machine = std::mem::replace(
            &mut replay.machine,
            GroupMachine::new(self.cfg.dedupe_window, self.cfg.producer_cap),
        );
        let mut group = Group::new(gid, self.cfg.raft_id, storage, machine, commit, logger)
            .map_err(|e| format!("group {gid}: raft: {e}"))?;
        group
            .campaign_if_sole_voter()
            .map_err(|e| format!("group {gid}: campaign: {e}"))?;
        group.choose_election_timeout(self.cfg.incarnation);
        Ok(group)
    }

    /// Approves replacements: `ids` are the Raft ids of new incarnations
    /// (see `crate::membership`). Leaders move their groups to them.
    pub fn approve_replacements(&mut self, mut ids: Vec<u64>) {
        ids.sort_unstable();
        ids.dedup();
        self.approved = ids;
    }

    /// The membership of a local group as this replica has applied it.
    pub fn conf_state(&self, group: u32) -> Option<raft::eraftpb::ConfState> {
        Some(self.groups.get(&group)?.node.store().conf_state().clone())
    }

    /// `(local groups in which this replica is a voter, local groups)`.
    pub fn voter_groups(&self) -> (usize, usize) {
        let me = self.cfg.raft_id;
        let voter = self
            .groups
            .values()
            .filter(|g| {
                let cs = g.node.store().conf_state();
                cs.voters.contains(&me) && !crate::membership::is_joint(cs)
            })
            .count();
        (voter, self.groups.len())
    }

    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    pub fn group_of(&self, session: &str) -> u32 {
        group_of(session, self.cfg.num_groups)
    }

    pub fn hot_bytes(&self) -> u64 {
        self.hot_bytes
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every local group has a leader (readiness).
    pub fn all_groups_led(&self) -> bool {
        self.groups.values().all(|g| g.leader_id().is_some())
    }

    /// Readiness of this core's replicas: every group has a leader and has
    /// applied everything it knows to be committed — and, where the leader is
    /// another node, at least the commit index that leader last reported
    /// (`leader_commit(group, leader)`; a follower alone cannot tell how far
    /// behind it is). Returns the first group that is not, with the reason.
    pub fn sync_state(
        &self,
        leader_commit: impl Fn(u32, u64) -> Option<u64>,
    ) -> Result<(), (u32, &'static str)> {
        for (gid, g) in &self.groups {
            if g.lost_state {
                return Err((*gid, "lost_state"));
            }
            let Some(leader) = g.leader_id() else {
                return Err((*gid, "leader_unknown"));
            };
            if g.applied < g.node.raft.raft_log.committed {
                return Err((*gid, "catching_up"));
            }
            if !g.node.store().voters().contains(&self.cfg.raft_id) {
                // A new incarnation: a learner (or not yet added) until promoted.
                return Err((*gid, "not_voter"));
            }
            if leader != self.cfg.raft_id {
                match leader_commit(*gid, leader) {
                    Some(c) if g.applied >= c => {}
                    Some(_) => return Err((*gid, "catching_up")),
                    None => return Err((*gid, "leader_unreported")),
                }
            }
        }
        Ok(())
    }

    /// `(group, commit index)` of every group this replica leads.
    pub fn led_commits(&self) -> Vec<(u32, u64)> {
        self.groups
            .iter()
            .filter(|(_, g)| g.is_leader())
            .map(|(gid, g)| (*gid, g.node.raft.raft_log.committed))
            .collect()
    }

    /// Groups this replica leads, with their voters (for drain and balance).
    pub fn led_groups(&self) -> Vec<(u32, Vec<u64>)> {
        self.groups
            .iter()
            .filter(|(_, g)| g.is_leader())
            .map(|(gid, g)| (*gid, g.node.store().voters().to_vec()))
            .collect()
    }

    /// Leader (raft id) of every local group, if known.
    pub fn leaders_by_group(&self) -> Vec<(u32, Option<u64>)> {
        self.groups
            .iter()
            .map(|(gid, g)| (*gid, g.leader_id()))
            .collect()
    }

    /// Asks raft to hand a group's leadership to `to` (drain, balance).
    pub fn transfer_leader(&mut self, group: u32, to: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            if g.is_leader() {
                g.node.transfer_leader(to);
                self.dirty.insert(group);
            }
        }
    }

    /// Tells raft a peer is unreachable (its messages could not be sent).
    pub fn report_unreachable(&mut self, group: u32, to: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.node.report_unreachable(to);
        }
    }

    pub fn leaders(&self) -> usize {
        self.groups.values().filter(|g| g.is_leader()).count()
    }

    /// Stamps and proposes a client command on its group's local leader. The
    /// result arrives later in `Outputs::completions` with `waiter`.
    pub fn propose(
        &mut self,
        proposal: Proposal,
        waiter: W,
        now_us: i64,
    ) -> Result<(), (W, EngineError)> {
        let gid = self.group_of(proposal.session());
        let Some(group) = self.groups.get_mut(&gid) else {
            return Err((waiter, EngineError::Unavailable));
        };
        if !group.is_leader() {
            let leader = group.leader_id();
            return Err((waiter, EngineError::NotLeader { leader }));
        }
        if let Some(to) = group.node.raft.lead_transferee {
            // Raft drops proposals while leadership moves; the command was
            // not proposed, so the gateway may take it to the new leader.
            return Err((waiter, EngineError::NotLeader { leader: Some(to) }));
        }
        if self.pending.len() >= MAX_PENDING_PROPOSALS
            || crate::fault::point("shard.propose.reject")
        {
            return Err((waiter, EngineError::Unavailable));
        }
        let reserved = match &proposal {
            Proposal::Append { body, .. } => body.len() as u64 + 128,
            Proposal::Create { .. }
            | Proposal::AckArchived { .. }
            | Proposal::Patch { .. }
            | Proposal::SetArchived { .. } => 0,
        };
        if reserved > 0
            && self.hot_bytes + self.reserved_bytes + reserved > self.cfg.hot_bytes_limit
        {
            return Err((waiter, EngineError::Backpressure));
        }
        let token = self.next_token;
        let origin = Origin {
            incarnation: self.cfg.incarnation,
            token,
        };
        let data = starcite_wire::record::encode(&stamp(proposal, origin, now_us));
        if data.len() > crate::limits::MAX_ENTRY {
            // The gateway bounds bodies far below this; a command that would not
            // fit the log's entry budget is refused, never written.
            return Err((waiter, EngineError::TooLarge));
        }
        if let Err(e) = group.node.propose(Vec::new(), data.to_vec()) {
            tracing::debug!(group = gid, error = %e, "proposal dropped by raft");
            return Err((waiter, EngineError::Unavailable));
        }
        self.next_token += 1;
        self.reserved_bytes += reserved;
        self.pending.insert(
            token,
            Pending {
                waiter,
                group: gid,
                reserved,
            },
        );
        self.dirty.insert(gid);
        Ok(())
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) {
        let salt = self.cfg.incarnation;
        for (gid, group) in self.groups.iter_mut() {
            if group.node.tick() {
                self.dirty.insert(*gid);
            }
            group.choose_election_timeout(salt);
            group.snapshot_watchdog();
            if group.is_leader() {
                let replicas: Vec<u64> = self
                    .cfg
                    .groups
                    .iter()
                    .find(|(g, _)| g == gid)
                    .map(|(_, v)| v.iter().map(|id| crate::membership::slot_of(*id)).collect())
                    .unwrap_or_default();
                group.membership_step(&replicas, &self.approved);
            }
            if group.node.has_ready() {
                self.dirty.insert(*gid);
            }
        }
    }

    /// Delivers a Raft message from a peer.
    pub fn step(&mut self, group: u32, msg: Message) {
        use raft::eraftpb::MessageType;
        if msg
            .entries
            .iter()
            .any(|e| e.data.len() + e.context.len() > crate::limits::MAX_STORED_ENTRY)
        {
            // No proposer makes such an entry (see `propose`): a broken peer.
            // (It could not be written: a log record must fit a frame.)
            tracing::warn!(
                group,
                from = msg.from,
                "raft message with an entry over the entry limit dropped"
            );
            return;
        }
        if let Some(g) = self.groups.get_mut(&group) {
            if msg.to != self.cfg.raft_id {
                // For another incarnation of this node (its lost disk's).
                tracing::debug!(
                    group,
                    to = msg.to,
                    me = self.cfg.raft_id,
                    "message for another incarnation dropped"
                );
                return;
            }
            if msg.get_msg_type() == MessageType::MsgHeartbeat
                && msg.commit > g.node.raft.raft_log.last_index()
            {
                // The leader knows this replica acknowledged entries it no
                // longer holds: its disk was wiped and it came back under its
                // old identity. It must not take part in elections any more.
                if !g.lost_state {
                    tracing::error!(
                        group,
                        commit = msg.commit,
                        last = g.node.raft.raft_log.last_index(),
                        "this replica lost entries it acknowledged (data dir wiped?): it stops voting; restart the node with an empty data dir and STARCITE_REJOIN=true, then run `starcite ops replace-node`"
                    );
                }
                g.lost_state = true;
                return;
            }
            if g.lost_state
                && matches!(
                    msg.get_msg_type(),
                    MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                )
            {
                return;
            }
            if let Err(e) = g.node.step(msg) {
                tracing::debug!(group, error = %e, "raft step rejected a message");
            }
            g.choose_election_timeout(self.cfg.incarnation);
            self.dirty.insert(group);
        }
    }

    pub fn has_ready(&self) -> bool {
        self.dirty
            .iter()
            .any(|gid| self.groups.get(gid).is_some_and(|g| g.node.has_ready()))
    }

    /// Whether the driver has anything to write or to release: a group with
    /// a `Ready`, or a collected batch not yet sealed.
    pub fn has_work(&self) -> bool {
        self.has_ready() || !self.staged.is_empty()
    }

    /// Takes the `Ready` of every dirty group into the staged batch: its log
    /// records go to `buf`, committed entries are applied (raft hands out only
    /// entries durable here and on a quorum) and answered, and a leader's
    /// messages are returned to send now (they may leave before the leader's
    /// own write). Messages that must wait for the disk stay in the batch
    /// until `on_durable`. May be called while an earlier batch is being
    /// written.
    pub fn collect(&mut self, buf: &mut Vec<u8>) -> Outputs<W> {
        let mut out = Outputs::default();
        let start = buf.len();
        for gid in std::mem::take(&mut self.dirty) {
            let Some(group) = self.groups.get_mut(&gid) else {
                continue;
            };
            if !group.node.has_ready() {
                continue;
            }
            // (Never while a membership's commit must reach the disk: the
            // batch that syncs it holds every group's commit.)
            let conf_unsynced = self.conf_applied > self.conf_synced;
            if !conf_unsynced && crate::fault::point("shard.prepare.defer_group") {
                // Leave it for the next batch: batching must not matter.
                self.dirty.insert(gid);
                continue;
            }
            let mut rd = group.node.ready();
            self.staged.needs_sync |= rd.must_sync();
            out.messages
                .extend(rd.take_messages().into_iter().map(|m| (gid, m)));
            if let Some(ss) = rd.ss() {
                if ss.raft_state == StateRole::Leader {
                    self.elections_won += 1;
                    group.led_gen = crate::state::session::next_catalog_gen();
                }
                if ss.raft_state != StateRole::Leader {
                    fail_pending_of(&mut self.pending, &mut self.reserved_bytes, gid, &mut out);
                }
            }
            if !rd.snapshot().is_empty() {
                self.install_snapshot(gid, rd.snapshot().clone(), buf);
                self.staged.needs_sync = true;
            }
            let committed = rd.take_committed_entries();
            self.apply_committed(gid, committed, &mut out);
            let group = self.groups.get_mut(&gid).expect("group exists");
            if !rd.entries().is_empty() {
                group.node.mut_store().append(rd.entries());
                push_entries(gid, rd.entries(), buf);
                #[cfg(feature = "broken-ack-before-sync")]
                {
                    // BROKEN ON PURPOSE (test-only feature): applies and answers
                    // entries before they are durable or committed.
                    let ents = rd.entries().clone();
                    if self.groups.get(&gid).is_some_and(|g| g.is_leader()) {
                        self.apply_committed(gid, ents, &mut out);
                    }
                }
            }
            let group = self.groups.get_mut(&gid).expect("group exists");
            if let Some(hs) = rd.hs() {
                group.node.mut_store().set_hard_state(hs.clone());
                push_hard_state(gid, hs, buf);
            }
            self.staged
                .persisted
                .extend(rd.take_persisted_messages().into_iter().map(|m| (gid, m)));
            self.staged.readies.push((gid, rd.number()));
            group.node.advance_append_async(rd);
            group.report_applied();
        }
        self.staged_bytes(buf.len() - start);
        out
    }

    fn staged_bytes(&mut self, n: usize) {
        self.staged.bytes += n as u64;
        *self.segment_sizes.entry(self.segment).or_default() += n as u64;
    }

    /// Collects once more, adds this batch's checkpoints and seals it: the
    /// driver now writes `buf` (everything collected since the last seal) and
    /// calls `on_durable` once it is on disk (with a sync if
    /// `batch_needs_sync`). Batches are written and made durable in order.
    pub fn prepare_write(&mut self, buf: &mut Vec<u8>) -> Outputs<W> {
        let out = self.collect(buf);
        let before = buf.len();
        self.compact_some(buf);
        self.staged_bytes(buf.len() - before);
        let mut batch = std::mem::take(&mut self.staged);
        batch.needs_sync |= buf.len() > before || !batch.pins.is_empty();
        // A membership this replica applied must survive a crash: recovery
        // re-applies conf changes only up to the durable commit index, and
        // a replica that forgot a committed change may need the vote of a
        // member that change removed (sim seeds 624426, 901508).
        batch.needs_sync |= self.conf_unsynced();
        batch.conf_applied = self.conf_applied;
        self.sealed.push_back(batch);
        out
    }

    /// Whether the last sealed batch must be fsynced before its
    /// `on_durable`: it holds entries, a term/vote change, a snapshot or a
    /// membership's commit. A batch that only advances commit indexes need
    /// not wait for the disk (Raft recovers the commit index from its peers).
    pub fn batch_needs_sync(&self) -> bool {
        self.sealed.back().is_some_and(|b| b.needs_sync)
    }

    /// A conf change was applied and no synced batch holds the commit index
    /// that covers it yet: the driver answers nothing more until the next
    /// batch is written (and synced), so no one sees a membership this
    /// replica could forget in a crash.
    pub fn conf_unsynced(&self) -> bool {
        self.conf_applied > self.conf_synced
    }

    /// Called once the oldest sealed batch is durable (or, for a batch that
    /// needed no sync, written or held by the driver).
    pub fn on_durable(&mut self) -> Outputs<W> {
        let mut out = Outputs::default();
        let Some(batch) = self.sealed.pop_front() else {
            return out;
        };
        if batch.needs_sync {
            // The batch held every commit it needed.
            self.conf_synced = self.conf_synced.max(batch.conf_applied);
        }
        for (gid, seg) in batch.pins {
            self.pins.insert(gid, seg);
        }
        for (gid, number) in batch.readies {
            let group = self.groups.get_mut(&gid).expect("group exists");
            group.node.on_persist_ready(number);
            group.report_applied();
            if group.node.has_ready() {
                self.dirty.insert(gid);
            }
        }
        out.messages = batch.persisted;
        out
    }

    fn install_snapshot(&mut self, gid: u32, snap: raft::eraftpb::Snapshot, buf: &mut Vec<u8>) {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let conf = meta.get_conf_state().clone();
        let voters = conf.voters.clone();
        let machine = match decode_snapshot(&snap.data) {
            Ok(s) => GroupMachine::restore(s, self.cfg.dedupe_window, self.cfg.producer_cap),
            Err(e) => {
                // A snapshot that passed Raft but does not decode means a peer is broken.
                panic!("group {gid}: received snapshot does not decode: {e}");
            }
        };
        let group = self.groups.get_mut(&gid).expect("group exists");
        self.hot_bytes =
            self.hot_bytes.saturating_sub(group.machine.hot_bytes()) + machine.hot_bytes();
        self.index.retain(|_, g| *g != gid);
        for id in machine.sessions.keys() {
            self.index.insert(id.clone(), gid);
        }
        group.machine = machine;
        group.applied = index;
        group
            .node
            .mut_store()
            .apply_snapshot(index, term, conf.clone(), snap.data.clone());
        push_snapshot(gid, index, term, voters, &snap.data, buf);
        push_small(&crate::membership::record(gid, index, &conf), buf);
        self.staged.pins.push((gid, self.segment));
    }

    fn apply_committed(&mut self, gid: u32, entries: Vec<Entry>, out: &mut Outputs<W>) {
        for entry in entries {
            let group = self.groups.get_mut(&gid).expect("group exists");
            if entry.index <= group.applied {
                continue;
            }
            group.applied = entry.index;
            if entry.get_entry_type() != EntryType::EntryNormal {
                apply_conf_entry(group, &entry);
                self.conf_applied += 1;
                continue;
            }
            if entry.data.is_empty() {
                continue;
            }
            let cmd = match decode_command(&entry.data) {
                Ok(cmd) => cmd,
                Err(e) => panic!(
                    "group {gid}: committed entry {} does not decode: {e}",
                    entry.index
                ),
            };
            let applied = group.machine.apply(cmd);
            self.hot_bytes = (self.hot_bytes as i64 + applied.hot_delta).max(0) as u64;
            if let Some(id) = applied.created {
                self.index.insert(id, gid);
            }
            if let Some(n) = applied.notification {
                out.notifications.push(n);
            }
            if applied.origin.incarnation == self.cfg.incarnation {
                if let Some(p) = self.pending.remove(&applied.origin.token) {
                    self.reserved_bytes -= p.reserved;
                    out.completions.push((p.waiter, applied.result));
                }
            }
        }
    }

    pub fn elections_won(&self) -> u64 {
        self.elections_won
    }

    /// Committed entries not yet applied, summed over the local groups.
    pub fn apply_lag(&self) -> u64 {
        self.groups
            .values()
            .map(|g| g.node.raft.raft_log.committed.saturating_sub(g.applied))
            .sum()
    }

    /// The local groups' ids.
    pub fn group_ids(&self) -> Vec<u32> {
        self.groups.keys().copied().collect()
    }

    /// `(term, index, data)` of the entries this replica holds for a group, with
    /// its commit index: what a checker compares across replicas.
    pub fn log_view(&self, group: u32) -> Option<(u64, Vec<(u64, u64, Bytes)>)> {
        let g = self.groups.get(&group)?;
        let store = g.node.store();
        let commit = g.node.raft.raft_log.committed;
        let entries = store
            .entries_in(store.snapshot_index() + 1, u64::MAX)
            .iter()
            .map(|e| (e.term, e.index, e.data.clone()))
            .collect();
        Some((commit, entries))
    }

    /// A leader's view of its followers: `(raft id, matched, next, state)`.
    pub fn progress_view(&self, group: u32) -> Vec<(u64, u64, u64, String)> {
        let Some(g) = self.groups.get(&group) else {
            return Vec::new();
        };
        g.node
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, pr.matched, pr.next_idx, format!("{:?}", pr.state)))
            .collect()
    }

    /// Leader of a group as this replica knows it.
    pub fn leader_of(&self, group: u32) -> Option<u64> {
        self.groups.get(&group)?.leader_id()
    }

    /// Sessions held by this replica (ids).
    pub fn session_ids(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    /// Looks a session up in applied state.
    pub fn session_info(&self, id: &str) -> Option<SessionInfo> {
        let s = self.session(id)?;
        Some(SessionInfo {
            tenant_id: s.tenant_id.clone(),
            last_seq: s.last_seq,
        })
    }

    fn session(&self, id: &str) -> Option<&Session> {
        let gid = self.index.get(id)?;
        self.groups.get(gid)?.machine.sessions.get(id)
    }

    /// Up to `limit` events with `seq > after` from this replica's applied state.
    pub fn read(&self, id: &str, after: u64, limit: usize) -> Result<ReadResult, EngineError> {
        let s = self.session(id).ok_or(EngineError::SessionNotFound)?;
        if after < s.archived_seq {
            // Below the hot tier: the caller reads the archive (never a silent skip).
            return Err(EngineError::Archived {
                archived_seq: s.archived_seq,
            });
        }
        let limit = if crate::fault::point("shard.read.short") {
            1
        } else {
            limit.min(MAX_READ_EVENTS)
        };
        let events = s
            .hot_after(after, limit)
            .map(|e| (e.seq, e.frame.clone()))
            .collect();
        Ok(ReadResult {
            events,
            last_seq: s.last_seq,
        })
    }

    /// Work for the archiver: sessions of groups this replica leads, in id
    /// order after `after`, that have committed events not yet archived (at
    /// most `per_session` events each, about `budget_bytes` of frames in all)
    /// or whose catalog record may have to be (re)written: the session's
    /// catalog stamp, or its group's leadership stamp, is above
    /// `catalog_after` (see `state::session::catalog_gen`; created, patched,
    /// archived/unarchived or restored since the archiver's last complete
    /// pass, or led by this replica since then). Also returns whether the scan
    /// stopped early (more work after the last session returned).
    pub fn archive_scan(
        &self,
        after: Option<&str>,
        per_session: usize,
        budget_bytes: usize,
        catalog_after: u64,
    ) -> (Vec<ArchiveWork>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = after.map_or(Unbounded, |c| Excluded(c.to_owned()));
        let mut out = Vec::new();
        let mut used = 0usize;
        for (id, gid) in self.index.range((lower, Unbounded)) {
            let Some(group) = self.groups.get(gid) else {
                continue;
            };
            if !group.is_leader() {
                continue;
            }
            let Some(s) = group.machine.sessions.get(id) else {
                continue;
            };
            let catalog = s.catalog_gen > catalog_after || group.led_gen > catalog_after;
            if s.last_seq <= s.archived_seq && !catalog {
                continue;
            }
            if used >= budget_bytes {
                return (out, true);
            }
            let events: Vec<(u64, Bytes)> = s
                .hot_after(s.archived_seq, per_session)
                .map(|e| (e.seq, e.frame.clone()))
                .collect();
            used += events.iter().map(|(_, f)| f.len()).sum::<usize>() + 256;
            out.push(ArchiveWork {
                session: list_row(s),
                archived_seq: s.archived_seq,
                events,
            });
        }
        (out, false)
    }

    /// A session's catalog entry from applied state.
    pub fn session_row(&self, id: &str) -> Option<ListRow> {
        self.session(id).map(list_row)
    }

    /// A session's catalog entry, read on its group's leader only (a GET
    /// after a PATCH through any node sees the PATCH): `NotLeader` with the
    /// leader this replica knows, `Unavailable` if the group is not local.
    pub fn leader_row(&self, id: &str) -> Result<Option<ListRow>, EngineError> {
        let gid = self.group_of(id);
        let group = self.groups.get(&gid).ok_or(EngineError::Unavailable)?;
        if !group.is_leader() {
            return Err(EngineError::NotLeader {
                leader: group.leader_id(),
            });
        }
        Ok(group.machine.sessions.get(id).map(list_row))
    }

    /// Sessions with id > `cursor`, ascending, matching tenant, filters and
    /// the archived flag.
    pub fn list(
        &self,
        cursor: Option<&str>,
        limit: usize,
        tenant: Option<&str>,
        filters: &[(String, String)],
        archived: ArchivedFilter,
    ) -> Vec<ListRow> {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = cursor.map_or(Unbounded, |c| Excluded(c.to_owned()));
        self.index
            .range((lower, Unbounded))
            .filter_map(|(id, gid)| self.groups.get(gid)?.machine.sessions.get(id))
            .filter(|s| {
                tenant.is_none_or(|t| s.tenant_id == t)
                    && archived.admits(s.archived)
                    && s.matches(filters)
            })
            .take(limit)
            .map(list_row)
            .collect()
    }
}

/// Applies a committed conf-change entry to a replica's membership (raft's
/// progress tracker and the storage's `ConfState`). Every replica applies the
/// same entries in the same order to the same configuration, so a change raft
/// refuses is refused everywhere.
fn apply_conf_entry(g: &mut Group, entry: &Entry) {
    use protobuf::Message as _;
    let applied = match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => {
            let mut cc = raft::eraftpb::ConfChangeV2::default();
            if let Err(e) = cc.merge_from_bytes(&entry.data) {
                panic!(
                    "group {}: conf change {} does not decode: {e}",
                    g.id, entry.index
                );
            }
            g.node.apply_conf_change(&cc)
        }
        EntryType::EntryConfChange => {
            let mut cc = raft::eraftpb::ConfChange::default();
            if let Err(e) = cc.merge_from_bytes(&entry.data) {
                panic!(
                    "group {}: conf change {} does not decode: {e}",
                    g.id, entry.index
                );
            }
            g.node.apply_conf_change(&cc)
        }
        EntryType::EntryNormal => return,
    };
    match applied {
        Ok(cs) => {
            tracing::info!(group = g.id, index = entry.index, conf = ?cs, "membership changed");
            g.node.mut_store().set_conf_state(cs);
        }
        Err(e) => {
            tracing::warn!(group = g.id, index = entry.index, error = %e, "conf change refused");
        }
    }
}

fn stamp(proposal: Proposal, origin: Origin, now_us: i64) -> Command {
    match proposal {
        Proposal::Create {
            id,
            tenant_id,
            title,
            metadata_json,
            principal_id,
            principal_type,
        } => Command::Create(CreateCommand {
            origin,
            id,
            tenant_id,
            title,
            metadata_json,
            principal_id,
            principal_type,
            created_at_us: now_us,
        }),
        Proposal::Append {
            session,
            producer_id,
            producer_seq,
            fingerprint,
            expected_seq,
            body,
        } => Command::Append(AppendCommand {
            origin,
            session,
            producer_id,
            producer_seq,
            fingerprint,
            expected_seq,
            body,
            inserted_at_us: now_us,
        }),
        Proposal::AckArchived { session, upto } => Command::AckArchived {
            origin,
            session,
            upto,
        },
        Proposal::Patch {
            session,
            set_title,
            title,
            metadata_json,
            expected_version,
        } => Command::Patch(Box::new(PatchCommand {
            origin,
            session,
            set_title,
            title,
            metadata_json,
            expected_version,
            updated_at_us: now_us,
        })),
        Proposal::SetArchived { session, archived } => {
            Command::SetArchived(Box::new(SetArchivedCommand {
                origin,
                session,
                archived,
                updated_at_us: now_us,
            }))
        }
    }
}

fn apply_entry_to(machine: &mut GroupMachine, entry: &Entry) {
    if entry.data.is_empty() {
        return;
    }
    match decode_command(&entry.data) {
        Ok(cmd) => {
            machine.apply(cmd);
        }
        Err(e) => panic!("log entry {} does not decode: {e}", entry.index),
    }
}

fn fail_pending_of<W>(
    pending: &mut BTreeMap<u64, Pending<W>>,
    reserved_bytes: &mut u64,
    gid: u32,
    out: &mut Outputs<W>,
) {
    let tokens: Vec<u64> = pending
        .iter()
        .filter(|(_, p)| p.group == gid)
        .map(|(t, _)| *t)
        .collect();
    for token in tokens {
        if let Some(p) = pending.remove(&token) {
            *reserved_bytes -= p.reserved;
            // Ambiguous: the entry may still commit under the new leader (§6.7).
            out.completions
                .push((p.waiter, Err(EngineError::Unavailable)));
        }
    }
}

fn push_hard_state(gid: u32, hs: &raft::eraftpb::HardState, buf: &mut Vec<u8>) {
    let record = LogRecord::HardState {
        group: gid,
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    };
    push_small(&record, buf);
}

/// Appends a record of a few dozen bytes (a hard state).
pub(crate) fn push_small(record: &LogRecord, buf: &mut Vec<u8>) {
    if let Err(e) = encode_record(record, buf) {
        // Unreachable: a hard state is a few dozen bytes.
        panic!("small log record over the frame limit: {e}");
    }
}

pub(crate) fn list_row(s: &Session) -> ListRow {
    ListRow {
        id: s.id.clone(),
        title: s.title.clone(),
        tenant_id: s.tenant_id.clone(),
        principal_id: s.principal_id.clone(),
        principal_type: s.principal_type.clone(),
        metadata: s.metadata.clone(),
        last_seq: s.last_seq,
        created_at_us: s.created_at_us,
        updated_at_us: s.updated_at_us,
        version: s.version,
        archived: s.archived,
    }
}
