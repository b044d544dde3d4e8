//! Crash test: `kill -9` while appends are in flight must lose nothing that
//! was acknowledged, and recovery must keep seqs gap-free and producer
//! dedupe state intact (design.md "an acknowledged event is never lost").

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SESSIONS: usize = 4;
const PRODUCERS: usize = 8;
const CYCLES: usize = 3;
const LOAD_TIME: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Ack {
    session: String,
    seq: u64,
    producer_id: String,
    producer_seq: u64,
}

#[derive(Debug)]
struct Producer {
    id: String,
    session: String,
    /// Next producer_seq to use for a new append.
    next: u64,
    /// A producer_seq whose request was sent (or about to be) when the server
    /// died: outcome unknown.
    pending: Option<u64>,
    acks: Vec<Ack>,
    /// Unexpected (non-I/O) failure.
    error: Option<String>,
    /// Payload padding in bytes.
    pad: usize,
}

fn body(p: &Producer, pseq: u64) -> Value {
    json!({
        "type": "crash.test",
        "payload": {"producer": p.id, "n": pseq, "pad": "x".repeat(p.pad)},
        "producer_id": p.id,
        "producer_seq": pseq,
        "metadata": {"cycle_safe": true},
    })
}

/// Runs one producer until `stop` is set, the deadline passes, or the server
/// goes away (I/O error → the in-flight producer_seq becomes `pending`).
fn run_producer(mut p: Producer, port: u16, stop: Arc<AtomicBool>, deadline: Instant) -> Producer {
    let mut c = HttpConn::with_timeout(port, Duration::from_secs(10));
    let path = append_path(&p.session);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let pseq = p.next;
        let b = body(&p, pseq).to_string();
        match c.try_post(&path, b.as_bytes()) {
            Ok(r) if r.status == 201 => {
                let v = r.json();
                if v["deduped"] != json!(false) || v["seq"].as_u64().is_none() {
                    p.error = Some(format!("fresh append {}/{pseq} answered {v}", p.id));
                    return p;
                }
                p.acks.push(Ack {
                    session: p.session.clone(),
                    seq: v["seq"].as_u64().unwrap(),
                    producer_id: p.id.clone(),
                    producer_seq: pseq,
                });
                p.next += 1;
            }
            Ok(r) => {
                if stop.load(Ordering::Relaxed) {
                    // A half-dead server may answer oddly while dying.
                    p.pending = Some(pseq);
                    return p;
                }
                p.error = Some(format!("append {}/{pseq}: {} {}", p.id, r.status, r.text()));
                return p;
            }
            Err(_) => {
                p.pending = Some(pseq);
                return p;
            }
        }
    }
    p
}

/// Resolves each producer's in-flight append by resending it identically:
/// it must either dedupe (it had committed) or append fresh.
fn resolve_pending(port: u16, producers: &mut [Producer]) {
    for p in producers.iter_mut() {
        if let Some(pseq) = p.pending.take() {
            let (st, v) = append(port, &p.session.clone(), &body(p, pseq));
            assert_eq!(
                st, 201,
                "retry of in-flight append {}/{pseq} after restart: {st} {v}",
                p.id
            );
            let seq = v["seq"].as_u64().expect("seq");
            if v["deduped"] == json!(true) {
                eprintln!(
                    "  in-flight {}/{pseq} had committed before the kill (deduped to seq {seq})",
                    p.id
                );
            }
            p.acks.push(Ack {
                session: p.session.clone(),
                seq,
                producer_id: p.id.clone(),
                producer_seq: pseq,
            });
            p.next = pseq + 1;
        }
    }
}

/// Last seq of a session: from list (§14.8); if the row lacks it, read until
/// quiet.
fn last_seq_of(port: u16, session: &str) -> Option<u64> {
    let rows = list_all(port, "");
    let row = rows.iter().find(|r| r["id"] == session)?;
    row["last_seq"].as_u64()
}

fn read_session(port: u16, session: &str, min_last: u64) -> Vec<Value> {
    match last_seq_of(port, session) {
        Some(last) => {
            assert!(
                last >= min_last,
                "session {session}: last_seq {last} < highest acknowledged seq {min_last}"
            );
            let evs = read_all_events(port, session, last, Duration::from_secs(30));
            assert_eq!(
                evs.len() as u64,
                last,
                "session {session}: tail from 0 returned {} events, last_seq is {last}",
                evs.len()
            );
            evs
        }
        None => {
            eprintln!("warning: list row for {session} lacks last_seq; reading until quiet");
            let mut t = Tail::connect(port, session, "cursor=0&batch_size=1000");
            let mut evs = Vec::new();
            loop {
                let more = t.collect_events(usize::MAX, Duration::from_secs(1));
                if more.is_empty() {
                    break;
                }
                evs.extend(more);
            }
            evs
        }
    }
}

fn verify(port: u16, producers: &[Producer], cycle: usize) -> u64 {
    let mut total = 0;
    for s in 0..SESSIONS {
        let session = format!("crash-{s}");
        let acks: Vec<&Ack> = producers
            .iter()
            .flat_map(|p| p.acks.iter())
            .filter(|a| a.session == session)
            .collect();
        let max_acked = acks.iter().map(|a| a.seq).max().unwrap_or(0);
        let evs = read_session(port, &session, max_acked);
        let got = seqs(&evs);
        assert_eq!(
            got,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "cycle {cycle}: session {session} seqs are not 1..N gap-free"
        );
        let by_seq: HashMap<u64, &Value> = evs
            .iter()
            .map(|e| (e["seq"].as_u64().unwrap(), e))
            .collect();
        // Every acknowledged append is present at its seq with its producer fields.
        for a in &acks {
            let e = by_seq.get(&a.seq).unwrap_or_else(|| {
                panic!(
                    "cycle {cycle}: acknowledged {a:?} is missing (session has {} events)",
                    evs.len()
                )
            });
            assert_eq!(
                (e["producer_id"].as_str(), e["producer_seq"].as_u64()),
                (Some(a.producer_id.as_str()), Some(a.producer_seq)),
                "cycle {cycle}: seq {} of {session} holds another event than acknowledged {a:?}",
                a.seq
            );
            assert_eq!(e["payload"]["n"], json!(a.producer_seq));
        }
        // No producer_seq twice; per producer exactly 1..K in seq order.
        let mut per: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &evs {
            per.entry(e["producer_id"].as_str().unwrap().to_string())
                .or_default()
                .push(e["producer_seq"].as_u64().unwrap());
        }
        for (pid, ps) in &per {
            assert_eq!(
                ps,
                &(1..=ps.len() as u64).collect::<Vec<_>>(),
                "cycle {cycle}: producer {pid} in {session}: producer_seqs not 1..K exactly once in order"
            );
        }
        // Every pending append was resolved, so the log holds exactly the acknowledged events.
        assert_eq!(
            evs.len(),
            acks.len(),
            "cycle {cycle}: session {session} holds {} events but {} were acknowledged",
            evs.len(),
            acks.len()
        );
        total += evs.len() as u64;
    }
    total
}

/// A tail that records every event it is shown until the socket dies.
fn observe(port: u16, session: String) -> std::thread::JoinHandle<Vec<Value>> {
    let t = Tail::connect(port, &session, "cursor=0&batch_size=1000");
    std::thread::spawn(move || {
        let mut t = t;
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match t.next_frame(Duration::from_secs(5)) {
                Frame::Json(Value::Array(a)) => seen.extend(a),
                Frame::Json(v) => seen.push(v),
                Frame::Timeout => {}
                Frame::Closed(_) => break,
                Frame::Other(o) => panic!("tail of {session}: unexpected {o}"),
            }
        }
        seen
    })
}

#[test]
fn kill_dash_nine_loses_nothing_acknowledged() {
    run_kill_cycles(96, CYCLES, LOAD_TIME);
}

#[test]
fn kill_dash_nine_with_large_events() {
    // Larger records make it likely that the kill lands in the middle of a
    // log write (torn tail record on recovery).
    run_kill_cycles(48 * 1024, 2, Duration::from_millis(1500));
}

fn run_kill_cycles(pad: usize, cycles: usize, load_time: Duration) {
    let test_deadline = Instant::now() + Duration::from_secs(240);
    let mut server = Server::start_default();
    for s in 0..SESSIONS {
        create_session(server.port(), &format!("crash-{s}"));
    }
    let mut producers: Vec<Producer> = (0..PRODUCERS)
        .map(|i| Producer {
            id: format!("producer-{i}"),
            session: format!("crash-{}", i % SESSIONS),
            next: 1,
            pending: None,
            acks: Vec::new(),
            error: None,
            pad,
        })
        .collect();

    let mut created_sessions: Vec<String> = Vec::new();
    for cycle in 1..=cycles {
        assert!(
            Instant::now() < test_deadline,
            "crash test exceeded its time budget"
        );
        let port = server.port();
        // Tails watching every session: whatever a tail was shown before the
        // crash must still be there, identical, after the restart.
        let observers: Vec<_> = (0..SESSIONS)
            .map(|s| observe(port, format!("crash-{s}")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + load_time + Duration::from_secs(20);
        let before: Vec<usize> = producers.iter().map(|p| p.acks.len()).collect();
        let handles: Vec<_> = producers
            .drain(..)
            .map(|p| {
                let stop = stop.clone();
                std::thread::spawn(move || run_producer(p, port, stop, deadline))
            })
            .collect();
        // A creator thread: sessions whose create was acknowledged must survive too.
        let creator = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = HttpConn::with_timeout(port, Duration::from_secs(10));
                let mut created = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    let id = format!("created-{cycle}-{n}");
                    let b =
                        json!({"id": id, "title": "t", "metadata": {"cycle": cycle}}).to_string();
                    match c.try_post("/v1/sessions", b.as_bytes()) {
                        Ok(r) if r.status == 201 => created.push(id),
                        Ok(r) if !stop.load(Ordering::Relaxed) => {
                            panic!("create {id}: {} {}", r.status, r.text())
                        }
                        _ => break,
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                created
            })
        };
        std::thread::sleep(load_time);
        // kill -9 while appends are in flight.
        server.kill();
        stop.store(true, Ordering::Relaxed);
        producers = handles
            .into_iter()
            .map(|h| h.join().expect("producer thread panicked"))
            .collect();
        created_sessions.extend(creator.join().expect("creator thread panicked"));
        for p in &producers {
            assert!(
                p.error.is_none(),
                "cycle {cycle}: {}",
                p.error.as_ref().unwrap()
            );
        }
        let progress: usize = producers
            .iter()
            .zip(&before)
            .map(|(p, b)| p.acks.len() - b)
            .sum();
        assert!(
            progress > 0,
            "cycle {cycle}: no append was acknowledged in {load_time:?}"
        );
        let seen: Vec<Vec<Value>> = observers
            .into_iter()
            .map(|h| h.join().expect("observer thread"))
            .collect();
        let in_flight = producers.iter().filter(|p| p.pending.is_some()).count();
        eprintln!("cycle {cycle}: {progress} appends acknowledged, {in_flight} in flight at kill");

        server.restart();
        resolve_pending(server.port(), &mut producers);
        let total = verify(server.port(), &producers, cycle);
        eprintln!("cycle {cycle}: verified {total} events after restart");
        for (s, seen) in seen.iter().enumerate() {
            let session = format!("crash-{s}");
            let got = seqs(seen);
            assert_eq!(
                got,
                (1..=got.len() as u64).collect::<Vec<_>>(),
                "cycle {cycle}: tail of {session} before the crash was not gap-free"
            );
            let last = last_seq_of(server.port(), &session).unwrap_or(0);
            assert!(
                got.len() as u64 <= last,
                "cycle {cycle}: a tail was shown seq {} of {session} before the crash, but after restart last_seq is {last}",
                got.len()
            );
            let after = read_all_events(
                server.port(),
                &session,
                got.len() as u64,
                Duration::from_secs(30),
            );
            for (a, b) in seen.iter().zip(&after) {
                assert_eq!(a, b, "cycle {cycle}: {session} seq {} shown to a tail before the crash differs after restart", a["seq"]);
            }
            eprintln!(
                "cycle {cycle}: tail of {session} saw {} events before the kill; all durable",
                got.len()
            );
        }
        let listed: std::collections::HashSet<String> = list_all(server.port(), "")
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        for id in &created_sessions {
            assert!(
                listed.contains(id),
                "cycle {cycle}: acknowledged create of {id} lost"
            );
        }
        eprintln!(
            "cycle {cycle}: {} acknowledged creates all present",
            created_sessions.len()
        );
    }

    // One more restart without load: recovering an already-recovered log.
    server.restart();
    verify(server.port(), &producers, cycles + 1);
    // Producer state survived: the next append of each producer continues its
    // sequence, and a retry of its last append still dedupes.
    for p in producers.iter_mut() {
        // An older entry inside the dedupe window also survived recovery.
        if p.next > 11 {
            let old = p.next - 10;
            let a = p
                .acks
                .iter()
                .find(|a| a.producer_seq == old)
                .expect("ack")
                .clone();
            let (st, v) = append(server.port(), &p.session.clone(), &body(p, old));
            assert_eq!(
                (st, v.clone()),
                (
                    201,
                    json!({"seq": a.seq, "last_seq": v["last_seq"], "deduped": true, "cursor": a.seq, "committed_cursor": v["last_seq"]})
                ),
                "retry of {}/{old} (inside the window) after recovery",
                p.id
            );
        }
        let last = p.next - 1;
        if last >= 1 {
            let (st, v) = append(server.port(), &p.session.clone(), &body(p, last));
            assert_eq!(st, 201, "retry of {}/{last} after recovery: {v}", p.id);
            assert_eq!(
                v["deduped"], true,
                "retry of {}/{last} after recovery: {v}",
                p.id
            );
        }
        let (st, v) = append(server.port(), &p.session.clone(), &body(p, p.next));
        assert_eq!(st, 201, "{}/{} after recovery: {v}", p.id, p.next);
        assert_eq!(v["deduped"], false);
        p.acks.push(Ack {
            session: p.session.clone(),
            seq: v["seq"].as_u64().unwrap(),
            producer_id: p.id.clone(),
            producer_seq: p.next,
        });
        p.next += 1;
    }
    verify(server.port(), &producers, cycles + 2);
}

/// Snapshot of everything observable about the sessions: list rows and all events.
fn snapshot(port: u16) -> (Vec<Value>, Vec<Vec<Value>>) {
    let rows = list_all(port, "");
    let events = rows
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap();
            let last = r["last_seq"].as_u64().expect("last_seq in list row");
            let evs = read_all_events(port, id, last, Duration::from_secs(30));
            assert_eq!(evs.len() as u64, last, "{id}");
            evs
        })
        .collect();
    (rows, events)
}

#[test]
fn restarts_preserve_sessions_and_events_exactly() {
    let mut server = Server::start_default();
    let p = server.port();
    create_session_with(
        p,
        json!({"id": "keep-1", "title": "One", "metadata": {"k": "v", "n": [1, 2]}}),
    );
    create_session_with(p, json!({"id": "keep-2"}));
    create_session_with(p, json!({"id": "keep-empty", "title": ""}));
    let mut next: HashMap<(String, String), u64> = HashMap::new();
    for i in 1..=300u64 {
        let sid = if i % 3 == 0 { "keep-2" } else { "keep-1" };
        let pid = format!("w{}", i % 4);
        let n = next.entry((sid.to_string(), pid.clone())).or_insert(0);
        *n += 1;
        let mut b = event(&pid, *n);
        b["payload"] = json!({"i": i, "f": 1.25, "s": "ü\"quoted\"\n"});
        if i % 5 == 0 {
            b["source"] = json!("src");
            b["idempotency_key"] = json!(format!("ik-{i}"));
            b["refs"] = json!({"to_seq": i / 2, "request_id": "r"});
        }
        let (st, v) = append(p, sid, &b);
        assert_eq!(st, 201, "{b} → {v}");
    }
    let before = snapshot(p);
    assert_eq!(before.0.len(), 3);

    server.restart(); // kill -9
    let after_kill = snapshot(server.port());
    assert_eq!(after_kill.0, before.0, "list rows after kill -9 restart");
    assert_eq!(after_kill.1, before.1, "events after kill -9 restart");

    let status = server
        .sigterm(Duration::from_secs(15))
        .expect("no exit within 15 s of SIGTERM");
    assert!(status.success(), "SIGTERM exit status {status}");
    server.restart();
    let after_term = snapshot(server.port());
    assert_eq!(after_term.0, before.0, "list rows after SIGTERM restart");
    assert_eq!(after_term.1, before.1, "events after SIGTERM restart");

    // Appends continue gap-free; a duplicate create is still refused.
    let (st, v) = append(server.port(), "keep-empty", &event("x", 1));
    assert_eq!(
        (st, v),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
        )
    );
    let (st, v) = post_json(server.port(), "/v1/sessions", &json!({"id": "keep-1"}));
    assert_error(st, &v, 409, "session_exists");
}

#[test]
fn sigterm_under_load_loses_nothing_acknowledged() {
    let mut server = Server::start_default();
    for s in 0..SESSIONS {
        create_session(server.port(), &format!("crash-{s}"));
    }
    let mut producers: Vec<Producer> = (0..PRODUCERS)
        .map(|i| Producer {
            id: format!("producer-{i}"),
            session: format!("crash-{}", i % SESSIONS),
            next: 1,
            pending: None,
            acks: Vec::new(),
            error: None,
            pad: 96,
        })
        .collect();
    let port = server.port();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let handles: Vec<_> = producers
        .drain(..)
        .map(|p| {
            let stop = stop.clone();
            std::thread::spawn(move || run_producer(p, port, stop, deadline))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    server.send_sigterm();
    let status = server.wait_exit(Duration::from_secs(15));
    producers = handles
        .into_iter()
        .map(|h| h.join().expect("producer thread"))
        .collect();
    let status = status.expect("server did not exit within 15 s of SIGTERM under load");
    assert!(status.success(), "exit status {status}");
    for p in &producers {
        assert!(p.error.is_none(), "{}", p.error.as_ref().unwrap());
    }
    let acked: usize = producers.iter().map(|p| p.acks.len()).sum();
    assert!(acked > 0);
    server.restart();
    resolve_pending(server.port(), &mut producers);
    let total = verify(server.port(), &producers, 1);
    eprintln!(
        "SIGTERM under load: {acked} acknowledged before shutdown, {total} events after restart"
    );
}
