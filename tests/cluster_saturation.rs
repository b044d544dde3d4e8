//! Ticks run on time under saturation: with the engine loops of every node kept
//! busy by closed-loop producers that never pause, `kill -9` of the node that
//! leads the most groups must still give every group a new leader within the
//! usual failover window. Elections, heartbeats and readiness reports are
//! driven by ticks; a loop that only ever writes batches would starve them.

mod common;

use common::cluster::*;
use std::time::{Duration, Instant};

/// The failover window of tests/cluster_failover.rs.
const MAX_WINDOW: Duration = Duration::from_secs(10);
const PRODUCERS: usize = 64;

#[test]
fn kill9_leader_under_saturating_load() {
    let mut c = Cluster::start(ClusterOpts::default());
    let sessions = session_ids("saturate", 16);
    create_sessions(&c.ports(), &sessions);
    let groups = u64::from(c.opts.num_groups);

    let leaders = c.own_leaders();
    let victim = leaders
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(i, _)| *i)
        .expect("leaders.per_node is empty");
    assert!(leaders[&victim] > 0, "no node leads any group: {leaders:?}");
    let survivors: Vec<usize> = c.all().into_iter().filter(|i| *i != victim).collect();

    // No think time: every producer sends its next append as soon as the last
    // one is answered, so every core always has a batch ready.
    let mut opts = LoadOpts::new("sat", PRODUCERS, &sessions, &c.ports_of(&survivors));
    opts.think = Duration::ZERO;
    opts.pad = 512;
    let load = Load::start(opts);
    std::thread::sleep(Duration::from_secs(4));
    let before = load.ack_count();
    assert!(before > 0, "no append acknowledged in the first 4 s");

    let kill_at = load.now();
    let killed = Instant::now();
    c.kill9(victim);
    eprintln!(
        "killed {} (led {} groups) under {PRODUCERS} producers, {before} acks so far",
        c.name(victim),
        leaders[&victim]
    );

    // Every group gets a leader on the survivors, while the load goes on.
    let mut led = None;
    let mut last = Default::default();
    while killed.elapsed() < MAX_WINDOW + Duration::from_secs(5) {
        last = c.own_leaders();
        if last.values().sum::<u64>() == groups {
            led = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = load.ack_count();
    std::thread::sleep(Duration::from_secs(2));
    let end_at = load.now();
    let mut report = load.stop();
    report.print("saturating load");
    report.assert_no_errors();
    let g = gaps(&report.acks, &sessions, kill_at, end_at);
    g.print("kill -9 of the leader under saturation");
    eprintln!(
        "every group led again after {:?}; acks before the kill {before}, by then {after}, at the end {}",
        led,
        report.acks.len()
    );
    let extra = resolve_pending(
        &c.ports_of(&survivors),
        &mut report.producers,
        Duration::from_secs(30),
    );
    let mut all = report.acks.clone();
    all.extend(extra);
    verify(&c, &survivors, &sessions, &all, true);
    c.assert_no_panics();

    let led = led.unwrap_or_else(|| {
        panic!(
            "{} s after kill -9 of {} under saturating load the survivors lead only {last:?} of {groups} groups",
            (MAX_WINDOW + Duration::from_secs(5)).as_secs(),
            c.name(victim)
        )
    });
    assert!(
        led <= MAX_WINDOW,
        "new leaders took {led:?} under saturating load (limit {MAX_WINDOW:?})"
    );
    assert!(
        report.acks.len() > after,
        "appends stopped after the failover under saturating load"
    );
}
