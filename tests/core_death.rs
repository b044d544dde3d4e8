//! A core never dies or stalls silently (test-only fault points, debug builds;
//! see `STARCITE_TEST_FAULT` in src/node/engine_loop.rs):
//! - a panic in a core's engine ends the whole process with a clear log line
//!   and exit status 70, so the service manager restarts it;
//! - while a core stops ticking, `/health/ready` is never `ok`, and says which
//!   core is stalled; it is `ok` again once the core is back.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn core_panic_ends_the_process() {
    let mut server =
        Server::start(ServerOpts::new().env("STARCITE_TEST_FAULT", "core_panic:boom-"));
    // Healthy sessions work.
    create_session(server.port(), "fine-1");
    let port = server.port();
    // This command reaches the owning core's engine, which panics on it.
    let body = json!({"id": "boom-1"}).to_string();
    let answer = HttpConn::with_timeout(port, Duration::from_secs(5))
        .try_post("/v1/sessions", body.as_bytes());
    if let Ok(r) = &answer {
        assert_ne!(
            r.status, 201,
            "a command that killed its core was acknowledged"
        );
    }
    let status = server.wait_exit(Duration::from_secs(15));
    let log = server.log_tail();
    let status = status
        .unwrap_or_else(|| panic!("the process kept running after a core panicked; log:\n{log}"));
    assert_eq!(
        status.code(),
        Some(70),
        "exit status after a core panic; log:\n{log}"
    );
    assert!(
        log.contains("engine panicked: test fault point") && log.contains("stopping the node"),
        "no clear log line for the dead core:\n{log}"
    );
}

#[test]
fn stalled_core_makes_the_node_not_ready() {
    const STALL_MS: u64 = 6_000;
    let server = Server::start(ServerOpts::new().env(
        "STARCITE_TEST_FAULT",
        &format!("core_stall:stall-:{STALL_MS}"),
    ));
    let port = server.port();
    let (st, _) = get_json(port, "/health/ready");
    assert_eq!(st, 200, "ready before the stall");
    let stalled_at = Instant::now();
    let creator = std::thread::spawn(move || {
        let body = json!({"id": "stall-1"}).to_string();
        HttpConn::with_timeout(port, Duration::from_secs(30))
            .try_post("/v1/sessions", body.as_bytes())
            .map(|r| r.status)
    });
    // From 2.5 s into the stall until shortly before it ends: never `ok`.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut not_ready = 0;
    let mut unanswered = 0;
    let mut seen = Vec::new();
    while stalled_at.elapsed() < Duration::from_millis(STALL_MS - 800) {
        let req = b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        match try_request(port, req, false, Duration::from_millis(400)) {
            Ok(r) => {
                assert_ne!(
                    r.status,
                    200,
                    "ready {} ms into a {STALL_MS} ms core stall: {}",
                    stalled_at.elapsed().as_millis(),
                    r.text()
                );
                let v = r.json();
                if v["detail"]["probe_result"] == "core_stalled" {
                    not_ready += 1;
                }
                seen.push(v);
            }
            // The stalled core's own connections get no answer at all.
            Err(_) => unanswered += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        not_ready > 0,
        "no readiness answer named the stalled core ({unanswered} unanswered): {seen:?}"
    );
    // The create that stalled its core outlived the gateway's 2 s command
    // timeout: an answer (503, retry) came, not a hang.
    let created = creator.join().expect("creator thread");
    assert!(
        matches!(created, Ok(201 | 503)),
        "the create that stalled its core: {created:?}"
    );
    // The core comes back and the node is ready again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, v) = get_json(port, "/health/ready");
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again 15 s after the stall ended: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
