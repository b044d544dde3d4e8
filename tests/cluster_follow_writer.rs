//! Leadership follows the writer (`src/node/writer_affinity.rs`): when every
//! command of a group arrives through one node, the group's leadership moves
//! to that node and its appends stop being forwarded. With
//! `STARCITE_LEADER_FOLLOWS_WRITER=false` they keep being forwarded (the
//! control run: the check below can fail). No client sees an error while
//! leadership moves under load.

mod common;

use common::cluster::*;
use common::get;
use std::time::Duration;

/// A counter's value summed over its series (`name{...} value` lines).
fn metric(port: u16, name: &str, label: &str) -> f64 {
    let r = get(port, "/metrics");
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Seconds node `port` spent forwarding appends to other nodes' leaders.
fn forward_seconds(port: u16) -> f64 {
    metric(
        port,
        "starcite_append_stage_seconds_total",
        "stage=\"forward\"",
    )
}

/// Runs load through node 0 only; returns the forward time node 0 spent in
/// the last 2 s window (the first without forwards, else the one at 35 s)
/// and the follow moves.
fn run(follow: bool) -> (f64, f64) {
    let c = Cluster::start(ClusterOpts {
        env: vec![("STARCITE_LEADER_FOLLOWS_WRITER".into(), follow.to_string())],
        ..Default::default()
    });
    let tag = if follow { "follow" } else { "stay" };
    let sessions = session_ids(tag, 12);
    let entry = c.ports_of(&[0]);
    create_sessions(&entry, &sessions);
    let mut opts = LoadOpts::new(tag, sessions.len(), &sessions, &entry);
    opts.think = Duration::from_millis(2);
    let load = Load::start(opts);
    // Balancing rounds are 2 s apart: a round to see the writer, one to
    // move (a transfer to a replica that is behind waits for it). Then 2 s
    // windows until one forwards nothing, for at most 30 s.
    std::thread::sleep(Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let window = loop {
        let before = forward_seconds(c.http_port(0));
        std::thread::sleep(Duration::from_secs(2));
        let window = forward_seconds(c.http_port(0)) - before;
        if !follow || window == 0.0 || std::time::Instant::now() > deadline {
            break window;
        }
    };
    let mut report = load.stop();
    report.print(tag);
    report.assert_no_errors();
    let moves: f64 = c
        .all()
        .iter()
        .map(|i| {
            metric(
                c.http_port(*i),
                "starcite_raft_leader_follow_moves_total",
                "",
            )
        })
        .sum();
    let mut acks = report.acks.clone();
    acks.extend(resolve_pending(
        &c.ports(),
        &mut report.producers,
        Duration::from_secs(30),
    ));
    let v = verify(&c, &c.all(), &sessions, &acks, true);
    assert!(v.events > 0);
    c.assert_no_panics();
    eprintln!("{tag}: forward seconds in the last 2 s {window:.4}, follow moves {moves}");
    (window, moves)
}

#[test]
fn leadership_moves_to_the_node_that_receives_the_writes() {
    let (window, moves) = run(true);
    assert!(moves >= 1.0, "no leadership moved toward the writer");
    assert_eq!(window, 0.0, "node 0 still forwards appends after the moves");
}

#[test]
fn without_it_the_appends_keep_being_forwarded() {
    let (window, moves) = run(false);
    assert_eq!(moves, 0.0);
    assert!(window > 0.0, "the control run forwarded nothing");
}
