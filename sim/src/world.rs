//! The simulated world: virtual clock, nodes, network, disks, clients.
//!
//! Every core of every node runs the production engine loop
//! (`starcite::node::engine_loop::EngineLoop`) over the production segment log,
//! on a simulated disk (`disk.rs`), a simulated peer network (`net.rs`) and a
//! virtual clock, polled by a deterministic executor (`exec.rs`). Raft batches
//! arrive through the production `PeerInbound`; clients route with the
//! production `Route`. The world only plays what is outside a node: the wire
//! between nodes (delay, loss, duplication, partitions), power (crashes,
//! restarts, replaced drives), the operator (who approves a replacement with
//! `starcite ops replace-node`), gossip between control planes and the
//! clients. One `u64` seed decides everything; the run is reproducible.
//!
//! A replaced drive is a Raft membership change: the node restarts with an
//! empty disk as a new incarnation (`starcite_shards::membership`), the
//! operator approves it, gossip spreads the approval and every group's leader
//! swaps the old incarnation for the new one.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use raft::eraftpb::ConfState;
use starcite::node::control::ControlState;
use starcite::node::engine_loop::{Cluster, EngineLoop};
use starcite::node::messages::{CoreRequest, CORE_INBOX_DEPTH};
use starcite::node::peer_inbound::PeerInbound;
use starcite::node::peer_rpc::{self, ControlMessage};
use starcite::node::segment_log::SegmentLog;
use starcite::node::topology::Topology;
use starcite::service::lifecycle::LifecycleHub;
use starcite_shards::membership;
use starcite_shards::placement::{core_of, group_of, replicas};
use starcite_shards::shard::{ReadResult, Shard, ShardConfig};
use starcite_shards::state::machine::Outcome;
use starcite_shards::EngineError;

use crate::checker::Checker;
use crate::config::SimConfig;
use crate::disk::{CrashLoss, DiskEnv, SimDisk};
use crate::exec::{Executor, SimClock};
use crate::net::{NetShared, SimNet};
use crate::rng::Rng;
use crate::workload::{OpKind, Producer, Tail, Workload};

/// Polls without virtual time moving before the engine counts as spinning.
const MAX_POLLS_PER_STEP: u64 = 1_000_000;
/// Every node gossips its control-plane view this often (production: 1 s).
const GOSSIP_INTERVAL_US: u64 = 1_000_000;
/// At most this many disk replacements per run, one at a time.
const MAX_DISK_WIPES: u64 = 3;

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
    /// Injected EIO/ENOSPC on append, sync or segment creation.
    pub disk_errors: u64,
    /// Cores that stopped their node (a log error ends the process).
    pub core_stops: u64,
    pub disk_wipes: u64,
    pub checkpoints: u64,
    /// Leadership transfers toward a group's writer (nodes' current runs).
    pub follow_moves: u64,
    pub client_timeouts: u64,
    pub not_leader: u64,
    pub acked: u64,
    pub dedupes: u64,
    pub expected_conflicts: u64,
    pub virtual_us: u64,
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        batch: Vec<(u32, Vec<u8>)>,
    },
    /// A control message (gossip) from `from` while it ran as `epoch`.
    Control {
        from: usize,
        epoch: u64,
        to: usize,
        body: Vec<u8>,
    },
    /// Every up node gossips; the world also samples every replica's
    /// membership (for the one-replacement-at-a-time rule).
    GossipRound,
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

type LogView = Option<(u64, Vec<(u64, u64, bytes::Bytes)>)>;
type MembershipRx = flume::Receiver<Vec<(u32, ConfState)>>;

struct Node {
    up: bool,
    epoch: u64,
    /// The inboxes of its cores (replaced at every start).
    senders: Arc<Vec<flume::Sender<CoreRequest>>>,
    inbound: Option<PeerInbound>,
    tasks: Vec<usize>,
    disks: Vec<SimDisk>,
    /// Its control plane (replaced at every start).
    control: Option<Arc<ControlState>>,
    /// Raft incarnation: 0 for the original disk, one more after each
    /// replacement (production takes the time; only the order matters).
    incarnation: u64,
    /// Applied membership of each local group, sampled since the last start.
    conf: BTreeMap<u32, ConfState>,
}

/// A core's engine ended: (node, epoch, why). In production the process exits.
type Stops = Rc<RefCell<Vec<(usize, u64, String)>>>;

pub struct World {
    cfg: SimConfig,
    rng: Rng,
    clock: SimClock,
    exec: Executor,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: Vec<Node>,
    names: Vec<String>,
    net: Rc<NetShared>,
    disk_env: Rc<DiskEnv>,
    stops: Stops,
    /// Nodes on side A of a partition; messages across sides are dropped.
    partition: Option<Vec<bool>>,
    leader_hint: BTreeMap<u32, usize>,
    /// Appends in flight inside nodes: (attempt, reply channel).
    replies: Vec<(u64, flume::Receiver<Result<Outcome, EngineError>>)>,
    /// Tail reads in flight: (tail, reply channel).
    reads: Vec<(usize, flume::Receiver<Result<ReadResult, EngineError>>)>,
    /// Membership samples in flight: (node, epoch, reply channel).
    probes: Vec<(usize, u64, MembershipRx)>,
    /// Holds every node's data dir (control-plane files such as the
    /// approved replacements); one subdirectory per node and incarnation.
    data_root: tempfile::TempDir,
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
        let mut rng = Rng::new(cfg.seed);
        let names: Vec<String> = (0..cfg.nodes).map(|i| format!("n{i}")).collect();
        let clock = SimClock::new();
        let net = Rc::new(NetShared {
            names: names.clone(),
            outbox: RefCell::default(),
            up: RefCell::new(vec![vec![false; cfg.nodes]; cfg.nodes]),
        });
        let disk_env = Rc::new(DiskEnv {
            clock: clock.clone(),
            rng: RefCell::new(Rng::new(rng.next_u64())),
            fsync_us: cfg.fsync_us,
            fsync_spike: cfg.fsync_spike,
            error: cfg.disk_error,
            faults_on: Cell::new(true),
            errors: Cell::new(0),
            spikes: Cell::new(0),
            removed: Cell::new(0),
        });
        let mut w = World {
            rng,
            clock,
            exec: Executor::default(),
            seq: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            names,
            net,
            disk_env,
            stops: Rc::default(),
            partition: None,
            leader_hint: BTreeMap::new(),
            replies: Vec::new(),
            reads: Vec::new(),
            probes: Vec::new(),
            data_root: tempfile::tempdir().expect("a temporary directory for the simulated nodes"),
            work: Workload::default(),
            checker: Checker::default(),
            stats: Stats::default(),
            faults_over: false,
            cfg,
        };
        for _ in 0..w.cfg.nodes {
            let disks = (0..w.cfg.cores)
                .map(|_| SimDisk::new(w.disk_env.clone()))
                .collect();
            w.nodes.push(Node {
                up: false,
                epoch: 0,
                senders: Arc::new(Vec::new()),
                inbound: None,
                tasks: Vec::new(),
                disks,
                control: None,
                incarnation: 0,
                conf: BTreeMap::new(),
            });
        }
        for node in 0..w.cfg.nodes {
            w.start_node(node);
        }
        w.plan_workload();
        w.plan_faults();
        let first = w.rng.range(0, GOSSIP_INTERVAL_US);
        w.schedule(first, Event::GossipRound);
        w
    }

    fn now(&self) -> u64 {
        self.clock.now_us()
    }

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now() + delay_us, self.seq), event);
    }

    fn shard_config(&mut self, node: usize, core: u32, raft_id: u64) -> ShardConfig {
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
            raft_id,
            groups,
            dedupe_window: 128,
            producer_cap: 10_000,
            hot_bytes_limit: 1 << 40,
            incarnation: self.rng.next_u64(),
            checkpoint_bytes: self.cfg.checkpoint_bytes,
            segment_bytes: (self.cfg.checkpoint_bytes / 4).clamp(2048, 1 << 20),
        }
    }

    /// The Raft id of a node's original incarnation (the initial membership).
    fn raft_id(&self, name: &str) -> u64 {
        self.names
            .iter()
            .position(|n| n == name)
            .map_or(0, |i| membership::raft_id(i as u64 + 1, 0))
    }

    /// The Raft id a node runs now.
    fn current_raft_id(&self, node: usize) -> u64 {
        membership::raft_id(node as u64 + 1, self.nodes[node].incarnation)
    }

    /// A node's data dir for its current incarnation (a replaced drive
    /// starts with an empty one).
    fn data_dir(&self, node: usize) -> std::path::PathBuf {
        let inc = self.nodes[node].incarnation;
        let dir = self.data_root.path().join(format!("n{node}.{inc}"));
        // A failure shows as a logged persistence error, like a broken disk.
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// Which links are usable: both ends up, same side of any partition.
    fn refresh_links(&mut self) {
        let n = self.cfg.nodes;
        let mut up = self.net.up.borrow_mut();
        for a in 0..n {
            for b in 0..n {
                let cut = self.partition.as_ref().is_some_and(|s| s[a] != s[b]);
                up[a][b] = a != b && self.nodes[a].up && self.nodes[b].up && !cut;
            }
        }
    }

    /// (Re)starts a node: every core recovers its log from its disk and runs
    /// the production engine loop.
    fn start_node(&mut self, node: usize) {
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..self.cfg.cores)
            .map(|_| flume::bounded::<CoreRequest>(CORE_INBOX_DEPTH))
            .unzip();
        let senders = Arc::new(senders);
        let topo = Arc::new(
            Topology::from_parts(
                &self.names[node],
                self.names.clone(),
                self.names.clone(),
                self.cfg.groups,
                self.cfg.cores,
                self.cfg.rf,
            )
            .with_incarnation(self.nodes[node].incarnation),
        );
        let raft_id = topo.raft_id(&self.names[node]).unwrap_or(0);
        debug_assert_eq!(raft_id, self.current_raft_id(node));
        let control = Arc::new(ControlState::new(topo.clone(), self.data_dir(node)));
        for peer in topo.peers() {
            control.peer_connection(peer, true);
        }
        let epoch = self.nodes[node].epoch + 1;
        let mut tasks = Vec::new();
        for (core, inbox) in inboxes.into_iter().enumerate() {
            let core = core as u32;
            let shard_cfg = self.shard_config(node, core, raft_id);
            let owned: Vec<u32> = shard_cfg.groups.iter().map(|(g, _)| *g).collect();
            let disk = self.nodes[node].disks[core as usize].clone();
            let dump = disk.clone();
            let clock = self.clock.clone();
            let control = control.clone();
            let cluster = Cluster {
                transport: Rc::new(SimNet {
                    me: node,
                    shared: self.net.clone(),
                }),
                topo: topo.clone(),
                // Leadership follows the writer, with a low bar so that the
                // workload's groups move toward their writers' nodes (each
                // group's commands carry one "gateway" node: `send`).
                follow_writer: Some(starcite::node::writer_affinity::FollowPolicy {
                    min_commands: 8,
                    share_pct: 90,
                    max_moves: 16,
                }),
            };
            let stops = self.stops.clone();
            let task = async move {
                let stop = |why: String| stops.borrow_mut().push((node, epoch, why));
                if std::env::var_os("SIM_DUMP_LOG").is_some_and(|v| v == "all") {
                    eprintln!("n{node} core {core} start, log:\n{}", dump.dump());
                }
                let (log, recovered) =
                    match SegmentLog::open(disk, core, |g| owned.contains(&g)).await {
                        Ok(v) => v,
                        Err(e) => {
                            if std::env::var_os("SIM_DUMP_LOG").is_some() {
                                eprintln!("n{node} core {core} log:\n{}", dump.dump());
                            }
                            return stop(format!("recovery failed: {e}"));
                        }
                    };
                let shard = match Shard::new(shard_cfg, recovered, &logger()) {
                    Ok(s) => s,
                    Err(e) => return stop(format!("start failed: {e}")),
                };
                let engine = EngineLoop::new(shard, log, clock, inbox, control, Some(cluster));
                match engine.run().await {
                    Ok(()) => stop("engine returned".to_owned()),
                    Err(e) => stop(e),
                }
            };
            tasks.push(self.exec.spawn(task));
        }
        let n = &mut self.nodes[node];
        n.inbound = Some(PeerInbound {
            cores: senders.clone(),
            control: control.clone(),
            lifecycle: Arc::new(LifecycleHub::new()),
            gateway: RefCell::new(None),
        });
        n.control = Some(control);
        n.senders = senders;
        n.tasks = tasks;
        n.up = true;
        n.epoch = epoch;
        n.conf.clear();
        self.refresh_links();
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

    /// Polls every woken engine, then collects what they produced: messages
    /// for the wire, answers for clients, cores that stopped their node.
    fn run_engines(&mut self) {
        if !self.exec.run_ready(MAX_POLLS_PER_STEP) {
            self.checker.violations.push(format!(
                "an engine loop kept running for {MAX_POLLS_PER_STEP} polls without time passing"
            ));
        }
        let outbox = std::mem::take(&mut *self.net.outbox.borrow_mut());
        for (from, to, batch) in outbox {
            self.send_batch(from, to, batch);
        }
        let mut i = 0;
        while i < self.replies.len() {
            match self.replies[i].1.try_recv() {
                Ok(result) => {
                    let (attempt, _) = self.replies.remove(i);
                    if !self.faults_over && self.rng.chance(self.cfg.drop) {
                        self.stats.dropped += 1; // the client's timeout retries
                        continue;
                    }
                    let d = self.net_delay();
                    self.schedule(d, Event::Reply { attempt, result });
                }
                Err(flume::TryRecvError::Disconnected) => {
                    self.replies.remove(i);
                }
                Err(flume::TryRecvError::Empty) => i += 1,
            }
        }
        let mut i = 0;
        while i < self.reads.len() {
            match self.reads[i].1.try_recv() {
                Ok(result) => {
                    let (tail, _) = self.reads.remove(i);
                    self.tail_read(tail, result);
                }
                Err(flume::TryRecvError::Disconnected) => {
                    self.reads.remove(i);
                }
                Err(flume::TryRecvError::Empty) => i += 1,
            }
        }
        let mut i = 0;
        while i < self.probes.len() {
            match self.probes[i].2.try_recv() {
                Ok(groups) => {
                    let (node, epoch, _) = self.probes.remove(i);
                    let n = &mut self.nodes[node];
                    if n.up && n.epoch == epoch {
                        n.conf.extend(groups);
                    }
                }
                Err(flume::TryRecvError::Disconnected) => {
                    self.probes.remove(i);
                }
                Err(flume::TryRecvError::Empty) => i += 1,
            }
        }
        let stops = std::mem::take(&mut *self.stops.borrow_mut());
        for (node, epoch, why) in stops {
            if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                continue;
            }
            // An injected I/O error during recovery is a failed boot (the
            // service manager retries); anything else there is a bug.
            let io_error = why.contains("(os error");
            if !io_error && (why.starts_with("recovery failed") || why.starts_with("start failed"))
            {
                self.checker.violations.push(format!("n{node}: {why}"));
                continue;
            }
            // A log error ends the process (production: exit 70); the
            // service manager starts it again.
            self.stats.core_stops += 1;
            self.power_off(node);
            let d = self.rng.range(100_000, 1_000_000);
            self.schedule(d, Event::Restart { node });
        }
    }

    /// The next moment something happens: a timer inside a node or an event.
    fn step(&mut self, skip_clients: bool) -> bool {
        loop {
            self.run_engines();
            if !self.checker.violations.is_empty() {
                return false;
            }
            let timer = self.clock.next_timer();
            let event = self.queue.first_key_value().map(|((at, _), _)| *at);
            match (timer, event) {
                (Some(t), e) if e.is_none_or(|e| t <= e) => {
                    self.clock.advance_to(t);
                    self.clock.fire_due();
                    return true;
                }
                (_, Some(_)) => {
                    let ((at, _), event) = self.queue.pop_first().expect("an event");
                    self.clock.advance_to(at);
                    if skip_clients
                        && matches!(
                            event,
                            Event::Timeout { .. } | Event::Send { .. } | Event::TailPoll { .. }
                        )
                    {
                        continue;
                    }
                    self.stats.events += 1;
                    if at >= self.cfg.fault_window_us && !self.faults_over {
                        self.heal_all();
                    }
                    self.handle(event);
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// Runs to the end; returns whether it finished without violations.
    pub fn run(&mut self) -> bool {
        let deadline = self.cfg.fault_window_us + self.cfg.liveness_bound_us;
        while self.step(false) {
            if self.now() > deadline {
                break;
            }
            if self.work.pending() == 0 && self.faults_over && self.tails_caught_up() {
                break;
            }
        }
        self.stats.virtual_us = self.now();
        self.stats.acked = self.checker.acked() as u64;
        self.stats.fsync_spikes = self.disk_env.spikes.get();
        self.stats.disk_errors = self.disk_env.errors.get();
        self.stats.checkpoints = self.disk_env.removed.get();
        if self.checker.violations.is_empty() {
            self.final_checks();
        }
        // Leadership transfers toward a group's writer, by the nodes' current
        // runs (a lower bound: a crash forgets its run's count).
        for node in 0..self.cfg.nodes {
            for core in 0..self.cfg.cores as usize {
                let stats = self.ask(node, core, |reply| CoreRequest::Stats { reply });
                self.stats.follow_moves += stats.map_or(0, |s| s.follow_moves);
            }
        }
        self.checker.violations.is_empty()
    }

    fn heal_all(&mut self) {
        self.faults_over = true;
        self.disk_env.faults_on.set(false);
        self.partition = None;
        for node in 0..self.nodes.len() {
            if !self.nodes[node].up {
                self.start_node(node);
                self.stats.restarts += 1;
            }
        }
        self.refresh_links();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, batch } => {
                if self.nodes[to].up {
                    if let Some(inbound) = &self.nodes[to].inbound {
                        use starcite::cluster::transport::Inbound;
                        inbound.on_raft(&self.names[from], batch);
                    }
                }
            }
            Event::Control {
                from,
                epoch,
                to,
                body,
            } => {
                // A connection dies with its process: nothing a stopped
                // incarnation sent arrives later.
                let sender_alive = self.nodes[from].up && self.nodes[from].epoch == epoch;
                if sender_alive && self.nodes[to].up {
                    if let Some(inbound) = &self.nodes[to].inbound {
                        use starcite::cluster::transport::Inbound;
                        inbound.on_control(&self.names[from], body);
                    }
                }
            }
            Event::GossipRound => self.gossip_round(),
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
            Event::Crash { node } => {
                if self.nodes[node].up && !self.faults_over {
                    self.stats.crashes += 1;
                    self.power_off(node);
                }
            }
            Event::Restart { node } => {
                if !self.nodes[node].up && !self.faults_over {
                    // One replacement at a time: two replicas losing their
                    // disks before the first is replaced is two lost copies,
                    // beyond RF 3. A later wipe (of any node, the replaced one
                    // included) waits until the previous replacement is done.
                    let wipe = self.stats.disk_wipes < MAX_DISK_WIPES
                        && self.rng.chance(self.cfg.disk_wipe)
                        && self.membership_settled(Some(node));
                    if wipe {
                        self.stats.disk_wipes += 1;
                        for d in &self.nodes[node].disks {
                            d.wipe();
                        }
                        // An empty data dir with `STARCITE_REJOIN`: a new
                        // incarnation, a new member of its groups.
                        self.nodes[node].incarnation += 1;
                    }
                    self.start_node(node);
                    self.stats.restarts += 1;
                    if wipe {
                        self.replace_node(node);
                    }
                }
            }
            Event::Partition => {
                if !self.faults_over {
                    let sides: Vec<bool> =
                        (0..self.cfg.nodes).map(|_| self.rng.chance(0.5)).collect();
                    self.partition = Some(sides);
                    self.stats.partitions += 1;
                    self.refresh_links();
                }
            }
            Event::Heal => {
                self.partition = None;
                self.refresh_links();
            }
            Event::TailPoll { tail } => self.tail_poll(tail),
        }
    }

    fn net_delay(&mut self) -> u64 {
        self.rng.range(self.cfg.delay_us.0, self.cfg.delay_us.1)
    }

    /// One transport batch on the wire.
    fn send_batch(&mut self, from: usize, to: usize, batch: Vec<(u32, Vec<u8>)>) {
        self.stats.messages += 1;
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
            let batch = batch.clone();
            self.schedule(d, Event::Deliver { from, to, batch });
        }
        let d = self.net_delay();
        self.schedule(d, Event::Deliver { from, to, batch });
    }

    /// The process is gone: its tasks stop where they stand, its disks keep
    /// only what was synced (or a torn part of what was not).
    fn power_off(&mut self, node: usize) {
        let tasks = std::mem::take(&mut self.nodes[node].tasks);
        for t in tasks {
            self.exec.cancel(t);
        }
        let n = &mut self.nodes[node];
        n.up = false;
        n.epoch += 1;
        n.inbound = None;
        n.control = None;
        n.conf.clear();
        n.senders = Arc::new(Vec::new());
        let disks = n.disks.clone();
        for d in disks {
            for loss in d.crash(&mut self.rng) {
                match loss {
                    CrashLoss::Torn => self.stats.torn_writes += 1,
                    CrashLoss::Lost => self.stats.lost_writes += 1,
                    CrashLoss::Kept => {}
                }
            }
        }
        self.refresh_links();
    }

    // ---- clients ----

    fn start_op(&mut self, op: usize, delay: u64) {
        self.work.ops[op].started_us = self.now() + delay;
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
        let proposal = self.work.ops[a.op].proposal(a.expected_seq);
        let (reply, rx) = flume::bounded(1);
        let sent = self.nodes[node].senders[core].try_send(CoreRequest::Propose {
            proposal,
            reply,
            since: std::time::Instant::now(),
            // Every group's client writes through one node (slot = index + 1).
            origin: Some(u64::from(group) % self.cfg.nodes as u64 + 1),
        });
        if sent.is_ok() {
            self.replies.push((attempt, rx));
        }
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
        let after = self.work.tails[t].cursor;
        if self.nodes[node].up {
            let (reply, rx) = flume::bounded(1);
            let req = CoreRequest::Read {
                session,
                after,
                limit: 1000,
                reply,
            };
            if self.nodes[node].senders[core].try_send(req).is_ok() {
                self.reads.push((t, rx));
            }
        }
        let d = self.rng.range(50_000, 500_000);
        self.schedule(d, Event::TailPoll { tail: t });
    }

    fn tail_read(&mut self, t: usize, read: Result<ReadResult, EngineError>) {
        let Ok(r) = read else { return };
        let session = self.work.sessions[self.work.tails[t].session].clone();
        for (seq, frame) in r.events {
            if seq <= self.work.tails[t].cursor {
                continue; // an older read answered late
            }
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
                self.now().saturating_sub(self.cfg.fault_window_us)
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
        if !self.checker.violations.is_empty() {
            return;
        }
        self.sample_membership();
        if !self.membership_settled(None) {
            let views: Vec<String> = (0..self.cfg.groups)
                .flat_map(|g| self.replicas_of(g).into_iter().map(move |n| (g, n)))
                .map(|(g, n)| {
                    let cs = self.nodes[n].conf.get(&g);
                    format!(
                        "group {g} n{n} (raft id {}): {cs:?}",
                        self.current_raft_id(n)
                    )
                })
                .collect();
            self.checker.violations.push(format!(
                "liveness: membership did not converge to the current incarnations: {}",
                views.join("; ")
            ));
        }
    }

    /// The operator approves the replacement of `node` by the incarnation it
    /// runs now (`starcite ops replace-node`, here on the node itself; gossip
    /// spreads the approval, every node persists it).
    fn replace_node(&mut self, node: usize) {
        let Some(control) = self.nodes[node].control.clone() else {
            return;
        };
        if let Err(e) = control.replace_node(&self.names[node]) {
            self.checker
                .violations
                .push(format!("n{node}: replace-node refused: {e}"));
        }
    }

    /// Every up node gossips to the peers it is connected to (the production
    /// gossip through the production `PeerInbound`); the world also samples
    /// every replica's membership.
    fn gossip_round(&mut self) {
        for from in 0..self.cfg.nodes {
            let Some(control) = self.nodes[from].control.clone() else {
                continue;
            };
            let body = peer_rpc::encode(&ControlMessage::Gossip(control.gossip()));
            let epoch = self.nodes[from].epoch;
            for to in 0..self.cfg.nodes {
                if !self.net.up.borrow()[from][to] {
                    continue;
                }
                if !self.faults_over && self.rng.chance(self.cfg.drop) {
                    self.stats.dropped += 1;
                    continue;
                }
                let d = self.net_delay();
                let body = body.clone();
                self.schedule(
                    d,
                    Event::Control {
                        from,
                        epoch,
                        to,
                        body,
                    },
                );
            }
        }
        if self.cfg.disk_wipe > 0.0 && !self.faults_over {
            for node in 0..self.cfg.nodes {
                for core in 0..self.cfg.cores as usize {
                    if !self.nodes[node].up {
                        continue;
                    }
                    let (reply, rx) = flume::bounded(1);
                    let req = CoreRequest::Membership { reply };
                    if self.nodes[node].senders[core].try_send(req).is_ok() {
                        self.probes.push((node, self.nodes[node].epoch, rx));
                    }
                }
            }
        }
        self.schedule(GOSSIP_INTERVAL_US, Event::GossipRound);
    }

    /// Asks every up replica for its groups' membership now.
    fn sample_membership(&mut self) {
        for node in 0..self.cfg.nodes {
            self.nodes[node].conf.clear();
            for core in 0..self.cfg.cores as usize {
                let groups = self.ask(node, core, |reply| CoreRequest::Membership { reply });
                self.nodes[node].conf.extend(groups.unwrap_or_default());
            }
        }
    }

    /// Every group's replicas (but `except`, which is down) are up and have
    /// applied the membership "current incarnations of the placement, all
    /// voters": no replacement is in progress. Judged on the latest samples
    /// (a node's are dropped when it stops, so a sample is never of an older
    /// run of the node); a sample can only lag behind, never show a
    /// replacement done before it is.
    fn membership_settled(&self, except: Option<usize>) -> bool {
        (0..self.cfg.groups).all(|g| {
            let reps = self.replicas_of(g);
            let mut want: Vec<u64> = reps.iter().map(|n| self.current_raft_id(*n)).collect();
            want.sort_unstable();
            reps.iter().filter(|n| Some(**n) != except).all(|n| {
                let node = &self.nodes[*n];
                let Some(cs) = node.conf.get(&g).filter(|_| node.up) else {
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
        let until = self.now() + 5_000_000;
        while self.now() < until && self.step(true) {}
    }

    /// Asks a node's core and runs the world (no clients) until it answers.
    fn ask<T>(
        &mut self,
        node: usize,
        core: usize,
        req: impl FnOnce(flume::Sender<T>) -> CoreRequest,
    ) -> Option<T> {
        if !self.nodes[node].up {
            return None;
        }
        let (tx, rx) = flume::bounded(1);
        self.nodes[node].senders[core].try_send(req(tx)).ok()?;
        let until = self.now() + 5_000_000;
        loop {
            self.run_engines();
            if let Ok(v) = rx.try_recv() {
                return Some(v);
            }
            if self.now() > until || !self.step(true) {
                return None;
            }
        }
    }

    fn replicas_of(&self, group: u32) -> Vec<usize> {
        replicas(group, &self.names, self.cfg.rf)
            .iter()
            .filter_map(|n| self.names.iter().position(|x| x == n))
            .collect()
    }

    fn check_session(&mut self, s: usize) {
        let session = self.work.sessions[s].clone();
        let group = group_of(&session, self.cfg.groups);
        let core = core_of(group, self.cfg.cores) as usize;
        let mut histories = Vec::new();
        for node in self.replicas_of(group) {
            let mut events: Vec<(u64, bytes::Bytes)> = Vec::new();
            loop {
                let after = events.last().map_or(0, |(s, _)| *s);
                let session = session.clone();
                let read = self.ask(node, core, |reply| CoreRequest::Read {
                    session,
                    after,
                    limit: 1000,
                    reply,
                });
                match read {
                    Some(Ok(r)) if !r.events.is_empty() => events.extend(r.events),
                    _ => break,
                }
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
            let view: Option<LogView> =
                self.ask(node, core, |reply| CoreRequest::LogView { group, reply });
            if let Some(Some(v)) = view {
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
