//! Node replacement and leader balance (issue: membership stays static).
//!
//! A write node loses its disk: it is restarted with the same identity and an
//! EMPTY data dir while the survivors have compacted their logs, so it can
//! only catch up through Raft snapshots. Afterwards every node must hold the
//! same histories, every acknowledged append included, and leaders must be
//! spread so no node leads more than 1.5× its fair share of the groups.

mod common;

use common::cluster::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Appends one event through random nodes, retrying 503s with the identical body.
fn append(c: &Cluster, session: &str, producer: &str, pseq: u64, acks: &mut Vec<Ack>) {
    let body = load_body(producer, pseq, 200);
    let (st, v, attempts) = post_retry(
        &c.ports(),
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

#[test]
fn replacement_with_empty_data_dir_catches_up_by_snapshot() {
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

    // The runbook: a node whose disk was replaced starts in rejoin mode.
    c.set_env("STARCITE_REJOIN", "true");
    c.restart(victim);
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
    c.assert_no_panics();
}
