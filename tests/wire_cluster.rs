//! The wire client against a 3-node cluster: `kill -9` of the session's leader
//! node mid-stream. The client reconnects and retries its unacknowledged
//! appends; every append it reported acknowledged is in the log exactly once.

mod common;

use common::cluster::*;
use starcite_wire::client::{Ack, Client, ClientConfig, Pending};
use starcite_wire::proto::AppendFields;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn client_survives_kill9_of_the_leader_and_acks_are_exactly_once() {
    let mut c = Cluster::start(ClusterOpts::default());
    let nodes: Vec<String> = c
        .all()
        .iter()
        .map(|i| format!("127.0.0.1:{}", c.wire_port(*i)))
        .collect();
    let client = Client::connect(ClientConfig::new(nodes).retry_for(Duration::from_secs(40)))
        .expect("connect");
    assert_eq!(client.connected_nodes().len(), 3);
    let session = "wire-failover";
    let created = (0..100).find_map(|_| match client.create_session(Some(session), None, None) {
        Ok(_) => Some(()),
        Err(e) if e.code() == "session_exists" => Some(()),
        Err(_) => {
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    });
    assert!(created.is_some(), "could not create the session");

    // Producer: pipelined appends (16 in flight), recording every ack.
    let acks: Arc<Mutex<Vec<(u64, Ack, Instant)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (client, acks, errors, stop) =
            (client.clone(), acks.clone(), errors.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut window: VecDeque<(u64, Pending<Ack>)> = VecDeque::new();
            let mut n = 0u64;
            let settle = |(pseq, p): (u64, Pending<Ack>)| match p.wait() {
                Ok(a) => acks.lock().unwrap().push((pseq, a, Instant::now())),
                Err(e) => errors.lock().unwrap().push(format!("pseq {pseq}: {e}")),
            };
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let f = AppendFields {
                    event_type: "t".into(),
                    payload: format!("{{\"n\":{n}}}").into_bytes(),
                    producer_id: "wire-producer".into(),
                    producer_seq: n,
                    ..Default::default()
                };
                window.push_back((n, client.append_async(session, f)));
                if window.len() >= 16 {
                    settle(window.pop_front().unwrap());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            for p in window {
                settle(p);
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let before = acks.lock().unwrap().len();
    assert!(before > 0, "no ack in the first 3 s");
    let leader = client
        .leader_hint(session)
        .expect("a leader hint after acks");
    let victim = c
        .all()
        .into_iter()
        .find(|i| c.id(*i) == leader)
        .unwrap_or_else(|| panic!("leader {leader} is not a node of the cluster"));
    let killed_at = Instant::now();
    c.kill9(victim);
    eprintln!("killed {leader} (node {victim}) after {before} acks");
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let sent = producer.join().unwrap();
    let acks = acks.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    let after_kill = acks.iter().filter(|(_, _, t)| *t > killed_at).count();
    eprintln!(
        "{sent} appends sent, {} acked ({after_kill} after the kill, {} deduped), {} errors",
        acks.len(),
        acks.iter().filter(|(_, a, _)| a.deduped).count(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "appends failed: first {:?} last {:?}; acks around the kill: {:?}",
        &errors[..errors.len().min(5)],
        &errors[errors.len().saturating_sub(3)..],
        acks.iter()
            .filter(|(_, _, t)| *t > killed_at - Duration::from_millis(300))
            .take(40)
            .map(|(p, a, t)| (
                *p,
                a.seq,
                a.deduped,
                t.duration_since(killed_at).as_millis() as i64
            ))
            .collect::<Vec<_>>()
    );
    assert!(after_kill > 0, "no append acknowledged after the kill");
    assert_eq!(
        client.leader_hint(session).as_deref().map(|l| l != leader),
        Some(true),
        "the client follows the new leader"
    );

    // The whole log, read from a survivor: each producer_seq exactly once,
    // at the seq its ack reported.
    let survivor = c.all().into_iter().find(|i| *i != victim).unwrap();
    let last = acks.iter().map(|(_, a, _)| a.last_seq).max().unwrap();
    let events = read_session(
        c.http_port(survivor),
        session,
        last,
        Duration::from_secs(30),
    )
    .expect("read the log");
    let mut by_pseq: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in &events {
        by_pseq
            .entry(e["producer_seq"].as_u64().unwrap())
            .or_default()
            .push(e["seq"].as_u64().unwrap());
    }
    for (pseq, seqs) in &by_pseq {
        assert_eq!(
            seqs.len(),
            1,
            "producer_seq {pseq} is in the log {} times",
            seqs.len()
        );
    }
    for (pseq, ack, _) in &acks {
        assert_eq!(
            by_pseq.get(pseq).map(|v| v[0]),
            Some(ack.seq),
            "acked producer_seq {pseq} (seq {}) not found at that seq",
            ack.seq
        );
    }
    client.close();
    c.assert_no_panics();
}
