//! Node-wide connection caps and panic containment, end to end:
//! `STARCITE_MAX_CONNECTIONS_PER_IP` (503 `too_many_connections`),
//! `STARCITE_MAX_TAIL_SOCKETS` (503 `too_many_tails`), and a handler panic answered
//! `500 internal_error` while the core keeps serving.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Retries `f` until it returns `Some` or 5 s pass (connection slots are released
/// when the server notices the close, a moment after the client's).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a connection and reads whatever the server sends within `wait`
/// (an over-the-cap connection gets its 503 without sending a request).
fn unsolicited(port: u16, wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn per_address_connection_cap() {
    let s = Server::start(ServerOpts::new().env("STARCITE_MAX_CONNECTIONS_PER_IP", "4"));
    let port = s.port();
    // Let the readiness probe's connection be released.
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // The fifth connection from 127.0.0.1 is answered 503 without a request.
    let got = unsolicited(port, Duration::from_secs(3));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text:?}");
    assert!(text.contains("connection: close"), "{text:?}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "too_many_connections", "{v}");
    assert!(v["message"].is_string());
    // Also when the client sends a request first (the standard envelope, 503).
    let r = try_request(
        port,
        b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
        Duration::from_secs(3),
    )
    .unwrap();
    assert_error_resp(&r, 503, "too_many_connections");

    // Closing one frees its slot.
    drop(held);
    eventually("a slot after closing the held connections", || {
        let r = try_request(
            port,
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            false,
            Duration::from_secs(3),
        )
        .ok()?;
        (r.status == 200).then_some(())
    });
}

#[test]
fn per_node_tail_socket_cap() {
    let s = Server::start(ServerOpts::new().env("STARCITE_MAX_TAIL_SOCKETS", "2"));
    let port = s.port();
    create_session(port, "capped");
    let a = Tail::connect(port, "capped", "cursor=0");
    let b = Tail::connect(port, "capped", "cursor=0");
    match Tail::try_connect(port, "capped", "cursor=0") {
        Ok(_) => panic!("a third tail socket was accepted over a cap of 2"),
        Err((status, body)) => {
            assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"], "too_many_tails", "{v}");
        }
    }
    // Plain requests are not affected by the tail cap.
    let (st, _) = get_json(port, "/v1/sessions");
    assert_eq!(st, 200);
    drop(a);
    let mut c = eventually("a tail slot after closing one", || {
        Tail::try_connect(port, "capped", "cursor=0").ok()
    });
    append_ok(port, "capped", &event("p", 1));
    let events = c.collect_events(1, Duration::from_secs(5));
    assert_eq!(events.len(), 1);
    drop(b);
}

#[test]
fn a_handler_panic_costs_one_request_not_the_core() {
    // One core, so every request below lands on the core that panicked.
    let s = Server::start(
        ServerOpts::new()
            .env("STARCITE_CORES", "1")
            .env("STARCITE_TEST_PANIC_ROUTE", "1"),
    );
    let port = s.port();
    create_session(port, "survivor");
    let mut tail = Tail::connect(port, "survivor", "cursor=0");
    // A keep-alive connection opened before the panic keeps working after it.
    let mut other = HttpConn::new(port);
    let (st, _) = other.post_json(&append_path("survivor"), &event("p", 1));
    assert_eq!(st, 201);

    for _ in 0..3 {
        let r = get(port, "/__test/panic");
        assert_error_resp(&r, 500, "internal_error");
        assert_eq!(r.header("connection"), Some("close"));
    }
    let (st, _) = other.post_json(&append_path("survivor"), &event("p", 2));
    assert_eq!(st, 201);
    assert_eq!(append_ok(port, "survivor", &event("p", 3)), 3);
    let events = tail.collect_events(3, Duration::from_secs(5));
    assert_eq!(events.len(), 3);
    assert_eq!(get(port, "/health/live").status, 200);
}

#[test]
fn the_panic_route_is_off_by_default() {
    let s = Server::start(ServerOpts::new().env("STARCITE_CORES", "1"));
    let r = get(s.port(), "/__test/panic");
    assert_eq!(r.status, 404, "{}", r.text());
}
