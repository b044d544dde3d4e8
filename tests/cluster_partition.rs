//! Network partition: one write node is cut off from the other two by the
//! harness proxy. Appends through the majority keep succeeding; appends
//! through the isolated node answer 503 (any 201 must be a real commit that
//! survives); after healing every node holds the same history.

mod common;

use common::cluster::*;
use std::time::{Duration, Instant};

const PARTITION: Duration = Duration::from_secs(15);
const MAX_WINDOW: Duration = Duration::from_secs(10);

#[test]
fn isolated_node_minority_partition() {
    let mut c = Cluster::start(ClusterOpts {
        proxy: true,
        ..Default::default()
    });
    let links = c.net().open_links();
    eprintln!("proxied links before the partition: {links:?}");
    assert!(
        links.iter().all(|(src, _)| src.is_some()),
        "harness: the proxy could not identify the source node of some links: {links:?}"
    );
    let sessions = session_ids("part", 6);
    create_sessions(&c.ports(), &sessions);
    // Isolate the node leading the most groups: its leaders end up in the minority.
    let leaders = c.own_leaders();
    let iso = leaders
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(i, _)| *i)
        .unwrap();
    let majority: Vec<usize> = c.all().into_iter().filter(|i| *i != iso).collect();
    let name = c.name(iso).to_string();
    eprintln!("leaders per node before the partition: {leaders:?}; isolating {name}");

    let major = Load::start(LoadOpts::new(
        "maj",
        sessions.len(),
        &sessions,
        &c.ports_of(&majority),
    ));
    let mut mo = LoadOpts::new("min", sessions.len(), &sessions, &c.ports_of(&[iso]));
    mo.think = Duration::from_millis(200);
    mo.retry_budget = Duration::from_secs(90);
    let minor = Load::start(mo);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        minor.ack_count() > 0,
        "appends through {name} failed before the partition: {:?}",
        minor.errors()
    );

    let cut = Instant::now();
    let (cut_major, cut_minor) = (major.now(), minor.now());
    c.net().isolate(iso);

    // The isolated node notices and stops claiming readiness.
    let mut iso_ready = None;
    while cut.elapsed() < PARTITION {
        if let Ok((code, v)) = c.ready(iso) {
            if code == 503 && iso_ready.is_none() {
                eprintln!(
                    "{name} /health/ready {code} {v} {} ms after the cut",
                    cut.elapsed().as_millis()
                );
                iso_ready = Some(cut.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (end_major, end_minor) = (major.now(), minor.now());
    let links = c.net().open_links();
    assert!(
        !links.iter().any(|(s, d)| *d == iso || *s == Some(iso)),
        "harness: links to/from {name} survived the cut: {links:?}"
    );
    let acks_major = major.acks();
    let acks_minor = minor.acks();
    eprintln!("proxy refused/cut: {:?}", c.net().stats());
    c.net().heal();
    let heal_at = Instant::now();
    c.wait_all_ready(Duration::from_secs(45))
        .unwrap_or_else(|e| panic!("after healing: {e}"));
    eprintln!(
        "all nodes ready {} ms after healing",
        heal_at.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(3));

    let mut rmaj = major.stop();
    let mut rmin = minor.stop();
    rmaj.print("majority");
    rmin.print("through the isolated node");
    rmaj.assert_no_errors();
    rmin.assert_no_errors();

    let g = gaps(&acks_major, &sessions, cut_major, end_major);
    g.print("majority during the partition");
    let late: Vec<&Ack> = acks_minor
        .iter()
        .filter(|a| a.at > cut_minor + Duration::from_secs(8) && a.at <= end_minor)
        .collect();
    let during: Vec<&Ack> = acks_minor
        .iter()
        .filter(|a| a.at > cut_minor && a.at <= end_minor)
        .collect();
    eprintln!(
        "201s through the isolated node during the partition: {} ({} more than 8 s after the cut)",
        during.len(),
        late.len()
    );
    let minor_503: u64 = rmin
        .outcomes
        .iter()
        .filter(|(k, _)| k.starts_with("503"))
        .map(|(_, v)| *v)
        .sum();

    let mut acks = rmaj.acks.clone();
    acks.extend(rmin.acks.iter().cloned());
    acks.extend(resolve_pending(
        &c.ports(),
        &mut rmaj.producers,
        Duration::from_secs(30),
    ));
    acks.extend(resolve_pending(
        &c.ports(),
        &mut rmin.producers,
        Duration::from_secs(30),
    ));
    verify(&c, &c.all(), &sessions, &acks, true);
    c.assert_no_panics();

    for s in &sessions {
        assert!(
            acks_major.iter().any(|a| &a.session == s
                && a.at > end_major.saturating_sub(Duration::from_secs(5))
                && a.at <= end_major),
            "session {s}: the majority acknowledged nothing in the last 5 s of the partition"
        );
    }
    assert!(
        g.worst <= MAX_WINDOW,
        "majority: session {} stalled {} ms during the partition",
        g.worst_session,
        g.worst.as_millis()
    );
    assert!(
        minor_503 > 0,
        "appends through the isolated node never answered 503: {:?}",
        rmin.outcomes
    );
    assert!(
        late.is_empty(),
        "the isolated node acknowledged appends long after the cut: {late:?}"
    );
    assert!(
        iso_ready.is_some(),
        "{name} kept answering /health/ready 200 throughout the partition"
    );
}
