//! Issue 13: limits that fit together, against the real binary.
//!
//! - Concurrent maximum-size appends to one session: each one succeeds or gets a
//!   clear 4xx/503, and the node stays ready and answers a small append.
//! - A group holding more than a log frame (64 MiB) of unarchived events is
//!   checkpointed (its snapshot written in parts) and restarted: every event is
//!   still there.
//! - A follower of a group holding more than a peer frame (16 MiB) of
//!   unarchived events catches up by a snapshot sent in chunks, and serves the
//!   events from its own replica.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{post_retry, read_session, Cluster, ClusterOpts};
use common::*;
use serde_json::{json, Value};

/// A body just under the 8,000,000-byte request limit.
const BIG_PAYLOAD: usize = 7_900_000;

fn big_body(producer: &str, pseq: u64) -> Vec<u8> {
    let body = json!({
        "type": "blob",
        "payload": {"s": "x".repeat(BIG_PAYLOAD)},
        "producer_id": producer,
        "producer_seq": pseq,
    });
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!(bytes.len() < 8_000_000);
    bytes
}

/// POSTs `body` until the answer is not a 503, within `budget`, and returns it.
/// Under load a big append may outlast the 2 s consensus timeout (503
/// `raft_timeout`, ambiguous); the identical retry is what a client does, and
/// dedupes if the first attempt was committed.
fn post_past_503(c: &mut HttpConn, path: &str, body: &[u8], budget: Duration) -> Response {
    let t0 = Instant::now();
    loop {
        let r = c
            .try_post(path, body)
            .unwrap_or_else(|e| panic!("POST {path}: no answer: {e}"));
        if r.status != 503 {
            return r;
        }
        assert!(
            t0.elapsed() < budget,
            "POST {path}: still 503 after {budget:?}: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(port: u16) -> bool {
    try_request(
        port,
        b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        false,
        Duration::from_secs(3),
    )
    .is_ok_and(|r| r.status == 200)
}

/// Segment files of a data dir, sorted by name (= by core, then sequence).
fn segments(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("log"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Kinds of the records in every segment of a data dir, e.g. "snapshot_part".
fn record_kinds(data_dir: &Path) -> Vec<&'static str> {
    use starcite_wire::record::ArchivedLogRecord;
    let mut kinds = Vec::new();
    for name in segments(data_dir) {
        let bytes = std::fs::read(data_dir.join("log").join(&name)).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let Ok(seg) = starcite_wire::log::decode_segment(&aligned) else {
            continue;
        };
        for (_, payload) in seg.frames {
            if let Ok(r) = rkyv::access::<ArchivedLogRecord, rkyv::rancor::Error>(payload) {
                kinds.push(match r {
                    ArchivedLogRecord::Entries { .. } => "entries",
                    ArchivedLogRecord::HardState { .. } => "hard_state",
                    ArchivedLogRecord::Snapshot { .. } => "snapshot",
                    ArchivedLogRecord::SnapshotPart { .. } => "snapshot_part",
                    ArchivedLogRecord::ChunkedSnapshot { .. } => "chunked_snapshot",
                    ArchivedLogRecord::Membership { .. } => "membership",
                });
            }
        }
    }
    kinds
}

/// Every event of `session` read through a tail on `port` (cursor 0), checked
/// gap-free; big payloads are checked by length.
fn read_all(port: u16, session: &str, last: u64) -> Vec<Value> {
    let events = read_session(port, session, last, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events.len() as u64, last);
    events
}

fn payload_len(e: &Value) -> usize {
    e["payload"]["s"].as_str().map_or(0, str::len)
}

#[test]
fn concurrent_maximum_size_appends_to_one_session() {
    let server = Server::start(ServerOpts::new().env("STARCITE_CORES", "1"));
    let port = server.port();
    create_session(port, "max");
    let mut acked: Vec<String> = Vec::new();
    for round in 0..3 {
        let workers: Vec<_> = (0..12)
            .map(|i| {
                std::thread::spawn(move || {
                    let producer = format!("p{round}-{i}");
                    let body = big_body(&producer, 1);
                    let mut c = HttpConn::with_timeout(port, Duration::from_secs(60));
                    (producer, c.try_post(&append_path("max"), &body))
                })
            })
            .collect();
        for w in workers {
            let (producer, r) = w.join().unwrap();
            let r = r.unwrap_or_else(|e| panic!("round {round}: an append got no answer: {e}"));
            match r.status {
                201 => acked.push(producer),
                // Clear refusals: backpressure, or a consensus timeout (ambiguous:
                // such an append may still have been committed).
                429 | 503 => {
                    let v = r.json();
                    assert!(v["error"].is_string(), "round {round}: {} {v}", r.status);
                }
                other => panic!("round {round}: unexpected {other}: {}", r.text()),
            }
        }
    }
    eprintln!("{} of 36 maximum-size appends acknowledged", acked.len());
    assert!(!acked.is_empty(), "nothing acknowledged");
    // The node is still whole: ready, and a small append succeeds within 10 s
    // (appends of the burst that timed out may still be finishing first).
    assert!(ready(port), "not ready after the burst");
    let mut c = HttpConn::with_timeout(port, Duration::from_secs(10));
    let small = event("small", 1).to_string();
    let r = post_past_503(
        &mut c,
        &append_path("max"),
        small.as_bytes(),
        Duration::from_secs(10),
    );
    let v = r.json();
    assert_eq!(r.status, 201, "{v}");
    let last = v["seq"].as_u64().unwrap();
    assert!(last > acked.len() as u64 && last <= 37, "{v}");
    // Every acknowledged append is there, once, whole.
    let events = read_all(port, "max", last);
    for p in &acked {
        let found: Vec<&Value> = events.iter().filter(|e| e["producer_id"] == *p).collect();
        assert_eq!(found.len(), 1, "acknowledged append of {p}");
        assert_eq!(payload_len(found[0]), BIG_PAYLOAD);
    }
    assert_eq!(events.last().unwrap()["producer_id"], "small");
}

#[test]
fn checkpoint_of_more_than_a_frame_of_hot_events_survives_restart() {
    let mut server = Server::start(
        ServerOpts::new()
            .env("STARCITE_CORES", "1")
            .env("STARCITE_NUM_GROUPS", "4")
            // Keep everything hot: the archiver does not run during the test.
            .env("STARCITE_ARCHIVE_FLUSH_INTERVAL_MS", "86400000")
            .env("STARCITE_LOG_CHECKPOINT_SIZE", "2MB"),
    );
    let port = server.port();
    create_session(port, "hot");
    create_session(port, "other");
    let mut c = HttpConn::with_timeout(port, Duration::from_secs(60));
    let budget = Duration::from_secs(60);
    for pseq in 1..=9 {
        let r = post_past_503(&mut c, &append_path("hot"), &big_body("p", pseq), budget);
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["seq"], json!(pseq));
    }
    // > 64 MiB hot. Retries dedupe: they grow the log, not the state, until a
    // checkpoint is due; small appends keep batches coming until every group
    // moved to a new segment and the first one is deleted.
    let first = segments(server.data_dir())
        .first()
        .cloned()
        .expect("a segment");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut n = 0;
    while segments(server.data_dir()).contains(&first) {
        assert!(Instant::now() < deadline, "no checkpoint within 90 s");
        n += 1;
        if n <= 30 {
            let r = post_past_503(&mut c, &append_path("hot"), &big_body("p", 9), budget);
            assert_eq!(r.status, 201, "{}", r.text());
            assert_eq!(r.json()["deduped"], json!(true));
        }
        let small = event("o", n).to_string();
        let r = post_past_503(&mut c, &append_path("other"), small.as_bytes(), budget);
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let kinds = record_kinds(server.data_dir());
    assert!(
        kinds.contains(&"chunked_snapshot") && kinds.contains(&"snapshot_part"),
        "the big group's snapshot was written in parts: {kinds:?}"
    );
    drop(c);
    server.kill();
    server.restart();
    let port = server.port();
    let events = read_all(port, "hot", 9);
    assert!(events.iter().all(|e| payload_len(e) == BIG_PAYLOAD));
    assert_eq!(
        events
            .iter()
            .map(|e| e["producer_seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    // The producer window survived too: a retry still dedupes to seq 9.
    let mut c = HttpConn::with_timeout(port, Duration::from_secs(60));
    let r = post_past_503(&mut c, &append_path("hot"), &big_body("p", 9), budget);
    assert_eq!(r.status, 201);
    assert_eq!(
        (r.json()["seq"].clone(), r.json()["deduped"].clone()),
        (json!(9), json!(true))
    );
}

#[test]
fn follower_catches_up_by_a_chunked_snapshot() {
    let mut opts = ClusterOpts {
        num_groups: 4,
        ..ClusterOpts::default()
    };
    opts.env.extend([
        (
            "STARCITE_ARCHIVE_FLUSH_INTERVAL_MS".into(),
            "86400000".into(),
        ),
        ("STARCITE_LOG_CHECKPOINT_SIZE".into(), "2MB".into()),
    ]);
    let mut c = Cluster::start(opts);
    let ports = c.ports();
    let (st, v, _) = post_retry(
        &ports,
        "/v1/sessions",
        &json!({"id": "big"}),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(st == 201 || st == 409, "{st} {v}");

    let victim = 2;
    c.kill9(victim);
    let survivors = c.ports_of(&[0, 1]);
    let big = |pseq: u64| -> Value { serde_json::from_slice(&big_body("p", pseq)).unwrap() };
    // > 16 MiB hot in the group while the follower is down.
    for pseq in 1..=3 {
        let (st, v, _) = post_retry(
            &survivors,
            "/v1/sessions/big/append",
            &big(pseq),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["seq"].as_u64(), Some(pseq), "{v}");
    }
    // Compaction on both survivors drops the entries the follower would need.
    let firsts: Vec<String> = (0..2)
        .map(|i| segments(c.data_dir(i)).first().cloned().unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut n = 0;
    while (0..2).any(|i| segments(c.data_dir(i)).contains(&firsts[i])) {
        assert!(
            Instant::now() < deadline,
            "survivors did not compact within 90 s"
        );
        n += 1;
        let (st, v, _) = post_retry(
            &survivors,
            "/v1/sessions/big/append",
            &big(3),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!((st, v["deduped"].clone()), (201, json!(true)), "{v}");
        assert!(n < 40, "no compaction after {n} retries");
    }

    let t0 = Instant::now();
    c.restart(victim);
    // The follower serves the events from its own replica once it caught up.
    let events = read_all(c.http_port(victim), "big", 3);
    eprintln!(
        "follower restarted and served {} MB from its replica in {:?}",
        3 * BIG_PAYLOAD / 1_000_000,
        t0.elapsed()
    );
    assert!(events.iter().all(|e| payload_len(e) == BIG_PAYLOAD));
    let kinds = record_kinds(c.data_dir(victim));
    assert!(
        kinds.contains(&"chunked_snapshot"),
        "the follower installed a snapshot larger than a peer frame: {kinds:?}"
    );
    assert!(
        c.grep_logs("too large for the transport").is_empty(),
        "a raft message was dropped as too large"
    );
    c.assert_no_panics();
}
