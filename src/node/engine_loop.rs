//! The engine task of one core: the only code that touches its `Shard`.
//!
//! Each turn drains the inbox (proposals, reads, subscriptions), then writes
//! every group's ready work as ONE batch with ONE `fdatasync` (group commit).
//! While a batch is on its way to the disk the loop keeps serving the inbox:
//! proposals are replicated at once (a leader's messages need not wait for its
//! own write), peers' acknowledgements are stepped, what became committed is
//! answered, and the next batch forms (pipelined group commit, raft's
//! asynchronous `Ready`; see docs/storage.md).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starcite_shards::limits::TICK_MS;
use starcite_shards::membership;
use starcite_shards::shard::{Outputs, Shard};
use starcite_shards::state::machine::Notification;

use super::control::ControlState;
use super::engine_io::{first_of, Clock, Either, PeerNet};
use super::messages::{CommandResult, CoreRequest, CoreStats, LiveEvent, Reply, Subscriber};
use super::segment_log::{LogDisk, SegmentLog};
use super::topology::Topology;
use super::writer_affinity::{Affinity, FollowPolicy, WriterTally};

/// Ticks between leadership balancing rounds (and drain transfers).
const BALANCE_EVERY_TICKS: u64 = 20;
/// Consecutive ticks behind before a synced core reports not-ready: 3 s, the
/// contract's readiness-probe freshness. A re-election (peers restarting, a
/// leadership transfer) leaves a group without a known leader for a second or
/// two; a node that was caught up must not flap to not-ready for that.
const SYNC_FAILURE_TICKS: u32 = 30;

/// Who waits for a command, and since when (commit latency).
type Waiter = (Reply<CommandResult>, Instant);

/// One core's engine over a log disk `D`, a peer network `N` and a clock `C`
/// (production: `UringDisk`, `Transport`, `RealClock`; the simulator has its own).
pub struct EngineLoop<D: LogDisk, N: PeerNet, C: Clock> {
    shard: Shard<Waiter>,
    /// `None` only while a write owns it.
    log: Option<SegmentLog<D>>,
    clock: C,
    inbox: flume::Receiver<CoreRequest>,
    subscribers: HashMap<String, Vec<Subscriber>>,
    stats: CoreStats,
    /// Log records collected for the next write, and a spare buffer.
    staged: Vec<u8>,
    spare: Vec<u8>,
    cluster: Option<Cluster<N>>,
    control: Arc<ControlState>,
    ticks: u64,
    sync_failures: u32,
    ever_synced: bool,
    /// Shutting down: leadership moves away, like a drain.
    handing_off: bool,
    /// Where this round's commands came from, per group.
    writers: WriterTally,
    /// Commands answered since the last write completed (the batch size
    /// histogram).
    answered: usize,
}

/// What a core needs to talk to its peers.
pub struct Cluster<N> {
    pub transport: Rc<N>,
    pub topo: Arc<Topology>,
    /// Leadership follows the writer (`STARCITE_LEADER_FOLLOWS_WRITER`);
    /// `None` turns it off.
    pub follow_writer: Option<FollowPolicy>,
}

impl<D: LogDisk, N: PeerNet, C: Clock> EngineLoop<D, N, C> {
    pub fn new(
        shard: Shard<Waiter>,
        log: SegmentLog<D>,
        clock: C,
        inbox: flume::Receiver<CoreRequest>,
        control: Arc<ControlState>,
        cluster: Option<Cluster<N>>,
    ) -> Self {
        let stats = CoreStats::new(shard.config().core, shard.config().groups.len());
        Self {
            shard,
            log: Some(log),
            clock,
            inbox,
            subscribers: HashMap::new(),
            stats,
            staged: Vec::new(),
            spare: Vec::new(),
            cluster,
            control,
            ticks: 0,
            sync_failures: 0,
            ever_synced: false,
            handing_off: false,
            writers: WriterTally::default(),
            answered: 0,
        }
    }

    /// Runs until a `Shutdown` request (`Ok`) or an unrecoverable log error
    /// (`Err`, the caller stops the node). The log is synced after every batch,
    /// so returning needs no extra flush.
    pub async fn run(mut self) -> Result<(), String> {
        let tick = Duration::from_millis(TICK_MS);
        let mut next_tick = self.clock.now() + tick;
        loop {
            if self.shard.conf_unsynced() && self.shard.has_work() {
                // A membership change was applied: make its commit durable
                // before answering anyone (`Shard::conf_unsynced`).
                if !self.write_batch().await? {
                    return Ok(());
                }
                continue;
            }
            while let Ok(req) = self.inbox.try_recv() {
                if !self.handle(req) {
                    return Ok(());
                }
            }
            // The tick deadline comes before the next batch: under sustained
            // load there is always a batch ready, and heartbeats, elections,
            // the snapshot watchdog, readiness reports and leader balancing
            // all run on ticks. A tick is late by at most one batch.
            if self.clock.now() >= next_tick {
                self.on_tick();
                next_tick = self.clock.now() + tick;
            }
            if self.shard.has_work() {
                if !self.write_batch().await? {
                    return Ok(());
                }
                continue;
            }
            let woke = first_of(self.inbox.recv_async(), self.clock.sleep_until(next_tick)).await;
            match woke {
                Either::A(Ok(req)) => {
                    if !self.handle(req) {
                        return Ok(());
                    }
                }
                Either::A(Err(_)) => return Err("its inbox closed".to_owned()),
                Either::B(()) => {}
            }
        }
    }

    fn on_tick(&mut self) {
        self.shard
            .approve_replacements(self.control.approved_replacements());
        self.shard.tick();
        self.ticks += 1;
        let core = self.stats.core as usize;
        let control = self.control.clone();
        let topo = self.cluster.as_ref().map(|c| c.topo.clone());
        let sync = self.shard.sync_state(|group, leader| {
            let node = topo.as_ref()?.node_of(leader)?;
            control.leader_commit(group, node)
        });
        // Hysteresis: once synced, a core reports not-ready only after staying
        // behind for several ticks (a gossiped commit index is briefly ahead
        // of a follower that is keeping up fine).
        self.sync_failures = if sync.is_ok() {
            0
        } else {
            self.sync_failures + 1
        };
        self.ever_synced |= sync.is_ok();
        let sync = if self.ever_synced && self.sync_failures < SYNC_FAILURE_TICKS {
            Ok(())
        } else {
            sync
        };
        let led = self.shard.led_commits();
        let leaders = led.len() as u32;
        self.control.core_report(core, sync, led, leaders);
        self.control
            .core_membership(core, self.shard.voter_groups());
        if self.ticks % BALANCE_EVERY_TICKS == 0 {
            self.move_leadership();
        }
    }

    /// Drain moves every leadership off this node; otherwise a group whose
    /// commands come from one other node moves there (`writer_affinity`), and
    /// leaders are balanced so no node leads far more than its share of this
    /// core's groups (groups whose writer is here stay).
    fn move_leadership(&mut self) {
        let Some(cluster) = &self.cluster else { return };
        let topo = cluster.topo.clone();
        let me = topo.me.clone();
        let drained = self.control.is_drained(&me);
        let eligible = |id: u64| {
            topo.node_of(id).is_some_and(|n| {
                n != me
                    && self.control.is_visible(n)
                    && !self.control.is_drained(n)
                    && self.control.is_current_raft_id(n, id)
            })
        };
        let mine = topo.raft_id(&me).unwrap_or(0);
        let affinity = match &cluster.follow_writer {
            Some(policy) => self.writers.end_round(membership::slot_of(mine), policy),
            None => HashMap::new(),
        };
        let mut led = self.shard.led_groups();
        if drained || self.handing_off {
            for (group, voters) in led {
                if let Some(to) = voters.iter().copied().find(|v| eligible(*v)) {
                    self.shard.transfer_leader(group, to);
                }
            }
            return;
        }
        // Follow the writer: a group whose commands came from one other voter.
        if let Some(policy) = &cluster.follow_writer {
            let mut moves = 0;
            led.retain(|(group, voters)| {
                let Some(Affinity::Remote(slot)) = affinity.get(group).copied() else {
                    return true;
                };
                let to = voters
                    .iter()
                    .copied()
                    .find(|v| membership::slot_of(*v) == slot && eligible(*v));
                let Some(to) = to.filter(|_| moves < policy.max_moves) else {
                    return true;
                };
                self.shard.transfer_leader(*group, to);
                self.stats.follow_moves += 1;
                moves += 1;
                false
            });
            // The balancer moves only groups without a local writer.
            led.retain(|(group, _)| affinity.get(group) != Some(&Affinity::Local));
        }
        // Balance: leaders per node among this core's groups.
        let mut counts: HashMap<u64, usize> = HashMap::new();
        let leaders = self.shard.leaders_by_group();
        for (_, leader) in &leaders {
            if let Some(l) = leader {
                *counts.entry(*l).or_default() += 1;
            }
        }
        let writers = topo.writers.len().max(1);
        let fair = leaders.len().div_ceil(writers);
        let my_count = counts.get(&mine).copied().unwrap_or(0);
        // Keep every node within 1.25× (+1) of its fair share of leaders.
        let mut excess = my_count.saturating_sub((fair * 5 / 4).max(fair + 1));
        for (group, voters) in led {
            if excess == 0 {
                break;
            }
            let target = voters
                .iter()
                .copied()
                .filter(|v| eligible(*v))
                .min_by_key(|v| counts.get(v).copied().unwrap_or(0));
            if let Some(to) = target {
                if counts.get(&to).copied().unwrap_or(0) + 1 < my_count {
                    self.shard.transfer_leader(group, to);
                    *counts.entry(to).or_default() += 1;
                    excess -= 1;
                }
            }
        }
    }

    /// Seals and writes the staged batch. While it is written, requests are
    /// handled and the next batch is collected. False means shut down (a
    /// `Shutdown` arrived during the write; the write finished first).
    async fn write_batch(&mut self) -> Result<bool, String> {
        let mut buf = std::mem::take(&mut self.staged);
        let early = self.shard.prepare_write(&mut buf);
        self.dispatch(early);
        let sync = self.shard.batch_needs_sync();
        let mut log = self.log.take().expect("one write at a time");
        self.staged = std::mem::take(&mut self.spare);
        self.staged.clear();
        let mut running = true;
        let written = if buf.is_empty() {
            // Nothing to write; a membership's commit may still need a sync.
            let res = if sync { log.sync().await } else { Ok(()) };
            (log, res.map(|()| buf))
        } else {
            self.stats.writes += 1;
            self.stats.syncs += u64::from(sync);
            self.stats.write_bytes += buf.len() as u64;
            let started = self.clock.now();
            let write = async move {
                let res = log.append(buf, sync).await;
                (log, res)
            };
            let done = self.serve_while(write, &mut running).await;
            if sync {
                self.stats
                    .fsync_latency
                    .observe((self.clock.now() - started).as_secs_f64());
            }
            done
        };
        let (log, res) = written;
        self.log = Some(log);
        match res {
            Ok(mut b) => {
                b.clear();
                self.spare = b;
            }
            Err(e) => return Err(disk_error("append", &e)),
        }
        let out = self.shard.on_durable();
        self.dispatch(out);
        if self.answered > 0 {
            self.stats.batch_commands.observe(self.answered as f64);
            self.answered = 0;
        }
        let log = self.log.as_mut().expect("log is back");
        if self.shard.wants_new_segment() {
            match log.start_segment().await {
                Ok(seq) => self.shard.segment_started(seq),
                Err(e) => return Err(disk_error("new segment", &e)),
            }
        }
        let before = self.shard.obsolete_before();
        match log.delete_before(before) {
            Ok(0) => {}
            Ok(_) => self.shard.segments_deleted(before),
            Err(e) => return Err(disk_error("segment deletion", &e)),
        }
        Ok(running)
    }

    /// Awaits `write` while serving the inbox: requests are handled and the
    /// next batch is collected into `self.staged` (its leader messages go out
    /// and its committed commands are answered now). Not while a membership's
    /// commit waits for the disk, and not after `Shutdown` (`running` turns
    /// false) or a closed inbox (the loop notices it next).
    async fn serve_while<F: std::future::Future>(
        &mut self,
        write: F,
        running: &mut bool,
    ) -> F::Output {
        let mut write = std::pin::pin!(write);
        let mut open = true;
        loop {
            if !open || !*running || self.shard.conf_unsynced() {
                return write.await;
            }
            match first_of(write.as_mut(), self.inbox.recv_async()).await {
                Either::A(done) => return done,
                Either::B(Ok(req)) => {
                    *running = self.handle(req);
                    while *running {
                        match self.inbox.try_recv() {
                            Ok(req) => *running = self.handle(req),
                            Err(_) => break,
                        }
                    }
                    if self.shard.has_ready() && !self.shard.conf_unsynced() {
                        let mut staged = std::mem::take(&mut self.staged);
                        let out = self.shard.collect(&mut staged);
                        self.staged = staged;
                        self.dispatch(out);
                    }
                }
                Either::B(Err(_)) => open = false,
            }
        }
    }

    fn dispatch(&mut self, out: Outputs<Waiter>) {
        let now = self.clock.now();
        // Completions come both before a write (entries committed by peers'
        // acks) and after it: count them all.
        self.stats.entries_written += out.completions.len() as u64;
        self.answered += out.completions.len();
        for ((waiter, since), result) in out.completions {
            let took = now.saturating_duration_since(since);
            super::stages::record(super::stages::Stage::Commit, took);
            self.stats.commit_latency.observe(took.as_secs_f64());
            // The requester may have timed out and gone; nothing to do then.
            let _ = waiter.send(result);
        }
        for n in out.notifications {
            self.notify(n);
        }
        if !out.messages.is_empty() {
            self.send_messages(out.messages);
        }
    }

    /// Batches Raft messages per destination node: one transport call per peer.
    fn send_messages(&mut self, messages: Vec<(u32, raft::eraftpb::Message)>) {
        let Some(cluster) = &self.cluster else { return };
        // Ordered maps: the send order is deterministic (the simulator replays it).
        let mut per_peer: BTreeMap<u64, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
        let mut beats: BTreeMap<u64, Vec<(u32, raft::eraftpb::Message)>> = BTreeMap::new();
        for (group, msg) in messages {
            if super::heartbeats::is_packable(&msg) {
                beats.entry(msg.to).or_default().push((group, msg));
                continue;
            }
            let bytes = match protobuf::Message::write_to_bytes(&msg) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(group, error = %e, "cannot encode a raft message");
                    continue;
                }
            };
            per_peer.entry(msg.to).or_default().push((group, bytes));
        }
        // All heartbeats for a peer travel as one packed message.
        for (to, list) in beats {
            let refs: Vec<(u32, &raft::eraftpb::Message)> =
                list.iter().map(|(g, m)| (*g, m)).collect();
            let body = super::heartbeats::pack(&refs);
            per_peer
                .entry(to)
                .or_default()
                .push((super::heartbeats::HEARTBEAT_BATCH_GROUP, body));
        }
        for (to, batch) in per_peer {
            match cluster.topo.node_of(to) {
                Some(peer) if cluster.transport.is_connected(peer) => {
                    cluster.transport.send_raft(peer, batch)
                }
                _ => {
                    for (group, _) in batch {
                        if group != super::heartbeats::HEARTBEAT_BATCH_GROUP {
                            self.shard.report_unreachable(group, to);
                        }
                    }
                }
            }
        }
    }

    fn notify(&mut self, n: Notification) {
        let Some(subs) = self.subscribers.get_mut(&n.session) else {
            return;
        };
        // A subscriber whose buffer is full is dropped: its socket notices the
        // closed channel and resumes by replay from its cursor (bounded memory).
        let mut fell_behind = 0;
        subs.retain(|s| {
            let event = LiveEvent {
                seq: n.seq,
                frame: n.frame.clone(),
            };
            match s.tx.try_send(event) {
                Ok(()) => true,
                Err(flume::TrySendError::Full(_)) => {
                    fell_behind += 1;
                    false
                }
                Err(flume::TrySendError::Disconnected(_)) => false,
            }
        });
        self.stats.tail_dropped += fell_behind;
        if subs.is_empty() {
            self.subscribers.remove(&n.session);
        }
    }

    /// Handles one request; false means shut down.
    fn handle(&mut self, req: CoreRequest) -> bool {
        match req {
            CoreRequest::Propose {
                proposal,
                reply,
                since,
                origin,
            } => {
                test_fault::on_propose(&proposal);
                if let Some(origin) = origin {
                    if self
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.follow_writer.is_some())
                    {
                        let group = self.shard.group_of(proposal.session());
                        self.writers.record(group, origin);
                    }
                }
                let (now, wall) = (self.clock.now(), self.clock.wall_us());
                super::stages::record(
                    super::stages::Stage::Handoff,
                    now.saturating_duration_since(since),
                );
                if let Err(((reply, _), e)) = self.shard.propose(proposal, (reply, now), wall) {
                    let _ = reply.send(Err(e));
                }
            }
            CoreRequest::Info { session, reply } => {
                let _ = reply.send(self.shard.session_info(&session));
            }
            CoreRequest::Read {
                session,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.shard.read(&session, after, limit));
            }
            CoreRequest::List {
                cursor,
                limit,
                tenant,
                filters,
                archived,
                reply,
            } => {
                let _ = reply.send(self.shard.list(
                    cursor.as_deref(),
                    limit,
                    tenant.as_deref(),
                    &filters,
                    archived,
                ));
            }
            CoreRequest::Get { session, reply } => {
                let _ = reply.send(self.shard.leader_row(&session));
            }
            CoreRequest::Subscribe {
                session,
                subscriber,
                reply,
            } => {
                let info = self.shard.session_info(&session);
                if info.is_some() {
                    self.subscribers
                        .entry(session)
                        .or_default()
                        .push(subscriber);
                }
                let _ = reply.send(info);
            }
            CoreRequest::Unsubscribe { session, id } => {
                if let Some(subs) = self.subscribers.get_mut(&session) {
                    subs.retain(|s| s.id != id);
                    if subs.is_empty() {
                        self.subscribers.remove(&session);
                    }
                }
            }
            CoreRequest::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.leaders = self.shard.leaders();
                stats.hot_bytes = self.shard.hot_bytes();
                stats.pending = self.shard.pending_len();
                stats.tail_subscribers = self.subscribers.values().map(Vec::len).sum();
                stats.elections_won = self.shard.elections_won();
                stats.apply_lag = self.shard.apply_lag();
                let _ = reply.send(stats);
            }
            CoreRequest::ArchiveScan {
                after,
                per_session,
                budget_bytes,
                empty_since_us,
                reply,
            } => {
                let _ = reply.send(self.shard.archive_scan(
                    after.as_deref(),
                    per_session,
                    budget_bytes,
                    empty_since_us,
                ));
            }
            CoreRequest::LogView { group, reply } => {
                let _ = reply.send(self.shard.log_view(group));
            }
            CoreRequest::Membership { reply } => {
                let groups = (self.shard.config().groups.iter())
                    .filter_map(|(g, _)| Some((*g, self.shard.conf_state(*g)?)))
                    .collect();
                let _ = reply.send(groups);
            }
            CoreRequest::HandOff => {
                self.handing_off = true;
                self.move_leadership();
            }
            CoreRequest::Raft { messages } => {
                for (group, msg) in messages {
                    self.shard.step(group, msg);
                }
            }
            CoreRequest::Shutdown => return false,
        }
        true
    }
}

/// An unrecoverable disk error ends the engine loop; the node stops loudly
/// rather than leaving one core dead while the others serve.
fn disk_error(what: &str, e: &std::io::Error) -> String {
    format!("log {what} failed: {e}")
}

/// Test-only fault points, compiled into debug builds only (the real-process
/// tests run target/debug/starcite). `STARCITE_TEST_FAULT`:
/// - `core_panic:<prefix>`: the engine panics on a command for a session whose
///   id starts with `<prefix>` (a core dying);
/// - `core_stall:<prefix>:<ms>`: the engine blocks its thread for `<ms>` on
///   such a command (a core that stops ticking);
/// - `skip_fdatasync`: log appends are never synced (see segment_log.rs).
#[cfg(debug_assertions)]
pub(crate) mod test_fault {
    use starcite_shards::shard::Proposal;
    use std::sync::OnceLock;

    pub(crate) fn get() -> Option<&'static str> {
        static FAULT: OnceLock<Option<String>> = OnceLock::new();
        FAULT
            .get_or_init(|| std::env::var("STARCITE_TEST_FAULT").ok())
            .as_deref()
    }

    pub(super) fn on_propose(p: &Proposal) {
        let Some(fault) = get() else { return };
        let session = match p {
            Proposal::Append { session, .. } => session.as_str(),
            Proposal::Create { id, .. } => id.as_str(),
            _ => return,
        };
        let mut parts = fault.split(':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("core_panic"), Some(prefix), None) if session.starts_with(prefix) => {
                panic!("test fault point: core panic on a command for {session}")
            }
            (Some("core_stall"), Some(prefix), Some(ms)) if session.starts_with(prefix) => {
                let ms = ms.parse().unwrap_or(5_000);
                tracing::warn!(session, ms, "test fault point: stalling this core");
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            _ => {}
        }
    }
}

#[cfg(not(debug_assertions))]
pub(crate) mod test_fault {
    #[inline(always)]
    pub(crate) fn get() -> Option<&'static str> {
        None
    }
    #[inline(always)]
    pub(super) fn on_propose(_: &starcite_shards::shard::Proposal) {}
}
