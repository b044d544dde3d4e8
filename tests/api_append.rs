//! Black-box tests: append validation, producer rules / dedupe window,
//! expected_seq, body limits, backpressure (api-contract §5.3, §6, §14.2,
//! §14.10, §14.11).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn base() -> Value {
    json!({"type": "t", "payload": {"k": "v"}, "producer_id": "p", "producer_seq": 1})
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

#[track_caller]
fn expect_err(port: u16, sid: &str, body: &Value, code: &str) {
    let (st, v) = append(port, sid, body);
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some(code)),
        "body {body} → {st} {v}"
    );
    assert_error(st, &v, 400, code);
}

#[test]
fn append_success_shape_and_gap_free_seqs() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "s");
    let (st, v) = append(p, "s", &base());
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v,
        json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
    );
    // Interleave rejected appends: they consume no seq.
    for i in 2..=20u64 {
        let (st, _) = append(p, "s", &with(base(), "type", json!("")));
        assert_eq!(st, 400);
        let (st, _) = append(
            p,
            "s",
            &json!({"type":"t","payload":{},"producer_id":"p","producer_seq": i + 5}),
        );
        assert_eq!(st, 409);
        let (st, v) = append(
            p,
            "s",
            &json!({"type":"t","payload":{"i":i},"producer_id":"p","producer_seq": i}),
        );
        assert_eq!(st, 201, "{v}");
        assert_eq!(
            v,
            json!({"seq": i, "last_seq": i, "deduped": false, "cursor": i, "committed_cursor": i})
        );
    }
    assert_eq!(session_last_seq(p, "s"), 20);
}

#[test]
fn required_fields_validation() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "v");
    // type
    expect_err(p, "v", &without(base(), "type"), "invalid_event");
    for bad in [
        json!(""),
        json!(5),
        json!(null),
        json!({}),
        json!(["t"]),
        json!(true),
    ] {
        expect_err(p, "v", &with(base(), "type", bad), "invalid_event");
    }
    // payload
    expect_err(p, "v", &without(base(), "payload"), "invalid_event");
    for bad in [
        json!([]),
        json!("x"),
        json!(1),
        json!(null),
        json!(true),
        json!([{"a": 1}]),
    ] {
        expect_err(p, "v", &with(base(), "payload", bad), "invalid_event");
    }
    // producer_id
    expect_err(p, "v", &without(base(), "producer_id"), "invalid_event");
    for bad in [
        json!(""),
        json!(5),
        json!(null),
        json!({"a": 1}),
        json!(["p"]),
    ] {
        expect_err(p, "v", &with(base(), "producer_id", bad), "invalid_event");
    }
    // producer_seq
    expect_err(p, "v", &without(base(), "producer_seq"), "invalid_event");
    for bad in [
        json!(0),
        json!(-1),
        json!(1.0),
        json!(1.5),
        json!("abc"),
        json!("1.0"),
        json!(" 1"),
        json!("1 "),
        json!(""),
        json!("0"),
        json!("-1"),
        json!("1e0"),
        json!(true),
        json!(null),
        json!([1]),
        json!({"n": 1}),
    ] {
        expect_err(p, "v", &with(base(), "producer_seq", bad), "invalid_event");
    }
    // Top-level non-object contributes no fields.
    let (st, v) = append(p, "v", &json!([base()]));
    assert_error(st, &v, 400, "invalid_event");
    let (st, v) = append(p, "v", &json!("string"));
    assert_error(st, &v, 400, "invalid_event");
    assert_eq!(v["message"], "Invalid event payload");
    // Nothing was appended.
    assert_eq!(session_last_seq(p, "v"), 0);
}

#[test]
fn producer_seq_digit_strings() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "d");
    // "7" and "+7" parse to 7: a fresh producer must start at 1 → seq conflict.
    for v7 in [json!("7"), json!("+7"), json!("007"), json!(7)] {
        let (st, v) = append(p, "d", &with(base(), "producer_seq", v7.clone()));
        assert_error(st, &v, 409, "producer_seq_conflict");
        assert_eq!(v["message"], "Producer p expected seq 1, got 7", "{v7}");
    }
    // "1" is accepted and normalised to integer 1; "+2" and "02" continue.
    let (st, v) = append(p, "d", &with(base(), "producer_seq", json!("1")));
    assert_eq!(
        (st, v),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
        )
    );
    let (st, v) = append(
        p,
        "d",
        &with(
            with(base(), "producer_seq", json!("+2")),
            "payload",
            json!({"n": 2}),
        ),
    );
    assert_eq!(
        (st, v),
        (
            201,
            json!({"seq": 2, "last_seq": 2, "deduped": false, "cursor": 2, "committed_cursor": 2})
        )
    );
    let (st, v) = append(
        p,
        "d",
        &with(
            with(base(), "producer_seq", json!("03")),
            "payload",
            json!({"n": 3}),
        ),
    );
    assert_eq!(
        (st, v),
        (
            201,
            json!({"seq": 3, "last_seq": 3, "deduped": false, "cursor": 3, "committed_cursor": 3})
        )
    );
    // Stored producer_seq is an integer.
    let evs = read_all_events(p, "d", 3, Duration::from_secs(10));
    assert_eq!(seqs(&evs), vec![1, 2, 3]);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(
            e["producer_seq"],
            json!(i as u64 + 1),
            "normalised producer_seq: {e}"
        );
    }
}

#[test]
fn optional_fields_validation() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "o");
    // actor
    for bad in [
        json!("svc:service"),
        json!("user:x"),
        json!("service:other"),
        json!(""),
        json!(5),
        json!("service"),
        json!({}),
    ] {
        expect_err(p, "o", &with(base(), "actor", bad), "invalid_event");
    }
    // source
    for bad in [json!(""), json!(5), json!({}), json!([]), json!(false)] {
        expect_err(p, "o", &with(base(), "source", bad), "invalid_event");
    }
    // metadata
    for bad in [json!([]), json!("x"), json!(1), json!(true)] {
        expect_err(p, "o", &with(base(), "metadata", bad), "invalid_metadata");
    }
    // refs
    for bad in [json!([]), json!("x"), json!(1), json!(true)] {
        expect_err(p, "o", &with(base(), "refs", bad), "invalid_refs");
    }
    let (_, v) = append(p, "o", &with(base(), "refs", json!([])));
    assert_eq!(v["message"], "Invalid refs payload");
    let (_, v) = append(p, "o", &with(base(), "metadata", json!([])));
    assert_eq!(v["message"], "Invalid metadata payload");
    for bad in [
        json!({"to_seq": -1}),
        json!({"to_seq": "x"}),
        json!({"to_seq": 1.5}),
        json!({"to_seq": 1.0}),
        json!({"to_seq": "-1"}),
        json!({"to_seq": true}),
        json!({"step": -1}),
        json!({"step": "abc"}),
        json!({"step": 2.5}),
        json!({"step": []}),
        json!({"request_id": 5}),
        json!({"request_id": {}}),
        json!({"sequence_id": 5}),
        json!({"sequence_id": ["a"]}),
    ] {
        expect_err(p, "o", &with(base(), "refs", bad), "invalid_event");
    }
    // idempotency_key
    for bad in [json!(""), json!(5), json!({}), json!(["k"])] {
        expect_err(
            p,
            "o",
            &with(base(), "idempotency_key", bad),
            "invalid_event",
        );
    }
    // expected_seq
    for bad in [
        json!(-1),
        json!("x"),
        json!(1.0),
        json!("-1"),
        json!(0.5),
        json!(true),
        json!(""),
    ] {
        expect_err(p, "o", &with(base(), "expected_seq", bad), "invalid_event");
    }
    assert_eq!(
        session_last_seq(p, "o"),
        0,
        "rejected appends consumed nothing"
    );

    // Valid optional values (each with its own fresh producer).
    let valid: Vec<(&str, Value)> = vec![
        ("actor", json!("service:service")),
        ("actor", json!(null)),
        ("source", json!("cli")),
        ("source", json!(" ")),
        ("source", json!(null)),
        ("metadata", json!({"a": {"b": [1]}})),
        ("metadata", json!(null)),
        ("metadata", json!({"starcite_principal": "junk"})),
        ("refs", json!({})),
        ("refs", json!(null)),
        (
            "refs",
            json!({"to_seq": 0, "step": "3", "request_id": "", "sequence_id": "", "other": [1, {"x": null}]}),
        ),
        ("refs", json!({"to_seq": "+5", "step": 0})),
        ("idempotency_key", json!("k-1")),
        ("idempotency_key", json!(null)),
        ("expected_seq", json!(null)),
        ("unknown_field", json!({"whatever": 1})),
    ];
    for (i, (k, val)) in valid.iter().enumerate() {
        let body = with(
            with(base(), "producer_id", json!(format!("valid-{i}"))),
            k,
            val.clone(),
        );
        let (st, v) = append(p, "o", &body);
        assert_eq!(st, 201, "valid {k}={val} → {v}");
        assert_eq!(v["seq"], json!(i as u64 + 1));
    }
    // expected_seq as a digit string equal to last_seq.
    let n = valid.len() as u64;
    let body = with(
        with(base(), "producer_id", json!("valid-es")),
        "expected_seq",
        json!(n.to_string()),
    );
    let (st, v) = append(p, "o", &body);
    assert_eq!(st, 201, "expected_seq digits: {v}");
}

#[test]
fn stored_event_reflects_enrichment_and_refs_verbatim() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "e");
    let body = json!({
        "type": "msg", "payload": {"text": "hi", "n": 1.5},
        "producer_id": "w", "producer_seq": "1",
        "actor": "service:service", "source": "cli",
        "metadata": {"m": 1, "starcite_principal": {"tenant_id": "evil", "extra": "kept"}},
        "refs": {"to_seq": "3", "step": 2, "request_id": "", "custom": [1]},
        "idempotency_key": "ik",
    });
    assert_eq!(append_ok(p, "e", &body), 1);
    append_ok(
        p,
        "e",
        &json!({"type": "bare", "payload": {}, "producer_id": "w", "producer_seq": 2,
                               "metadata": {"starcite_principal": 7}}),
    );
    let evs = read_all_events(p, "e", 2, Duration::from_secs(10));
    assert_eq!(evs.len(), 2, "{evs:?}");
    let e = &evs[0];
    assert_eq!(e["seq"], 1);
    assert_eq!(e["type"], "msg");
    assert_eq!(e["payload"], json!({"text": "hi", "n": 1.5}));
    assert_eq!(e["actor"], "service:service");
    assert_eq!(e["producer_id"], "w");
    assert_eq!(e["producer_seq"], 1);
    assert_eq!(e["source"], "cli");
    assert_eq!(e["idempotency_key"], "ik");
    assert_eq!(e["tenant_id"], "service");
    assert_eq!(
        e["refs"],
        json!({"to_seq": "3", "step": 2, "request_id": "", "custom": [1]}),
        "refs stored as sent"
    );
    assert_eq!(
        e["metadata"],
        json!({"m": 1, "starcite_principal": {"tenant_id": "service", "actor": "service:service",
               "principal_type": "service", "principal_id": "service", "extra": "kept"}})
    );
    assert!(
        is_micro_ts(e["inserted_at"].as_str().unwrap_or("")),
        "inserted_at {}",
        e["inserted_at"]
    );
    let e2 = &evs[1];
    assert!(
        e2.get("source").is_none(),
        "absent source omitted (§14.18): {e2}"
    );
    assert!(
        e2.get("idempotency_key").is_none(),
        "absent idempotency_key omitted: {e2}"
    );
    assert_eq!(e2["refs"], json!({}));
    assert_eq!(
        e2["metadata"],
        json!({"starcite_principal": {"tenant_id": "service", "actor": "service:service",
               "principal_type": "service", "principal_id": "service"}}),
        "non-object starcite_principal is replaced"
    );
}

#[test]
fn unknown_session_is_404_even_with_invalid_body() {
    let s = Server::start_default();
    let p = s.port();
    for body in [base(), json!({}), json!({"type": ""}), json!([1])] {
        let (st, v) = append(p, "nope", &body);
        assert_error(st, &v, 404, "session_not_found");
        assert_eq!(v["message"], "Session was not found");
    }
}

#[test]
fn percent_decoded_session_ids() {
    let s = Server::start_default();
    let p = s.port();
    for id in ["hello world", "a/b", "ünï", "x%y"] {
        create_session(p, id);
        let (st, v) = post_json(p, &append_path(id), &base());
        assert_eq!(
            (st, v.clone()),
            (
                201,
                json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
            ),
            "id {id:?}: {v}"
        );
    }
    // The undecoded form is a different (unknown) session.
    let (st, v) = post_json(p, "/v1/sessions/hello%2520world/append", &base());
    assert_error(st, &v, 404, "session_not_found");
}

#[test]
fn worked_example_with_dedupe_window() {
    // §6.6, adjusted for §14.2 (row 8 becomes a dedupe).
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "S");
    let x = json!({"type": "t", "payload": {"x": 1}, "producer_id": "a", "producer_seq": 1});
    let r = |body: &Value| append(p, "S", body);
    // 1
    assert_eq!(
        r(&x),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
        )
    );
    // 2
    assert_eq!(
        r(&x),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": true, "cursor": 1, "committed_cursor": 1})
        )
    );
    // 3
    let b1 = json!({"type": "t", "payload": {"y": 1}, "producer_id": "b", "producer_seq": 1});
    assert_eq!(
        r(&b1),
        (
            201,
            json!({"seq": 2, "last_seq": 2, "deduped": false, "cursor": 2, "committed_cursor": 2})
        )
    );
    // 4
    assert_eq!(
        r(&x),
        (
            201,
            json!({"seq": 1, "last_seq": 2, "deduped": true, "cursor": 1, "committed_cursor": 2})
        )
    );
    // 5
    let (st, v) =
        r(&json!({"type": "t", "payload": {"x": 3}, "producer_id": "a", "producer_seq": 3}));
    assert_error(st, &v, 409, "producer_seq_conflict");
    assert_eq!(v["message"], "Producer a expected seq 2, got 3");
    // 6
    let a2 = |es: u64| json!({"type": "t", "payload": {"x": 2}, "producer_id": "a", "producer_seq": 2, "expected_seq": es});
    let (st, v) = r(&a2(1));
    assert_error(st, &v, 409, "expected_seq_conflict");
    assert_eq!(v["message"], "Expected seq 1, current seq is 2");
    // 7
    assert_eq!(
        r(&a2(2)),
        (
            201,
            json!({"seq": 3, "last_seq": 3, "deduped": false, "cursor": 3, "committed_cursor": 3})
        )
    );
    // 8 (§14.2): `a`,1 with identical content is inside the window → dedupe to seq 1.
    assert_eq!(
        r(&x),
        (
            201,
            json!({"seq": 1, "last_seq": 3, "deduped": true, "cursor": 1, "committed_cursor": 3})
        )
    );
    // 9
    let (st, v) = r(
        &json!({"type": "t", "payload": {"x": "different"}, "producer_id": "a", "producer_seq": 2}),
    );
    assert_error(st, &v, 409, "producer_replay_conflict");
    assert_eq!(
        v["message"],
        "Producer sequence was already used with different event content"
    );
    // 10: expected_seq checked before dedupe.
    let (st, v) = r(&a2(2));
    assert_error(st, &v, 409, "expected_seq_conflict");
    assert_eq!(v["message"], "Expected seq 2, current seq is 3");
    // Same without expected_seq → dedupe.
    let a2_plain = json!({"type": "t", "payload": {"x": 2}, "producer_id": "a", "producer_seq": 2});
    assert_eq!(
        r(&a2_plain),
        (
            201,
            json!({"seq": 3, "last_seq": 3, "deduped": true, "cursor": 3, "committed_cursor": 3})
        )
    );
    // expected_seq equal to the current last_seq lets the dedupe happen.
    assert_eq!(
        r(&a2(3)),
        (
            201,
            json!({"seq": 3, "last_seq": 3, "deduped": true, "cursor": 3, "committed_cursor": 3})
        )
    );

    // The log holds exactly three events.
    let evs = read_all_events(p, "S", 3, Duration::from_secs(10));
    assert_eq!(seqs(&evs), vec![1, 2, 3]);
    assert_eq!(
        evs.iter()
            .map(|e| (
                e["producer_id"].as_str().unwrap().to_string(),
                e["producer_seq"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("a".to_string(), 2)
        ]
    );
    assert_eq!(session_last_seq(p, "S"), 3);
}

#[test]
fn fingerprint_is_structural() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "f");
    let raw1 = br#"{"type":"t","payload":{"a":1,"b":{"c":[1,2],"d":"x"}},"producer_id":"p","producer_seq":1,"metadata":{"m":1,"n":2},"idempotency_key":"k"}"#;
    let r = post_raw(p, &append_path("f"), raw1);
    assert_eq!(
        (r.status, r.json()),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
        )
    );
    // Same content, different key order and whitespace → dedupe.
    let raw2 = br#"{ "idempotency_key" : "k", "metadata": {"n":2, "m":1}, "producer_seq":1,
                   "payload": { "b": {"d":"x","c":[1, 2]}, "a": 1 }, "producer_id":"p", "type":"t" }"#;
    let r = post_raw(p, &append_path("f"), raw2);
    assert_eq!(
        (r.status, r.json()),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": true, "cursor": 1, "committed_cursor": 1})
        )
    );
    // Explicit actor = the canonical actor is the same content (actor is always enriched).
    let mut v: Value = serde_json::from_slice(raw1).unwrap();
    v["actor"] = json!("service:service");
    assert_eq!(
        append(p, "f", &v),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": true, "cursor": 1, "committed_cursor": 1})
        )
    );
    // Any content change → replay conflict.
    let base: Value = serde_json::from_slice(raw1).unwrap();
    for (k, val) in [
        ("idempotency_key", json!("other")),
        ("idempotency_key", json!(null)),
        ("metadata", json!({"m": 1})),
        ("payload", json!({"a": 1.0, "b": {"c": [1, 2], "d": "x"}})),
        ("payload", json!({"a": 1, "b": {"c": [2, 1], "d": "x"}})),
        ("type", json!("t2")),
        ("source", json!("s")),
        ("refs", json!({"step": 1})),
    ] {
        let (st, v) = append(p, "f", &with(base.clone(), k, val.clone()));
        assert_error(st, &v, 409, "producer_replay_conflict");
    }
    assert_eq!(session_last_seq(p, "f"), 1);
}

#[test]
fn dedupe_window_default_128() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "w");
    let mut c = HttpConn::new(p);
    let path = append_path("w");
    let ev =
        |i: u64| json!({"type": "t", "payload": {"i": i}, "producer_id": "q", "producer_seq": i});
    for i in 1..=10 {
        assert_eq!(
            c.post_json(&path, &ev(i)),
            (
                201,
                json!({"seq": i, "last_seq": i, "deduped": false, "cursor": i, "committed_cursor": i})
            )
        );
    }
    // Retry of producer_seq 1 after 1..10 → dedupes to seq 1.
    assert_eq!(
        c.post_json(&path, &ev(1)),
        (
            201,
            json!({"seq": 1, "last_seq": 10, "deduped": true, "cursor": 1, "committed_cursor": 10})
        )
    );
    assert_eq!(
        c.post_json(&path, &ev(5)),
        (
            201,
            json!({"seq": 5, "last_seq": 10, "deduped": true, "cursor": 5, "committed_cursor": 10})
        )
    );
    // Inside the window with different content → replay conflict.
    let (st, v) = c.post_json(
        &path,
        &json!({"type": "t", "payload": {"i": "changed"}, "producer_id": "q", "producer_seq": 5}),
    );
    assert_error(st, &v, 409, "producer_replay_conflict");
    // Gap → seq conflict.
    let (st, v) = c.post_json(&path, &ev(12));
    assert_error(st, &v, 409, "producer_seq_conflict");
    assert_eq!(v["message"], "Producer q expected seq 11, got 12");
    // Another producer interleaved: window is per producer.
    assert_eq!(
        c.post_json(
            &path,
            &json!({"type": "t", "payload": {}, "producer_id": "r", "producer_seq": 1})
        )
        .0,
        201
    );
    for i in 11..=130 {
        let (st, v) = c.post_json(&path, &ev(i));
        assert_eq!(st, 201, "{i}: {v}");
        assert_eq!(v["seq"], json!(i + 1));
    }
    // Window now holds producer_seq 3..=130.
    for old in [1u64, 2] {
        let (st, v) = c.post_json(&path, &ev(old));
        assert_error(st, &v, 409, "producer_seq_conflict");
        assert_eq!(
            v["message"],
            format!("Producer q expected seq 131, got {old}")
        );
    }
    assert_eq!(
        c.post_json(&path, &ev(3)),
        (
            201,
            json!({"seq": 3, "last_seq": 131, "deduped": true, "cursor": 3, "committed_cursor": 131})
        )
    );
    assert_eq!(
        c.post_json(&path, &ev(130)),
        (
            201,
            json!({"seq": 131, "last_seq": 131, "deduped": true, "cursor": 131, "committed_cursor": 131})
        )
    );
    // Producer r still dedupes its only append.
    assert_eq!(
        c.post_json(
            &path,
            &json!({"type": "t", "payload": {}, "producer_id": "r", "producer_seq": 1})
        ),
        (
            201,
            json!({"seq": 11, "last_seq": 131, "deduped": true, "cursor": 11, "committed_cursor": 131})
        )
    );
    // And the same producer id in another session is independent.
    create_session(p, "w2");
    let (st, v) = c.post_json(&append_path("w2"), &ev(1));
    assert_eq!(
        (st, v),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
        )
    );
}

#[test]
fn dedupe_window_is_configurable() {
    let s = Server::start(ServerOpts::new().env("STARCITE_PRODUCER_DEDUPE_WINDOW", "4"));
    let p = s.port();
    create_session(p, "c");
    let ev =
        |i: u64| json!({"type": "t", "payload": {"i": i}, "producer_id": "q", "producer_seq": i});
    for i in 1..=6 {
        append_ok(p, "c", &ev(i));
    }
    // Window of 4 = producer_seq 3..=6.
    let (st, v) = append(p, "c", &ev(2));
    assert_error(st, &v, 409, "producer_seq_conflict");
    assert_eq!(v["message"], "Producer q expected seq 7, got 2");
    assert_eq!(
        append(p, "c", &ev(3)),
        (
            201,
            json!({"seq": 3, "last_seq": 6, "deduped": true, "cursor": 3, "committed_cursor": 6})
        )
    );
}

#[test]
fn expected_seq_semantics() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "x");
    let ev = |i: u64, es: Value| json!({"type": "t", "payload": {"i": i}, "producer_id": "p", "producer_seq": i, "expected_seq": es});
    // First append to an empty session passes with expected_seq 0.
    let (st, v) = append(p, "x", &ev(1, json!(1)));
    assert_error(st, &v, 409, "expected_seq_conflict");
    assert_eq!(v["message"], "Expected seq 1, current seq is 0");
    assert_eq!(
        append(p, "x", &ev(1, json!(0))),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
        )
    );
    assert_eq!(
        append(p, "x", &ev(2, json!("1"))),
        (
            201,
            json!({"seq": 2, "last_seq": 2, "deduped": false, "cursor": 2, "committed_cursor": 2})
        )
    );
    // expected_seq checked before producer rules: a producer gap with a wrong
    // expected_seq reports the expected_seq conflict.
    let (st, v) = append(p, "x", &ev(9, json!(5)));
    assert_error(st, &v, 409, "expected_seq_conflict");
    assert_eq!(v["message"], "Expected seq 5, current seq is 2");
    // Right expected_seq, producer gap → producer conflict.
    let (st, v) = append(p, "x", &ev(9, json!(2)));
    assert_error(st, &v, 409, "producer_seq_conflict");
    // Session existence precedes expected_seq.
    let (st, v) = append(p, "missing", &ev(1, json!(99)));
    assert_error(st, &v, 404, "session_not_found");
}

#[test]
fn malformed_json_is_invalid_event() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "m");
    for body in [
        &b"{\"type\":"[..],
        b"{bad}",
        b"",
        b"nul",
        b"{\"a\":1}}",
        b"\"unterminated",
    ] {
        let r = post_raw(p, &append_path("m"), body);
        assert_error_resp(&r, 400, "invalid_event");
    }
    assert_eq!(session_last_seq(p, "m"), 0);
}

#[test]
fn body_size_limit() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "big");
    let head = br#"{"type":"t","producer_id":"p","producer_seq":1,"payload":{"blob":""#;
    let tail = br#""}}"#;
    let mk = |total: usize| {
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(head);
        b.resize(total - tail.len(), b'x');
        b.extend_from_slice(tail);
        assert_eq!(b.len(), total);
        b
    };
    // Exactly 8,000,000 bytes is accepted.
    let r = post_raw(p, &append_path("big"), &mk(8_000_000));
    assert_eq!(
        r.status,
        201,
        "8,000,000-byte body: {} {}",
        r.status,
        r.text()
    );
    // One byte more is refused with 413 payload_too_large.
    let r = post_raw(p, &append_path("big"), &mk(8_000_001));
    assert_error_resp(&r, 413, "payload_too_large");
    // A huge declared Content-Length is refused without sending the body.
    let r = raw_request(
        p,
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n",
            append_path("big")
        )
        .as_bytes(),
    );
    assert_error_resp(&r, 413, "payload_too_large");
    // Also on create.
    let r = raw_request(
        p,
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 8000001\r\nConnection: close\r\n\r\n",
    );
    assert_error_resp(&r, 413, "payload_too_large");
    assert_eq!(session_last_seq(p, "big"), 1);
    // Server still healthy.
    assert_eq!(get_json(p, "/health/live").0, 200);
}

#[test]
fn backpressure_when_hot_tier_full() {
    let s = Server::start(ServerOpts::new().env("STARCITE_EVENT_STORE_MAX_SIZE", "1MB"));
    let p = s.port();
    create_session(p, "bp");
    let blob = "y".repeat(20 * 1024);
    let mut c = HttpConn::new(p);
    let path = append_path("bp");
    let ev = |i: u64| json!({"type": "t", "payload": {"blob": blob, "i": i}, "producer_id": "p", "producer_seq": i});
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = 0u64;
    let mut got429 = None;
    // 1 MiB / 20 KiB ≈ 51 events; allow a generous margin for overheads and archiving.
    for i in 1..=2000u64 {
        assert!(Instant::now() < deadline, "no 429 within 60 s");
        let (st, v) = c.post_json(&path, &ev(i));
        match st {
            201 => {
                assert_eq!(v["seq"], json!(i));
                acked = i;
            }
            429 => {
                got429 = Some(v);
                break;
            }
            _ => panic!("append {i}: unexpected {st} {v}"),
        }
    }
    let v = got429
        .expect("no 429 event_store_backpressure after 2000 × 20 KiB appends with a 1MB bound");
    assert_error(429, &v, 429, "event_store_backpressure");
    assert_eq!(
        v["message"],
        "Node is backpressuring writes due to event-store capacity"
    );
    assert!(
        acked >= 10,
        "backpressure kicked in after only {acked} small appends under a 1 MiB bound"
    );
    // The rejected append consumed nothing: last_seq is the last acknowledged one,
    // and (while still full) retrying the same producer_seq is 429 again, not a conflict.
    assert_eq!(session_last_seq(p, "bp"), acked);
    let (st, v) = c.post_json(&path, &ev(acked + 1));
    assert!(
        st == 429 || (st == 201 && v["seq"] == json!(acked + 1)),
        "retry after 429: {st} {v}"
    );
    // Reads and health still work.
    assert_eq!(get_json(p, "/health/live").0, 200);
    let evs = read_all_events(p, "bp", acked, Duration::from_secs(20));
    assert_eq!(seqs(&evs), (1..=acked).collect::<Vec<_>>());
}

#[test]
fn pipelined_appends_on_one_connection_keep_order() {
    // Several appends of one producer in flight on one keep-alive connection
    // (HTTP pipelining): processed and answered in request order.
    use std::io::Write;
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "pipe");
    const N: u64 = 50;
    let mut reqs = Vec::new();
    for i in 1..=N {
        let body =
            json!({"type": "t", "payload": {"i": i}, "producer_id": "pp", "producer_seq": i})
                .to_string();
        reqs.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                append_path("pipe"),
                body.len()
            )
            .as_bytes(),
        );
    }
    let mut st = connect(p, IO_TIMEOUT).unwrap();
    st.write_all(&reqs).unwrap();
    let mut buf = Vec::new();
    for i in 1..=N {
        let r =
            read_response(&mut st, &mut buf, false).unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(
            (r.status, r.json()),
            (
                201,
                json!({"seq": i, "last_seq": i, "deduped": false, "cursor": i, "committed_cursor": i})
            ),
            "pipelined append {i}"
        );
    }
    // Retrying the whole pipeline (a client that lost the answers) dedupes every one.
    st.write_all(&reqs).unwrap();
    for i in 1..=N {
        let r = read_response(&mut st, &mut buf, false).unwrap();
        assert_eq!(
            (r.status, r.json()),
            (
                201,
                json!({"seq": i, "last_seq": N, "deduped": true, "cursor": i, "committed_cursor": N})
            )
        );
    }
}

#[test]
fn concurrent_producers_on_one_session_get_distinct_dense_seqs() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "cc");
    const K: usize = 6;
    const PER: u64 = 150;
    let hs: Vec<_> = (0..K)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = HttpConn::new(p);
                let mut got = Vec::new();
                for i in 1..=PER {
                    let (st, v) = c.post_json(&append_path("cc"), &event(&format!("p{k}"), i));
                    assert_eq!(st, 201, "{v}");
                    let seq = v["seq"].as_u64().unwrap();
                    assert!(v["last_seq"].as_u64().unwrap() >= seq);
                    got.push(seq);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u64> = Vec::new();
    for h in hs {
        let got = h.join().unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one producer's seqs must increase"
        );
        all.extend(got);
    }
    all.sort();
    assert_eq!(
        all,
        (1..=K as u64 * PER).collect::<Vec<_>>(),
        "seqs dense and distinct"
    );
    assert_eq!(session_last_seq(p, "cc"), K as u64 * PER);
}

#[test]
fn payload_json_roundtrips_exactly() {
    // The payload is opaque: strings with escapes, control characters,
    // non-BMP characters and large integers come back as sent.
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "rt");
    let raw = r#"{"type":"t\u00e9\"x","producer_id":"p\u0000id","producer_seq":1,"payload":{"s":"line\nbreak\ttab \\ back \"quote\" \u0001\u001f nul:\u0000 emoji:😀 pair:\ud83d\ude00 ü","big":12345678901234567890,"neg":-9223372036854775808,"half":0.5,"arr":[[],{},[null,true,false]],"empty":"","deep":{"a":{"b":{"c":{"d":{"e":[1,[2,[3]]]}}}}},"k with spaces":1,"":"empty key"}}"#;
    let r = post_raw(p, &append_path("rt"), raw.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let sent: Value = serde_json::from_str(raw).unwrap();
    let evs = read_all_events(p, "rt", 1, Duration::from_secs(10));
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["payload"], sent["payload"], "payload roundtrip");
    assert_eq!(evs[0]["type"], sent["type"]);
    assert_eq!(evs[0]["producer_id"], sent["producer_id"]);
    // The identical bytes again dedupe (fingerprint stable over odd content).
    let r = post_raw(p, &append_path("rt"), raw.as_bytes());
    assert_eq!(
        (r.status, r.json()),
        (
            201,
            json!({"seq": 1, "last_seq": 1, "deduped": true, "cursor": 1, "committed_cursor": 1})
        )
    );
}

#[test]
fn producer_cap_evicts_least_recently_used() {
    // §6.2 / §14.2: at most 10,000 producer entries per session; beyond that
    // the producer whose last accepted append has the smallest seq is forgotten.
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "cap");
    const CAP: u64 = 10_000;
    let threads = 4u64;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = HttpConn::new(p);
                let mut k = t;
                while k < CAP {
                    let b = json!({"type": "t", "payload": {}, "producer_id": format!("p{k}"), "producer_seq": 1});
                    let (st, v) = c.post_json(&append_path("cap"), &b);
                    assert_eq!(st, 201, "p{k}: {v}");
                    k += threads;
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(session_last_seq(p, "cap"), CAP);
    // Find which producer got seq 1 and seq 2 (the two least recently used).
    let evs = read_all_events(p, "cap", 2, Duration::from_secs(10));
    let lru0 = evs[0]["producer_id"].as_str().unwrap().to_string();
    let lru1 = evs[1]["producer_id"].as_str().unwrap().to_string();
    // Touch lru0 again so lru1 becomes the oldest.
    let mk = |pid: &str, n: u64| json!({"type": "t", "payload": {"n": n}, "producer_id": pid, "producer_seq": n});
    assert_eq!(
        append(p, "cap", &mk(&lru0, 2)),
        (
            201,
            json!({"seq": CAP + 1, "last_seq": CAP + 1, "deduped": false, "cursor": CAP + 1, "committed_cursor": CAP + 1})
        )
    );
    // A new producer: 10,001 entries → lru1 is evicted.
    assert_eq!(
        append(p, "cap", &mk("newcomer", 1)),
        (
            201,
            json!({"seq": CAP + 2, "last_seq": CAP + 2, "deduped": false, "cursor": CAP + 2, "committed_cursor": CAP + 2})
        )
    );
    // lru1 is unknown again: it must start at 1.
    let (st, v) = append(p, "cap", &mk(&lru1, 2));
    assert_error(st, &v, 409, "producer_seq_conflict");
    assert_eq!(
        v["message"],
        format!("Producer {lru1} expected seq 1, got 2")
    );
    // lru0 was kept.
    assert_eq!(append(p, "cap", &mk(&lru0, 3)).0, 201);
}

#[test]
fn integers_beyond_u64_are_still_int_or_digits() {
    // "int-or-digits": any JSON integer or digit string; only range checks
    // (≥ 0 / ≥ 1) apply after parsing. A huge value is therefore valid and
    // simply does not match: 409, not 400. refs.to_seq/step are stored as sent.
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "huge");
    let big = "99999999999999999999999";
    let raw = format!(
        r#"{{"type":"t","payload":{{}},"producer_id":"p","producer_seq":1,"expected_seq":{big}}}"#
    );
    let r = post_raw(p, &append_path("huge"), raw.as_bytes());
    assert_error_resp(&r, 409, "expected_seq_conflict");
    // Values beyond u64 saturate to u64::MAX inside the server (docs/api.md);
    // the informational message shows the saturated value.
    assert_eq!(
        r.json()["message"],
        format!("Expected seq {}, current seq is 0", u64::MAX)
    );
    for ps in [big.to_string(), format!("\"{big}\"")] {
        let raw = format!(r#"{{"type":"t","payload":{{}},"producer_id":"p","producer_seq":{ps}}}"#);
        let r = post_raw(p, &append_path("huge"), raw.as_bytes());
        assert_error_resp(&r, 409, "producer_seq_conflict");
        assert_eq!(
            r.json()["message"],
            format!("Producer p expected seq 1, got {}", u64::MAX)
        );
    }
    let raw = format!(
        r#"{{"type":"t","payload":{{}},"producer_id":"p","producer_seq":1,"refs":{{"to_seq":{big},"step":"{big}"}}}}"#
    );
    let r = post_raw(p, &append_path("huge"), raw.as_bytes());
    assert_eq!(r.status, 201, "huge refs.to_seq/step: {}", r.text());
}
