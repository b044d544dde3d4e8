//! The simulated world: virtual clock, nodes of shards, network, disks, clients.
//!
//! Every node runs the production `Shard` per core. The world plays the role of
//! the io_uring driver (write, fdatasync, on_durable), of the inter-node
//! transport (Raft messages with delay, loss, duplication, partitions), and of
//! the clients. One `u64` seed decides everything; the run is reproducible.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::Message;
use starcite_shards::membership;
use starcite_shards::placement::{core_of, group_of, replicas};
use starcite_shards::recovery::recover;
use starcite_shards::shard::{Outputs, Proposal, Shard, ShardConfig};
use starcite_shards::state::machine::Outcome;
use starcite_shards::EngineError;

use crate::checker::Checker;
use crate::config::SimConfig;
use crate::disk::{CrashLoss, SimDisk};
use crate::rng::Rng;
use crate::workload::{OpKind, Producer, Tail, Workload};

const TICK_US: u64 = starcite_shards::limits::TICK_MS * 1_000;

/// Fault and activity counters of a run.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub messages: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub crashes: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub fsync_spikes: u64,
    pub disk_full: u64,
    pub disk_wipes: u64,
    pub checkpoints: u64,
    pub client_timeouts: u64,
    pub not_leader: u64,
    pub acked: u64,
    pub dedupes: u64,
    pub expected_conflicts: u64,
    pub virtual_us: u64,
}

enum Input {
    Step(u32, Message),
    Propose(u64, Proposal),
    Tick,
}

enum Event {
    Tick {
        node: usize,
        epoch: u64,
    },
    Deliver {
        node: usize,
        group: u32,
        msg: Message,
    },
    /// A batch write finished; `synced` if it was fdatasync'ed.
    SyncDone {
        node: usize,
        core: usize,
        epoch: u64,
        synced: bool,
    },
    Send {
        attempt: u64,
        node: usize,
    },
    Reply {
        attempt: u64,
        result: Result<Outcome, EngineError>,
    },
    Timeout {
        op: usize,
        attempts: u32,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Partition,
    Heal,
    TailPoll {
        tail: usize,
    },
}

struct Core {
    shard: Option<Shard<u64>>,
    disk: SimDisk,
    writing: bool,
    inbox: VecDeque<Input>,
}

struct Node {
    up: bool,
    epoch: u64,
    cores: Vec<Core>,
    /// Its disk was replaced (empty) before its last restart.
    wiped: bool,
    /// Raft incarnation: 0 for the original disk, higher after each wipe
    /// (a new member; see `starcite_shards::membership`).
    incarnation: u64,
}

pub struct World {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: Vec<Node>,
    names: Vec<String>,
    /// Nodes on side A of a partition; messages across sides are dropped.
    partition: Option<Vec<bool>>,
    leader_hint: BTreeMap<u32, usize>,
    pub work: Workload,
    pub checker: Checker,
    pub stats: Stats,
    faults_over: bool,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl World {
    pub fn new(cfg: SimConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        let names: Vec<String> = (0..cfg.nodes).map(|i| format!("n{i}")).collect();
        let mut w = World {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            names,
            partition: None,
            leader_hint: BTreeMap::new(),
            work: Workload::default(),
            checker: Checker::default(),
            stats: Stats::default(),
            faults_over: false,
            cfg,
        };
        for node in 0..w.cfg.nodes {
            let cores = (0..w.cfg.cores)
                .map(|c| Core {
                    shard: None,
                    disk: SimDisk::new(c),
                    writing: false,
                    inbox: VecDeque::new(),
                })
                .collect();
            w.nodes.push(Node {
                up: false,
                epoch: 0,
                cores,
                wiped: false,
                incarnation: 0,
            });
            w.start_node(node);
        }
        w.plan_workload();
        w.plan_faults();
        w
    }

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay_us, self.seq), event);
    }

    fn shard_config(&mut self, node: usize, core: u32) -> ShardConfig {
        let groups = (0..self.cfg.groups)
            .filter(|g| core_of(*g, self.cfg.cores) == core)
            .filter_map(|g| {
                let reps = replicas(g, &self.names, self.cfg.rf);
                reps.contains(&self.names[node].as_str()).then(|| {
                    let voters = reps.iter().map(|n| self.raft_id(n)).collect();
                    (g, voters)
                })
            })
            .collect();
        ShardConfig {
            core,
            cores: self.cfg.cores,
            num_groups: self.cfg.groups,
            raft_id: membership::raft_id(
                node as u64 + 1,
                self.nodes.get(node).map_or(0, |n| n.incarnation),
            ),
            groups,
            dedupe_window: 128,
            producer_cap: 10_000,
            hot_bytes_limit: 1 << 40,
            incarnation: self.rng.next_u64(),
            checkpoint_bytes: self.cfg.checkpoint_bytes,
            segment_bytes: (self.cfg.checkpoint_bytes / 4).clamp(2048, 1 << 20),
        }
    }

    /// Tells every running shard which new incarnations are approved.
    fn approve_replacements(&mut self) {
        let ids: Vec<u64> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.incarnation > 0)
            .map(|(i, n)| membership::raft_id(i as u64 + 1, n.incarnation))
            .collect();
        for n in &mut self.nodes {
            for c in &mut n.cores {
                if let Some(shard) = c.shard.as_mut() {
                    shard.approve_replacements(ids.clone());
                }
            }
        }
    }

    fn raft_id(&self, name: &str) -> u64 {
        self.names
            .iter()
            .position(|n| n == name)
            .map_or(0, |i| i as u64 + 1)
    }

    /// (Re)starts a node from what its disks hold.
    fn start_node(&mut self, node: usize) {
        for core in 0..self.cfg.cores {
            let cfg = self.shard_config(node, core);
            let owned: Vec<u32> = cfg.groups.iter().map(|(g, _)| *g).collect();
            let disk = &mut self.nodes[node].cores[core as usize].disk;
            let recovered = match recover(&disk.inputs(), core, |g| owned.contains(&g)) {
                Ok(r) => r,
                Err(e) => {
                    self.checker
                        .violations
                        .push(format!("n{node} core {core}: recovery failed: {e}"));
                    return;
                }
            };
            if let Some((name, len)) = &recovered.truncate {
                disk.truncate(name, *len);
            }
            match Shard::new(cfg, recovered, &logger()) {
                Ok(shard) => self.nodes[node].cores[core as usize].shard = Some(shard),
                Err(e) => self
                    .checker
                    .violations
                    .push(format!("n{node} core {core}: start failed: {e}")),
            }
        }
        self.approve_replacements();
        let n = &mut self.nodes[node];
        n.up = true;
        n.epoch += 1;
        let epoch = n.epoch;
        let first = self.rng.range(0, TICK_US);
        self.schedule(first, Event::Tick { node, epoch });
        for core in 0..self.cfg.cores as usize {
            self.pump(node, core);
        }
    }

    fn plan_workload(&mut self) {
        let cfg = self.cfg.clone();
        for s in 0..cfg.sessions {
            let id = format!("ses-{}-{s}", cfg.seed % 1000);
            self.work.sessions.push(id.clone());
            self.work.known_last.push(0);
            let group = group_of(&id, cfg.groups);
            self.work.ops.push(crate::workload::Op {
                session: id,
                group,
                kind: OpKind::Create,
                done: false,
                attempts: 0,
                started_us: 0,
                route: None,
            });
            let op = self.work.ops.len() - 1;
            let delay = self.rng.range(0, 200_000);
            self.start_op(op, delay);
            for p in 0..cfg.producers_per_session {
                self.work.producers.push(Producer {
                    session: s,
                    id: format!("p{p}"),
                    next_pseq: 1,
                    remaining: cfg.appends_per_producer,
                    depth: cfg.pipeline_depth,
                    inflight: 0,
                });
            }
        }
        for t in 0..cfg.tails {
            let session = t % cfg.sessions.max(1);
            self.work.tails.push(Tail {
                session,
                cursor: 0,
                seen: Vec::new(),
            });
            let d = self.rng.range(100_000, 1_000_000);
            self.schedule(d, Event::TailPoll { tail: t });
        }
    }

    fn plan_faults(&mut self) {
        let end = self.cfg.fault_window_us;
        let mut t = self.rng.range(0, self.cfg.crash_interval_us);
        while t < end {
            let node = self.rng.range(0, self.cfg.nodes as u64 - 1) as usize;
            self.schedule(t, Event::Crash { node });
            let down = self.rng.range(100_000, 3_000_000);
            self.schedule(t + down, Event::Restart { node });
            t += self.rng.range(
                self.cfg.crash_interval_us / 2,
                self.cfg.crash_interval_us * 2,
            );
        }
        let mut t = self.rng.range(0, self.cfg.partition_interval_us);
        while t < end {
            self.schedule(t, Event::Partition);
            let lasting = self.rng.range(200_000, 4_000_000);
            self.schedule(t + lasting, Event::Heal);
            t += lasting
                + self.rng.range(
                    self.cfg.partition_interval_us / 2,
                    self.cfg.partition_interval_us * 2,
                );
        }
        self.schedule(end, Event::Heal);
    }

    /// Runs to the end; returns whether it finished without violations.
    pub fn run(&mut self) -> bool {
        let deadline = self.cfg.fault_window_us + self.cfg.liveness_bound_us;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = at;
            self.stats.events += 1;
            if at >= self.cfg.fault_window_us && !self.faults_over {
                self.heal_all();
            }
            if at > deadline {
                break;
            }
            self.handle(event);
            if self.work.pending() == 0 && self.faults_over && self.tails_caught_up() {
                break;
            }
            if !self.checker.violations.is_empty() {
                break;
            }
        }
        self.stats.virtual_us = self.now;
        self.stats.acked = self.checker.acked() as u64;
        if self.checker.violations.is_empty() {
            self.final_checks();
        }
        self.checker.violations.is_empty()
    }

    fn heal_all(&mut self) {
        self.faults_over = true;
        self.partition = None;
        for node in 0..self.nodes.len() {
            if !self.nodes[node].up {
                self.start_node(node);
                self.stats.restarts += 1;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { node, epoch } => {
                if self.nodes[node].up && self.nodes[node].epoch == epoch {
                    for core in 0..self.cfg.cores as usize {
                        self.input(node, core, Input::Tick);
                    }
                    self.schedule(TICK_US, Event::Tick { node, epoch });
                }
            }
            Event::Deliver { node, group, msg } => {
                if self.nodes[node].up {
                    let core = core_of(group, self.cfg.cores) as usize;
                    self.input(node, core, Input::Step(group, msg));
                }
            }
            Event::SyncDone {
                node,
                core,
                epoch,
                synced,
            } => self.sync_done(node, core, epoch, synced),
            Event::Send { attempt, node } => self.send(attempt, node),
            Event::Reply { attempt, result } => self.reply(attempt, result),
            Event::Timeout { op, attempts } => {
                let o = &self.work.ops[op];
                if !o.done && o.attempts == attempts {
                    // The client retries the identical command (dedupe makes
                    // that safe), at the next replica.
                    self.stats.client_timeouts += 1;
                    self.redirect(op, None);
                    self.retry(op, 0);
                }
            }
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => {
                if !self.nodes[node].up && !self.faults_over {
                    // One replacement at a time: two replicas losing their
                    // disks before the first is replaced is two lost copies,
                    // beyond RF 3. A later wipe (of any node, the replaced one
                    // included) waits until the previous replacement is done.
                    if self.stats.disk_wipes < 3
                        && self.rng.chance(self.cfg.disk_wipe)
                        && self.membership_settled(Some(node))
                    {
                        self.stats.disk_wipes += 1;
                        for (core, c) in self.nodes[node].cores.iter_mut().enumerate() {
                            c.disk = SimDisk::new(core as u32);
                        }
                        self.nodes[node].wiped = true;
                        // The replacement is a new member (`STARCITE_REJOIN`):
                        // a new incarnation, approved once it runs (the
                        // operator's `starcite ops replace-node`).
                        self.nodes[node].incarnation += 1;
                    }
                    self.start_node(node);
                    self.stats.restarts += 1;
                }
            }
            Event::Partition => {
                if !self.faults_over {
                    let sides: Vec<bool> =
                        (0..self.cfg.nodes).map(|_| self.rng.chance(0.5)).collect();
                    self.partition = Some(sides);
                    self.stats.partitions += 1;
                }
            }
            Event::Heal => self.partition = None,
            Event::TailPoll { tail } => self.tail_poll(tail),
        }
    }

    fn input(&mut self, node: usize, core: usize, input: Input) {
        self.nodes[node].cores[core].inbox.push_back(input);
        self.pump(node, core);
    }

    /// The engine loop of one core: drain inputs, then one write at a time.
    fn pump(&mut self, node: usize, core: usize) {
        if !self.nodes[node].up || self.nodes[node].cores[core].writing {
            return;
        }
        let mut out = Outputs::default();
        let c = &mut self.nodes[node].cores[core];
        let Some(shard) = c.shard.as_mut() else {
            return;
        };
        while let Some(input) = c.inbox.pop_front() {
            match input {
                Input::Step(g, m) => shard.step(g, m),
                Input::Tick => shard.tick(),
                Input::Propose(attempt, p) => {
                    if let Err((w, e)) = shard.propose(p, attempt, self.now as i64) {
                        out.completions.push((w, Err(e)));
                    }
                }
            }
        }
        if shard.has_ready() {
            let mut buf = Vec::new();
            out.extend(shard.prepare_write(&mut buf));
            c.disk.write(&buf);
            c.writing = true;
            let synced = shard.batch_needs_sync();
            let mut latency = if synced {
                self.rng.range(self.cfg.fsync_us.0, self.cfg.fsync_us.1)
            } else {
                self.rng.range(5, 50)
            };
            if synced && self.rng.chance(self.cfg.fsync_spike) {
                latency += self.rng.range(20_000, 80_000);
                self.stats.fsync_spikes += 1;
            }
            let epoch = self.nodes[node].epoch;
            self.schedule(
                latency,
                Event::SyncDone {
                    node,
                    core,
                    epoch,
                    synced,
                },
            );
        }
        self.dispatch(node, out);
    }

    fn sync_done(&mut self, node: usize, core: usize, epoch: u64, synced: bool) {
        if !self.nodes[node].up || self.nodes[node].epoch != epoch {
            return;
        }
        if !self.faults_over && self.rng.chance(self.cfg.disk_full) {
            // A failed fsync/full disk stops the process in production.
            self.stats.disk_full += 1;
            self.crash(node);
            return;
        }
        let c = &mut self.nodes[node].cores[core];
        if synced {
            c.disk.sync();
        }
        c.writing = false;
        let shard = c.shard.as_mut().expect("running core has a shard");
        let out = shard.on_durable();
        if shard.wants_new_segment() {
            let seq = c.disk.start_segment();
            shard.segment_started(seq);
        }
        let before = shard.obsolete_before();
        if c.disk.oldest() < before {
            c.disk.delete_before(before);
            shard.segments_deleted(before);
            self.stats.checkpoints += 1;
        }
        self.dispatch(node, out);
        self.pump(node, core);
    }

    fn dispatch(&mut self, node: usize, out: Outputs<u64>) {
        for (group, msg) in out.messages {
            self.send_message(node, group, msg);
        }
        for (attempt, result) in out.completions {
            if !self.faults_over && self.rng.chance(self.cfg.drop) {
                self.stats.dropped += 1; // the client's timeout retries
                continue;
            }
            let d = self.net_delay();
            self.schedule(d, Event::Reply { attempt, result });
        }
    }

    fn net_delay(&mut self) -> u64 {
        self.rng.range(self.cfg.delay_us.0, self.cfg.delay_us.1)
    }

    fn send_message(&mut self, from: usize, group: u32, msg: Message) {
        self.stats.messages += 1;
        let to = membership::slot_of(msg.to) as usize - 1;
        let cut = self
            .partition
            .as_ref()
            .is_some_and(|sides| sides[from] != sides[to]);
        if cut || (!self.faults_over && self.rng.chance(self.cfg.drop)) {
            self.stats.dropped += 1;
            return;
        }
        if !self.faults_over && self.rng.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            let d = self.net_delay();
            self.schedule(
                d,
                Event::Deliver {
                    node: to,
                    group,
                    msg: msg.clone(),
                },
            );
        }
        let d = self.net_delay();
        self.schedule(
            d,
            Event::Deliver {
                node: to,
                group,
                msg,
            },
        );
    }

    fn crash(&mut self, node: usize) {
        if !self.nodes[node].up || self.faults_over {
            return;
        }
        self.stats.crashes += 1;
        let n = &mut self.nodes[node];
        n.up = false;
        n.epoch += 1;
        for c in &mut n.cores {
            match c.disk.crash(&mut self.rng) {
                CrashLoss::Torn => self.stats.torn_writes += 1,
                CrashLoss::Lost => self.stats.lost_writes += 1,
                _ => {}
            }
            c.shard = None;
            c.writing = false;
            c.inbox.clear();
        }
    }

    // ---- clients ----

    fn start_op(&mut self, op: usize, delay: u64) {
        self.work.ops[op].started_us = self.now + delay;
        let expected = match &self.work.ops[op].kind {
            OpKind::Append { .. }
                if self.work.ops[op].attempts == 0
                    && self.rng.chance(self.cfg.use_expected_seq) =>
            {
                let s = self
                    .work
                    .sessions
                    .iter()
                    .position(|x| *x == self.work.ops[op].session)
                    .unwrap_or(0);
                Some(self.work.known_last[s])
            }
            _ => None,
        };
        let attempt = self.work.new_attempt(op, expected);
        let node = self.route_target(op);
        self.schedule(delay, Event::Send { attempt, node });
        let attempts = self.work.ops[op].attempts;
        self.schedule(
            delay + self.cfg.client_timeout_us,
            Event::Timeout { op, attempts },
        );
    }

    fn retry(&mut self, op: usize, delay: u64) {
        self.start_op(op, delay);
    }

    /// Where the op's next attempt goes: the production routing decision
    /// (`starcite_shards::routing::Route`), seeded with the client's hint.
    fn route_target(&mut self, op: usize) -> usize {
        let group = self.work.ops[op].group;
        if self.work.ops[op].route.is_none() {
            let mut replicas = self.replicas_of(group);
            let shift = self.rng.range(0, replicas.len() as u64 - 1) as usize;
            replicas.rotate_left(shift);
            let hint = self.leader_hint.get(&group).copied();
            self.work.ops[op].route = starcite_shards::routing::Route::new(replicas, hint);
        }
        self.work.ops[op].route.as_ref().map_or(0, |r| *r.target())
    }

    /// Applies a redirect to the op's route and returns the delay before retrying.
    fn redirect(&mut self, op: usize, leader: Option<usize>) -> u64 {
        let step = self.work.ops[op].route.as_mut().map(|r| r.redirect(leader));
        match step {
            Some(starcite_shards::routing::Step::Now) => self.rng.range(0, 1_000),
            _ => self.rng.range(10_000, 100_000),
        }
    }

    fn send(&mut self, attempt: u64, node: usize) {
        let Some(a) = self.work.attempts.get(&attempt).copied() else {
            return;
        };
        let lost = !self.faults_over && self.rng.chance(self.cfg.drop);
        if lost || !self.nodes[node].up || self.work.ops[a.op].done {
            self.stats.dropped += u64::from(lost);
            return; // lost: the client's timeout retries
        }
        let group = self.work.ops[a.op].group;
        let core = core_of(group, self.cfg.cores) as usize;
        let owns = self.nodes[node].cores[core]
            .shard
            .as_ref()
            .is_some_and(|s| s.group_ids().contains(&group));
        if !owns {
            // Not a replica: answer "not leader" with no hint.
            let d = self.net_delay();
            self.schedule(
                d,
                Event::Reply {
                    attempt,
                    result: Err(EngineError::NotLeader { leader: None }),
                },
            );
            return;
        }
        let proposal = self.work.ops[a.op].proposal(a.expected_seq);
        self.input(node, core, Input::Propose(attempt, proposal));
    }

    fn reply(&mut self, attempt: u64, result: Result<Outcome, EngineError>) {
        let Some(a) = self.work.attempts.get(&attempt).copied() else {
            return;
        };
        let op = a.op;
        let session = self.work.ops[op].session.clone();
        let sidx = self
            .work
            .sessions
            .iter()
            .position(|x| *x == session)
            .unwrap_or(0);
        match (&self.work.ops[op].kind.clone(), result) {
            (OpKind::Create, Ok(_)) | (OpKind::Create, Err(EngineError::SessionExists)) => {
                if !self.work.ops[op].done {
                    self.work.ops[op].done = true;
                    let producers: Vec<usize> = (0..self.work.producers.len())
                        .filter(|p| self.work.producers[*p].session == sidx)
                        .collect();
                    for p in producers {
                        self.next_append(p);
                    }
                }
            }
            (
                OpKind::Append {
                    producer,
                    producer_id,
                    pseq,
                    ..
                },
                Ok(Outcome::Appended {
                    seq,
                    last_seq,
                    deduped,
                }),
            ) => {
                self.checker
                    .record_ack(&session, seq, producer_id, *pseq, deduped);
                if let (Some(e), false) = (a.expected_seq, deduped) {
                    if seq != e + 1 {
                        self.checker.violations.push(format!(
                            "{session}: append with expected_seq {e} landed at {seq}"
                        ));
                    }
                }
                self.work.known_last[sidx] = self.work.known_last[sidx].max(last_seq);
                if deduped {
                    self.stats.dedupes += 1;
                }
                if !self.work.ops[op].done {
                    self.work.ops[op].done = true;
                    let p = *producer;
                    self.work.producers[p].inflight -= 1;
                    self.next_append(p);
                }
            }
            (_, Err(EngineError::NotLeader { leader })) => {
                self.stats.not_leader += 1;
                let leader = leader.map(|l| membership::slot_of(l) as usize - 1);
                if let Some(l) = leader {
                    self.leader_hint.insert(self.work.ops[op].group, l);
                }
                if !self.work.ops[op].done
                    && self.work.ops[op].attempts == self.attempt_index(attempt)
                {
                    let d = self.redirect(op, leader);
                    self.retry(op, d);
                }
            }
            (_, Err(EngineError::Unavailable)) => {
                if !self.work.ops[op].done
                    && self.work.ops[op].attempts == self.attempt_index(attempt)
                {
                    let d = self.rng.range(10_000, 200_000);
                    self.retry(op, d);
                }
            }
            (
                OpKind::Append { pseq, .. },
                Err(EngineError::ProducerSeqConflict { expected, got, .. }),
            ) if got > expected && got == *pseq => {
                // Pipelined: an earlier append of this producer has not landed
                // yet (lost, or overtaken). Retry once it may have.
                if !self.work.ops[op].done
                    && self.work.ops[op].attempts == self.attempt_index(attempt)
                {
                    let d = self.rng.range(5_000, 100_000);
                    self.retry(op, d);
                }
            }
            (OpKind::Append { .. }, Err(EngineError::ExpectedSeqConflict { .. })) => {
                // Legitimate: the client's view was stale. Resend without it.
                self.stats.expected_conflicts += 1;
                if !self.work.ops[op].done
                    && self.work.ops[op].attempts == self.attempt_index(attempt)
                {
                    self.retry(op, 0);
                }
            }
            (kind, Err(e)) => {
                self.checker
                    .violations
                    .push(format!("{session}: unexpected error {e:?} for {kind:?}"));
            }
            (kind, Ok(o)) => {
                self.checker
                    .violations
                    .push(format!("{session}: unexpected outcome {o:?} for {kind:?}"));
            }
        }
    }

    /// Which attempt number (1-based) of its op an attempt id was.
    fn attempt_index(&self, attempt: u64) -> u32 {
        let op = self.work.attempts[&attempt].op;
        self.work
            .attempts
            .range(..=attempt)
            .filter(|(_, a)| a.op == op)
            .count() as u32
    }

    /// Starts appends until the producer has `depth` in flight.
    fn next_append(&mut self, producer: usize) {
        loop {
            let p = &self.work.producers[producer];
            if p.remaining == 0 || p.inflight >= p.depth {
                return;
            }
            let session = self.work.sessions[p.session].clone();
            let group = group_of(&session, self.cfg.groups);
            let op = self.work.append_op(producer, group);
            let p = &mut self.work.producers[producer];
            p.next_pseq += 1;
            p.remaining -= 1;
            p.inflight += 1;
            self.work.ops.push(op);
            let idx = self.work.ops.len() - 1;
            let think = self.rng.range(0, 20_000);
            self.start_op(idx, think);
        }
    }

    // ---- tails ----

    fn tail_poll(&mut self, t: usize) {
        let session = self.work.sessions[self.work.tails[t].session].clone();
        let group = group_of(&session, self.cfg.groups);
        let core = core_of(group, self.cfg.cores) as usize;
        let node = self.rng.range(0, self.cfg.nodes as u64 - 1) as usize;
        let cursor = self.work.tails[t].cursor;
        let read = self.nodes[node].cores[core]
            .shard
            .as_ref()
            .filter(|_| self.nodes[node].up)
            .map(|s| s.read(&session, cursor, 1000));
        if let Some(Ok(r)) = read {
            for (seq, frame) in r.events {
                if seq != self.work.tails[t].cursor + 1 {
                    self.checker.violations.push(format!(
                        "tail {t}: {session} read gave seq {seq} after cursor {}",
                        self.work.tails[t].cursor
                    ));
                    return;
                }
                self.work.tails[t].cursor = seq;
                self.work.tails[t].seen.push((seq, frame));
            }
        }
        let d = self.rng.range(50_000, 500_000);
        self.schedule(d, Event::TailPoll { tail: t });
    }

    fn tails_caught_up(&self) -> bool {
        self.work
            .tails
            .iter()
            .all(|t| t.cursor >= self.work.known_last[t.session])
    }

    // ---- end of run ----

    fn final_checks(&mut self) {
        if self.work.pending() > 0 {
            let stuck = self.work.ops.iter().filter(|o| !o.done).count();
            self.checker.violations.push(format!(
                "liveness: {stuck} operations still pending {} µs after faults healed",
                self.now.saturating_sub(self.cfg.fault_window_us)
            ));
            return;
        }
        self.settle();
        for s in 0..self.work.sessions.len() {
            self.check_session(s);
        }
        for g in 0..self.cfg.groups {
            self.check_group_logs(g);
        }
        if !self.membership_settled(None) {
            let views: Vec<String> = (0..self.cfg.groups)
                .flat_map(|g| {
                    let core = core_of(g, self.cfg.cores) as usize;
                    self.replicas_of(g).into_iter().map(move |n| (g, n, core))
                })
                .map(|(g, n, core)| {
                    let cs = self.nodes[n].cores[core]
                        .shard
                        .as_ref()
                        .and_then(|s| s.conf_state(g));
                    let shard = self.nodes[n].cores[core].shard.as_ref();
                    let progress = shard.map(|s| s.progress_view(g)).unwrap_or_default();
                    let log = shard
                        .and_then(|s| s.log_view(g))
                        .map(|(c, e)| (c, e.first().map(|x| x.1), e.last().map(|x| x.1)));
                    format!("group {g} n{n}: {cs:?} progress {progress:?} log {log:?}")
                })
                .collect();
            self.checker.violations.push(format!(
                "liveness: membership did not converge to the current incarnations: {}",
                views.join("; ")
            ));
        }
    }

    /// Every group's replicas (but `except`, which is down) are up and have
    /// applied the membership "current incarnations of the placement, all
    /// voters": no replacement is in progress.
    fn membership_settled(&self, except: Option<usize>) -> bool {
        (0..self.cfg.groups).all(|g| {
            let core = core_of(g, self.cfg.cores) as usize;
            let reps = self.replicas_of(g);
            let mut want: Vec<u64> = reps
                .iter()
                .map(|n| membership::raft_id(*n as u64 + 1, self.nodes[*n].incarnation))
                .collect();
            want.sort_unstable();
            reps.iter().filter(|n| Some(**n) != except).all(|n| {
                let Some(cs) = self.nodes[*n].cores[core]
                    .shard
                    .as_ref()
                    .filter(|_| self.nodes[*n].up)
                    .and_then(|s| s.conf_state(g))
                else {
                    return false;
                };
                let mut voters = cs.voters.clone();
                voters.sort_unstable();
                voters == want && cs.learners.is_empty() && cs.voters_outgoing.is_empty()
            })
        })
    }

    /// Lets followers catch up: run ticks and messages for a while, no clients.
    fn settle(&mut self) {
        let until = self.now + 5_000_000;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > until {
                break;
            }
            self.now = at;
            if matches!(
                event,
                Event::Timeout { .. } | Event::Send { .. } | Event::TailPoll { .. }
            ) {
                continue;
            }
            self.handle(event);
        }
    }

    fn replicas_of(&self, group: u32) -> Vec<usize> {
        replicas(group, &self.names, self.cfg.rf)
            .iter()
            .map(|n| self.raft_id(n) as usize - 1)
            .collect()
    }

    fn check_session(&mut self, s: usize) {
        let session = self.work.sessions[s].clone();
        let group = group_of(&session, self.cfg.groups);
        let core = core_of(group, self.cfg.cores) as usize;
        let mut histories = Vec::new();
        for node in self.replicas_of(group) {
            let Some(shard) = self.nodes[node].cores[core].shard.as_ref() else {
                continue;
            };
            let mut events = Vec::new();
            loop {
                let after = events.last().map_or(0, |(s, _): &(u64, bytes::Bytes)| *s);
                match shard.read(&session, after, 1000) {
                    Ok(r) if !r.events.is_empty() => events.extend(r.events),
                    _ => break,
                }
            }
            if std::env::var("SIM_DEBUG").is_ok() {
                let v = shard
                    .log_view(group)
                    .map(|(c, e)| (c, e.first().map(|x| x.1), e.last().map(|x| x.1)));
                eprintln!("debug n{node} {session} group {group}: events {} log (commit, first, last) {v:?} leader {:?} progress {:?}", events.len(), shard.leader_of(group), shard.progress_view(group));
            }
            self.checker
                .check_history(&format!("n{node}"), &session, &events);
            histories.push((node, events));
        }
        if let Some((first_node, first)) = histories.first() {
            for (node, h) in &histories[1..] {
                if h != first {
                    self.checker.violations.push(format!(
                        "{session}: replicas n{first_node} ({} events) and n{node} ({} events) differ after settling",
                        first.len(),
                        h.len()
                    ));
                }
            }
            for (t, tail) in self.work.tails.iter().enumerate() {
                if tail.session == s && !first.starts_with(&tail.seen) {
                    self.checker.violations.push(format!(
                        "tail {t}: delivered events are not the committed order"
                    ));
                }
            }
        }
    }

    /// No two replicas hold different entries at the same committed index.
    fn check_group_logs(&mut self, group: u32) {
        let core = core_of(group, self.cfg.cores) as usize;
        let mut views = Vec::new();
        for node in self.replicas_of(group) {
            if let Some(v) = self.nodes[node].cores[core]
                .shard
                .as_ref()
                .and_then(|s| s.log_view(group))
            {
                views.push((node, v));
            }
        }
        let mut committed: BTreeMap<u64, (u64, bytes::Bytes, usize)> = BTreeMap::new();
        for (node, (commit, entries)) in &views {
            for (term, index, data) in entries.iter().filter(|e| e.1 <= *commit) {
                match committed.get(index) {
                    Some((t, d, other)) if (t, d) != (term, data) => {
                        self.checker.violations.push(format!(
                            "group {group}: committed index {index} differs between n{other} (term {t}) and n{node} (term {term})"
                        ));
                        return;
                    }
                    Some(_) => {}
                    None => {
                        committed.insert(*index, (*term, data.clone(), *node));
                    }
                }
            }
        }
    }
}
