//! Replacing a replica that lost its disk, as a Raft membership change: three
//! shards (one per "node") exchange messages in memory and write their logs
//! to in-memory segments. Node 3 loses its disk and comes back as a new
//! incarnation; once approved, the leader removes the old incarnation, adds
//! the new one as a learner (joint consensus), lets it catch up and promotes
//! it. The membership survives restarts (log and snapshots), and a second
//! failure still leaves a quorum holding every acknowledged append.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfState, Message};
use rkyv::util::AlignedVec;
use starcite_shards::membership::{raft_id, slot_of};
use starcite_shards::recovery::{recover, SegmentInput};
use starcite_shards::shard::{Outputs, Proposal, Shard, ShardConfig};
use starcite_shards::state::machine::Outcome;
use starcite_wire::log::{encode_segment_header, segment_file_name};

const GROUPS: u32 = 2;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

struct MemLog {
    segments: Vec<(u64, Vec<u8>)>,
    /// Where the bytes written without a sync start (segment, offset): a
    /// power cut loses them.
    unsynced_from: Option<(u64, usize)>,
}

impl MemLog {
    fn new() -> Self {
        let mut header = Vec::new();
        encode_segment_header(0, &mut header);
        Self {
            segments: vec![(1, header)],
            unsynced_from: None,
        }
    }

    /// A power cut: what was written after the last sync is gone.
    fn power_cut(&mut self) {
        if let Some((seq, offset)) = self.unsynced_from.take() {
            self.segments.retain(|(s, _)| *s <= seq);
            if let Some((_, bytes)) = self.segments.iter_mut().find(|(s, _)| *s == seq) {
                bytes.truncate(offset);
            }
        }
    }

    fn inputs(&self) -> Vec<SegmentInput> {
        self.segments
            .iter()
            .map(|(seq, bytes)| {
                let mut aligned = AlignedVec::<16>::new();
                aligned.extend_from_slice(bytes);
                SegmentInput {
                    name: segment_file_name(0, *seq),
                    seq: *seq,
                    bytes: aligned,
                }
            })
            .collect()
    }
}

struct Node {
    shard: Option<Shard<u64>>,
    log: MemLog,
    id: u64,
}

struct Cluster {
    nodes: Vec<Node>,
    checkpoint_bytes: u64,
    /// Every conf state any replica applied, in order (to see the learner phase).
    seen: Vec<ConfState>,
    acked: BTreeMap<u64, Outcome>,
}

impl Cluster {
    fn new(checkpoint_bytes: u64) -> Self {
        let mut c = Cluster {
            nodes: Vec::new(),
            checkpoint_bytes,
            seen: Vec::new(),
            acked: BTreeMap::new(),
        };
        for slot in 1..=3 {
            c.nodes.push(Node {
                shard: None,
                log: MemLog::new(),
                id: raft_id(slot, 0),
            });
            c.start(slot as usize - 1);
        }
        c
    }

    fn config(&self, i: usize) -> ShardConfig {
        ShardConfig {
            core: 0,
            cores: 1,
            num_groups: GROUPS,
            raft_id: self.nodes[i].id,
            // The placement: original incarnations of slots 1..=3.
            groups: (0..GROUPS).map(|g| (g, vec![1, 2, 3])).collect(),
            dedupe_window: 128,
            producer_cap: 10_000,
            hot_bytes_limit: 1 << 30,
            incarnation: 1000 + i as u64 + self.nodes[i].id,
            checkpoint_bytes: self.checkpoint_bytes,
            segment_bytes: (self.checkpoint_bytes / 4).clamp(4096, 1 << 20),
        }
    }

    /// (Re)starts node `i` from what its log holds.
    fn start(&mut self, i: usize) {
        let recovered = recover(&self.nodes[i].log.inputs(), 0, |_| true).expect("recovery");
        let shard = Shard::new(self.config(i), recovered, &logger()).expect("shard starts");
        self.nodes[i].shard = Some(shard);
    }

    fn stop(&mut self, i: usize) {
        self.nodes[i].shard = None;
    }

    fn shard(&mut self, i: usize) -> &mut Shard<u64> {
        self.nodes[i].shard.as_mut().expect("node is up")
    }

    /// One tick everywhere, then every message delivered until quiet.
    fn tick(&mut self) {
        for n in &mut self.nodes {
            if let Some(s) = n.shard.as_mut() {
                s.tick();
            }
        }
        self.run();
    }

    fn run(&mut self) {
        loop {
            let mut messages: Vec<(u32, Message)> = Vec::new();
            for i in 0..self.nodes.len() {
                let out = self.drive(i);
                for (w, r) in out.completions {
                    if let Ok(o) = r {
                        self.acked.insert(w, o);
                    }
                }
                messages.extend(out.messages);
            }
            if messages.is_empty() {
                return;
            }
            for (g, m) in messages {
                let to = slot_of(m.to) as usize - 1;
                if let Some(s) = self.nodes[to].shard.as_mut() {
                    s.step(g, m);
                }
            }
        }
    }

    fn drive(&mut self, i: usize) -> Outputs<u64> {
        let mut all = Outputs::default();
        let node = &mut self.nodes[i];
        let Some(shard) = node.shard.as_mut() else {
            return all;
        };
        while shard.has_ready() {
            let mut buf = Vec::new();
            all.extend(shard.prepare_write(&mut buf));
            let (seq, last) = node.log.segments.last_mut().unwrap();
            if shard.batch_needs_sync() {
                node.log.unsynced_from = None;
            } else if node.log.unsynced_from.is_none() && !buf.is_empty() {
                node.log.unsynced_from = Some((*seq, last.len()));
            }
            last.extend_from_slice(&buf);
            all.extend(shard.on_durable());
            if shard.wants_new_segment() {
                let mut seg = Vec::new();
                encode_segment_header(0, &mut seg);
                let next = node.log.segments.last().unwrap().0 + 1;
                node.log.segments.push((next, seg));
                shard.segment_started(next);
            }
            let before = shard.obsolete_before();
            node.log.segments.retain(|(s, _)| *s >= before);
            shard.segments_deleted(before);
        }
        for g in 0..GROUPS {
            if let Some(cs) = shard.conf_state(g) {
                if self.seen.last() != Some(&cs) {
                    self.seen.push(cs);
                }
            }
        }
        all
    }

    fn leader(&self, group: u32) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.shard.as_ref().is_some_and(|s| {
                s.leader_of(group) == Some(n.id) && s.led_commits().iter().any(|(g, _)| *g == group)
            })
        })
    }

    fn tick_until(&mut self, what: &str, mut done: impl FnMut(&mut Cluster) -> bool) {
        for _ in 0..3_000 {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("not within 3000 ticks: {what}");
    }

    /// Proposes on the group's leader and ticks until it is acknowledged.
    fn commit(&mut self, token: u64, p: Proposal) -> Outcome {
        let g = starcite_shards::placement::group_of(p.session(), GROUPS);
        for _ in 0..50 {
            self.tick_until("a leader", |c| c.leader(g).is_some());
            let l = self.leader(g).unwrap();
            if self.shard(l).propose(p.clone(), token, 1).is_ok() {
                for _ in 0..200 {
                    self.tick();
                    if let Some(o) = self.acked.get(&token) {
                        return o.clone();
                    }
                }
            }
        }
        panic!("proposal {token} never acknowledged");
    }

    fn events(&mut self, i: usize, session: &str) -> Vec<(u64, bytes::Bytes)> {
        self.shard(i)
            .read(session, 0, 10_000)
            .expect("session")
            .events
    }
}

fn create(id: &str) -> Proposal {
    Proposal::Create {
        id: id.into(),
        tenant_id: "service".into(),
        title: None,
        metadata_json: "{}".into(),
        principal_id: "service".into(),
        principal_type: "service".into(),
    }
}

fn append(session: &str, pseq: u64) -> Proposal {
    Proposal::Append {
        session: session.into(),
        producer_id: "p".into(),
        producer_seq: pseq,
        fingerprint: [pseq as u8; 16],
        expected_seq: None,
        body: format!(
            "\"type\":\"t\",\"payload\":{{\"n\":{pseq},\"pad\":\"{}\"}}",
            "x".repeat(200)
        ),
    }
}

fn sorted(v: &[u64]) -> Vec<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

fn replace_node_3(checkpoint_bytes: u64) {
    let mut c = Cluster::new(checkpoint_bytes);
    let sessions = ["alpha", "beta", "gamma", "delta"];
    let mut token = 1;
    for s in sessions {
        c.commit(token, create(s));
        token += 1;
    }
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for n in 1..=30 {
        for s in sessions {
            match c.commit(token, append(s, n)) {
                Outcome::Appended { seq, .. } => assert_eq!(seq, n),
                o => panic!("{o:?}"),
            }
            token += 1;
            expected.insert(s, n);
        }
    }

    // Node 3 loses its disk and comes back empty, as a new incarnation.
    c.stop(2);
    c.nodes[2].log = MemLog::new();
    let new_id = raft_id(3, 1_764_000_000_000);
    c.nodes[2].id = new_id;
    c.start(2);
    for n in 31..=40 {
        for s in sessions {
            c.commit(token, append(s, n));
            token += 1;
            expected.insert(s, n);
        }
    }
    // Not approved: it is no member, votes for nothing and stays empty.
    for g in 0..GROUPS {
        let l = c.leader(g).expect("leader");
        assert_eq!(
            sorted(&c.shard(l).conf_state(g).unwrap().voters),
            vec![1, 2, 3]
        );
        assert_ne!(l, 2);
    }
    assert_eq!(c.shard(2).voter_groups(), (0, GROUPS as usize));
    assert!(c.shard(2).session_ids().is_empty());

    if checkpoint_bytes != u64::MAX {
        // Identical retries dedupe: they grow the logs, not the state, until
        // checkpoints compact them.
        for i in 0..400u64 {
            let s = sessions[(i % 4) as usize];
            match c.commit(token, append(s, expected[s])) {
                Outcome::Appended { deduped, .. } => assert!(deduped),
                o => panic!("{o:?}"),
            }
            token += 1;
        }
        // The survivors compacted: the replacement can only get snapshots.
        for g in 0..GROUPS {
            let l = c.leader(g).expect("leader");
            let (_, entries) = c.shard(l).log_view(g).unwrap();
            let first = entries.first().map_or(u64::MAX, |e| e.1);
            assert!(first > 2, "group {g}: the leader's log starts at {first}");
        }
    }
    // Approved (the operator's replace-node): every leader replaces it.
    for i in 0..3 {
        c.shard(i).approve_replacements(vec![new_id]);
    }
    c.tick_until("the new incarnation is a voter everywhere", |c| {
        (0..3).all(|i| {
            (0..GROUPS).all(|g| {
                let cs = c.shard(i).conf_state(g).unwrap();
                sorted(&cs.voters) == sorted(&[1, 2, new_id])
                    && cs.learners.is_empty()
                    && cs.voters_outgoing.is_empty()
            })
        })
    });
    // It went through joint consensus and the learner phase.
    assert!(
        c.seen.iter().any(|cs| !cs.voters_outgoing.is_empty()),
        "a joint configuration was seen: {:?}",
        c.seen
    );
    assert!(
        c.seen
            .iter()
            .any(|cs| cs.learners.contains(&new_id) && !cs.voters.contains(&new_id)),
        "the new incarnation was a learner first: {:?}",
        c.seen
    );
    assert_eq!(
        c.shard(2).voter_groups(),
        (GROUPS as usize, GROUPS as usize)
    );
    for s in sessions {
        let want = c.events(0, s);
        assert_eq!(want.len() as u64, expected[s]);
        assert_eq!(
            c.events(2, s),
            want,
            "{s}: the replacement holds everything"
        );
    }

    // The membership survives a power cut of every node (log and
    // snapshots): a replica never forgets a membership it applied (the
    // commit that covers a conf change is synced before anyone sees it).
    for i in 0..3 {
        c.stop(i);
        c.nodes[i].log.power_cut();
        c.start(i);
        for g in 0..GROUPS {
            let cs = c.shard(i).conf_state(g).unwrap();
            assert_eq!(
                sorted(&cs.voters),
                sorted(&[1, 2, new_id]),
                "node {i} group {g}"
            );
        }
    }

    // A second failure (node 1, the original) still leaves a quorum: the
    // replacement and node 2 elect leaders and hold every acknowledged append.
    c.stop(0);
    for s in sessions {
        let n = expected[s] + 1;
        match c.commit(token, append(s, n)) {
            Outcome::Appended { seq, .. } => assert_eq!(seq, n),
            o => panic!("{o:?}"),
        }
        token += 1;
        expected.insert(s, n);
    }
    for s in sessions {
        for i in [1, 2] {
            let ev = c.events(i, s);
            let seqs: Vec<u64> = ev.iter().map(|e| e.0).collect();
            assert_eq!(seqs, (1..=expected[s]).collect::<Vec<_>>(), "node {i} {s}");
        }
    }
}

#[test]
fn replacement_joins_as_learner_and_is_promoted() {
    replace_node_3(u64::MAX);
}

#[test]
fn replacement_catches_up_by_snapshot_and_membership_survives_checkpoints() {
    // Tiny checkpoints: the survivors' logs are compacted, so the replacement
    // gets snapshots, and restarts recover the membership from Membership
    // records after snapshot records.
    replace_node_3(8 * 1024);
}

#[test]
fn a_wiped_replica_under_its_old_identity_stops_voting() {
    let mut c = Cluster::new(u64::MAX);
    let mut token = 1;
    c.commit(token, create("s"));
    for n in 1..=10 {
        token += 1;
        c.commit(token, append("s", n));
    }
    // Node 3 is wiped but restarted WITHOUT a new incarnation (operator error).
    let g = starcite_shards::placement::group_of("s", GROUPS);
    c.stop(2);
    c.nodes[2].log = MemLog::new();
    c.start(2);
    c.tick_until("the leader's heartbeat reveals the loss", |c| {
        c.shard(2)
            .sync_state(|_, _| Some(0))
            .is_err_and(|(_, why)| why == "lost_state")
    });
    // The two intact replicas still commit; the wiped one never votes again.
    token += 1;
    c.commit(token, append("s", 11));
    assert_ne!(c.leader(g), Some(2));
}
