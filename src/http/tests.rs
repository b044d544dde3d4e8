//! End-to-end tests: a real listener on 127.0.0.1:0 driven by a monoio runtime in its
//! own thread, and blocking std clients. Every client read has a timeout so a broken
//! server fails the test instead of hanging it.

use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

use super::*;

/// Upper bound for any single client read in these tests.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Large server → client frame, to exercise the 64-bit length form.
const BIG_TEXT: usize = 70_000;

fn test_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(2),
        keepalive_idle: Duration::from_secs(2),
        ws_idle_timeout: Duration::from_secs(3),
        write_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// Echoes request facts; `/ws` upgrades to [`ws_session`].
struct TestHandler;

impl Handler for TestHandler {
    async fn handle(&self, req: Request) -> Reply {
        if req.path == "/ws" {
            return Reply::WebSocket(Box::new(|ws| Box::pin(ws_session(ws))));
        }
        if req.path == "/panic" {
            monoio::time::sleep(Duration::from_millis(1)).await;
            panic!("handler panic (test)");
        }
        if req.path == "/ws-panic" {
            return Reply::WebSocket(Box::new(|ws| {
                Box::pin(async move {
                    let (_rd, mut wr) = ws.split();
                    let _ = wr.send_text(Bytes::from_static(b"before")).await;
                    panic!("websocket session panic (test)");
                })
            }));
        }
        let body = format!(
            "{} {} q={} len={} body={}",
            req.method,
            req.path,
            req.query.as_deref().unwrap_or("-"),
            req.body.len(),
            String::from_utf8_lossy(&req.body)
        );
        let resp = Response::json(200, body);
        Reply::Http(if req.path == "/close" {
            resp.with_header("connection", "close")
        } else {
            resp
        })
    }
}

/// Sends two text frames, answers pings, and reports what the reader saw as text
/// frames so the client can assert on them.
async fn ws_session(ws: WebSocket) {
    let shutdown = ws.shutdown_signal();
    let (mut rd, mut wr) = ws.split();
    let _ = wr.send_text(Bytes::from_static(b"hello")).await;
    let _ = wr.send_text(Bytes::from(vec![b'a'; BIG_TEXT])).await;
    loop {
        // Both branches are cancel-safe: the socket is only read by the reader task.
        let event = monoio::select! {
            _ = shutdown.wait() => {
                let _ = wr.close(1001, "shutting down").await;
                return;
            }
            event = rd.next() => event,
        };
        match event {
            WsEvent::Ping(p) => {
                let _ = wr.send_pong(p).await;
            }
            WsEvent::Pong => {}
            WsEvent::Message | WsEvent::Text(_) => {
                let _ = wr.send_text(Bytes::from_static(b"message")).await;
            }
            WsEvent::Close(code) => {
                let _ = wr.send_text(Bytes::from(format!("close:{code:?}"))).await;
                let _ = wr.close(1000, "").await;
                return;
            }
            WsEvent::Closed => {
                let hint = rd.suggested_close_code();
                let _ = wr.send_text(Bytes::from(format!("closed:{hint:?}"))).await;
                if let Some(code) = hint {
                    let _ = wr.close(code, "").await;
                }
                return;
            }
        }
    }
}

/// A server on its own thread and runtime; stopped (and joined) on drop.
struct TestServer {
    addr: SocketAddr,
    stop: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(limits: Limits) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = bind_reuseport(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("send addr");
                let shutdown = async move {
                    let _ = stop_rx.recv_async().await;
                };
                serve(listener, Rc::new(TestHandler), Rc::new(limits), shutdown).await;
            });
        });
        let addr = addr_rx
            .recv_timeout(CLIENT_READ_TIMEOUT)
            .expect("server address");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Triggers shutdown and waits for `serve` to return; returns how long that took.
    fn shutdown(&mut self) -> Duration {
        let started = Instant::now();
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
        started.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// Blocking test client with its own input buffer (pipelined responses).
struct Client {
    s: StdStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let s = StdStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(CLIENT_READ_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Self { s, buf: Vec::new() }
    }

    fn send(&mut self, data: &[u8]) {
        self.s.write_all(data).expect("client write");
    }

    /// Reads more input; `false` on EOF or reset. Panics on timeout.
    fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("client read failed (timeout?): {e}"),
        }
    }

    /// Whether the server closes the connection (all further input is discarded).
    fn closed_by_server(&mut self) -> bool {
        while self.read_more() {}
        true
    }

    fn read_response(&mut self, for_head: bool) -> Resp {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) =
                parsed.parse(&self.buf).expect("valid response")
            {
                let status = parsed.code.unwrap();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let body_len = if for_head || status < 200 || status == 204 {
                    0
                } else {
                    len
                };
                while self.buf.len() < head_len + body_len {
                    assert!(self.read_more(), "EOF inside response body");
                }
                let body = self.buf[head_len..head_len + body_len].to_vec();
                self.buf.drain(..head_len + body_len);
                return Resp {
                    status,
                    headers,
                    body,
                };
            }
            assert!(
                self.read_more(),
                "EOF before a complete response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads one server frame: (opcode, payload).
    fn read_frame(&mut self) -> (OpCode, Vec<u8>) {
        loop {
            let mut cur = Cursor::new(&self.buf);
            if let Some((header, len)) = FrameHeader::parse(&mut cur).expect("valid frame header") {
                assert!(header.mask.is_none(), "server frames must be unmasked");
                assert!(header.is_final);
                let start = cur.position() as usize;
                let end = start + len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[start..end].to_vec();
                    self.buf.drain(..end);
                    return (header.opcode, payload);
                }
            }
            assert!(self.read_more(), "EOF before a complete frame");
        }
    }

    fn read_text(&mut self) -> String {
        let (op, payload) = self.read_frame();
        assert_eq!(op, OpCode::Data(Data::Text));
        String::from_utf8(payload).unwrap()
    }

    fn send_frame(&mut self, mut frame: Frame, masked: bool) {
        frame.header_mut().mask = masked.then_some([0x11, 0x22, 0x33, 0x44]);
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        self.send(&out);
    }

    /// Performs the upgrade with the RFC 6455 example key and reads the two greeting
    /// frames of [`ws_session`].
    fn upgrade(&mut self) {
        self.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        let resp = self.read_response(false);
        assert_eq!(resp.status, 101);
        assert_eq!(
            resp.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(resp.header("upgrade"), Some("websocket"));
        assert_eq!(self.read_text(), "hello");
        assert_eq!(self.read_text(), "a".repeat(BIG_TEXT));
    }
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[test]
fn keep_alive_two_requests() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"GET /one?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r1 = c.read_response(false);
    assert_eq!(r1.status, 200);
    assert_eq!(r1.body_str(), "GET /one q=x=1 len=0 body=");
    assert_eq!(r1.header("server"), Some("starcite"));
    assert_eq!(
        r1.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r1.header("connection"), None);
    c.send(b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    let r2 = c.read_response(false);
    assert_eq!(r2.body_str(), "POST /two q=- len=5 body=hello");
    c.send(b"GET /close HTTP/1.1\r\n\r\n");
    let r3 = c.read_response(false);
    assert_eq!(r3.header("connection"), Some("close"));
    assert!(c.closed_by_server());
}

#[test]
fn pipelined_requests_answered_in_order() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(
        b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c.read_response(false).body_str(), "GET /a q=- len=0 body=");
    assert_eq!(
        c.read_response(false).body_str(),
        "POST /b q=- len=3 body=xyz"
    );
    let last = c.read_response(false);
    assert_eq!(last.body_str(), "GET /c q=- len=0 body=");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(c.closed_by_server());
}

#[test]
fn http10_closes_unless_keep_alive() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(
        c.read_response(false).header("connection"),
        Some("keep-alive")
    );
    c.send(b"GET /c HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).header("connection"), Some("close"));
    assert!(c.closed_by_server());
}

#[test]
fn chunked_body_is_decoded() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    std::thread::sleep(Duration::from_millis(20));
    c.send(b"lo\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
    assert_eq!(
        c.read_response(false).body_str(),
        "POST /chunked q=- len=11 body=hello world"
    );
    assert_eq!(
        c.read_response(false).body_str(),
        "GET /after q=- len=0 body="
    );
}

#[test]
fn expect_continue_gets_100_first() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"POST /e HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.read_response(false).status, 100);
    c.send(b"body");
    assert_eq!(
        c.read_response(false).body_str(),
        "POST /e q=- len=4 body=body"
    );
}

#[test]
fn oversized_content_length_gets_413_without_reading_body() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"POST /big HTTP/1.1\r\nContent-Length: 8000001\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 413);
    assert_eq!(
        r.body_str(),
        r#"{"error":"payload_too_large","message":"Request body is too large"}"#
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());
}

#[test]
fn oversized_chunked_body_gets_413() {
    let limits = Limits {
        max_body: 8,
        ..test_limits()
    };
    let server = TestServer::start(limits);
    let mut c = server.connect();
    c.send(b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\n");
    assert_eq!(c.read_response(false).status, 413);
    assert!(c.closed_by_server());
}

#[test]
fn huge_headers_get_431() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    let req = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "v".repeat(20 * 1024));
    c.send(req.as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.status, 431);
    assert!(c.closed_by_server());

    let mut c = server.connect();
    let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
    c.send(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(c.read_response(false).status, 431);
    assert!(c.closed_by_server());
}

#[test]
fn malformed_requests_get_400() {
    let server = TestServer::start(test_limits());
    for bad in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n",
    ] {
        let mut c = server.connect();
        c.send(bad);
        let r = c.read_response(false);
        assert_eq!(r.status, 400, "for {:?}", String::from_utf8_lossy(bad));
        assert_eq!(
            r.body_str(),
            r#"{"error":"bad_request","message":"Malformed HTTP request"}"#
        );
        assert!(c.closed_by_server());
    }
}

#[test]
fn head_response_has_length_but_no_body() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!(head.status, 200);
    let expected_len = "HEAD /h q=- len=0 body=".len().to_string();
    assert_eq!(head.header("content-length"), Some(expected_len.as_str()));
    assert!(head.body.is_empty());
    // The next response must start right after the HEAD response's head.
    assert_eq!(c.read_response(false).body_str(), "GET /g q=- len=0 body=");
}

#[test]
fn slowloris_and_idle_connections_are_closed() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        keepalive_idle: Duration::from_millis(300),
        ..test_limits()
    };
    let server = TestServer::start(limits);

    // A head that never completes, trickled byte by byte.
    let mut c = server.connect();
    let started = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n");
    for b in b"X-Slow: aaaaaaaa" {
        std::thread::sleep(Duration::from_millis(30));
        if c.s.write_all(&[*b]).is_err() {
            break;
        }
    }
    assert!(c.closed_by_server());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(c.buf.is_empty(), "no response to a timed-out head");

    // A connection that never sends anything.
    let mut c = server.connect();
    assert!(c.closed_by_server());

    // An idle keep-alive connection.
    let mut c = server.connect();
    c.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    let started = Instant::now();
    assert!(c.closed_by_server());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn connections_over_the_cap_are_closed() {
    let limits = Limits {
        max_connections_per_core: 1,
        ..test_limits()
    };
    let server = TestServer::start(limits);
    let mut first = server.connect();
    first.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(first.read_response(false).status, 200);
    let mut second = server.connect();
    let started = Instant::now();
    assert!(second.closed_by_server());
    assert!(started.elapsed() < Duration::from_secs(1));
    first.send(b"GET /still HTTP/1.1\r\n\r\n");
    assert_eq!(first.read_response(false).status, 200);
}

#[test]
fn handler_panic_is_a_500_and_the_runtime_keeps_serving() {
    let server = TestServer::start(test_limits());
    let mut bystander = server.connect();
    bystander.send(b"GET /before HTTP/1.1\r\n\r\n");
    assert_eq!(bystander.read_response(false).status, 200);
    for _ in 0..3 {
        let mut c = server.connect();
        c.send(b"GET /panic HTTP/1.1\r\n\r\n");
        let resp = c.read_response(false);
        assert_eq!(resp.status, 500);
        assert_eq!(resp.header("connection"), Some("close"));
        assert_eq!(
            resp.body_str(),
            r#"{"error":"internal_error","message":"Internal server error"}"#
        );
        assert!(c.closed_by_server());
    }
    // A WebSocket session that panics closes its socket only.
    let mut ws = server.connect();
    ws.send(
        b"GET /ws-panic HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(ws.read_response(false).status, 101);
    assert_eq!(ws.read_text(), "before");
    assert!(ws.closed_by_server());
    // The connection opened before the panics is still served, and new ones too.
    bystander.send(b"GET /after HTTP/1.1\r\n\r\n");
    assert_eq!(bystander.read_response(false).status, 200);
    let mut fresh = server.connect();
    fresh.send(b"GET /fresh HTTP/1.1\r\n\r\n");
    assert_eq!(fresh.read_response(false).status, 200);
}

#[test]
fn websocket_cap_answers_503() {
    use std::sync::Arc;
    let node = Arc::new(NodeConnections::new(0, 1));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let opts = ServeOptions {
        tls: None,
        node: Arc::clone(&node),
    };
    let thread = std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = bind_reuseport(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let shutdown = async move {
                let _ = stop_rx.recv_async().await;
            };
            let limits = Rc::new(test_limits());
            serve_with(listener, Rc::new(TestHandler), limits, opts, shutdown).await;
        });
    });
    let addr = addr_rx.recv_timeout(CLIENT_READ_TIMEOUT).unwrap();
    let mut first = Client::connect(addr);
    first.upgrade();
    assert_eq!(node.websockets(), 1);
    let mut second = Client::connect(addr);
    second.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let resp = second.read_response(false);
    assert_eq!(resp.status, 503);
    assert!(
        resp.body_str().contains("too_many_tails"),
        "{}",
        resp.body_str()
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.websockets() > 0 {
        assert!(Instant::now() < deadline, "WebSocket slot not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut third = Client::connect(addr);
    third.upgrade();
    drop(stop_tx);
    thread.join().expect("server thread");
}

#[test]
fn shutdown_closes_idle_connections_and_returns() {
    let mut server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    let took = server.shutdown();
    assert!(
        took < Duration::from_secs(1),
        "serve took {took:?} to return"
    );
    assert!(c.closed_by_server());
    assert!(
        StdStream::connect(server.addr).is_err(),
        "listener must be closed"
    );
}

#[test]
fn websocket_handshake_and_server_frames() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.upgrade();
}

#[test]
fn websocket_bad_upgrade_gets_400() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.send(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body_str(),
        r#"{"error":"invalid_websocket_upgrade","message":"WebSocket upgrade required"}"#
    );
    assert!(c.closed_by_server());

    let mut c = server.connect();
    c.send(b"GET /ws HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response(false).status, 400);
}

#[test]
fn websocket_ping_is_answered_with_pong() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.upgrade();
    c.send_frame(Frame::ping(b"are you there".to_vec()), true);
    let (op, payload) = c.read_frame();
    assert_eq!(
        op,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Pong)
    );
    assert_eq!(payload, b"are you there");
    // A fragmented message is accepted and reported once.
    c.send_frame(
        Frame::message(b"ab".to_vec(), OpCode::Data(Data::Text), false),
        true,
    );
    c.send_frame(
        Frame::message(b"cd".to_vec(), OpCode::Data(Data::Continue), true),
        true,
    );
    assert_eq!(c.read_text(), "message");
}

#[test]
fn websocket_unmasked_frame_is_a_protocol_error() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.upgrade();
    c.send_frame(
        Frame::message(b"x".to_vec(), OpCode::Data(Data::Text), true),
        false,
    );
    assert_eq!(c.read_text(), "closed:Some(1002)");
    let (op, payload) = c.read_frame();
    assert_eq!(
        op,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Close)
    );
    assert_eq!(close_code(&payload), 1002);
    assert!(c.closed_by_server());
}

#[test]
fn websocket_oversized_frame_suggests_1009() {
    let limits = Limits {
        ws_max_frame: 1024,
        ..test_limits()
    };
    let server = TestServer::start(limits);
    let mut c = server.connect();
    c.upgrade();
    c.send_frame(
        Frame::message(vec![b'z'; 2000], OpCode::Data(Data::Binary), true),
        true,
    );
    assert_eq!(c.read_text(), "closed:Some(1009)");
    let (_, payload) = c.read_frame();
    assert_eq!(close_code(&payload), 1009);
}

#[test]
fn websocket_client_close_is_reported_with_code() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.upgrade();
    let close = CloseFrame {
        code: CloseCode::from(4000),
        reason: "done".into(),
    };
    c.send_frame(Frame::close(Some(close)), true);
    assert_eq!(c.read_text(), "close:Some(4000)");
    let (op, payload) = c.read_frame();
    assert_eq!(
        op,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Close)
    );
    assert_eq!(close_code(&payload), 1000);
    assert!(c.closed_by_server());
}

#[test]
fn websocket_idle_timeout_closes() {
    let limits = Limits {
        ws_idle_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let server = TestServer::start(limits);
    let mut c = server.connect();
    c.upgrade();
    let started = Instant::now();
    assert_eq!(c.read_text(), "closed:Some(1002)");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn shutdown_closes_websockets_with_going_away() {
    let mut server = TestServer::start(test_limits());
    let mut c = server.connect();
    c.upgrade();
    let took = server.shutdown();
    assert!(
        took < Duration::from_secs(1),
        "serve took {took:?} to return"
    );
    let (op, payload) = c.read_frame();
    assert_eq!(
        op,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Close)
    );
    assert_eq!(close_code(&payload), 1001);
    assert_eq!(&payload[2..], b"shutting down");
    assert!(c.closed_by_server());
}

#[test]
fn large_body_and_large_response() {
    let server = TestServer::start(test_limits());
    let mut c = server.connect();
    let body = "b".repeat(1_000_000);
    c.send(
        format!(
            "POST /large HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for piece in body.as_bytes().chunks(100_000) {
        c.send(piece);
    }
    let r = c.read_response(false);
    assert_eq!(
        r.body_str(),
        format!("POST /large q=- len=1000000 body={body}")
    );
    c.send(b"GET /next HTTP/1.1\r\n\r\n");
    assert_eq!(
        c.read_response(false).body_str(),
        "GET /next q=- len=0 body="
    );
}
