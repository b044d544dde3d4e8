//! Protocol robustness of the binary port: every malformed input is a clear
//! error or a closed connection, never a panic, a hang or unbounded memory.

mod common;

use common::*;
use starcite_wire::proto::{
    codes, encode, AppendFields, ClientMsg, Decoder, Preface, ServerMsg, MAX_FRAME,
    MAX_PREAUTH_FRAME,
};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

struct Raw {
    s: TcpStream,
    dec: Decoder,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            dec: Decoder::new(MAX_FRAME),
        }
    }

    /// Prefaces exchanged.
    fn open(port: u16) -> Raw {
        let mut r = Raw::connect(port);
        r.s.write_all(&Preface::OURS.to_bytes()).unwrap();
        let mut p = [0u8; 8];
        r.s.read_exact(&mut p).unwrap();
        assert_eq!(Preface::parse(&p), Ok(Preface::OURS));
        r
    }

    /// Prefaces and Hello done.
    fn hello(port: u16) -> Raw {
        let mut r = Raw::open(port);
        r.send(&ClientMsg::Hello {
            request_id: 1,
            token: None,
            client: "robustness".into(),
        });
        match r.recv() {
            Some(ServerMsg::HelloOk { request_id: 1, .. }) => r,
            other => panic!("expected HelloOk, got {other:?}"),
        }
    }

    fn send(&mut self, m: &ClientMsg) {
        let mut b = Vec::new();
        encode(m, MAX_FRAME, &mut b).unwrap();
        self.s.write_all(&b).unwrap();
    }

    /// The next message; None on EOF (or a reset).
    fn recv(&mut self) -> Option<ServerMsg> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.dec.next::<ServerMsg>().expect("server frames decode") {
                return Some(m);
            }
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Expects a connection-level error with `code`, then EOF.
    fn expect_error_then_close(&mut self, code: &str) {
        match self.recv() {
            Some(ServerMsg::Error { code: c, .. }) => assert_eq!(c, code),
            other => panic!("expected Error {code}, got {other:?}"),
        }
        self.expect_close();
    }

    fn expect_close(&mut self) {
        let t0 = Instant::now();
        while let Some(m) = self.recv() {
            assert!(t0.elapsed() < T, "still open, got {m:?}");
        }
    }
}

fn frame(payload: &[u8], crc: u32) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn still_healthy(s: &Server) {
    let (st, _) = get_json(s.port(), "/health/live");
    assert_eq!(st, 200);
    let mut r = Raw::hello(s.wire_port());
    r.send(&ClientMsg::Ping {
        request_id: 9,
        payload: 5,
    });
    assert_eq!(
        r.recv(),
        Some(ServerMsg::Pong {
            request_id: 9,
            payload: 5
        })
    );
}

#[test]
fn malformed_prefaces_and_frames_close_the_connection() {
    let s = Server::start_default();
    let port = s.wire_port();

    // Not our magic (e.g. HTTP on the wire port): closed without a preface.
    let mut r = Raw::connect(port);
    r.s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut b = [0u8; 8];
    assert!(matches!(r.s.read(&mut b), Ok(0) | Err(_)));

    // A version range we do not speak: our preface, then close.
    let mut r = Raw::connect(port);
    r.s.write_all(&Preface { min: 7, max: 9 }.to_bytes())
        .unwrap();
    r.s.read_exact(&mut b).unwrap();
    assert_eq!(Preface::parse(&b), Ok(Preface::OURS));
    assert!(Preface::OURS.negotiate(Preface { min: 7, max: 9 }).is_err());
    assert!(matches!(r.s.read(&mut b), Ok(0) | Err(_)));

    // A request before Hello.
    let mut r = Raw::open(port);
    r.send(&ClientMsg::Ping {
        request_id: 3,
        payload: 0,
    });
    match r.recv() {
        Some(ServerMsg::Error {
            request_id: 3,
            code,
            ..
        }) => assert_eq!(code, codes::HELLO_REQUIRED),
        other => panic!("{other:?}"),
    }
    r.expect_close();

    // Bad CRC.
    let mut r = Raw::hello(port);
    let mut good = Vec::new();
    encode(
        &ClientMsg::Ping {
            request_id: 2,
            payload: 1,
        },
        MAX_FRAME,
        &mut good,
    )
    .unwrap();
    let mut bad = good.clone();
    bad[5] ^= 0xff;
    r.s.write_all(&bad).unwrap();
    r.expect_error_then_close(codes::INVALID_FRAME);

    // Unknown message kind (valid CRC, tag out of range).
    let mut r = Raw::hello(port);
    let mut payload = good[8..].to_vec();
    let tag = payload.len() - std::mem::size_of::<starcite_wire::proto::ArchivedClientMsg>();
    payload[tag] = 77;
    r.s.write_all(&frame(&payload, starcite_wire::proto::checksum(&payload)))
        .unwrap();
    r.expect_error_then_close(codes::INVALID_FRAME);

    // Random bytes with a valid CRC.
    let mut r = Raw::hello(port);
    let junk: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
    r.s.write_all(&frame(&junk, starcite_wire::proto::checksum(&junk)))
        .unwrap();
    r.expect_error_then_close(codes::INVALID_FRAME);

    // Oversized frames: above 64 KiB before Hello, above max_frame after.
    let mut r = Raw::open(port);
    let hdr = ((MAX_PREAUTH_FRAME + 1) as u32).to_le_bytes();
    r.s.write_all(&[&hdr[..], &[0, 0, 0, 0]].concat()).unwrap();
    r.expect_error_then_close(codes::FRAME_TOO_LARGE);
    let mut r = Raw::hello(port);
    let hdr = ((MAX_FRAME + 1) as u32).to_le_bytes();
    r.s.write_all(&[&hdr[..], &[0, 0, 0, 0]].concat()).unwrap();
    r.expect_error_then_close(codes::FRAME_TOO_LARGE);

    // A second Hello is an error but not fatal.
    let mut r = Raw::hello(port);
    r.send(&ClientMsg::Hello {
        request_id: 4,
        token: None,
        client: String::new(),
    });
    match r.recv() {
        Some(ServerMsg::Error { code, .. }) => assert_eq!(code, codes::DUPLICATE_HELLO),
        other => panic!("{other:?}"),
    }

    // Truncated frames: the peer goes away mid-frame, mid-header, mid-preface.
    for cut in [3usize, 8, good.len() - 1] {
        let mut r = Raw::hello(port);
        r.s.write_all(&good[..cut]).unwrap();
        r.s.shutdown(Shutdown::Write).unwrap();
        r.expect_close();
    }
    let mut r = Raw::connect(port);
    r.s.write_all(b"STC").unwrap();
    drop(r);

    // Unsubscribe of nothing.
    let mut r = Raw::hello(port);
    r.send(&ClientMsg::Unsubscribe {
        request_id: 5,
        subscription: 999,
    });
    match r.recv() {
        Some(ServerMsg::Error { code, .. }) => assert_eq!(code, codes::UNKNOWN_SUBSCRIPTION),
        other => panic!("{other:?}"),
    }
    still_healthy(&s);
    assert!(!s.log_tail().contains("panicked"), "{}", s.log_tail());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 20,000 pipelined appends written without reading a single answer: the
/// server stops reading at its in-flight bound (TCP pushes back), memory stays
/// bounded, and once the client reads, every request is answered in order.
#[test]
fn a_flood_of_pipelined_requests_is_backpressured_and_answered_in_order() {
    let s = Server::start_default();
    create_session(s.port(), "flood");
    let pid = s.pid().unwrap();
    let rss0 = rss_kib(pid);
    let mut r = Raw::hello(s.wire_port());
    let n = 20_000u64;
    let writer = {
        let mut w = r.s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            for i in 1..=n {
                let m = ClientMsg::Append {
                    request_id: 100 + i,
                    session: "flood".into(),
                    fields: AppendFields {
                        event_type: "t".into(),
                        payload: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(200))
                            .into_bytes(),
                        producer_id: "p".into(),
                        producer_seq: i,
                        ..Default::default()
                    },
                };
                encode(&m, MAX_FRAME, &mut buf).unwrap();
                if buf.len() > 1 << 20 {
                    w.write_all(&buf).unwrap();
                    buf.clear();
                }
            }
            w.write_all(&buf).unwrap();
        })
    };
    // Let the client's writes pile up against the server's bound.
    std::thread::sleep(Duration::from_secs(2));
    let rss_mid = rss_kib(pid);
    let mut next = 1u64;
    let t0 = Instant::now();
    while next <= n {
        assert!(t0.elapsed() < Duration::from_secs(120), "stuck at {next}");
        match r.recv() {
            Some(ServerMsg::AppendAck {
                request_id, seq, ..
            }) => {
                assert_eq!(request_id, 100 + next, "answers in request order");
                assert_eq!(seq, next);
                next += 1;
            }
            other => panic!("at {next}: {other:?}"),
        }
    }
    writer.join().unwrap();
    let rss_end = rss_kib(pid);
    eprintln!("server RSS: {rss0} KiB before, {rss_mid} KiB while flooded, {rss_end} KiB after");
    assert!(
        rss_mid < rss0 + 256 * 1024,
        "RSS grew from {rss0} to {rss_mid} KiB while flooded"
    );
    still_healthy(&s);
}

/// A client that floods and never reads is dropped (write timeout), and the
/// server stays healthy.
#[test]
fn a_client_that_never_reads_does_not_hold_the_server() {
    let s = Server::start_default();
    create_session(s.port(), "noread");
    let r = Raw::hello(s.wire_port());
    let mut w = r.s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = Vec::new();
    for i in 1..=2_000u64 {
        encode(
            &ClientMsg::Ping {
                request_id: i,
                payload: i,
            },
            MAX_FRAME,
            &mut buf,
        )
        .unwrap();
    }
    let t0 = Instant::now();
    // Keep writing until the server stops reading (or drops us).
    while t0.elapsed() < Duration::from_secs(30) {
        if w.write_all(&buf).is_err() {
            break;
        }
    }
    still_healthy(&s);
    drop(r);
}

/// SIGTERM: an open connection gets `Goaway{shutting_down}`, its subscription
/// ends, then the server closes it; the process exits cleanly.
#[test]
fn goaway_on_shutdown() {
    let mut s = Server::start_default();
    create_session(s.port(), "ga");
    append_ok(s.port(), "ga", &event("p", 1));
    let mut r = Raw::hello(s.wire_port());
    r.send(&ClientMsg::Subscribe {
        request_id: 7,
        session: "ga".into(),
        cursor: 0,
        max_batch: 10,
    });
    match r.recv() {
        Some(ServerMsg::Events {
            subscription: 7,
            events,
        }) => assert_eq!(events[0].seq, 1),
        other => panic!("{other:?}"),
    }
    s.send_sigterm();
    let mut goaway = None;
    let t0 = Instant::now();
    while let Some(m) = r.recv() {
        assert!(t0.elapsed() < Duration::from_secs(15), "not closed");
        if let ServerMsg::Goaway { code, .. } = m {
            goaway = Some(code);
        }
    }
    assert_eq!(goaway.as_deref(), Some(codes::SHUTTING_DOWN));
    let status = s
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// The HTTP body limit (8,000,000 bytes) holds on the binary port too: a larger
/// append is a clear 413 `payload_too_large`, the connection stays usable.
#[test]
fn an_append_over_the_request_body_limit_is_payload_too_large() {
    let s = Server::start_default();
    create_session(s.port(), "big");
    let mut r = Raw::hello(s.wire_port());
    let fields = |n: usize, pseq: u64| AppendFields {
        event_type: "blob".into(),
        payload: format!("{{\"s\":\"{}\"}}", "x".repeat(n)).into_bytes(),
        producer_id: "p".into(),
        producer_seq: pseq,
        actor: None,
        source: None,
        metadata: None,
        refs: None,
        idempotency_key: None,
        expected_seq: None,
    };
    r.send(&ClientMsg::Append {
        request_id: 2,
        session: "big".into(),
        fields: fields(starcite_wire::limits::REQUEST_BODY, 1),
    });
    match r.recv() {
        Some(ServerMsg::Error {
            request_id: 2,
            code,
            status,
            ..
        }) => assert_eq!((code.as_str(), status), ("payload_too_large", 413)),
        other => panic!("expected payload_too_large, got {other:?}"),
    }
    r.send(&ClientMsg::Append {
        request_id: 3,
        session: "big".into(),
        fields: fields(7_900_000, 1),
    });
    match r.recv() {
        Some(ServerMsg::AppendAck {
            request_id: 3,
            seq: 1,
            ..
        }) => {}
        other => panic!("expected AppendAck seq 1, got {other:?}"),
    }
    still_healthy(&s);
}
