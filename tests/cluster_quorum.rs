//! Quorum loss: with two of three write nodes down, appends (and creates)
//! through the survivor answer 503 quickly, its tails still replay the
//! existing events, and once the nodes are back writes resume with nothing
//! lost (the ambiguous 503s resolve by resending identical bodies).

mod common;

use common::cluster::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MAX_503: Duration = Duration::from_secs(6);

#[test]
fn two_of_three_down_then_restored() {
    let mut c = Cluster::start(ClusterOpts::default());
    let sessions = session_ids("quorum", 6);
    create_sessions(&c.ports(), &sessions);
    let mut acks = Vec::new();
    let mut next = vec![1u64; sessions.len()];
    for round in 0..15 {
        for (k, s) in sessions.iter().enumerate() {
            let port = c.http_port((round + k) % 3);
            acks.push(append_acked(&[port], s, &format!("q-{k}"), next[k], 32));
            next[k] += 1;
        }
    }
    eprintln!("{} events appended before the failure", acks.len());

    let survivor = 0;
    let port = c.http_port(survivor);
    c.kill9(1);
    c.kill9(2);

    // Appends through the survivor: all at once, each a single attempt.
    let t_fail = Instant::now();
    let attempts: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let (s, producer, pseq) = (s.clone(), format!("q-{k}"), next[k]);
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let body = load_body(&producer, pseq, 32);
                let r = common::try_request(
                    port,
                    &common::build_request(
                        "POST",
                        &common::append_path(&s),
                        &[("Content-Type", "application/json")],
                        Some(body.to_string().as_bytes()),
                    ),
                    false,
                    Duration::from_secs(20),
                );
                (
                    s,
                    producer,
                    pseq,
                    t0.elapsed(),
                    r.map(|r| (r.status, r.text())),
                )
            })
        })
        .collect();
    let create_t0 = Instant::now();
    let create = common::try_request(
        port,
        &common::build_request(
            "POST",
            "/v1/sessions",
            &[("Content-Type", "application/json")],
            Some(br#"{"id":"quorum-created-while-down"}"#),
        ),
        false,
        Duration::from_secs(20),
    );
    let create_took = create_t0.elapsed();
    let mut failures = Vec::new();
    for h in attempts {
        let (s, producer, pseq, took, r) = h.join().unwrap();
        eprintln!(
            "append {s} {producer}/{pseq} with 2 of 3 down: {r:?} after {} ms",
            took.as_millis()
        );
        match &r {
            Ok((503, text)) => {
                let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                let e = v["error"].as_str().unwrap_or("");
                if e != "raft_timeout" && e != "raft_unavailable" {
                    failures.push(format!(
                        "{s}: 503 with error {e:?} (want raft_timeout/raft_unavailable): {text}"
                    ));
                }
            }
            other => failures.push(format!("{s}: expected 503, got {other:?}")),
        }
        if took > MAX_503 {
            failures.push(format!(
                "{s}: answered after {} ms (limit {} ms)",
                took.as_millis(),
                MAX_503.as_millis()
            ));
        }
    }
    eprintln!(
        "create with 2 of 3 down: {:?} after {} ms",
        create.as_ref().map(|r| (r.status, r.text())),
        create_took.as_millis()
    );
    match &create {
        Ok(r) if r.status == 503 => {}
        other => failures.push(format!(
            "create: expected 503, got {:?}",
            other.as_ref().map(|r| (r.status, r.text()))
        )),
    }
    if create_took > MAX_503 {
        failures.push(format!(
            "create answered after {} ms",
            create_took.as_millis()
        ));
    }
    eprintln!(
        "all no-quorum answers within {} ms",
        t_fail.elapsed().as_millis()
    );

    // The survivor is not ready. Peers count as gone once their connections
    // drop or stay silent for the transport's peer timeout (3 s), so the probe
    // result may take that long to say why.
    let probe_deadline = Instant::now() + Duration::from_secs(6);
    let (code, body) = loop {
        let (code, body) = c.ready(survivor).expect("ready probe");
        if body["detail"]["probe_result"] == "quorum_unreachable"
            || Instant::now() >= probe_deadline
        {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("survivor /health/ready: {code} {body}");
    if code != 503 {
        failures.push(format!(
            "survivor /health/ready is {code} {body} without quorum"
        ));
    } else if body["detail"]["probe_result"] != "quorum_unreachable" {
        // Contract §5.5: a group without a reachable majority reports
        // probe_result quorum_unreachable (+ reachable_replicas, required_quorum).
        failures.push(format!("survivor /health/ready detail should say probe_result quorum_unreachable (§5.5), got {body}"));
    }

    // Tails on the survivor still replay what was committed.
    for (k, s) in sessions.iter().enumerate() {
        let n = acks.iter().filter(|a| &a.session == s).count() as u64;
        match read_session(port, s, n, Duration::from_secs(10)) {
            Ok(evs) => {
                for a in acks.iter().filter(|a| &a.session == s) {
                    let e = &evs[(a.seq - 1) as usize];
                    assert_eq!(
                        e["producer_seq"],
                        json!(a.producer_seq),
                        "{s} seq {}: {e}",
                        a.seq
                    );
                    assert_eq!(e["producer_id"], json!(format!("q-{k}")));
                }
            }
            Err(e) => failures.push(format!("replay on the survivor without quorum: {e}")),
        }
    }

    // Restore.
    let t0 = Instant::now();
    c.spawn(1);
    c.spawn(2);
    c.wait_all_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("after restoring: {e}"));
    eprintln!(
        "quorum restored, all ready {} ms after restart",
        t0.elapsed().as_millis()
    );
    // The ambiguous appends: resend identical bodies.
    for (k, s) in sessions.iter().enumerate() {
        let (a, deduped) = resend_acked(&c.ports(), s, &format!("q-{k}"), next[k], 32);
        eprintln!(
            "resend of {s} q-{k}/{}: seq {}{}",
            next[k],
            a.seq,
            if deduped {
                " (deduped: the 503'd attempt had committed)"
            } else {
                ""
            }
        );
        acks.push(a);
        next[k] += 1;
    }
    let (st, v, _) = post_retry(
        &c.ports(),
        "/v1/sessions",
        &json!({"id": "quorum-created-while-down"}),
        Duration::from_secs(20),
    )
    .expect("create retry");
    assert!(
        st == 201 || (st == 409 && v["error"] == "session_exists"),
        "create retry: {st} {v}"
    );
    // And more writes.
    for round in 0..10 {
        for (k, s) in sessions.iter().enumerate() {
            let port = c.http_port((round + k) % 3);
            acks.push(append_acked(&[port], s, &format!("q-{k}"), next[k], 32));
            next[k] += 1;
        }
    }
    let mut all_sessions = sessions.clone();
    all_sessions.push("quorum-created-while-down".into());
    verify(&c, &c.all(), &all_sessions, &acks, true);
    c.assert_no_panics();
    assert!(
        failures.is_empty(),
        "quorum-loss behaviour:\n{}",
        failures.join("\n")
    );
}
