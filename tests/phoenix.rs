//! Black-box tests of the Phoenix socket (`/v1/socket/websocket`, docs/api.md
//! "Phoenix socket"): raw Phoenix V2 (and V1) frames over a real WebSocket
//! against a real `starcite`, in auth modes `none` and `jwt`.

mod common;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

const T: Duration = Duration::from_secs(10);

/// One Phoenix message as received.
#[derive(Debug, Clone)]
struct Msg {
    join_ref: Value,
    msg_ref: Value,
    topic: String,
    event: String,
    payload: Value,
}

/// A minimal Phoenix client over tungstenite: V2 arrays (or V1 objects).
struct Phx {
    ws: WebSocket<TcpStream>,
    v2: bool,
    next_ref: u64,
    /// Received but not yet asked for.
    pending: VecDeque<Msg>,
    closed: Option<Option<u16>>,
}

fn socket_path(query: &str) -> String {
    format!("/v1/socket/websocket?{query}")
}

impl Phx {
    fn try_connect(port: u16, query: &str) -> Result<Phx, (u16, String)> {
        let stream = connect(port, IO_TIMEOUT).map_err(|e| (0, e.to_string()))?;
        let url = format!("ws://127.0.0.1:{port}{}", socket_path(query));
        match tungstenite::client::client(url.as_str(), stream) {
            Ok((ws, _)) => Ok(Phx {
                ws,
                v2: query.contains("vsn=2"),
                next_ref: 0,
                pending: VecDeque::new(),
                closed: None,
            }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp.body().clone().unwrap_or_default();
                Err((
                    resp.status().as_u16(),
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    fn connect(port: u16, query: &str) -> Phx {
        Phx::try_connect(port, query).unwrap_or_else(|e| panic!("socket connect: {e:?}"))
    }

    /// Sends a message; returns its ref.
    fn send(&mut self, join_ref: Option<&str>, topic: &str, event: &str, payload: Value) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let text = if self.v2 {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": r, "topic": topic, "event": event, "payload": payload})
                .to_string()
        };
        self.send_raw(&text);
        r
    }

    fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_owned())).unwrap();
    }

    /// Joins; returns (join_ref, reply payload).
    fn join(&mut self, topic: &str, params: Value) -> (String, Value) {
        self.next_ref += 1;
        let join_ref = self.next_ref.to_string();
        let text = if self.v2 {
            json!([join_ref, join_ref, topic, "phx_join", params]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": join_ref, "topic": topic, "event": "phx_join", "payload": params}).to_string()
        };
        self.send_raw(&text);
        let reply = self.expect(topic, "phx_reply");
        assert_eq!(reply.join_ref, json!(join_ref), "{reply:?}");
        assert_eq!(reply.msg_ref, json!(join_ref), "{reply:?}");
        (join_ref, reply.payload)
    }

    fn join_ok(&mut self, topic: &str, params: Value) -> String {
        let (join_ref, reply) = self.join(topic, params);
        assert_eq!(reply, json!({"status": "ok", "response": {}}), "{topic}");
        join_ref
    }

    fn join_error(&mut self, topic: &str, params: Value) -> String {
        let (_, reply) = self.join(topic, params.clone());
        assert_eq!(reply["status"], "error", "{topic} {params}: {reply}");
        reply["response"]["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("no reason: {reply}"))
            .to_owned()
    }

    fn parse(&self, text: &str) -> Msg {
        let v: Value = serde_json::from_str(text).unwrap();
        if self.v2 {
            let a = v
                .as_array()
                .unwrap_or_else(|| panic!("not a V2 array: {v}"));
            assert_eq!(a.len(), 5, "{v}");
            Msg {
                join_ref: a[0].clone(),
                msg_ref: a[1].clone(),
                topic: a[2].as_str().unwrap().to_owned(),
                event: a[3].as_str().unwrap().to_owned(),
                payload: a[4].clone(),
            }
        } else {
            assert!(v.is_object(), "not a V1 object: {v}");
            Msg {
                join_ref: v["join_ref"].clone(),
                msg_ref: v["ref"].clone(),
                topic: v["topic"].as_str().unwrap().to_owned(),
                event: v["event"].as_str().unwrap().to_owned(),
                payload: v["payload"].clone(),
            }
        }
    }

    /// The next message from the socket (None on timeout or close).
    fn read(&mut self, timeout: Duration) -> Option<Msg> {
        if self.closed.is_some() {
            return None;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = self
                .ws
                .get_mut()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(self.parse(&t)),
                Ok(Message::Close(cf)) => {
                    self.closed = Some(cf.map(|f| u16::from(f.code)));
                    let _ = self.ws.flush();
                    return None;
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(_) => {
                    self.closed = Some(None);
                    return None;
                }
            }
        }
    }

    /// The next message on `topic` (others are kept for later).
    fn next_on(&mut self, topic: &str, timeout: Duration) -> Option<Msg> {
        if let Some(i) = self.pending.iter().position(|m| m.topic == topic) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let m = self.read(left)?;
            if m.topic == topic {
                return Some(m);
            }
            self.pending.push_back(m);
        }
    }

    #[track_caller]
    fn expect(&mut self, topic: &str, event: &str) -> Msg {
        let m = self
            .next_on(topic, T)
            .unwrap_or_else(|| panic!("no message on {topic} (expected {event})"));
        assert_eq!(m.event, event, "{m:?}");
        m
    }

    /// Events of `events` pushes on `topic` until `n` have arrived; checks
    /// that each event's cursor is its seq. Returns (events, pushes).
    #[track_caller]
    fn events(&mut self, topic: &str, n: usize) -> (Vec<Value>, Vec<usize>) {
        let mut out = Vec::new();
        let mut pushes = Vec::new();
        while out.len() < n {
            let m = self.expect(topic, "events");
            assert_eq!(m.msg_ref, Value::Null, "{m:?}");
            let list = m.payload["events"]
                .as_array()
                .unwrap_or_else(|| panic!("events is not a list: {m:?}"))
                .clone();
            assert!(!list.is_empty());
            for e in &list {
                assert_eq!(e["cursor"], e["seq"], "{e}");
            }
            pushes.push(list.len());
            out.extend(list);
        }
        (out, pushes)
    }

    #[track_caller]
    fn silent(&mut self, topic: &str, d: Duration) {
        if let Some(m) = self.next_on(topic, d) {
            panic!("expected silence on {topic}, got {m:?}");
        }
    }
}

fn append_n(port: u16, session: &str, from: u64, to: u64) {
    let mut c = HttpConn::new(port);
    for i in from..=to {
        let (st, v) = c.post_json(&append_path(session), &event("w", i));
        assert_eq!(st, 201, "append {i}: {v}");
    }
}

#[test]
fn heartbeat_join_replay_batches_and_live() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "ph1");
    append_n(p, "ph1", 1, 3);
    let mut c = Phx::connect(p, "vsn=2.0.0");

    let r = c.send(None, "phoenix", "heartbeat", json!({}));
    let m = c.expect("phoenix", "phx_reply");
    assert_eq!(m.join_ref, Value::Null);
    assert_eq!(m.msg_ref, json!(r));
    assert_eq!(m.payload, json!({"status": "ok", "response": {}}));

    let join_ref = c.join_ok("tail:ph1", json!({"batch_size": 2}));
    let first = c.expect("tail:ph1", "events");
    assert_eq!(first.join_ref, json!(join_ref));
    let list = first.payload["events"].as_array().unwrap();
    assert_eq!(seqs(list), vec![1, 2]);
    assert_eq!(list[0]["cursor"], 1);
    assert_eq!(list[0]["type"], "test.event");
    assert_eq!(list[0]["producer_id"], "w");
    assert!(list[0]["inserted_at"].as_str().unwrap().ends_with('Z'));
    let (rest, _) = c.events("tail:ph1", 1);
    assert_eq!(seqs(&rest), vec![3]);
    c.silent("tail:ph1", Duration::from_millis(300));

    append_n(p, "ph1", 4, 4);
    let (live, pushes) = c.events("tail:ph1", 1);
    assert_eq!(seqs(&live), vec![4]);
    assert_eq!(pushes, vec![1]);

    // A resume cursor replays after it; default batch size is one per push.
    let mut c2 = Phx::connect(p, "vsn=2.0.0");
    c2.join_ok("tail:ph1", json!({"cursor": 2}));
    let (evs, pushes) = c2.events("tail:ph1", 2);
    assert_eq!(seqs(&evs), vec![3, 4]);
    assert_eq!(pushes, vec![1, 1]);
    c2.silent("tail:ph1", Duration::from_millis(200));
}

#[test]
fn join_errors_and_unmatched_topics() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "pe");
    let mut c = Phx::connect(p, "vsn=2.0.0");
    for (params, reason) in [
        (json!({"cursor": null}), "invalid_cursor"),
        (json!({"cursor": "1"}), "invalid_cursor"),
        (json!({"cursor": {"epoch": 0, "seq": 0}}), "invalid_cursor"),
        (json!({"cursor": -1}), "invalid_cursor"),
        (json!({"cursor": 1.5}), "invalid_cursor"),
        (json!({"batch_size": "2"}), "invalid_tail_batch_size"),
        (json!({"batch_size": 0}), "invalid_tail_batch_size"),
        (json!({"batch_size": 1001}), "invalid_tail_batch_size"),
        (json!({"live_only": "yes"}), "invalid_live_only"),
    ] {
        assert_eq!(c.join_error("tail:pe", params.clone()), reason, "{params}");
    }
    assert_eq!(c.join_error("tail:nope", json!({})), "session_not_found");
    assert_eq!(c.join_error("tail:", json!({})), "unauthorized");

    // Unknown topic: Phoenix's unmatched-topic error, join_ref null.
    c.send(Some("9"), "rooms:lobby", "phx_join", json!({}));
    let m = c.expect("rooms:lobby", "phx_reply");
    assert_eq!(m.join_ref, Value::Null);
    assert_eq!(
        m.payload,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    // A message to a topic this socket has not joined: the same.
    let r = c.send(Some("1"), "tail:pe", "ping", json!({}));
    let m = c.expect("tail:pe", "phx_reply");
    assert_eq!(m.msg_ref, json!(r));
    assert_eq!(m.payload["response"]["reason"], "unmatched topic");
    // Leaving a topic that is not joined is ok.
    c.send(Some("1"), "tail:pe", "phx_leave", json!({}));
    let m = c.expect("tail:pe", "phx_reply");
    assert_eq!(m.payload["status"], "ok");

    // The socket survives all of that.
    c.join_ok("tail:pe", json!({}));
    // Client messages into a joined channel are ignored (no reply).
    c.send(Some("1"), "tail:pe", "whatever", json!({}));
    c.silent("tail:pe", Duration::from_millis(300));

    // Not JSON: the socket closes with 1007.
    c.send_raw("not json");
    assert!(c.read(T).is_none());
    assert_eq!(c.closed, Some(Some(1007)));
}

#[test]
fn many_topics_on_one_socket_leave_and_duplicate_join() {
    let s = Server::start_default();
    let p = s.port();
    for id in ["ma", "mb", "mc"] {
        create_session(p, id);
        append_n(p, id, 1, 2);
    }
    let mut c = Phx::connect(p, "vsn=2.0.0");
    let ja = c.join_ok("tail:ma", json!({}));
    c.join_ok("tail:mb", json!({"batch_size": 10}));
    c.join_ok("tail:mc", json!({"cursor": 2}));
    assert_eq!(seqs(&c.events("tail:ma", 2).0), vec![1, 2]);
    assert_eq!(seqs(&c.events("tail:mb", 2).0), vec![1, 2]);
    c.silent("tail:mc", Duration::from_millis(200));
    for id in ["ma", "mb", "mc"] {
        append_n(p, id, 3, 3);
    }
    for topic in ["tail:ma", "tail:mb", "tail:mc"] {
        assert_eq!(seqs(&c.events(topic, 1).0), vec![3], "{topic}");
    }

    // Leave: ok reply, then phx_close; nothing more arrives on that topic.
    let r = c.send(Some(&ja), "tail:ma", "phx_leave", json!({}));
    let m = c.expect("tail:ma", "phx_reply");
    assert_eq!(
        (m.msg_ref.clone(), m.payload.clone()),
        (json!(r), json!({"status": "ok", "response": {}}))
    );
    let m = c.expect("tail:ma", "phx_close");
    assert_eq!(m.join_ref, json!(ja));
    append_n(p, "ma", 4, 4);
    append_n(p, "mb", 4, 4);
    assert_eq!(seqs(&c.events("tail:mb", 1).0), vec![4]);
    c.silent("tail:ma", Duration::from_millis(300));

    // A second join of a joined topic closes the first channel, then joins.
    let old_ref = c
        .pending
        .iter()
        .find(|m| m.topic == "tail:mb")
        .map(|m| m.join_ref.clone());
    assert_eq!(old_ref, None);
    c.next_ref += 1;
    let jr = c.next_ref.to_string();
    c.send_raw(&json!([jr, jr, "tail:mb", "phx_join", {"cursor": 3}]).to_string());
    let close = c.expect("tail:mb", "phx_close");
    assert_ne!(close.join_ref, json!(jr));
    assert_ne!(close.join_ref, Value::Null);
    let reply = c.expect("tail:mb", "phx_reply");
    assert_eq!(reply.join_ref, json!(jr));
    assert_eq!(reply.payload["status"], "ok");
    assert_eq!(seqs(&c.events("tail:mb", 1).0), vec![4]);
}

#[test]
fn resume_past_the_end_is_a_gap_then_live_and_live_only() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "pg");
    append_n(p, "pg", 1, 3);
    let mut c = Phx::connect(p, "vsn=2.0.0");
    c.join_ok("tail:pg", json!({"cursor": 50}));
    let gap = c.expect("tail:pg", "gap");
    assert_eq!(
        gap.payload,
        json!({"type": "gap", "reason": "resume_invalidated", "from_cursor": 50,
               "next_cursor": 3, "committed_cursor": 3, "earliest_available_cursor": 1})
    );
    c.silent("tail:pg", Duration::from_millis(200));

    // live_only: no replay, only what is appended after the join.
    let mut l = Phx::connect(p, "vsn=2.0.0");
    l.join_ok("tail:pg", json!({"live_only": true, "cursor": 0}));
    l.silent("tail:pg", Duration::from_millis(300));
    append_n(p, "pg", 4, 5);
    assert_eq!(seqs(&c.events("tail:pg", 2).0), vec![4, 5]);
    assert_eq!(seqs(&l.events("tail:pg", 2).0), vec![4, 5]);
    // cursor == last_seq is not a gap.
    let mut e = Phx::connect(p, "vsn=2.0.0");
    e.join_ok("tail:pg", json!({"cursor": 5}));
    e.silent("tail:pg", Duration::from_millis(200));
}

#[test]
fn v1_object_frames_and_handshake_errors() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "pv");
    append_n(p, "pv", 1, 1);
    // No vsn: Phoenix's 1.0.0 serializer, objects both ways.
    let mut c = Phx::connect(p, "");
    let r = c.send(None, "phoenix", "heartbeat", json!({}));
    let m = c.expect("phoenix", "phx_reply");
    assert_eq!(
        (m.msg_ref, m.payload),
        (json!(r), json!({"status": "ok", "response": {}}))
    );
    c.join_ok("tail:pv", json!({}));
    assert_eq!(seqs(&c.events("tail:pv", 1).0), vec![1]);
    // vsn 1.0.0 explicitly; V2 arrays are still understood inbound.
    let mut c = Phx::connect(p, "vsn=1.0.0");
    c.send_raw(r#"[null,"7","phoenix","heartbeat",{}]"#);
    let m = c.expect("phoenix", "phx_reply");
    assert_eq!(m.msg_ref, json!("7"));

    let (st, body) = Phx::try_connect(p, "vsn=3.0.0").err().unwrap();
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("unsupported_vsn"), "{body}");
    // access_token is refused, as upstream does, even in auth mode none.
    let (st, _) = Phx::try_connect(p, "vsn=2.0.0&access_token=x")
        .err()
        .unwrap();
    assert_eq!(st, 403);
    // Not an upgrade.
    let r = get(p, "/v1/socket/websocket?vsn=2.0.0");
    assert_error_resp(&r, 400, "invalid_websocket_upgrade");
}

#[test]
fn shutdown_closes_the_socket_with_going_away() {
    let mut s = Server::start_default();
    let p = s.port();
    create_session(p, "sd");
    let mut c = Phx::connect(p, "vsn=2.0.0");
    c.join_ok("tail:sd", json!({}));
    s.send_sigterm();
    assert!(c.read(T).is_none(), "nothing but the close");
    assert_eq!(c.closed, Some(Some(1001)));
}

/// A client that stops reading while thousands of large events are appended:
/// the server does not buffer them (its tails fall behind and resume by
/// replay), and once the client reads again it gets every event exactly once,
/// in order, on both of its topics.
#[test]
fn a_client_that_stops_reading_still_gets_everything_in_order() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "slow1");
    create_session(p, "slow2");
    let mut c = Phx::connect(p, "vsn=2.0.0");
    c.join_ok("tail:slow1", json!({"batch_size": 50}));
    c.join_ok("tail:slow2", json!({}));
    let pad = "x".repeat(4096);
    // Append until the server has dropped a tail back to replay (socket
    // buffers absorb a few MB first, more on some machines), at most 8,000
    // events of 4 KiB per session.
    let mut http = HttpConn::new(p);
    let dropped_to_replay = || -> f64 {
        get(p, "/metrics")
            .text()
            .lines()
            .filter(|l| l.starts_with("starcite_tail_dropped_to_replay_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut n = 0u64;
    while n < 8000 {
        for _ in 0..500 {
            n += 1;
            for session in ["slow1", "slow2"] {
                let body = json!({"type": "t", "payload": {"pad": pad, "i": n},
                                  "producer_id": "w", "producer_seq": n});
                let (st, v) = http.post_json(&append_path(session), &body);
                assert_eq!(st, 201, "{v}");
            }
        }
        if n >= 1500 && dropped_to_replay() >= 1.0 {
            break;
        }
    }
    // The server did not hold those events for the client: its tails were
    // dropped back to replay.
    let dropped = dropped_to_replay();
    assert!(
        dropped >= 1.0,
        "no tail fell behind after {n} events: {dropped}"
    );
    // Only now does the client read.
    let (a, _) = c.events("tail:slow1", n as usize);
    assert_eq!(seqs(&a), (1..=n).collect::<Vec<_>>());
    let (b, pushes) = c.events("tail:slow2", n as usize);
    assert_eq!(seqs(&b), (1..=n).collect::<Vec<_>>());
    assert!(
        pushes.iter().all(|k| *k == 1),
        "batch_size 1 pushes one event each"
    );
    c.silent("tail:slow1", Duration::from_millis(200));
}

// ---------------------------------------------------------------------------
// JWT mode
// ---------------------------------------------------------------------------

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "starcite-api";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwks_server(key: &RS256KeyPair) -> String {
    let comps = key.public_key().to_components();
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
        "n": URL_SAFE_NO_PAD.encode(&comps.n), "e": URL_SAFE_NO_PAD.encode(&comps.e),
    }]})
    .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    format!("http://127.0.0.1:{port}/.well-known/jwks.json")
}

#[derive(Serialize, Deserialize)]
struct Extra {
    tenant_id: String,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
}

fn token(
    key: &RS256KeyPair,
    sub: &str,
    tenant: &str,
    scope: &str,
    lock: Option<&str>,
    ttl: u64,
) -> String {
    let extra = Extra {
        tenant_id: tenant.into(),
        scope: scope.into(),
        session_id: lock.map(str::to_owned),
    };
    let claims = Claims::with_custom_claims(extra, jwt_simple::prelude::Duration::from_secs(ttl))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject(sub);
    key.sign(claims).unwrap()
}

fn jwt_server(key: &RS256KeyPair) -> Server {
    Server::start(
        ServerOpts::new()
            .env("STARCITE_AUTH_MODE", "jwt")
            .env("STARCITE_AUTH_JWT_ISSUER", ISSUER)
            .env("STARCITE_AUTH_JWT_AUDIENCE", AUDIENCE)
            .env("STARCITE_AUTH_JWKS_URL", &jwks_server(key)),
    )
}

fn authed(port: u16, method: &str, path: &str, token: &str, body: &Value) -> Response {
    let auth = format!("Bearer {token}");
    let body = body.to_string();
    request(
        port,
        method,
        path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        Some(body.as_bytes()),
    )
}

#[test]
fn jwt_socket_auth_join_checks_and_expiry() {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let s = jwt_server(&key);
    let p = s.port();
    let all = "session:create session:append session:read";
    let acme = token(&key, "service:backend", "acme", all, None, 300);
    for id in ["j1", "j2"] {
        let r = authed(p, "POST", "/v1/sessions", &acme, &json!({"id": id}));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    for i in 1..=2 {
        let body = json!({"type": "t", "payload": {"i": i}, "producer_id": "p", "producer_seq": i});
        let r = authed(p, "POST", "/v1/sessions/j1/append", &acme, &body);
        assert_eq!(r.status, 201, "{}", r.text());
    }

    // Handshake: only `token` authenticates; anything else is refused.
    assert_eq!(
        Phx::try_connect(p, "vsn=2.0.0").err().map(|e| e.0),
        Some(403)
    );
    assert_eq!(
        Phx::try_connect(p, "vsn=2.0.0&token=not.a.jwt")
            .err()
            .map(|e| e.0),
        Some(403)
    );
    assert_eq!(
        Phx::try_connect(p, &format!("vsn=2.0.0&access_token={acme}"))
            .err()
            .map(|e| e.0),
        Some(403)
    );
    let other_key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let forged = token(&other_key, "user:u", "acme", all, None, 300);
    assert_eq!(
        Phx::try_connect(p, &format!("vsn=2.0.0&token={forged}"))
            .err()
            .map(|e| e.0),
        Some(403)
    );
    let r = request(
        p,
        "GET",
        "/v1/socket/websocket?vsn=2.0.0",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Authorization", &format!("Bearer {acme}")),
        ],
        None,
    );
    assert_eq!(
        r.status, 403,
        "a header token does not authenticate the socket"
    );

    // Join checks, each with upstream's reason.
    let user = token(&key, "user:u-1", "acme", "session:read", None, 300);
    let mut c = Phx::connect(p, &format!("vsn=2.0.0&token={user}"));
    c.join_ok("tail:j1", json!({}));
    assert_eq!(seqs(&c.events("tail:j1", 2).0), vec![1, 2]);
    assert_eq!(c.join_error("tail:missing", json!({})), "session_not_found");
    let other_tenant = token(&key, "user:u-2", "globex", "session:read", None, 300);
    let mut c2 = Phx::connect(p, &format!("vsn=2.0.0&token={other_tenant}"));
    assert_eq!(c2.join_error("tail:j1", json!({})), "forbidden_tenant");
    let locked = token(&key, "user:u-3", "acme", "session:read", Some("j2"), 300);
    let mut c3 = Phx::connect(p, &format!("vsn=2.0.0&token={locked}"));
    assert_eq!(c3.join_error("tail:j1", json!({})), "forbidden_session");
    c3.join_ok("tail:j2", json!({}));
    let no_read = token(&key, "user:u-4", "acme", "session:append", None, 300);
    let mut c4 = Phx::connect(p, &format!("vsn=2.0.0&token={no_read}"));
    assert_eq!(c4.join_error("tail:j1", json!({})), "forbidden_scope");
    assert_eq!(
        c4.join_error("tail:j1", json!({"cursor": "x"})),
        "invalid_cursor"
    );

    // A token expiring mid-stream: events flow on two channels, then each
    // pushes token_expired and closes; the socket itself stays up.
    let exp = now() + 3;
    let short = token(&key, "user:u-5", "acme", "session:read", None, exp - now());
    let mut e = Phx::connect(p, &format!("vsn=2.0.0&token={short}"));
    let jr = e.join_ok("tail:j1", json!({"cursor": 1}));
    e.join_ok("tail:j2", json!({}));
    assert_eq!(seqs(&e.events("tail:j1", 1).0), vec![2]);
    let body = json!({"type": "t", "payload": {}, "producer_id": "p", "producer_seq": 3});
    assert_eq!(
        authed(p, "POST", "/v1/sessions/j1/append", &acme, &body).status,
        201
    );
    assert_eq!(seqs(&e.events("tail:j1", 1).0), vec![3]);
    let m = e.expect("tail:j1", "token_expired");
    assert_eq!(m.payload, json!({"reason": "token_expired"}));
    assert!(now() >= exp, "expired early");
    let m = e.expect("tail:j1", "phx_close");
    assert_eq!(m.join_ref, json!(jr));
    e.expect("tail:j2", "token_expired");
    e.expect("tail:j2", "phx_close");
    let r = e.send(None, "phoenix", "heartbeat", json!({}));
    let m = e.expect("phoenix", "phx_reply");
    assert_eq!(m.msg_ref, json!(r));
    // Joining with the expired token now fails.
    assert_eq!(e.join_error("tail:j1", json!({})), "token_expired");
}

/// The next `lifecycle` push's event (its `kind` checked).
#[track_caller]
fn lifecycle_event(c: &mut Phx, kind: &str) -> Value {
    let m = c.expect("lifecycle", "lifecycle");
    assert_eq!(m.msg_ref, Value::Null, "{m:?}");
    let e = m.payload["event"].clone();
    assert_eq!(e["kind"], kind, "{m:?}");
    e
}

#[test]
fn lifecycle_topic_pushes_session_changes_live() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "before");
    let mut c = Phx::connect(p, "vsn=2.0.0");
    c.join_ok("lifecycle", json!({}));
    // Live only: the session created before the join is not replayed.
    c.silent("lifecycle", Duration::from_millis(300));

    create_session_with(p, json!({"id": "lc", "title": "A", "metadata": {"k": 1}}));
    let e = lifecycle_event(&mut c, "session.activated");
    assert_eq!(
        e,
        json!({"kind": "session.activated", "session_id": "lc", "tenant_id": "service"})
    );
    let e = lifecycle_event(&mut c, "session.created");
    assert_eq!(e["session_id"], "lc");
    assert_eq!(e["title"], "A");
    assert_eq!(e["metadata"], json!({"k": 1}));
    assert_eq!(e["version"], 1);
    assert!(e["created_at"].is_string(), "{e}");

    let r = request(
        p,
        "PATCH",
        "/v1/sessions/lc",
        &[("Content-Type", "application/json")],
        Some(json!({"title": "B"}).to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let e = lifecycle_event(&mut c, "session.updated");
    assert_eq!(
        (e["title"].clone(), e["version"].clone()),
        (json!("B"), json!(2))
    );
    assert!(e["updated_at"].is_string(), "{e}");

    assert_eq!(post_json(p, "/v1/sessions/lc/archive", &json!({})).0, 200);
    let e = lifecycle_event(&mut c, "session.archived");
    assert_eq!(e["archived"], true);
    // Archiving again changes nothing, so nothing is pushed.
    assert_eq!(post_json(p, "/v1/sessions/lc/archive", &json!({})).0, 200);
    c.silent("lifecycle", Duration::from_millis(300));
    assert_eq!(post_json(p, "/v1/sessions/lc/unarchive", &json!({})).0, 200);
    assert_eq!(
        lifecycle_event(&mut c, "session.unarchived")["archived"],
        false
    );

    // Leave: ok reply, phx_close, and nothing more afterwards.
    let r = c.send(Some("1"), "lifecycle", "phx_leave", json!({}));
    let m = c.expect("lifecycle", "phx_reply");
    assert_eq!(
        (m.msg_ref, m.payload["status"].clone()),
        (json!(r), json!("ok"))
    );
    c.expect("lifecycle", "phx_close");
    create_session(p, "after-leave");
    c.silent("lifecycle", Duration::from_millis(300));
}

#[test]
fn jwt_lifecycle_is_for_services_of_the_tenant() {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let s = jwt_server(&key);
    let p = s.port();
    let all = "session:create session:append session:read";
    for (sub, reason) in [("user:u", "forbidden"), ("agent:a", "forbidden")] {
        let t = token(&key, sub, "acme", all, None, 300);
        let mut c = Phx::connect(p, &format!("vsn=2.0.0&token={t}"));
        assert_eq!(c.join_error("lifecycle", json!({})), reason, "{sub}");
    }
    let locked = token(&key, "service:b", "acme", all, Some("x"), 300);
    let mut c = Phx::connect(p, &format!("vsn=2.0.0&token={locked}"));
    assert_eq!(c.join_error("lifecycle", json!({})), "forbidden_session");
    let no_read = token(&key, "service:b", "acme", "session:create", None, 300);
    let mut c = Phx::connect(p, &format!("vsn=2.0.0&token={no_read}"));
    assert_eq!(c.join_error("lifecycle", json!({})), "forbidden_scope");

    // A service of acme sees acme's sessions, not globex's.
    let acme = token(&key, "service:b", "acme", all, None, 300);
    let globex = token(&key, "service:g", "globex", all, None, 300);
    let mut c = Phx::connect(p, &format!("vsn=2.0.0&token={acme}"));
    c.join_ok("lifecycle", json!({}));
    let r = authed(p, "POST", "/v1/sessions", &globex, &json!({"id": "g1"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = authed(p, "POST", "/v1/sessions", &acme, &json!({"id": "a1"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let e = lifecycle_event(&mut c, "session.activated");
    assert_eq!(
        (e["session_id"].clone(), e["tenant_id"].clone()),
        (json!("a1"), json!("acme"))
    );
    assert_eq!(
        lifecycle_event(&mut c, "session.created")["session_id"],
        "a1"
    );
    c.silent("lifecycle", Duration::from_millis(300));
}
