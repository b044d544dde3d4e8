//! The control plane of a node: what it knows about every node (liveness,
//! drain marks, readiness, leader counts), shared by its cores and the admin
//! socket. Not on the append path: a mutex is fine here.
//!
//! Liveness: a peer is `ready` while any of our cores has an authenticated
//! connection to it, `suspect` once none has, `lost` after `lost_after_ms` of
//! suspicion. Drain marks are last-writer-wins registers `(drained, version)`
//! per node, gossiped every second, and the node's own mark is persisted in its
//! data dir so it survives a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::topology::Topology;

/// Suspect → lost after this long (decision 9).
pub const LOST_AFTER_MS: u64 = 30_000;

/// A core that has not reported for this long is stalled (or dead): the node is
/// not ready. Cores report every tick (100 ms), also under full load.
pub const CORE_REPORT_STALE_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    Suspect,
    Lost,
    Draining,
}

/// A drain mark: last writer (highest version) wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainMark {
    pub drained: bool,
    pub version: u64,
}

/// Gossiped by every node every second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gossip {
    pub from: String,
    /// Every consensus group this node replicates has a leader and is caught up.
    pub consensus_ready: bool,
    pub leaders: u32,
    pub marks: BTreeMap<String, DrainMark>,
    /// Commit index of every group this node leads (followers compare).
    #[serde(default)]
    pub commits: BTreeMap<u32, u64>,
    /// The sender's Raft id (its slot and incarnation).
    #[serde(default)]
    pub raft_id: u64,
    /// Approved replacements: node → Raft id of its new incarnation. A
    /// grow-only register per node (highest id wins), persisted by every node.
    #[serde(default)]
    pub replacements: BTreeMap<String, u64>,
    /// `(local groups in which the sender is a voter, its local groups)`.
    #[serde(default)]
    pub voter_groups: (u32, u32),
}

#[derive(Debug, Default)]
struct Inner {
    /// Authenticated outbound connections per peer (one per core at most).
    connections: BTreeMap<String, u32>,
    statuses: BTreeMap<String, (NodeStatus, u64)>,
    marks: BTreeMap<String, DrainMark>,
    peer_ready: BTreeMap<String, bool>,
    peer_leaders: BTreeMap<String, u32>,
    /// group → (leader node, its commit index), from the leader's gossip.
    leader_commits: BTreeMap<u32, (String, u64)>,
    /// Per core: groups it leads with their commit indexes.
    own_commits: Vec<Vec<(u32, u64)>>,
    /// Per core: why it is not synced (first failing group), for readiness detail.
    core_sync: Vec<Option<(u32, &'static str)>>,
    /// Raft id each peer last announced.
    peer_raft_ids: BTreeMap<String, u64>,
    /// `(voter groups, local groups)` each peer last announced.
    peer_voter_groups: BTreeMap<String, (u32, u32)>,
    /// Per core: `(voter groups, local groups)`.
    own_voter_groups: Vec<(u32, u32)>,
    /// Approved replacements (see `Gossip::replacements`).
    replacements: BTreeMap<String, u64>,
}

pub struct ControlState {
    pub topo: Arc<Topology>,
    data_dir: PathBuf,
    inner: Mutex<Inner>,
    /// Per core: its replicas are synced (see `Shard::sync_state`).
    pub core_ready: Vec<AtomicBool>,
    /// Per core: groups it leads.
    pub core_leaders: Vec<AtomicU32>,
    /// Per core: when it last reported (ms since the epoch).
    pub core_reported_ms: Vec<AtomicU64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ControlState {
    pub fn new(topo: Arc<Topology>, data_dir: PathBuf) -> Self {
        let mut inner = Inner::default();
        let now = now_ms();
        for node in &topo.nodes {
            let status = if *node == topo.me {
                NodeStatus::Ready
            } else {
                NodeStatus::Suspect
            };
            inner.statuses.insert(node.clone(), (status, now));
        }
        if let Some(mark) = load_own_mark(&data_dir) {
            inner.marks.insert(topo.me.clone(), mark);
        }
        let cores = topo.cores as usize;
        inner.own_commits = vec![Vec::new(); cores];
        inner.core_sync = vec![Some((0, "startup_sync")); cores];
        inner.own_voter_groups = vec![(0, 0); cores];
        inner.replacements = load_replacements(&data_dir);
        let state = ControlState {
            inner: Mutex::new(inner),
            core_ready: (0..cores).map(|_| AtomicBool::new(false)).collect(),
            core_leaders: (0..cores).map(|_| AtomicU32::new(0)).collect(),
            core_reported_ms: (0..cores).map(|_| AtomicU64::new(now)).collect(),
            topo,
            data_dir,
        };
        state.refresh_statuses(now);
        state
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug; keep serving with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn me(&self) -> &str {
        &self.topo.me
    }

    /// A core's connection to `peer` went up or down.
    pub fn peer_connection(&self, peer: &str, up: bool) {
        {
            let mut inner = self.lock();
            let count = inner.connections.entry(peer.to_owned()).or_default();
            *count = if up {
                *count + 1
            } else {
                count.saturating_sub(1)
            };
            if *count == 0 {
                // What it told us is stale now: it leads nothing we can see.
                inner.peer_leaders.remove(peer);
                inner.peer_ready.remove(peer);
                inner.leader_commits.retain(|_, (leader, _)| leader != peer);
            }
        }
        self.refresh_statuses(now_ms());
    }

    /// A core reports its sync state and the commit indexes of groups it leads.
    pub fn core_report(
        &self,
        core: usize,
        sync: Result<(), (u32, &'static str)>,
        led: Vec<(u32, u64)>,
        leaders: u32,
    ) {
        self.core_ready[core].store(sync.is_ok(), Ordering::Relaxed);
        self.core_leaders[core].store(leaders, Ordering::Relaxed);
        self.core_reported_ms[core].store(now_ms(), Ordering::Relaxed);
        let mut inner = self.lock();
        inner.core_sync[core] = sync.err();
        inner.own_commits[core] = led;
    }

    /// Whether `id` is the incarnation `node` runs now (as far as we know: a
    /// peer not heard from yet is assumed to run its original one). A voter
    /// id of a replaced incarnation is no target for leadership.
    pub fn is_current_raft_id(&self, node: &str, id: u64) -> bool {
        if node == self.topo.me {
            return self.topo.raft_id(node) == Some(id);
        }
        match self.lock().peer_raft_ids.get(node) {
            Some(current) => *current == id,
            None => starcite_shards::membership::incarnation_of(id) == 0,
        }
    }

    /// A core reports in how many of its groups this node is a voter.
    pub fn core_membership(&self, core: usize, (voter, groups): (usize, usize)) {
        self.lock().own_voter_groups[core] = (voter as u32, groups as u32);
    }

    /// Raft ids of the approved replacements (the engines' leaders move
    /// their groups' membership to them).
    pub fn approved_replacements(&self) -> Vec<u64> {
        self.lock().replacements.values().copied().collect()
    }

    /// Approves the replacement of `node` by the incarnation it runs now and
    /// reports progress (`starcite ops replace-node`). Idempotent.
    pub fn replace_node(&self, node: &str) -> Result<serde_json::Value, String> {
        use starcite_shards::membership::incarnation_of;
        let id = if node == self.topo.me {
            self.topo.raft_id(node)
        } else {
            self.lock().peer_raft_ids.get(node).copied()
        };
        let Some(id) = id else {
            return Err(format!(
                "{node} has not been heard from: start it (empty data dir, STARCITE_REJOIN=true) and retry"
            ));
        };
        if incarnation_of(id) == 0 {
            return Err(format!(
                "{node} runs its original incarnation (raft id {id}): only a node started with an empty data dir and STARCITE_REJOIN=true can replace it"
            ));
        }
        let changed = {
            let mut inner = self.lock();
            let entry = inner.replacements.entry(node.to_owned()).or_insert(0);
            let changed = id > *entry;
            *entry = (*entry).max(id);
            changed
        };
        if changed {
            tracing::warn!(
                node,
                raft_id = id,
                "replacement approved: leaders move its groups to the new incarnation"
            );
            self.persist_replacements();
        }
        let (voter, groups) = if node == self.topo.me {
            self.own_voter_groups()
        } else {
            self.lock()
                .peer_voter_groups
                .get(node)
                .copied()
                .unwrap_or((0, u32::MAX))
        };
        Ok(serde_json::json!({
            "node": node,
            "raft_id": id,
            "incarnation": incarnation_of(id),
            "voter_groups": voter,
            "groups": if groups == u32::MAX { serde_json::Value::Null } else { groups.into() },
            "done": voter == groups,
        }))
    }

    fn own_voter_groups(&self) -> (u32, u32) {
        self.lock()
            .own_voter_groups
            .iter()
            .fold((0, 0), |(v, g), (cv, cg)| (v + cv, g + cg))
    }

    /// The commit index `leader` (a node) last gossiped for `group`.
    pub fn leader_commit(&self, group: u32, leader: &str) -> Option<u64> {
        let inner = self.lock();
        inner
            .leader_commits
            .get(&group)
            .filter(|(l, _)| l == leader)
            .map(|(_, c)| *c)
    }

    /// The first failing group of this node's readiness, with the reason.
    pub fn sync_failure(&self) -> Option<(u32, &'static str)> {
        self.lock().core_sync.iter().flatten().next().copied()
    }

    pub fn is_visible(&self, node: &str) -> bool {
        node == self.topo.me || self.lock().connections.get(node).is_some_and(|c| *c > 0)
    }

    pub fn is_drained(&self, node: &str) -> bool {
        self.lock().marks.get(node).is_some_and(|m| m.drained)
    }

    /// Sets a drain mark (operator command); returns the gossip to broadcast.
    pub fn set_drained(&self, node: &str, drained: bool) {
        {
            let mut inner = self.lock();
            let version = inner.marks.get(node).map_or(0, |m| m.version).max(now_ms()) + 1;
            inner
                .marks
                .insert(node.to_owned(), DrainMark { drained, version });
        }
        self.persist_own_mark();
        self.refresh_statuses(now_ms());
    }

    /// Re-derives every node's status; called on changes and every sweep.
    pub fn refresh_statuses(&self, now: u64) {
        let mut inner = self.lock();
        let nodes = self.topo.nodes.clone();
        for node in nodes {
            let visible =
                node == self.topo.me || inner.connections.get(&node).is_some_and(|c| *c > 0);
            let drained = inner.marks.get(&node).is_some_and(|m| m.drained);
            let (old, since) = inner
                .statuses
                .get(&node)
                .copied()
                .unwrap_or((NodeStatus::Suspect, now));
            let new = match (drained, visible, old) {
                (true, _, _) => NodeStatus::Draining,
                (false, true, _) => NodeStatus::Ready,
                (false, false, NodeStatus::Suspect)
                    if now.saturating_sub(since) >= LOST_AFTER_MS =>
                {
                    NodeStatus::Lost
                }
                (false, false, NodeStatus::Lost) => NodeStatus::Lost,
                (false, false, _) => NodeStatus::Suspect,
            };
            if new != old {
                tracing::info!(node = %node, from = ?old, to = ?new, "node status changed");
                inner.statuses.insert(node, (new, now));
            }
        }
    }

    /// This node's gossip.
    pub fn gossip(&self) -> Gossip {
        let inner = self.lock();
        Gossip {
            from: self.topo.me.clone(),
            consensus_ready: self.local_consensus_ready(),
            leaders: self.local_leaders(),
            marks: inner.marks.clone(),
            commits: inner.own_commits.iter().flatten().copied().collect(),
            raft_id: self.topo.raft_id(&self.topo.me).unwrap_or(0),
            replacements: inner.replacements.clone(),
            voter_groups: inner
                .own_voter_groups
                .iter()
                .fold((0, 0), |(v, g), (cv, cg)| (v + cv, g + cg)),
        }
    }

    /// Merges a peer's gossip.
    pub fn apply_gossip(&self, g: Gossip) {
        let mut own_changed = false;
        let mut replacements_changed = false;
        {
            let mut inner = self.lock();
            if g.raft_id != 0 {
                inner.peer_raft_ids.insert(g.from.clone(), g.raft_id);
                inner
                    .peer_voter_groups
                    .insert(g.from.clone(), g.voter_groups);
            }
            for (node, id) in &g.replacements {
                if !self.topo.writers.contains(node) {
                    continue;
                }
                let entry = inner.replacements.entry(node.clone()).or_insert(0);
                if *id > *entry {
                    *entry = *id;
                    replacements_changed = true;
                }
            }
            inner.peer_ready.insert(g.from.clone(), g.consensus_ready);
            inner.peer_leaders.insert(g.from.clone(), g.leaders);
            for (group, commit) in &g.commits {
                inner
                    .leader_commits
                    .insert(*group, (g.from.clone(), *commit));
            }
            for (node, mark) in g.marks {
                if !self.topo.nodes.contains(&node) {
                    continue;
                }
                let newer = inner
                    .marks
                    .get(&node)
                    .is_none_or(|m| mark.version > m.version);
                if newer {
                    own_changed |= node == self.topo.me;
                    inner.marks.insert(node, mark);
                }
            }
        }
        if own_changed {
            self.persist_own_mark();
        }
        if replacements_changed {
            self.persist_replacements();
        }
        self.refresh_statuses(now_ms());
    }

    fn persist_replacements(&self) {
        let body = serde_json::to_vec(&self.lock().replacements).unwrap_or_default();
        let path = self.data_dir.join("replacements.json");
        if let Err(e) = super::identity::write_atomic(&path, &body) {
            tracing::error!(error = %e, "cannot persist the approved replacements");
        }
    }

    /// Every core is synced and reported recently: a core that stopped
    /// ticking (stalled or dead) makes the node not ready.
    pub fn local_consensus_ready(&self) -> bool {
        self.core_ready.iter().all(|r| r.load(Ordering::Relaxed))
            && self.stalled_core(now_ms()).is_none()
    }

    /// The first core whose last report is older than `CORE_REPORT_STALE_MS`,
    /// with the report's age in ms.
    pub fn stalled_core(&self, now: u64) -> Option<(usize, u64)> {
        self.core_reported_ms
            .iter()
            .map(|t| now.saturating_sub(t.load(Ordering::Relaxed)))
            .enumerate()
            .find(|(_, age)| *age > CORE_REPORT_STALE_MS)
    }

    pub fn local_leaders(&self) -> u32 {
        self.core_leaders
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .sum()
    }

    /// Write nodes that are `ready` and consensus-ready, sorted (contract §10.1).
    pub fn ready_nodes(&self) -> Vec<String> {
        let inner = self.lock();
        let mut ready: Vec<String> = self
            .topo
            .writers
            .iter()
            .filter(|n| {
                inner
                    .statuses
                    .get(*n)
                    .is_some_and(|(s, _)| *s == NodeStatus::Ready)
            })
            .filter(|n| {
                if **n == self.topo.me {
                    self.local_consensus_ready()
                } else {
                    inner.peer_ready.get(*n).copied().unwrap_or(false)
                }
            })
            .cloned()
            .collect();
        ready.sort();
        ready
    }

    /// `local_drained` of contract §10.2.
    pub fn local_drained(&self) -> bool {
        self.topo.is_writer()
            && self.is_drained(&self.topo.me)
            && !self.ready_nodes().contains(&self.topo.me)
    }

    /// Whether every visible node agrees that `node` is draining (wait-drained).
    pub fn drain_acknowledged(&self) -> bool {
        self.local_drained()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let inner = self.lock();
        let statuses: BTreeMap<&String, serde_json::Value> = inner
            .statuses
            .iter()
            .map(|(n, (s, at))| (n, serde_json::json!({"status": s, "changed_at_ms": at})))
            .collect();
        let visible: Vec<&String> = self
            .topo
            .nodes
            .iter()
            .filter(|n| **n == self.topo.me || inner.connections.get(*n).is_some_and(|c| *c > 0))
            .collect();
        let raft_ready: Vec<&String> = self
            .topo
            .writers
            .iter()
            .filter(|n| {
                if **n == self.topo.me {
                    self.local_consensus_ready()
                } else {
                    inner.peer_ready.get(*n).copied().unwrap_or(false)
                }
            })
            .collect();
        let mut leaders: BTreeMap<String, u32> = inner.peer_leaders.clone();
        leaders.insert(self.topo.me.clone(), self.local_leaders());
        let own_voters = inner
            .own_voter_groups
            .iter()
            .fold((0u32, 0u32), |(v, g), (cv, cg)| (v + cv, g + cg));
        serde_json::json!({
            "raft_id": self.topo.raft_id(&self.topo.me).unwrap_or(0),
            "incarnation": self.topo.incarnation,
            "voter_groups": own_voters.0,
            "local_group_count": own_voters.1,
            "approved_replacements": inner.replacements,
            "node_statuses": statuses,
            "visible_nodes": visible,
            "raft_ready_nodes": raft_ready,
            "leaders_per_node": leaders,
        })
    }

    fn persist_own_mark(&self) {
        let mark = self.lock().marks.get(&self.topo.me).copied();
        let Some(mark) = mark else { return };
        let path = self.data_dir.join("drain.json");
        let tmp = self.data_dir.join("drain.json.tmp");
        let body = serde_json::to_vec(&mark).unwrap_or_default();
        let write = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = write {
            tracing::error!(error = %e, "cannot persist the drain mark");
        }
    }
}

fn load_replacements(data_dir: &std::path::Path) -> BTreeMap<String, u64> {
    std::fs::read(data_dir.join("replacements.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn load_own_mark(data_dir: &std::path::Path) -> Option<DrainMark> {
    let bytes = std::fs::read(data_dir.join("drain.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Nodes the control plane would route to for a group: ready replicas first,
/// then any non-draining replica (contract §10.1).
pub fn routing_candidates<'a>(
    control: &ControlState,
    replicas: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let all: Vec<&str> = replicas.collect();
    let ready: BTreeSet<String> = control.ready_nodes().into_iter().collect();
    let mut out: Vec<String> = all
        .iter()
        .filter(|n| ready.contains(**n))
        .map(|n| (*n).to_owned())
        .collect();
    out.extend(
        all.iter()
            .filter(|n| !ready.contains(**n) && !control.is_drained(n))
            .map(|n| (*n).to_owned()),
    );
    out
}
