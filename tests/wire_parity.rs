//! Parity of the binary protocol with the HTTP API: the same scenarios over
//! both give the same seqs and the same error names (docs/wire-protocol.md).

mod common;

use common::*;
use serde_json::Value;
use starcite_wire::client::{Client, ClientConfig, ClientError};
use starcite_wire::proto::AppendFields;
use std::time::Duration;

fn client(s: &Server) -> Client {
    Client::connect(ClientConfig::new([format!("127.0.0.1:{}", s.wire_port())])).expect("connect")
}

fn fields(producer: &str, pseq: u64, payload: &str) -> AppendFields {
    AppendFields {
        event_type: "test.event".into(),
        payload: payload.as_bytes().to_vec(),
        producer_id: producer.into(),
        producer_seq: pseq,
        ..Default::default()
    }
}

/// The HTTP body carrying the same fields (JSON members spliced as given).
fn http_body(f: &AppendFields) -> Vec<u8> {
    let s = |v: &str| serde_json::to_string(v).unwrap();
    let mut out = format!("{{\"type\":{}", s(&f.event_type));
    if !f.payload.is_empty() {
        out += &format!(",\"payload\":{}", String::from_utf8_lossy(&f.payload));
    }
    out += &format!(
        ",\"producer_id\":{},\"producer_seq\":{}",
        s(&f.producer_id),
        f.producer_seq
    );
    for (k, v) in [
        ("actor", &f.actor),
        ("source", &f.source),
        ("idempotency_key", &f.idempotency_key),
    ] {
        if let Some(v) = v {
            out += &format!(",\"{k}\":{}", s(v));
        }
    }
    for (k, v) in [("metadata", &f.metadata), ("refs", &f.refs)] {
        if let Some(v) = v {
            out += &format!(",\"{k}\":{}", String::from_utf8_lossy(v));
        }
    }
    if let Some(e) = f.expected_seq {
        out += &format!(",\"expected_seq\":{e}");
    }
    out.push('}');
    out.into_bytes()
}

type Outcome = Result<(u64, u64, bool), String>;

fn over_http(port: u16, session: &str, f: &AppendFields) -> Outcome {
    let r = post_raw(port, &append_path(session), &http_body(f));
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status == 201 {
        Ok((
            v["seq"].as_u64().unwrap(),
            v["last_seq"].as_u64().unwrap(),
            v["deduped"].as_bool().unwrap(),
        ))
    } else {
        Err(v["error"].as_str().unwrap_or("?").to_owned())
    }
}

fn over_wire(c: &Client, session: &str, f: &AppendFields) -> Outcome {
    match c.append(session, f.clone()) {
        Ok(a) => Ok((a.seq, a.last_seq, a.deduped)),
        Err(e) => Err(e.code().to_owned()),
    }
}

/// The scenario: (label, fields) in order, against one session.
fn scenario() -> Vec<(&'static str, AppendFields)> {
    let ok = |p: &str, n: u64| fields(p, n, &format!("{{\"n\":{n}}}"));
    let mut v = vec![
        ("first", ok("p1", 1)),
        ("second", ok("p1", 2)),
        ("dedupe", ok("p1", 2)),
        (
            "replay with other content",
            fields("p1", 2, "{\"n\":\"other\"}"),
        ),
        ("gap in producer_seq", ok("p1", 4)),
        ("other producer", ok("p2", 1)),
    ];
    let mut f = ok("p1", 3);
    f.expected_seq = Some(1);
    v.push(("stale expected_seq", f));
    let mut f = ok("p1", 3);
    f.expected_seq = Some(3);
    v.push(("right expected_seq", f));
    let mut f = ok("p1", 4);
    f.event_type = String::new();
    v.push(("empty type", f));
    v.push(("payload not an object", fields("p1", 4, "[1,2]")));
    v.push(("payload malformed", fields("p1", 4, "{\"a\":")));
    v.push(("payload absent", fields("p1", 4, "")));
    v.push(("producer_seq 0", ok("p1", 0)));
    let mut f = ok("p1", 4);
    f.metadata = Some(b"[]".to_vec());
    v.push(("metadata not an object", f));
    let mut f = ok("p1", 4);
    f.refs = Some(b"1".to_vec());
    v.push(("refs not an object", f));
    let mut f = ok("p1", 4);
    f.refs = Some(b"{\"to_seq\":\"x\"}".to_vec());
    v.push(("bad refs.to_seq", f));
    let mut f = ok("p1", 4);
    f.actor = Some("someone:else".into());
    v.push(("foreign actor", f));
    let mut f = ok("p1", 4);
    f.metadata = Some(b"{\"k\":[1,{\"x\":null}]}".to_vec());
    f.source = Some("agent".into());
    f.idempotency_key = Some("idem-1".into());
    f.refs = Some(b"{\"to_seq\":1,\"request_id\":\"r\"}".to_vec());
    v.push(("every optional field", f));
    v.push((
        "deep nesting",
        fields("p1", 5, &format!("{}{}", "[".repeat(200), "]".repeat(200))),
    ));
    v.push(("after the errors", ok("p1", 5)));
    v
}

#[test]
fn appends_give_the_same_seqs_and_errors_over_http_and_wire() {
    let s = Server::start_default();
    let c = client(&s);
    create_session(s.port(), "par-http");
    let created = c
        .create_session(Some("par-wire"), Some("t"), Some(b"{\"k\":1}"))
        .expect("create over wire");
    assert_eq!(created.id, "par-wire");
    let body: Value = serde_json::from_slice(&created.json).unwrap();
    assert_eq!(body["id"], "par-wire");
    assert_eq!(body["metadata"]["k"], 1);

    let mut report = Vec::new();
    for (label, f) in scenario() {
        let h = over_http(s.port(), "par-http", &f);
        let w = over_wire(&c, "par-wire", &f);
        report.push(format!("{label}: http {h:?} wire {w:?}"));
        assert_eq!(h, w, "{label}\n{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
    // Unknown session, and create conflicts.
    let f = fields("p", 1, "{}");
    assert_eq!(
        over_http(s.port(), "nope", &f),
        Err("session_not_found".into())
    );
    assert_eq!(over_wire(&c, "nope", &f), Err("session_not_found".into()));
    let again = c.create_session(Some("par-http"), None, None).unwrap_err();
    assert_eq!(again.code(), "session_exists");
    let (st, v) = post_json(
        s.port(),
        "/v1/sessions",
        &serde_json::json!({"id": "par-wire"}),
    );
    assert_eq!((st, v["error"].as_str()), (409, Some("session_exists")));
    let bad_meta = c
        .create_session(Some("x1"), None, Some(b"[1]"))
        .unwrap_err();
    let (_, v) = post_json(
        s.port(),
        "/v1/sessions",
        &serde_json::json!({"id": "x2", "metadata": [1]}),
    );
    assert_eq!(Some(bad_meta.code()), v["error"].as_str());
    let generated = c.create_session(None, None, None).unwrap();
    assert!(generated.id.starts_with("ses_"), "{}", generated.id);
    assert_eq!(c.ping(42), Ok(42));
}

#[test]
fn tails_from_cursors_match_http_tails() {
    let s = Server::start_default();
    let c = client(&s);
    create_session(s.port(), "tail-par");
    for n in 1..=30 {
        append_ok(s.port(), "tail-par", &event("p", n));
    }
    let mut total = 30u64;
    for (live_n, cursor) in [0u64, 7, 29, 30].into_iter().enumerate() {
        let want = (total - cursor) as usize;
        let mut http = Tail::connect(
            s.port(),
            "tail-par",
            &format!("cursor={cursor}&batch_size=4"),
        );
        let http_events = if want > 0 {
            http.collect_events(want, Duration::from_secs(10))
        } else {
            Vec::new()
        };
        let sub = c.subscribe("tail-par", cursor, 4).expect("subscribe");
        let mut wire = Vec::new();
        while wire.len() < want {
            let batch = sub
                .next_timeout(Duration::from_secs(10))
                .expect("events in time")
                .expect("no error");
            assert!(batch.len() <= 4, "max_batch respected");
            wire.extend(batch);
        }
        let wire_json: Vec<Value> = wire
            .iter()
            .map(|e| serde_json::from_slice(&e.json).unwrap())
            .collect();
        assert_eq!(wire_json, http_events, "cursor {cursor}");
        for (i, e) in wire.iter().enumerate() {
            assert_eq!(e.seq, cursor + 1 + i as u64);
        }
        // Live: both see the next append.
        let seq = append_ok(s.port(), "tail-par", &event("live", live_n as u64 + 1));
        total = seq;
        let live = sub.next_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(live[0].seq, seq);
        let h = http.collect_events(1, Duration::from_secs(10));
        assert_eq!(
            serde_json::from_slice::<Value>(&live[0].json).unwrap(),
            h[0]
        );
        http.close();
        // Resubscribing from the new end replays nothing.
        drop(sub);
        let base = seq;
        let sub = c.subscribe("tail-par", base, 10).unwrap();
        assert!(sub.next_timeout(Duration::from_millis(300)).is_none());
        drop(sub);
    }
    // Several subscriptions on one connection, and errors named as in HTTP.
    create_session(s.port(), "tail-b");
    append_ok(s.port(), "tail-b", &event("p", 1));
    let a = c.subscribe("tail-par", 0, 1000).unwrap();
    let b = c.subscribe("tail-b", 0, 1000).unwrap();
    assert_eq!(
        b.next_timeout(Duration::from_secs(5)).unwrap().unwrap()[0].seq,
        1
    );
    assert_eq!(
        a.next_timeout(Duration::from_secs(5)).unwrap().unwrap()[0].seq,
        1
    );
    let missing = c.subscribe("no-such", 0, 10).unwrap();
    let end = missing.next_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(end.unwrap_err().code(), "session_not_found");
    let bad = c.subscribe("tail-b", 0, 1001).unwrap();
    let end = bad.next_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(end.unwrap_err().code(), "invalid_tail_batch_size");
}

#[test]
fn concurrent_producers_get_the_same_seqs_over_http_and_wire() {
    let s = Server::start_default();
    let c = client(&s);
    create_session(s.port(), "conc-http");
    create_session(s.port(), "conc-wire");
    let (producers, per) = (8u64, 40u64);
    let port = s.port();
    let mut seqs_http: Vec<u64> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..producers)
            .map(|p| {
                sc.spawn(move || {
                    let mut conn = HttpConn::new(port);
                    (1..=per)
                        .map(|n| {
                            let (st, v) = conn
                                .post_json(&append_path("conc-http"), &event(&format!("p{p}"), n));
                            assert_eq!(st, 201, "{v}");
                            v["seq"].as_u64().unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut seqs_wire: Vec<u64> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..producers)
            .map(|p| {
                let c = c.clone();
                sc.spawn(move || {
                    // Pipelined: every append of this producer in flight at once.
                    let pending: Vec<_> = (1..=per)
                        .map(|n| c.append_async("conc-wire", fields(&format!("p{p}"), n, "{}")))
                        .collect();
                    pending
                        .into_iter()
                        .map(|p| p.wait().expect("append").seq)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| {
                let seqs = h.join().unwrap();
                // One producer's acks come back in its submission order.
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
                seqs
            })
            .collect()
    });
    seqs_http.sort_unstable();
    seqs_wire.sort_unstable();
    let all: Vec<u64> = (1..=producers * per).collect();
    assert_eq!(seqs_http, all);
    assert_eq!(seqs_wire, all);
    // A second pass of the same appends is deduped identically.
    let h = over_http(
        port,
        "conc-http",
        &AppendFields {
            payload: b"{\"n\":1,\"producer\":\"p0\"}".to_vec(),
            ..fields("p0", 1, "")
        },
    );
    let w = over_wire(&c, "conc-wire", &fields("p0", 1, "{}"));
    assert!(matches!(h, Ok((_, 320, true))), "{h:?}");
    assert!(matches!(w, Ok((_, 320, true))), "{w:?}");
    let _: Option<ClientError> = None;
}

/// A batch goes out in parts of at most `max_inflight`, each written at once;
/// every append is still its own request: acked in order with its own seq,
/// deduped on retry, and rejected alone when invalid.
#[test]
fn batched_appends_are_ordered_individual_requests() {
    let s = Server::start_default();
    let c = Client::connect(
        ClientConfig::new([format!("127.0.0.1:{}", s.wire_port())]).max_inflight(16),
    )
    .expect("connect");
    create_session(s.port(), "batch");
    let batch: Vec<AppendFields> = (1..=50)
        .map(|n| fields("b", n, &format!("{{\"n\":{n}}}")))
        .collect();
    let acks: Vec<_> = c
        .append_batch("batch", batch.clone())
        .into_iter()
        .map(|p| p.wait().expect("acked"))
        .collect();
    let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    assert!(acks.iter().all(|a| !a.deduped));
    // The same batch again: every append is a duplicate of its first write.
    let again: Vec<_> = c
        .append_batch("batch", batch[40..].to_vec())
        .into_iter()
        .map(|p| p.wait().expect("deduped"))
        .collect();
    assert!(again.iter().all(|a| a.deduped));
    assert_eq!(
        again.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (41..=50).collect::<Vec<_>>()
    );
    // One bad append in a batch fails alone.
    let mixed = vec![
        fields("b", 51, "{\"n\":51}"),
        fields("b", 52, "{not json"),
        fields("b", 52, "{\"n\":52}"),
    ];
    let out: Vec<_> = c
        .append_batch("batch", mixed)
        .into_iter()
        .map(|p| p.wait())
        .collect();
    assert_eq!(out[0].as_ref().map(|a| a.seq).ok(), Some(51));
    assert_eq!(out[1].as_ref().unwrap_err().code(), "invalid_event");
    assert_eq!(out[2].as_ref().map(|a| a.seq).ok(), Some(52));
    // What a reader sees: the 52 events in order, payloads as sent.
    let sub = c.subscribe("batch", 0, 1000).expect("subscribe");
    let mut got = Vec::new();
    while got.len() < 52 {
        got.extend(
            sub.next_timeout(Duration::from_secs(10))
                .expect("events in time")
                .expect("no error"),
        );
    }
    for (i, e) in got.iter().enumerate() {
        let v: Value = serde_json::from_slice(&e.json).unwrap();
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(v["payload"]["n"], i as u64 + 1);
    }
}
