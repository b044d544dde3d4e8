//! Failover: `kill -9` of the write node that leads the most groups while
//! appends flow through every node. Writes must resume on the survivors
//! (unavailability window ≤ 10 s), nothing acknowledged may be lost, and after
//! the node is restarted every node must hold identical histories.

mod common;

use common::cluster::*;
use std::time::{Duration, Instant};

const MAX_WINDOW: Duration = Duration::from_secs(10);

#[test]
fn kill9_leader_under_load() {
    let test_t0 = Instant::now();
    let mut c = Cluster::start(ClusterOpts::default());
    let sessions = session_ids("failover", 12);
    create_sessions(&c.ports(), &sessions);

    // Victim: the node leading the most groups (each node's own count).
    let leaders = c.own_leaders();
    eprintln!("leaders per node before the kill: {leaders:?}");
    let victim = leaders
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(i, _)| *i)
        .expect("leaders.per_node is empty");
    assert!(leaders[&victim] > 0, "no node leads any group: {leaders:?}");
    let survivors: Vec<usize> = c.all().into_iter().filter(|i| *i != victim).collect();

    // One producer per session, each request to a random node (the victim
    // included: clients do not know it died and retry elsewhere).
    let load = Load::start(LoadOpts::new("fo", sessions.len(), &sessions, &c.ports()));
    std::thread::sleep(Duration::from_secs(4));
    let before = load.ack_count();
    assert!(before > 0, "no append acknowledged in the first 4 s");

    let kill_at = load.now();
    c.kill9(victim);
    eprintln!(
        "killed {} (led {} groups) at t={} ms, {before} acks so far",
        c.name(victim),
        leaders[&victim],
        kill_at.as_millis()
    );

    // Keep the load running on the survivors.
    std::thread::sleep(Duration::from_secs(12));
    let mid_at = load.now();
    let acks = load.acks();
    let after_kill: Vec<&Ack> = acks.iter().filter(|a| a.at > kill_at).collect();
    eprintln!(
        "{} appends acknowledged in the 12 s after the kill",
        after_kill.len()
    );
    let g = gaps(
        &acks,
        &sessions,
        kill_at.saturating_sub(Duration::from_secs(1)),
        mid_at,
    );
    g.print("kill -9 of the leader");
    // Leadership moved: the survivors lead every group between them.
    let own_after = c.own_leaders();
    let l2 = c.leaders_per_node(survivors[0]);
    eprintln!("leaders 12 s after the kill: own counts {own_after:?}; as {} reports leaders.per_node: {l2:?}", c.name(survivors[0]));
    let groups = u64::from(c.opts.num_groups);

    // Restart the victim under load and let it catch up.
    let restart_at = load.now();
    c.restart(victim);
    eprintln!(
        "{} ready again {} ms after its restart",
        c.name(victim),
        (load.now() - restart_at).as_millis()
    );
    std::thread::sleep(Duration::from_secs(3));
    let end_at = load.now();
    let mut report = load.stop();
    report.print("failover");
    report.assert_no_errors();
    let g_restart = gaps(&report.acks, &sessions, restart_at, end_at);
    g_restart.print("restart of the killed node");

    let extra = resolve_pending(&c.ports(), &mut report.producers, Duration::from_secs(30));
    let mut all = report.acks.clone();
    all.extend(extra);
    verify(&c, &c.all(), &sessions, &all, true);
    c.assert_no_panics();

    for s in &sessions {
        assert!(
            report
                .acks
                .iter()
                .any(|a| &a.session == s && a.at > kill_at && a.at < mid_at),
            "session {s}: no append acknowledged in the 12 s after the kill"
        );
    }
    assert!(
        g.worst <= MAX_WINDOW,
        "unavailability window after kill -9 of {}: session {} had no acknowledged append for {} ms (limit {} ms)",
        c.name(victim),
        g.worst_session,
        g.worst.as_millis(),
        MAX_WINDOW.as_millis()
    );
    assert_eq!(
        own_after.values().sum::<u64>(),
        groups,
        "12 s after the kill the survivors do not lead every group: {own_after:?}"
    );
    // `ops status` must not report the dead node as still leading groups.
    assert!(
        l2.get(&victim).copied().unwrap_or(0) == 0 && l2.values().sum::<u64>() == groups,
        "12 s after kill -9 of {}, {}'s `ops status` leaders.per_node still credits it with groups (stale gossip): {l2:?}",
        c.name(victim),
        c.name(survivors[0])
    );
    eprintln!("test took {} s", test_t0.elapsed().as_secs());
}
