//! Black-box tests: WebSocket tail (api-contract §4.3, §5.4, §7, §14.3, §14.5,
//! §14.18, §14.19).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn append_n(port: u16, session: &str, producer: &str, from: u64, to: u64) {
    let mut c = HttpConn::new(port);
    for i in from..=to {
        let (st, v) = c.post_json(&append_path(session), &event(producer, i));
        assert_eq!(st, 201, "append {producer}/{i}: {v}");
    }
}

fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn replay_from_zero_then_live() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "r");
    append_n(p, "r", "w", 1, 5);
    let mut t = Tail::connect(p, "r", "cursor=0");
    let evs = t.collect_events(5, T);
    assert_eq!(seqs(&evs), vec![1, 2, 3, 4, 5]);
    t.assert_silent(Duration::from_millis(300));
    append_n(p, "r", "w", 6, 8);
    let evs = t.collect_events(3, T);
    assert_eq!(seqs(&evs), vec![6, 7, 8]);
    t.assert_silent(Duration::from_millis(300));
    // No cursor at all means 0.
    let mut t2 = Tail::connect(p, "r", "");
    assert_eq!(seqs(&t2.collect_events(8, T)), (1..=8).collect::<Vec<_>>());
}

#[test]
fn replay_from_cursor_n() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "c");
    append_n(p, "c", "w", 1, 10);
    let mut t = Tail::connect(p, "c", "cursor=7");
    assert_eq!(seqs(&t.collect_events(3, T)), vec![8, 9, 10]);
    t.assert_silent(Duration::from_millis(300));
    append_n(p, "c", "w", 11, 11);
    assert_eq!(seqs(&t.collect_events(1, T)), vec![11]);
    // Digit-string cursor forms.
    let mut t = Tail::connect(p, "c", "cursor=%2B9");
    assert_eq!(seqs(&t.collect_events(2, T)), vec![10, 11]);
    let mut t = Tail::connect(p, "c", "cursor=0010");
    assert_eq!(seqs(&t.collect_events(1, T)), vec![11]);
    t.assert_silent(Duration::from_millis(200));
    // cursor == last_seq: silent until the next append.
    let mut t = Tail::connect(p, "c", "cursor=11");
    t.assert_silent(Duration::from_millis(300));
    append_n(p, "c", "w", 12, 12);
    assert_eq!(seqs(&t.collect_events(1, T)), vec![12]);
}

#[test]
fn cursor_beyond_last_seq_then_live() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "b");
    append_n(p, "b", "w", 1, 3);
    let mut t = Tail::connect(p, "b", "cursor=10");
    t.assert_silent(Duration::from_millis(300));
    append_n(p, "b", "w", 4, 10);
    t.assert_silent(Duration::from_millis(500));
    append_n(p, "b", "w", 11, 12);
    assert_eq!(seqs(&t.collect_events(2, T)), vec![11, 12]);
    // Empty session: no frames until the first append.
    create_session(p, "empty");
    let mut t = Tail::connect(p, "empty", "cursor=0");
    t.assert_silent(Duration::from_millis(300));
    append_n(p, "empty", "w", 1, 1);
    assert_eq!(seqs(&t.collect_events(1, T)), vec![1]);
}

#[test]
fn batch_framing() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "f");
    append_n(p, "f", "w", 1, 7);
    // batch_size 1 (explicit and default): one object per frame.
    for q in ["cursor=0&batch_size=1", "cursor=0"] {
        let mut t = Tail::connect(p, "f", q);
        let frames = t.collect_frames(7, T);
        assert_eq!(frames.len(), 7, "{q}");
        for (i, f) in frames.iter().enumerate() {
            assert!(f.is_object(), "{q}: frame {i} is not an object: {f}");
            assert_eq!(f["seq"], json!(i as u64 + 1));
        }
    }
    // batch_size 3: arrays; replay of 7 events in one read → 3, 3, 1.
    let mut t = Tail::connect(p, "f", "cursor=0&batch_size=3");
    let frames = t.collect_frames(7, T);
    let sizes: Vec<usize> = frames
        .iter()
        .map(|f| {
            f.as_array()
                .unwrap_or_else(|| panic!("batch frame not an array: {f}"))
                .len()
        })
        .collect();
    assert_eq!(sizes, vec![3, 3, 1], "replay frame sizes");
    let flat: Vec<Value> = frames
        .iter()
        .flat_map(|f| f.as_array().unwrap().clone())
        .collect();
    assert_eq!(seqs(&flat), (1..=7).collect::<Vec<_>>());
    // Live pushes with batch_size > 1 are one-element arrays.
    append_n(p, "f", "w", 8, 9);
    let frames = t.collect_frames(2, T);
    let flat: Vec<Value> = frames
        .iter()
        .flat_map(|f| {
            let a = f
                .as_array()
                .unwrap_or_else(|| panic!("live frame not an array: {f}"));
            assert!(!a.is_empty() && a.len() <= 3, "live frame size {}", a.len());
            a.clone()
        })
        .collect();
    assert_eq!(seqs(&flat), vec![8, 9]);
    // batch_size 1000 and a digit-string batch_size.
    let mut t = Tail::connect(p, "f", "batch_size=1000");
    let frames = t.collect_frames(9, T);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].as_array().unwrap().len(), 9);
    let mut t = Tail::connect(p, "f", "cursor=5&batch_size=%2B2");
    let frames = t.collect_frames(4, T);
    assert_eq!(
        frames
            .iter()
            .map(|f| f.as_array().unwrap().len())
            .collect::<Vec<_>>(),
        vec![2, 2]
    );
}

#[test]
fn invalid_cursor_and_batch_size() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "i");
    for q in [
        "cursor=-1",
        "cursor=abc",
        "cursor=1.5",
        "cursor=",
        "cursor=1e3",
        "cursor[a]=1",
        "cursor=%201",
    ] {
        let r = raw_request(p, &upgrade_request(&format!("/v1/sessions/i/tail?{q}")));
        assert_error_resp(&r, 400, "invalid_cursor");
        assert_eq!(r.json()["message"], "Invalid cursor value");
    }
    for q in [
        "batch_size=0",
        "batch_size=1001",
        "batch_size=x",
        "batch_size=-1",
        "batch_size=2.0",
        "batch_size=",
    ] {
        let r = raw_request(p, &upgrade_request(&format!("/v1/sessions/i/tail?{q}")));
        assert_error_resp(&r, 400, "invalid_tail_batch_size");
        assert_eq!(r.json()["message"], "Invalid tail batch size value");
    }
    // Order: upgrade → cursor → batch_size → session lookup.
    let r = raw_request(
        p,
        &upgrade_request("/v1/sessions/i/tail?cursor=x&batch_size=0"),
    );
    assert_error_resp(&r, 400, "invalid_cursor");
    let r = raw_request(p, &upgrade_request("/v1/sessions/unknown/tail?cursor=x"));
    assert_error_resp(&r, 400, "invalid_cursor");
    let r = raw_request(
        p,
        &upgrade_request("/v1/sessions/unknown/tail?batch_size=0"),
    );
    assert_error_resp(&r, 400, "invalid_tail_batch_size");
    // Through a real WebSocket client as well.
    match Tail::try_connect(p, "i", "cursor=-5") {
        Err((400, body)) => {
            let v: Value = serde_json::from_slice(&body).expect("JSON body");
            assert_eq!(v["error"], "invalid_cursor");
        }
        Err((st, b)) => panic!("{st} {}", String::from_utf8_lossy(&b)),
        Ok(_) => panic!("upgrade accepted with cursor=-5"),
    }
}

#[test]
fn upgrade_required_and_unknown_session() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "u");
    let r = get(p, "/v1/sessions/u/tail");
    assert_error_resp(&r, 400, "invalid_websocket_upgrade");
    assert_eq!(r.json()["message"], "WebSocket upgrade required");
    // Upgrade header with another protocol.
    let r = request(
        p,
        "GET",
        "/v1/sessions/u/tail",
        &[("Connection", "Upgrade"), ("Upgrade", "h2c")],
        None,
    );
    assert_error_resp(&r, 400, "invalid_websocket_upgrade");
    // Upgrade check precedes cursor validation and session lookup.
    let r = get(p, "/v1/sessions/u/tail?cursor=-1");
    assert_error_resp(&r, 400, "invalid_websocket_upgrade");
    let r = get(p, "/v1/sessions/nope/tail");
    assert_error_resp(&r, 400, "invalid_websocket_upgrade");
    // Case-insensitive upgrade value.
    let raw = String::from_utf8(upgrade_request("/v1/sessions/u/tail"))
        .unwrap()
        .replace("websocket", "WebSocket");
    let r = raw_request(p, raw.as_bytes());
    assert_eq!(
        r.status,
        101,
        "Upgrade: WebSocket → {} {}",
        r.status,
        r.text()
    );
    // Unknown session → 404 session_not_found before the upgrade.
    let r = raw_request(p, &upgrade_request("/v1/sessions/nope/tail"));
    assert_error_resp(&r, 404, "session_not_found");
    match Tail::try_connect(p, "nope", "cursor=0") {
        Err((404, body)) => {
            let v: Value = serde_json::from_slice(&body).expect("JSON body");
            assert_eq!(v["error"], "session_not_found");
        }
        Err((st, b)) => panic!("{st} {}", String::from_utf8_lossy(&b)),
        Ok(_) => panic!("upgrade accepted for an unknown session"),
    }
    // A tail of a session with special characters in its id.
    create_session(p, "a b/c");
    append_n(p, "a b/c", "w", 1, 2);
    let mut t = Tail::connect(p, "a b/c", "cursor=0");
    assert_eq!(seqs(&t.collect_events(2, T)), vec![1, 2]);
}

#[test]
fn reconnect_with_cursor_gets_exactly_the_rest() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "rc");
    append_n(p, "rc", "w", 1, 6);
    let mut t = Tail::connect(p, "rc", "cursor=0");
    let first = t.collect_events(3, T);
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    let last = first.last().unwrap()["seq"].as_u64().unwrap();
    t.close();
    // More appends while disconnected.
    append_n(p, "rc", "w", 7, 9);
    let mut t = Tail::connect(p, "rc", &format!("cursor={last}"));
    assert_eq!(seqs(&t.collect_events(6, T)), vec![4, 5, 6, 7, 8, 9]);
    t.assert_silent(Duration::from_millis(300));
    // Dropping the client abruptly (no close frame) does not disturb the server.
    drop(t);
    append_n(p, "rc", "w", 10, 10);
    let mut t = Tail::connect(p, "rc", "cursor=9");
    assert_eq!(seqs(&t.collect_events(1, T)), vec![10]);
    // Client text frames and pings are ignored / answered; stream goes on.
    use tungstenite::Message;
    t.ws.send(Message::Text("hello".into())).unwrap();
    t.ws.send(Message::Ping(b"p".to_vec())).unwrap();
    append_n(p, "rc", "w", 11, 11);
    let deadline = Instant::now() + T;
    let mut saw_pong = false;
    let mut got = Vec::new();
    while Instant::now() < deadline && got.is_empty() {
        let _ =
            t.ws.get_mut()
                .set_read_timeout(Some(Duration::from_millis(200)));
        match t.ws.read() {
            Ok(Message::Pong(_)) => saw_pong = true,
            Ok(Message::Text(x)) => got.push(serde_json::from_str::<Value>(&x).unwrap()),
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seqs(&got), vec![11]);
    // The pong may arrive before or after; give it a moment.
    if !saw_pong {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !saw_pong {
            let _ =
                t.ws.get_mut()
                    .set_read_timeout(Some(Duration::from_millis(200)));
            if let Ok(Message::Pong(_)) = t.ws.read() {
                saw_pong = true;
            }
        }
    }
    assert!(saw_pong, "ping was not answered with a pong");
}

#[test]
fn frames_have_contract_fields() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "ff");
    append_ok(
        p,
        "ff",
        &json!({"type": "a.b", "payload": {"x": [1, {"y": null}]}, "producer_id": "w", "producer_seq": 1}),
    );
    append_ok(
        p,
        "ff",
        &json!({"type": "c", "payload": {}, "producer_id": "w", "producer_seq": 2, "source": "agent",
                "idempotency_key": "k2", "refs": {"to_seq": 1}, "metadata": {"trace": "t"}}),
    );
    let mut t = Tail::connect(p, "ff", "cursor=0");
    let replayed = t.collect_events(2, T);
    append_ok(
        p,
        "ff",
        &json!({"type": "live", "payload": {"z": 1}, "producer_id": "w", "producer_seq": 3}),
    );
    let live = t.collect_events(1, T);
    let all: Vec<Value> = replayed.into_iter().chain(live).collect();
    assert_eq!(seqs(&all), vec![1, 2, 3]);
    let principal = json!({"tenant_id": "service", "actor": "service:service", "principal_type": "service", "principal_id": "service"});
    for e in &all {
        let o = e.as_object().unwrap();
        for k in [
            "seq",
            "type",
            "payload",
            "actor",
            "producer_id",
            "producer_seq",
            "metadata",
            "refs",
            "inserted_at",
            "tenant_id",
        ] {
            assert!(o.contains_key(k), "frame lacks {k}: {e}");
        }
        for (k, v) in o {
            assert!(
                !v.is_null(),
                "frame has null {k} (absent fields must be omitted): {e}"
            );
        }
        assert_eq!(e["actor"], "service:service");
        assert_eq!(e["tenant_id"], "service");
        assert_eq!(e["producer_id"], "w");
        assert!(e["producer_seq"].is_u64());
        assert!(e["payload"].is_object() && e["metadata"].is_object() && e["refs"].is_object());
        assert_eq!(e["metadata"]["starcite_principal"], principal, "{e}");
        let ts = e["inserted_at"].as_str().unwrap();
        assert!(
            is_micro_ts(ts),
            "inserted_at {ts:?} not RFC 3339 UTC with 6 digits and Z"
        );
    }
    assert_eq!(all[0]["type"], "a.b");
    assert_eq!(all[0]["payload"], json!({"x": [1, {"y": null}]}));
    assert_eq!(all[0]["refs"], json!({}));
    assert!(all[0].get("source").is_none() && all[0].get("idempotency_key").is_none());
    assert_eq!(all[1]["source"], "agent");
    assert_eq!(all[1]["idempotency_key"], "k2");
    assert_eq!(all[1]["refs"], json!({"to_seq": 1}));
    assert_eq!(all[1]["metadata"]["trace"], "t");
    assert_eq!(all[2]["type"], "live");
    // inserted_at is non-decreasing along seq.
    let ts: Vec<&str> = all
        .iter()
        .map(|e| e["inserted_at"].as_str().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    // Replay (second socket) renders the live-pushed event identically.
    let mut t2 = Tail::connect(p, "ff", "cursor=2");
    let again = t2.collect_events(1, T);
    assert_eq!(
        again[0], all[2],
        "replayed vs live rendering of the same event"
    );
}

#[test]
fn concurrent_producers_every_tail_sees_all_in_order() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "cc");
    const PRODUCERS: u64 = 4;
    const PER: u64 = 60;
    const N: u64 = PRODUCERS * PER;
    // Three tails connected before any append; a fourth joins mid-way.
    let tails: Vec<_> = (0..3)
        .map(|i| {
            let t = Tail::connect(
                p,
                "cc",
                if i == 2 {
                    "cursor=0&batch_size=7"
                } else {
                    "cursor=0"
                },
            );
            std::thread::spawn(move || {
                let mut t = t;
                t.collect_events(N as usize, Duration::from_secs(60))
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = HttpConn::new(p);
                let pid = format!("prod-{k}");
                for i in 1..=PER {
                    let (st, v) = c.post_json(&append_path("cc"), &event(&pid, i));
                    assert_eq!(st, 201, "{pid}/{i}: {v}");
                    assert_eq!(v["deduped"], false);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let late = {
        let t = Tail::connect(p, "cc", "cursor=0&batch_size=50");
        std::thread::spawn(move || {
            let mut t = t;
            t.collect_events(N as usize, Duration::from_secs(60))
        })
    };
    for h in producers {
        h.join().expect("producer thread");
    }
    let mut results: Vec<Vec<Value>> = tails
        .into_iter()
        .map(|h| h.join().expect("tail thread"))
        .collect();
    results.push(late.join().expect("late tail"));
    for (i, evs) in results.iter().enumerate() {
        assert_eq!(
            seqs(evs),
            (1..=N).collect::<Vec<_>>(),
            "tail {i} saw a different sequence"
        );
        // Per producer, producer_seq increases by exactly 1 along seq.
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for e in evs {
            let pid = e["producer_id"].as_str().unwrap().to_string();
            let ps = e["producer_seq"].as_u64().unwrap();
            let prev = last.insert(pid.clone(), ps).unwrap_or(0);
            assert_eq!(
                ps,
                prev + 1,
                "tail {i}: producer {pid} order broken at seq {}",
                e["seq"]
            );
        }
        assert_eq!(last.len() as u64, PRODUCERS);
        assert!(last.values().all(|&v| v == PER));
    }
    // All tails saw identical events.
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
}

#[test]
fn many_tails_on_many_sessions() {
    let s = Server::start_default();
    let p = s.port();
    let sessions: Vec<String> = (0..8).map(|i| format!("m-{i}")).collect();
    for id in &sessions {
        create_session(p, id);
    }
    let mut tails: Vec<(String, Tail)> = Vec::new();
    for id in &sessions {
        for _ in 0..3 {
            tails.push((id.clone(), Tail::connect(p, id, "cursor=0")));
        }
    }
    for (k, id) in sessions.iter().enumerate() {
        append_n(p, id, "w", 1, 5 + k as u64);
    }
    for (id, t) in tails.iter_mut() {
        let k: u64 = id[2..].parse().unwrap();
        let evs = t.collect_events(5 + k as usize, T);
        assert_eq!(seqs(&evs), (1..=5 + k).collect::<Vec<_>>(), "{id}");
        for e in &evs {
            assert_eq!(e["producer_id"], "w");
        }
        t.assert_silent(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_closes_tails_with_going_away() {
    let mut s = Server::start_default();
    let p = s.port();
    create_session(p, "st");
    append_n(p, "st", "w", 1, 2);
    let mut t1 = Tail::connect(p, "st", "cursor=0");
    let mut t2 = Tail::connect(p, "st", "cursor=0&batch_size=10");
    assert_eq!(seqs(&t1.collect_events(2, T)), vec![1, 2]);
    assert_eq!(seqs(&t2.collect_events(2, T)), vec![1, 2]);
    s.send_sigterm();
    for (name, t) in [("t1", &mut t1), ("t2", &mut t2)] {
        match t.next_frame(Duration::from_secs(10)) {
            Frame::Closed(Some((code, _))) => {
                assert_eq!(code, 1001, "{name}: close code on shutdown")
            }
            Frame::Closed(None) => {
                panic!("{name}: socket dropped without a close frame on SIGTERM")
            }
            Frame::Timeout => panic!("{name}: socket not closed within 10 s of SIGTERM"),
            Frame::Json(v) => panic!("{name}: unexpected frame {v}"),
            Frame::Other(o) => panic!("{name}: unexpected {o}"),
        }
    }
    let status = s.wait_exit(Duration::from_secs(15));
    let status = status.expect("server did not exit within 15 s of SIGTERM");
    assert!(status.success(), "clean shutdown exit status: {status}");
}

#[test]
fn large_replay_across_read_batches() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "big");
    append_n(p, "big", "w", 1, 2600);
    // batch_size 1000: frames never exceed the batch size, never span reads.
    let mut t = Tail::connect(p, "big", "cursor=0&batch_size=1000");
    let frames = t.collect_frames(2600, Duration::from_secs(30));
    let sizes: Vec<usize> = frames
        .iter()
        .map(|f| f.as_array().expect("array frame").len())
        .collect();
    assert!(sizes.iter().all(|&n| (1..=1000).contains(&n)), "{sizes:?}");
    let flat: Vec<Value> = frames
        .iter()
        .flat_map(|f| f.as_array().unwrap().clone())
        .collect();
    assert_eq!(seqs(&flat), (1..=2600).collect::<Vec<_>>());
    // batch_size 7 from a cursor in the middle.
    let mut t = Tail::connect(p, "big", "cursor=1234&batch_size=7");
    let frames = t.collect_frames(2600 - 1234, Duration::from_secs(30));
    assert!(frames.iter().all(|f| {
        let n = f.as_array().unwrap().len();
        (1..=7).contains(&n)
    }));
    let flat: Vec<Value> = frames
        .iter()
        .flat_map(|f| f.as_array().unwrap().clone())
        .collect();
    assert_eq!(seqs(&flat), (1235..=2600).collect::<Vec<_>>());
    // batch_size 1 over the whole range, then live.
    let mut t = Tail::connect(p, "big", "cursor=0");
    assert_eq!(
        seqs(&t.collect_events(2600, Duration::from_secs(30))),
        (1..=2600).collect::<Vec<_>>()
    );
    append_n(p, "big", "w", 2601, 2601);
    assert_eq!(seqs(&t.collect_events(1, T)), vec![2601]);
}

#[test]
fn tails_joining_during_heavy_load_are_gap_free() {
    // Subscribe-then-replay race: tails connect with various cursors while
    // producers are appending; each must see exactly cursor+1..N in order.
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "hl");
    const PRODUCERS: u64 = 4;
    const PER: u64 = 750;
    const N: u64 = PRODUCERS * PER;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|k| std::thread::spawn(move || append_n(p, "hl", &format!("p{k}"), 1, PER)))
        .collect();
    let mut joiners = Vec::new();
    for j in 0..8u64 {
        std::thread::sleep(Duration::from_millis(40));
        // Cursor: 0, or somewhere at/behind/ahead of the current head.
        let cursor = match j % 4 {
            0 => 0,
            1 => 50 * j,
            2 => 1,
            _ => 100 + 200 * j,
        };
        let bs = [1, 3, 1000, 16][j as usize % 4];
        let t = Tail::connect(p, "hl", &format!("cursor={cursor}&batch_size={bs}"));
        joiners.push(std::thread::spawn(move || {
            let mut t = t;
            let evs = t.collect_events((N - cursor) as usize, Duration::from_secs(90));
            (cursor, bs, evs)
        }));
    }
    for h in producers {
        h.join().expect("producer");
    }
    for h in joiners {
        let (cursor, bs, evs) = h.join().expect("tail");
        assert_eq!(
            seqs(&evs),
            (cursor + 1..=N).collect::<Vec<_>>(),
            "tail cursor={cursor} batch_size={bs}"
        );
    }
}

#[test]
fn large_events_cross_websocket_length_encodings() {
    // WebSocket payload lengths switch encoding at 126 and 65536 bytes;
    // frames up to ~8 MB (the body limit) must arrive intact.
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "lg");
    let sizes = [
        1usize,
        60,
        100,
        126,
        65_000,
        65_600,
        70_000,
        1 << 20,
        7_900_000,
    ];
    for (i, n) in sizes.iter().enumerate() {
        let b = json!({"type": "big", "payload": {"blob": "z".repeat(*n)}, "producer_id": "w", "producer_seq": i + 1});
        append_ok(p, "lg", &b);
    }
    let check = |evs: &[Value]| {
        assert_eq!(seqs(evs), (1..=sizes.len() as u64).collect::<Vec<_>>());
        for (e, n) in evs.iter().zip(sizes) {
            assert_eq!(
                e["payload"]["blob"].as_str().map(|s| s.len()),
                Some(n),
                "seq {}",
                e["seq"]
            );
        }
    };
    // Replay, one per frame and batched.
    let mut t = Tail::connect(p, "lg", "cursor=0");
    check(&t.collect_events(sizes.len(), Duration::from_secs(30)));
    let mut t2 = Tail::connect(p, "lg", "cursor=0&batch_size=1000");
    check(&t2.collect_events(sizes.len(), Duration::from_secs(30)));
    // Live.
    let mut live = Tail::connect(p, "lg", &format!("cursor={}", sizes.len()));
    let b = json!({"type": "big", "payload": {"blob": "q".repeat(3_000_000)}, "producer_id": "w", "producer_seq": sizes.len() + 1});
    append_ok(p, "lg", &b);
    let evs = live.collect_events(1, Duration::from_secs(30));
    assert_eq!(
        evs[0]["payload"]["blob"].as_str().map(|s| s.len()),
        Some(3_000_000)
    );
    // The replay sockets receive it live as well, and nothing else.
    for t in [&mut t, &mut t2] {
        let evs = t.collect_events(1, Duration::from_secs(30));
        assert_eq!(seqs(&evs), vec![sizes.len() as u64 + 1]);
        t.assert_silent(Duration::from_millis(100));
    }
}

#[test]
fn cursor_beyond_u64_is_accepted() {
    // §5.4: any int-or-digits cursor ≥ 0 is allowed, including one beyond
    // last_seq; the socket then stays silent.
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "hc");
    append_n(p, "hc", "w", 1, 2);
    let mut t = Tail::connect(p, "hc", "cursor=18446744073709551615");
    t.assert_silent(Duration::from_millis(300));
    match Tail::try_connect(p, "hc", "cursor=99999999999999999999999") {
        Ok(mut t) => t.assert_silent(Duration::from_millis(300)),
        Err((st, b)) => panic!(
            "cursor beyond u64 refused: {st} {}",
            String::from_utf8_lossy(&b)
        ),
    }
}
