//! Node replacement as a Raft membership change, against real processes.
//!
//! A write node loses its disk: it is restarted with the same name, an EMPTY
//! data dir and `STARCITE_REJOIN=true`, so it runs a new incarnation (a new
//! Raft member) while the survivors have compacted their logs. Until the
//! operator approves it with `starcite ops replace-node` it is no voter and
//! reports not ready; then every group removes the old incarnation, adds the
//! new one as a learner, catches it up (snapshots) and promotes it. Every
//! acknowledged append is then present exactly once on every node, a second
//! failure (another node) still leaves a quorum holding everything, and
//! leaders are spread again.

mod common;

use common::cluster::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Appends one event through the given nodes, retrying 503s with the identical body.
fn append_via(ports: &[u16], session: &str, producer: &str, pseq: u64, acks: &mut Vec<Ack>) {
    let body = load_body(producer, pseq, 200);
    let (st, v, attempts) = post_retry(
        ports,
        &format!("/v1/sessions/{session}/append"),
        &body,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("append {session}/{producer}/{pseq}: {e}"));
    assert_eq!(st, 201, "append {session}/{producer}/{pseq}: {v}");
    acks.push(Ack {
        session: session.to_owned(),
        seq: v["seq"].as_u64().expect("seq"),
        producer_id: producer.to_owned(),
        producer_seq: pseq,
        at: Duration::ZERO,
        latency: Duration::ZERO,
        attempts,
        port: 0,
    });
}

fn append(c: &Cluster, session: &str, producer: &str, pseq: u64, acks: &mut Vec<Ack>) {
    append_via(&c.ports(), session, producer, pseq, acks)
}

#[test]
fn replacement_is_a_membership_change_and_survives_a_second_failure() {
    let t0 = Instant::now();
    let mut opts = ClusterOpts::default();
    // A tiny compaction threshold so the survivors drop the log the replacement
    // would need: it must be sent a snapshot.
    opts.env
        .push(("STARCITE_LOG_CHECKPOINT_SIZE".into(), "256KB".into()));
    let mut c = Cluster::start(opts);
    let sessions = session_ids("replace", 4);
    create_sessions(&c.ports(), &sessions);
    let mut acks = Vec::new();
    for n in 1..=30 {
        for s in &sessions {
            append(&c, s, &format!("{s}-w"), n, &mut acks);
        }
    }

    let victim = 2;
    c.kill9(victim);
    let dir = c.data_dir(victim).to_path_buf();
    std::fs::remove_dir_all(&dir).expect("wipe the victim's data dir");
    std::fs::create_dir_all(&dir).expect("recreate it empty");

    for n in 31..=60 {
        for s in &sessions {
            append(&c, s, &format!("{s}-w"), n, &mut acks);
        }
    }
    // Identical retries dedupe: they grow the survivors' logs, not their state,
    // until compaction snapshots every group and drops the old segments.
    let ports = c.ports_of(&[0, 1]);
    for i in 0..1_500u64 {
        let s = &sessions[(i % 4) as usize];
        let body = load_body(&format!("{s}-w"), 60, 200);
        let (st, v, _) = post_retry(
            &ports,
            &format!("/v1/sessions/{s}/append"),
            &body,
            Duration::from_secs(30),
        )
        .expect("dedupe");
        assert_eq!((st, v["deduped"].clone()), (201, json!(true)), "{v}");
    }
    let segments_on = |i: usize| {
        std::fs::read_dir(c.data_dir(i).join("log"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    eprintln!(
        "segments on the survivors after compaction: {} and {}",
        segments_on(0),
        segments_on(1)
    );

    // The runbook: the node with the new, empty disk starts with
    // STARCITE_REJOIN=true: a new incarnation, not yet a member of anything.
    c.set_env("STARCITE_REJOIN", "true");
    c.kill9(victim);
    c.spawn(victim);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = c.try_status(victim) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the replacement's admin socket never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let incarnation = status["observer"]["incarnation"].as_u64().unwrap_or(0);
    assert!(incarnation > 0, "a new incarnation: {status}");
    // Not a voter anywhere, hence not ready, for as long as it is not approved.
    std::thread::sleep(Duration::from_secs(4));
    let (st, body) = c.ready(victim).expect("readiness answers");
    assert_ne!(
        st, 200,
        "an unapproved replacement must not be ready: {body}"
    );
    let status = c.status(victim);
    assert_eq!(status["observer"]["voter_groups"], json!(0), "{status}");

    // Approve it from another node; the command waits until it votes everywhere.
    let name = c.id(victim).to_owned();
    let t_replace = Instant::now();
    let out = c.ops_full(0, &["replace-node", &name, "--timeout-ms", "100000"]);
    eprintln!(
        "replace-node took {} ms:\n{}{}",
        t_replace.elapsed().as_millis(),
        out.stdout,
        out.stderr
    );
    assert_eq!(out.code, 0, "replace-node: {} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("replaced={name}")),
        "{}",
        out.stdout
    );
    let groups = c.status(victim)["observer"]["local_group_count"].clone();
    assert!(
        out.stdout
            .contains(&format!("is a voter in {groups}/{groups} groups")),
        "{}",
        out.stdout
    );
    // The runbook form too (idempotent once done).
    let rpc = c.rpc(
        1,
        &format!("Starcite.ControlPlane.Ops.replace_node(\"{name}\")"),
    );
    assert_eq!(rpc.code, 0, "{} {}", rpc.stdout, rpc.stderr);
    // A node running its original incarnation cannot be "replaced".
    let bad = c.ops_full(0, &["replace-node", c.id(1), "--timeout-ms", "5000"]);
    assert_eq!(bad.code, 1, "{} {}", bad.stdout, bad.stderr);
    assert!(
        bad.stderr.contains("original incarnation"),
        "{}",
        bad.stderr
    );

    c.wait_ready(victim, Duration::from_secs(60))
        .expect("the replacement catches up and reports ready");
    eprintln!(
        "replacement ready {} s into the test",
        t0.elapsed().as_secs()
    );
    verify(&c, &c.all(), &sessions, &acks, true);

    // Balance: no node leads more than 1.5× its fair share once settled.
    let groups = f64::from(c.opts.num_groups);
    let fair = groups / c.all().len() as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let own = c.own_leaders();
        let total: u64 = own.values().sum();
        let max = own.values().copied().max().unwrap_or(0) as f64;
        if total == c.opts.num_groups as u64 && max <= 1.5 * fair {
            eprintln!("leaders per node {own:?} (fair share {fair:.1})");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaders not balanced within 30 s: {own:?} (fair share {fair:.1})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A second failure, of another (original) node: the replacement and the
    // third node are a quorum of every group and hold everything.
    c.kill9(0);
    let rest = c.ports_of(&[1, victim]);
    for n in 61..=70 {
        for s in &sessions {
            append_via(&rest, s, &format!("{s}-w"), n, &mut acks);
        }
    }
    verify(&c, &[1, victim], &sessions, &acks, true);
    c.assert_no_panics();
}
