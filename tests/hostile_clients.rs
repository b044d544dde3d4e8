//! Black-box test: one node under hostile clients (docs/security.md "Limits",
//! docs/architecture.md "Memory bounds").
//!
//! One server; while a well-behaved client appends over one keep-alive
//! connection and a WebSocket tail follows that session, six hostile phases run
//! concurrently from their own threads:
//!
//! 1. slowloris: 200 connections sending one header byte every 500 ms; the
//!    10 s head timeout must close them;
//! 2. 50 requests announcing `Content-Length: 100000000` → 413
//!    `payload_too_large` without the body being read;
//! 3. 200 garbage connections (random bytes, invalid request lines, invalid
//!    UTF-8 headers, a 20 KiB header, ...) → 400 / 431 / closed, never a hang;
//! 4. 10,000 idle TCP connections held for 10 s, from 127.0.0.2–127.0.0.4 (under
//!    the default per-address cap of 4,096 each), while 127.0.0.5 opens more than
//!    the cap and must see the surplus refused (503 `too_many_connections`);
//! 5. deep JSON nesting and huge numbers in append bodies;
//! 6. a WebSocket tail that never reads while 5,000 events are appended to its
//!    session.
//!
//! Asserted: every well-behaved append is a 201 and their p99 < 500 ms; the
//! well-behaved tail sees every event once, in order; the server is alive and
//! answers /health/live at the end; peak VmRSS < 300 MB. Every phase is bounded
//! in time and count and stops by itself; only 127.0.0.1 is ever contacted.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GOOD: &str = "good";
const FLOOD: &str = "flood";
const JSONS: &str = "hostile-json";

const SLOWLORIS_CONNS: usize = 200;
const SLOWLORIS_INTERVAL: Duration = Duration::from_millis(500);
/// The server's head timeout is 10 s; allow detection granularity and load.
const SLOWLORIS_CLOSE_BY: Duration = Duration::from_secs(12);
const SLOWLORIS_GIVE_UP: Duration = Duration::from_secs(16);

const OVERSIZED_REQUESTS: usize = 50;
const GARBAGE_CONNS: usize = 200;
const GARBAGE_THREADS: usize = 4;
/// Of the garbage connections, this many send an unterminated garbage head
/// and then wait: nothing to parse yet, so only the head timeout ends them.
const GARBAGE_UNTERMINATED: usize = 8;
/// Every hostile read is bounded by this.
const HOSTILE_READ_TIMEOUT: Duration = Duration::from_secs(5);

const IDLE_TARGET: usize = 10_000;
/// Source addresses of the idle connections (each below the per-address cap).
const IDLE_SOURCES: [[u8; 4]; 3] = [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]];
/// The server's default `STARCITE_MAX_CONNECTIONS_PER_IP`.
const PER_IP_CAP: usize = 4_096;
/// Source address that goes over the per-address cap.
const OVER_CAP_SOURCE: [u8; 4] = [127, 0, 0, 5];
const IDLE_HOLD: Duration = Duration::from_secs(10);

const FLOOD_EVENTS: u64 = 5_000;
const FLOOD_WRITERS: u64 = 4;
const FLOOD_PAD: usize = 2_048;
/// SO_RCVBUF of the non-reading tail (set before connect).
const NON_READER_RCVBUF: libc::c_int = 4096;
/// How long after the flood starts the non-reader keeps not reading.
const NON_READER_HOLD: Duration = Duration::from_secs(13);

const GOOD_INTERVAL: Duration = Duration::from_millis(10);
const GOOD_P99_LIMIT: Duration = Duration::from_millis(500);
const RSS_LIMIT_KB: u64 = 300 * 1024;

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (the server
/// child inherits it); returns the new soft limit.
fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    nofile_soft_limit()
}

/// A blocking TCP connection to 127.0.0.1:`port` from source address `src`.
fn connect_from(src: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    fn sockaddr(ip: [u8; 4], port: u16) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; it is closed on every error
    // path, and handed to `TcpStream` (which then owns it) on success.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let local = sockaddr(src, 0);
        let remote = sockaddr([127, 0, 0, 1], port);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

fn nofile_soft_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    assert_eq!(rc, 0, "getrlimit(RLIMIT_NOFILE)");
    r.rlim_cur
}

/// Percentile (0..=100) of an unsorted sample, in microseconds.
fn percentile(samples: &[u64], p: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// Deterministic xorshift64* (reproducible garbage without extra crates).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo)
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// After an error response the server must close: waits (bounded) for EOF or a
/// reset. Returns Err with a description when the socket stays open.
fn expect_closed(s: &mut TcpStream, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("connection still open after {within:?}"));
        }
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue, // trailing bytes; keep draining
            Err(e) if is_timeout(&e) => {
                return Err(format!("connection still open after {within:?}"))
            }
            Err(_) => return Ok(()), // reset: closed too
        }
    }
}

/// What one phase found: informational lines and failures.
struct Report {
    name: &'static str,
    info: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn new(name: &'static str) -> Self {
        Report {
            name,
            info: Vec::new(),
            failures: Vec::new(),
        }
    }
    fn info(&mut self, s: String) {
        eprintln!("[{}] {s}", self.name);
        self.info.push(s);
    }
    fn fail(&mut self, s: String) {
        eprintln!("[{}] FAILURE: {s}", self.name);
        self.failures.push(s);
    }
}

fn spawn_phase<F>(name: &'static str, f: F) -> (&'static str, thread::JoinHandle<Report>)
where
    F: FnOnce(&mut Report) + Send + 'static,
{
    let h = thread::Builder::new()
        .name(format!("hostile-{name}"))
        .spawn(move || {
            let mut r = Report::new(name);
            f(&mut r);
            r
        })
        .expect("spawn phase thread");
    (name, h)
}

// ---------------------------------------------------------------------------
// Phase 1: slowloris
// ---------------------------------------------------------------------------

fn phase_slowloris(port: u16, r: &mut Report) {
    // Never completes a head: a request line, then one endless header value.
    let mut script = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slowloris: ".to_vec();
    script.extend_from_slice(&[b'a'; 256]);
    struct C {
        s: TcpStream,
        opened: Instant,
        pos: usize,
    }
    let mut conns: Vec<Option<C>> = Vec::new();
    let mut connect_errors = 0;
    for _ in 0..SLOWLORIS_CONNS {
        match connect(port, HOSTILE_READ_TIMEOUT) {
            Ok(s) => {
                s.set_nonblocking(true).expect("nonblocking");
                conns.push(Some(C {
                    s,
                    opened: Instant::now(),
                    pos: 0,
                }));
            }
            Err(e) => {
                connect_errors += 1;
                if connect_errors <= 3 {
                    r.fail(format!("slowloris connect failed: {e}"));
                }
            }
        }
    }
    let opened = conns.len();
    let mut closed_after: Vec<Duration> = Vec::new();
    let mut answered = 0usize;
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while conns.iter().any(Option::is_some) && start.elapsed() < SLOWLORIS_GIVE_UP {
        for slot in conns.iter_mut() {
            let Some(c) = slot.as_mut() else { continue };
            let closed = match c.s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => {
                    // The server may answer (e.g. 408) before closing: allowed.
                    answered += 1;
                    false
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            let closed = closed
                || match c.s.write(&script[c.pos % script.len()..][..1]) {
                    Ok(_) => {
                        c.pos += 1;
                        false
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                    Err(_) => true,
                };
            if closed {
                closed_after.push(c.opened.elapsed());
                *slot = None;
            }
        }
        thread::sleep(SLOWLORIS_INTERVAL);
    }
    let still_open = conns.iter().filter(|c| c.is_some()).count();
    drop(conns);
    closed_after.sort();
    let in_time = closed_after
        .iter()
        .filter(|d| **d <= SLOWLORIS_CLOSE_BY)
        .count();
    let q = |f: f64| {
        closed_after
            .get(((closed_after.len() as f64 - 1.0) * f).round() as usize)
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into())
    };
    r.info(format!(
        "{opened} connections dripping 1 byte/{}ms; {} closed by the server \
         ({in_time} within {}s; first {}, median {}, last {}); {still_open} still open after {}s; \
         {answered} reads returned data",
        SLOWLORIS_INTERVAL.as_millis(),
        closed_after.len(),
        SLOWLORIS_CLOSE_BY.as_secs(),
        q(0.0),
        q(0.5),
        q(1.0),
        SLOWLORIS_GIVE_UP.as_secs(),
    ));
    if in_time * 10 < SLOWLORIS_CONNS * 9 {
        r.fail(format!(
            "only {in_time} of {SLOWLORIS_CONNS} slowloris connections were closed by the \
             server within {SLOWLORIS_CLOSE_BY:?} (head timeout is 10 s)"
        ));
    }
    if let Some(first) = closed_after.first() {
        if *first < Duration::from_secs(5) {
            r.info(format!(
                "note: a slowloris connection was closed after only {first:?}"
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Phase 2: oversized bodies
// ---------------------------------------------------------------------------

fn phase_oversized(port: u16, r: &mut Report) {
    let mut times: Vec<u64> = Vec::new();
    for i in 0..OVERSIZED_REQUESTS {
        let path = if i % 2 == 0 {
            append_path(JSONS)
        } else {
            "/v1/sessions".to_string()
        };
        let t = Instant::now();
        let mut s = match connect(port, HOSTILE_READ_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                r.fail(format!("oversized #{i}: connect failed: {e}"));
                continue;
            }
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 100000000\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes());
        // A token start of the "body": if the server waited for the other
        // 99,996,000 bytes it would never answer within the read timeout.
        let _ = s.write_all(&[b'{'; 4000]);
        let mut buf = Vec::new();
        match read_response(&mut s, &mut buf, false) {
            Ok(resp) => {
                let took = t.elapsed();
                times.push(took.as_micros() as u64);
                let code = serde_json::from_slice::<Value>(&resp.body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned));
                if resp.status != 413 || code.as_deref() != Some("payload_too_large") {
                    r.fail(format!(
                        "oversized #{i} {path}: expected 413 payload_too_large, got {} {:?}",
                        resp.status,
                        resp.text()
                    ));
                }
                if took > Duration::from_secs(2) {
                    r.fail(format!("oversized #{i}: 413 took {took:?}"));
                }
                if let Err(e) = expect_closed(&mut s, Duration::from_secs(3)) {
                    r.fail(format!("oversized #{i}: after 413: {e}"));
                }
            }
            Err(e) if is_timeout(&e) => r.fail(format!(
                "oversized #{i} {path}: no answer within {HOSTILE_READ_TIMEOUT:?} \
                 (server waiting for the body?)"
            )),
            Err(e) => r.fail(format!("oversized #{i} {path}: {e}")),
        }
        thread::sleep(Duration::from_millis(100));
    }
    r.info(format!(
        "{} × Content-Length: 100000000 → 413 in p50 {} / max {}",
        times.len(),
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 100.0)),
    ));
}

// ---------------------------------------------------------------------------
// Phase 3: garbage
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Garbage {
    /// Random bytes ending in an end-of-head marker.
    RandomTerminated,
    /// Random bytes (no newline), then the client half-closes.
    RandomThenFin,
    /// Random bytes over the head cap (20 KiB, no newline).
    RandomOverCap,
    BadRequestLine,
    BadVersion,
    NulInTarget,
    BadUtf8HeaderValue,
    BadHeaderName,
    HugeHeader,
    TooManyHeaders,
    ClAndTe,
    BadChunked,
}

const GARBAGE_KINDS: [Garbage; 12] = [
    Garbage::RandomTerminated,
    Garbage::RandomThenFin,
    Garbage::RandomOverCap,
    Garbage::BadRequestLine,
    Garbage::BadVersion,
    Garbage::NulInTarget,
    Garbage::BadUtf8HeaderValue,
    Garbage::BadHeaderName,
    Garbage::HugeHeader,
    Garbage::TooManyHeaders,
    Garbage::ClAndTe,
    Garbage::BadChunked,
];

/// The bytes to send, and the acceptable statuses (a close without any answer
/// is always accepted; a hang never is).
fn garbage(kind: Garbage, rng: &mut Rng) -> (Vec<u8>, &'static [u16]) {
    let no_newline = |rng: &mut Rng, n: usize| -> Vec<u8> {
        rng.bytes(n)
            .into_iter()
            .map(|b| if b == b'\n' { b'x' } else { b })
            .collect()
    };
    match kind {
        Garbage::RandomTerminated => {
            let n = rng.range(512, 4096);
            let mut v = rng.bytes(n);
            v.extend_from_slice(b"\r\n\r\n");
            (v, &[400, 431])
        }
        Garbage::RandomThenFin => {
            let n = rng.range(64, 2048);
            (no_newline(rng, n), &[400, 431])
        }
        Garbage::RandomOverCap => (no_newline(rng, 20 * 1024), &[400, 431]),
        Garbage::BadRequestLine => (b"GARBAGE\r\n\r\n".to_vec(), &[400]),
        Garbage::BadVersion => (b"GET /health/live HTTP/9.9\r\n\r\n".to_vec(), &[400]),
        Garbage::NulInTarget => (
            b"GET /health\x00live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            &[400],
        ),
        Garbage::BadUtf8HeaderValue => (
            b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: \xff\xfe\xc3\x28\xed\xa0\x80\r\n\r\n"
                .to_vec(),
            &[400],
        ),
        Garbage::BadHeaderName => (
            b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\xff\xfe\x80: x\r\n\r\n".to_vec(),
            &[400],
        ),
        Garbage::HugeHeader => {
            let mut v = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ".to_vec();
            v.extend_from_slice(&[b'a'; 20 * 1024]);
            v.extend_from_slice(b"\r\n\r\n");
            (v, &[431])
        }
        Garbage::TooManyHeaders => {
            let mut v = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
            for i in 0..100 {
                v.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            v.extend_from_slice(b"\r\n");
            (v, &[431])
        }
        Garbage::ClAndTe => (
            format!(
                "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                append_path(JSONS)
            )
            .into_bytes(),
            &[400],
        ),
        Garbage::BadChunked => (
            format!(
                "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                 ZZZZ\r\nhello\r\n0\r\n\r\n",
                append_path(JSONS)
            )
            .into_bytes(),
            &[400],
        ),
    }
}

/// Garbage without an end-of-head marker and without FIN: the server cannot
/// see a complete head, so the 10 s head timeout must close it (bounded).
/// Returns each connection's time to close.
fn garbage_unterminated(port: u16, n: usize) -> Result<Vec<Duration>, String> {
    let mut rng = Rng(0xbad_c0de);
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = connect(port, HOSTILE_READ_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        let n = rng.range(64, 2048);
        let bytes: Vec<u8> = rng
            .bytes(n)
            .into_iter()
            .map(|b| if b == b'\n' { b'x' } else { b })
            .collect();
        let _ = s.write_all(&bytes);
        conns.push((s, Instant::now()));
    }
    let mut out = Vec::new();
    for (mut s, sent) in conns {
        let deadline = sent + SLOWLORIS_CLOSE_BY;
        let mut buf = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "unterminated garbage head still open after {SLOWLORIS_CLOSE_BY:?}"
                ));
            }
            let _ = s.set_read_timeout(Some(left));
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // an error answer is fine too; wait for the close
                Err(e) if is_timeout(&e) => continue,
                Err(_) => break,
            }
        }
        out.push(sent.elapsed());
    }
    Ok(out)
}

fn phase_garbage(port: u16, r: &mut Report) {
    let unterminated = thread::spawn(move || garbage_unterminated(port, GARBAGE_UNTERMINATED));
    let per_thread = (GARBAGE_CONNS - GARBAGE_UNTERMINATED) / GARBAGE_THREADS;
    let workers: Vec<_> = (0..GARBAGE_THREADS)
        .map(|w| {
            thread::spawn(move || {
                let mut rng = Rng(0x5eed_0000 + w as u64 * 7919 + 1);
                let mut out: Vec<(Garbage, Result<Option<u16>, String>, Duration)> = Vec::new();
                for i in 0..per_thread {
                    let kind = GARBAGE_KINDS[(w * per_thread + i) % GARBAGE_KINDS.len()];
                    let (bytes, allowed) = garbage(kind, &mut rng);
                    let t = Instant::now();
                    let res = garbage_one(port, kind, &bytes, allowed);
                    out.push((kind, res, t.elapsed()));
                    thread::sleep(Duration::from_millis(10));
                }
                out
            })
        })
        .collect();
    let mut answered = 0;
    let mut closed_silently = 0;
    let mut worst = Duration::ZERO;
    let mut by_status: std::collections::BTreeMap<String, usize> = Default::default();
    for w in workers {
        let results = match w.join() {
            Ok(v) => v,
            Err(_) => {
                r.fail("a garbage worker panicked".into());
                continue;
            }
        };
        for (kind, res, took) in results {
            worst = worst.max(took);
            match res {
                Ok(Some(st)) => {
                    answered += 1;
                    *by_status.entry(format!("{kind:?}→{st}")).or_default() += 1;
                }
                Ok(None) => {
                    closed_silently += 1;
                    *by_status.entry(format!("{kind:?}→closed")).or_default() += 1;
                }
                Err(e) => r.fail(format!("garbage {kind:?}: {e}")),
            }
        }
    }
    r.info(format!(
        "{} garbage connections: {answered} answered, {closed_silently} closed \
         without an answer, slowest {:.2}s; outcomes {by_status:?}",
        per_thread * GARBAGE_THREADS,
        worst.as_secs_f64()
    ));
    match unterminated.join() {
        Ok(Ok(times)) => {
            let lo = times.iter().min().copied().unwrap_or_default();
            let hi = times.iter().max().copied().unwrap_or_default();
            r.info(format!(
                "{} unterminated garbage heads (no end-of-head, no FIN) closed after \
                 {:.1}–{:.1}s (head timeout)",
                times.len(),
                lo.as_secs_f64(),
                hi.as_secs_f64()
            ));
        }
        Ok(Err(e)) => r.fail(e),
        Err(_) => r.fail("unterminated-garbage thread panicked".into()),
    }
}

/// Sends one garbage request; Ok(Some(status)) for an accepted answer (the
/// connection then closed), Ok(None) for a close without an answer.
fn garbage_one(
    port: u16,
    kind: Garbage,
    bytes: &[u8],
    allowed: &[u16],
) -> Result<Option<u16>, String> {
    let mut s = connect(port, HOSTILE_READ_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before reading everything: a failed
    // write is not an error by itself; the answer (or close) is what counts.
    let _ = s.write_all(bytes);
    if kind == Garbage::RandomThenFin {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut buf = Vec::new();
    match read_response(&mut s, &mut buf, false) {
        Ok(resp) => {
            if !allowed.contains(&resp.status) {
                return Err(format!(
                    "status {} (allowed {allowed:?} or close), body {:?}",
                    resp.status,
                    resp.text()
                ));
            }
            let ok_envelope = serde_json::from_slice::<Value>(&resp.body)
                .map(|v| v["error"].is_string())
                .unwrap_or(false);
            if !ok_envelope {
                return Err(format!(
                    "status {} without a JSON error envelope: {:?}",
                    resp.status,
                    resp.text()
                ));
            }
            expect_closed(&mut s, Duration::from_secs(3))
                .map_err(|e| format!("after {}: {e}", resp.status))?;
            Ok(Some(resp.status))
        }
        Err(e) if is_timeout(&e) => Err(format!(
            "hang: neither an answer nor a close within {HOSTILE_READ_TIMEOUT:?}"
        )),
        // EOF or reset before a complete response: closed.
        Err(_) => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// Phase 4: idle connections
// ---------------------------------------------------------------------------

fn phase_idle(port: u16, r: &mut Report) {
    // Client and server are separate processes, each with this limit (the server
    // inherited it); keep ~1,500 descriptors spare on each side for the other phases.
    let limit = nofile_soft_limit();
    let n = (IDLE_TARGET as u64).min(limit.saturating_sub(1_500)) as usize;
    if n < IDLE_TARGET {
        r.fail(format!(
            "RLIMIT_NOFILE soft limit {limit} only allows {n} of {IDLE_TARGET} idle connections"
        ));
    }
    r.info(format!(
        "RLIMIT_NOFILE soft limit {limit}: opening {n} idle connections"
    ));
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut errors = 0usize;
    while conns.len() < n && errors < 50 && t.elapsed() < Duration::from_secs(20) {
        let src = IDLE_SOURCES[conns.len() % IDLE_SOURCES.len()];
        match connect_from(src, port) {
            Ok(s) => conns.push(s),
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    r.fail(format!("idle connect #{} failed: {e}", conns.len()));
                }
            }
        }
    }
    let opened = conns.len();
    if opened < n {
        r.fail(format!(
            "opened only {opened} of {n} idle connections ({errors} errors)"
        ));
    }
    r.info(format!(
        "opened {opened} idle connections in {:.2}s; holding them {IDLE_HOLD:?}",
        t.elapsed().as_secs_f64()
    ));
    let hold_start = Instant::now();
    over_the_cap(port, r);
    thread::sleep(IDLE_HOLD.saturating_sub(hold_start.elapsed()));
    // How many the server closed meanwhile (its 10 s head timeout counts from accept).
    let mut closed_by_server = 0usize;
    let mut b = [0u8; 16];
    for s in &conns {
        let _ = s.set_nonblocking(true);
        match (&*s).read(&mut b) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => closed_by_server += 1,
        }
    }
    drop(conns);
    r.info(format!(
        "held {opened} idle connections for {IDLE_HOLD:?} ({closed_by_server} already closed \
         by the server at the end); closed them"
    ));
}

/// From one address, opens the per-address cap's worth of connections, each made
/// to complete one request (so the server has certainly admitted it) and then left
/// idle under keep-alive; 20 more connections from that address must be refused
/// with 503 `too_many_connections` at once.
fn over_the_cap(port: u16, r: &mut Report) {
    const REQ: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::with_capacity(PER_IP_CAP);
    for _ in 0..PER_IP_CAP {
        match connect_from(OVER_CAP_SOURCE, port).and_then(|mut s| {
            s.write_all(REQ)?;
            Ok(s)
        }) {
            Ok(s) => held.push(s),
            Err(e) => {
                r.fail(format!(
                    "over-cap source: connect #{} failed: {e}",
                    held.len()
                ));
                return;
            }
        }
    }
    let mut answered = 0;
    for s in &mut held {
        let _ = s.set_read_timeout(Some(HOSTILE_READ_TIMEOUT));
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        // /health/live answers a small JSON body; the head end plus a '}' is enough.
        while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}")) {
            match s.read(&mut b) {
                Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                _ => break,
            }
        }
        if got.starts_with(b"HTTP/1.1 200") {
            answered += 1;
        }
    }
    if answered != PER_IP_CAP {
        r.fail(format!(
            "only {answered} of {PER_IP_CAP} connections up to the per-address cap were served"
        ));
    }
    let mut refused = 0;
    for _ in 0..20 {
        let Ok(mut s) = connect_from(OVER_CAP_SOURCE, port) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(HOSTILE_READ_TIMEOUT));
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        if text.starts_with("HTTP/1.1 503") && text.contains("too_many_connections") {
            refused += 1;
        }
    }
    if refused != 20 {
        r.fail(format!(
            "only {refused} of 20 connections over the per-address cap got 503 too_many_connections"
        ));
    }
    r.info(format!(
        "held {} connections from one address; 20 more were refused (503): {refused}",
        held.len()
    ));
}

// ---------------------------------------------------------------------------
// Phase 5: hostile JSON
// ---------------------------------------------------------------------------

fn phase_json(port: u16, r: &mut Report) {
    let path = append_path(JSONS);
    let deep = |open: &str, n: usize| open.repeat(n);
    let mut cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("100,000 '['", deep("[", 100_000).into_bytes(), 400, "invalid_event"),
        (
            "100,000 '[' closed",
            format!("{}{}", deep("[", 100_000), deep("]", 100_000)).into_bytes(),
            400,
            "invalid_event",
        ),
        (
            "100,000 '{\"a\":'",
            deep("{\"a\":", 100_000).into_bytes(),
            400,
            "invalid_event",
        ),
        (
            "payload nested 100,000 deep",
            format!(
                "{{\"type\":\"t\",\"producer_id\":\"deep\",\"producer_seq\":1,\"payload\":{{\"a\":{}1{}}}}}",
                deep("[", 100_000),
                deep("]", 100_000)
            )
            .into_bytes(),
            400,
            "invalid_event",
        ),
        (
            "nesting 65 (limit 64)",
            format!(
                "{{\"type\":\"t\",\"producer_id\":\"deep\",\"producer_seq\":1,\"payload\":{{\"a\":{}{}}}}}",
                deep("[", 63),
                deep("]", 63)
            )
            .into_bytes(),
            400,
            "invalid_event",
        ),
        (
            "malformed number 1e",
            br#"{"type":"t","producer_id":"num","producer_seq":1,"payload":{"n":1e}}"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "malformed number -",
            br#"{"type":"t","producer_id":"num","producer_seq":1,"payload":{"n":-}}"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "NaN",
            br#"{"type":"t","producer_id":"num","producer_seq":1,"payload":{"n":NaN}}"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "producer_seq -1e999999",
            br#"{"type":"t","producer_id":"num","producer_seq":-1e999999,"payload":{}}"#
                .to_vec(),
            400,
            "invalid_event",
        ),
        (
            "producer_seq 1e999999 (not an integer)",
            br#"{"type":"t","producer_id":"num","producer_seq":1e999999,"payload":{}}"#.to_vec(),
            400,
            "invalid_event",
        ),
    ];
    // Huge but well-formed integers: docs/api.md "Integer fields take JSON
    // integers or digit strings of any size; values beyond 2^64−1 saturate", so
    // a 100,000-digit producer_seq is a gap for a new producer → 409.
    let big = "9".repeat(100_000);
    cases.push((
        "producer_seq with 100,000 digits",
        format!(r#"{{"type":"t","producer_id":"big","producer_seq":{big},"payload":{{}}}}"#)
            .into_bytes(),
        409,
        "producer_seq_conflict",
    ));
    cases.push((
        "expected_seq with 100,000 digits",
        format!(
            r#"{{"type":"t","producer_id":"big","producer_seq":1,"expected_seq":{big},"payload":{{}}}}"#
        )
        .into_bytes(),
        409,
        "expected_seq_conflict",
    ));
    let mut accepted = 0u64;
    for (name, body, want_status, want_code) in &cases {
        let raw = build_request(
            "POST",
            &path,
            &[("Content-Type", "application/json")],
            Some(body),
        );
        let t = Instant::now();
        match try_request(port, &raw, false, HOSTILE_READ_TIMEOUT) {
            Ok(resp) => {
                let took = t.elapsed();
                let code = serde_json::from_slice::<Value>(&resp.body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned));
                if resp.status == 201 {
                    accepted += 1;
                }
                if resp.status != *want_status || code.as_deref() != Some(*want_code) {
                    r.fail(format!(
                        "{name}: expected {want_status} {want_code}, got {} {:?}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)])
                    ));
                }
                if took > Duration::from_secs(2) {
                    r.fail(format!("{name}: answer took {took:?}"));
                }
            }
            Err(e) => r.fail(format!("{name}: no answer: {e}")),
        }
    }
    // Huge numbers inside the (opaque) payload are valid JSON and are kept
    // verbatim (arbitrary precision): accepted and rendered back exactly.
    let huge_payload = [
        big.clone(),
        format!("-{big}.{big}e-999999999"),
        "1e999999999".to_string(),
    ];
    for (i, n) in huge_payload.iter().enumerate() {
        let body = format!(
            r#"{{"type":"t","producer_id":"hugepayload","producer_seq":{},"payload":{{"n":{n}}}}}"#,
            i + 1
        );
        let raw = build_request(
            "POST",
            &path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        );
        let t = Instant::now();
        match try_request(port, &raw, false, HOSTILE_READ_TIMEOUT) {
            Ok(resp) if resp.status == 201 => {
                accepted += 1;
                if t.elapsed() > Duration::from_secs(2) {
                    r.fail(format!("huge payload number #{i}: took {:?}", t.elapsed()));
                }
            }
            Ok(resp) => r.fail(format!(
                "huge payload number #{i} ({} chars): expected 201, got {} {:?}",
                n.len(),
                resp.status,
                resp.text()
            )),
            Err(e) => r.fail(format!("huge payload number #{i}: no answer: {e}")),
        }
    }
    // Nothing rejected was appended; the accepted events read back verbatim.
    let mut t = Tail::connect(port, JSONS, "cursor=0&batch_size=1000");
    let evs = t.collect_events(accepted as usize, Duration::from_secs(10));
    if seqs(&evs) != (1..=accepted).collect::<Vec<_>>() {
        r.fail(format!(
            "session {JSONS}: expected seqs 1..={accepted}, read {:?}",
            seqs(&evs)
        ));
    }
    match t.next_frame(Duration::from_millis(300)) {
        Frame::Timeout => {}
        Frame::Json(v) => r.fail(format!(
            "session {JSONS} holds more than the {accepted} accepted appends: {}",
            &v.to_string()[..200.min(v.to_string().len())]
        )),
        Frame::Closed(c) => r.fail(format!("tail on {JSONS} closed: {c:?}")),
        Frame::Other(s) => r.fail(format!("tail on {JSONS}: {s}")),
    }
    for (e, n) in evs.iter().zip(huge_payload.iter()) {
        let got = e["payload"]["n"].to_string();
        // Compared in serde_json's canonical spelling: the server (like this
        // client) writes exponents as `e+N` ("1e999999999" → "1e+999999999").
        let n = &serde_json::from_str::<Value>(n)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| n.clone());
        if got != *n {
            r.fail(format!(
                "huge payload number not kept verbatim: sent {} chars ({}…), read back {} chars ({}…)",
                n.len(),
                &n[..n.len().min(16)],
                got.len(),
                &got[..got.len().min(16)]
            ));
        }
    }
    t.close();
    r.info(format!(
        "{} hostile bodies answered as documented; {accepted} huge-number events accepted and \
         read back verbatim",
        cases.len()
    ));
}

// ---------------------------------------------------------------------------
// Phase 6: a WebSocket client that never reads during a flood
// ---------------------------------------------------------------------------

fn phase_flood(port: u16, r: &mut Report) {
    // The non-reader: a tail on the flood session that we do not read from,
    // with a small receive buffer (set before connect) so the server's writes
    // block early instead of everything vanishing into kernel buffers.
    let mut stuck = match tail_with_small_rcvbuf(port, FLOOD, NON_READER_RCVBUF) {
        Ok(t) => t,
        Err(e) => {
            r.fail(format!("non-reading tail: {e}"));
            return;
        }
    };
    let flood_start = Instant::now();
    let pad = "p".repeat(FLOOD_PAD);
    let per_writer = FLOOD_EVENTS / FLOOD_WRITERS;
    let t = flood_start;
    let writers: Vec<_> = (0..FLOOD_WRITERS)
        .map(|w| {
            let pad = pad.clone();
            thread::spawn(move || -> Result<u64, String> {
                let mut c = HttpConn::with_timeout(port, HOSTILE_READ_TIMEOUT);
                let producer = format!("flood-{w}");
                for i in 1..=per_writer {
                    let body = json!({
                        "type": "flood",
                        "payload": {"w": w, "i": i, "pad": pad},
                        "producer_id": producer,
                        "producer_seq": i,
                    });
                    let resp = c
                        .try_post(&append_path(FLOOD), body.to_string().as_bytes())
                        .map_err(|e| format!("flood append {producer}/{i}: {e}"))?;
                    if resp.status != 201 {
                        return Err(format!(
                            "flood append {producer}/{i}: {} {}",
                            resp.status,
                            resp.text()
                        ));
                    }
                }
                Ok(per_writer)
            })
        })
        .collect();
    let mut appended = 0;
    for w in writers {
        match w.join() {
            Ok(Ok(n)) => appended += n,
            Ok(Err(e)) => r.fail(e),
            Err(_) => r.fail("flood writer panicked".into()),
        }
    }
    r.info(format!(
        "appended {appended} events of ~{FLOOD_PAD} B to {FLOOD} in {:.1}s while a tail on it \
         did not read",
        t.elapsed().as_secs_f64()
    ));
    // 5,000 events cannot fit the kernel buffers plus the 1,024-event
    // subscription buffer: the server must have dropped the subscriber back
    // to replay (docs/metrics.md) rather than queue for it.
    match metric_sum(port, "starcite_tail_dropped_to_replay_total") {
        Ok(n) if n >= 1.0 => r.info(format!(
            "starcite_tail_dropped_to_replay_total = {n} after the flood"
        )),
        Ok(n) => r.fail(format!(
            "starcite_tail_dropped_to_replay_total = {n}: the non-reading tail was not \
             dropped back to replay"
        )),
        Err(e) => r.fail(format!("metrics: {e}")),
    }
    // Keep not reading past the server's 10 s socket-write timeout.
    let hold_until = flood_start + NON_READER_HOLD;
    thread::sleep(hold_until.saturating_duration_since(Instant::now()));
    // Now read the stuck socket: whatever it delivers must be a gap-free,
    // duplicate-free prefix from seq 1 (the server either resumed it by
    // replay or closed it); it must never have been fed out of order. A
    // socket that is neither closed nor fed is a leak.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Vec<u64> = Vec::new();
    let mut outcome = String::from("still open, read everything");
    while (got.len() as u64) < appended {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            outcome = "still open, stopped reading at the deadline".into();
            break;
        }
        match stuck.next_frame(left) {
            Frame::Json(Value::Array(a)) => got.extend(seqs(&a)),
            Frame::Json(v) => got.extend(seqs(std::slice::from_ref(&v))),
            Frame::Timeout => {
                outcome = "open but silent".into();
                break;
            }
            Frame::Closed(c) => {
                outcome = format!("closed by the server ({c:?})");
                break;
            }
            Frame::Other(s) => {
                r.fail(format!("non-reading tail: unexpected frame {s}"));
                break;
            }
        }
    }
    let expected_prefix: Vec<u64> = (1..=got.len() as u64).collect();
    if got != expected_prefix {
        let bad = got
            .iter()
            .zip(expected_prefix.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        r.fail(format!(
            "non-reading tail received {} events that are not a gap-free prefix from 1 \
             (first mismatch at index {bad}: {:?})",
            got.len(),
            &got[bad..(bad + 5).min(got.len())]
        ));
    }
    if outcome.starts_with("open but silent") || outcome.contains("deadline") {
        r.fail(format!(
            "non-reading tail after {NON_READER_HOLD:?}: {} of {appended} events delivered, \
             then {outcome} (neither resumed nor closed)",
            got.len()
        ));
    }
    r.info(format!(
        "non-reading tail held {:.1}s, then read: {} of {appended} events delivered in order, \
         {outcome}",
        NON_READER_HOLD.as_secs_f64(),
        got.len()
    ));
    drop(stuck);
    // A fresh reader gets the whole session, in order.
    let evs = read_all_events(port, FLOOD, appended, Duration::from_secs(15));
    if seqs(&evs) != (1..=appended).collect::<Vec<_>>() {
        r.fail(format!(
            "fresh tail on {FLOOD}: expected 1..={appended}, got {} events",
            evs.len()
        ));
    }
}

/// Sum of all samples of one metric family in /metrics.
fn metric_sum(port: u16, name: &str) -> Result<f64, String> {
    let raw = build_request("GET", "/metrics", &[], None);
    let resp = try_request(port, &raw, false, HOSTILE_READ_TIMEOUT).map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("/metrics answered {}", resp.status));
    }
    let text = resp.text();
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = true;
            sum += v;
        }
    }
    if found {
        Ok(sum)
    } else {
        Err(format!("{name} not in /metrics"))
    }
}

/// A tail whose socket got `SO_RCVBUF = rcvbuf` before connect (setting it
/// after the handshake leaves a window-scale mismatch that stalls the
/// connection on the client side, which is not what this test is about).
fn tail_with_small_rcvbuf(port: u16, session: &str, rcvbuf: libc::c_int) -> Result<Tail, String> {
    // SAFETY: plain socket calls on a descriptor we create and then hand to
    // TcpStream, which owns (and closes) it.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let stream = TcpStream::from_raw_fd(fd);
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &rcvbuf as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            return Err(format!("connect: {}", std::io::Error::last_os_error()));
        }
        stream
    };
    stream
        .set_read_timeout(Some(HOSTILE_READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(HOSTILE_READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let url = tail_url(port, session, "cursor=0");
    let cfg = tungstenite::protocol::WebSocketConfig {
        max_message_size: None,
        max_frame_size: None,
        ..Default::default()
    };
    match tungstenite::client::client_with_config(url.as_str(), stream, Some(cfg)) {
        Ok((ws, _)) => Ok(Tail { ws, closed: None }),
        Err(e) => Err(format!("handshake: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Well-behaved client
// ---------------------------------------------------------------------------

struct GoodAppends {
    latencies_us: Vec<u64>,
    acked: u64,
    failures: Vec<String>,
}

fn good_appender(port: u16, stop: Arc<AtomicBool>, acked_out: Arc<AtomicU64>) -> GoodAppends {
    let mut c = HttpConn::with_timeout(port, HOSTILE_READ_TIMEOUT);
    let mut out = GoodAppends {
        latencies_us: Vec::new(),
        acked: 0,
        failures: Vec::new(),
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let body = json!({
            "type": "good",
            "payload": {"n": seq, "sent_us": now_us()},
            "producer_id": "good",
            "producer_seq": seq,
        });
        let t = Instant::now();
        match c.try_post(&append_path(GOOD), body.to_string().as_bytes()) {
            Ok(resp) => {
                out.latencies_us.push(t.elapsed().as_micros() as u64);
                let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                if resp.status != 201 || v["seq"].as_u64() != Some(seq) {
                    out.failures.push(format!(
                        "well-behaved append #{seq}: {} {}",
                        resp.status,
                        resp.text()
                    ));
                    break;
                }
                out.acked = seq;
                acked_out.store(seq, Ordering::SeqCst);
                if resp
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    out.failures.push(format!(
                        "server closed the well-behaved keep-alive connection after #{seq}"
                    ));
                    break;
                }
            }
            Err(e) => {
                out.failures.push(format!(
                    "well-behaved append #{seq}: I/O error after {:?}: {e}",
                    t.elapsed()
                ));
                break;
            }
        }
        thread::sleep(GOOD_INTERVAL);
    }
    out
}

struct GoodTail {
    seqs: Vec<u64>,
    latencies_us: Vec<u64>,
    failures: Vec<String>,
}

fn good_tail(
    mut t: Tail,
    appender_done: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    hard_deadline: Instant,
) -> GoodTail {
    let mut out = GoodTail {
        seqs: Vec::new(),
        latencies_us: Vec::new(),
        failures: Vec::new(),
    };
    let mut catch_up_deadline: Option<Instant> = None;
    loop {
        if appender_done.load(Ordering::SeqCst) {
            let d = *catch_up_deadline.get_or_insert(Instant::now() + Duration::from_secs(10));
            if out.seqs.len() as u64 >= acked.load(Ordering::SeqCst) || Instant::now() > d {
                break;
            }
        }
        if Instant::now() > hard_deadline {
            out.failures
                .push("well-behaved tail: hard deadline reached".into());
            break;
        }
        let mut take = |e: &Value| {
            if let Some(s) = e["seq"].as_u64() {
                out.seqs.push(s);
            }
            if let Some(sent) = e["payload"]["sent_us"].as_u64() {
                out.latencies_us.push(now_us().saturating_sub(sent));
            }
        };
        match t.next_frame(Duration::from_millis(200)) {
            Frame::Json(Value::Array(a)) => a.iter().for_each(&mut take),
            Frame::Json(v) => take(&v),
            Frame::Timeout => {}
            Frame::Closed(c) => {
                out.failures
                    .push(format!("well-behaved tail closed by the server: {c:?}"));
                break;
            }
            Frame::Other(s) => {
                out.failures.push(format!("well-behaved tail: {s}"));
                break;
            }
        }
    }
    t.close();
    out
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn node_survives_hostile_clients_with_bounded_memory() {
    let nofile = raise_nofile_limit();
    eprintln!("RLIMIT_NOFILE soft limit {nofile} (server inherits it)");
    let test_start = Instant::now();
    let hard_deadline = test_start + Duration::from_secs(55);
    let mut server = Server::start(ServerOpts::new().env("RUST_LOG", "warn"));
    let port = server.port();
    let pid = server.pid().expect("server pid");
    for s in [GOOD, FLOOD, JSONS] {
        create_session(port, s);
    }
    thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kb(pid).expect("read VmRSS");

    // RSS sampler.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (sampling, peak) = (Arc::clone(&sampling), Arc::clone(&peak));
        thread::spawn(move || {
            while sampling.load(Ordering::SeqCst) {
                if let Some(kb) = rss_kb(pid) {
                    peak.fetch_max(kb, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Well-behaved client: one keep-alive appender and one tail.
    let stop_good = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let tail = Tail::connect(port, GOOD, "cursor=0");
    let appender = {
        let (stop, acked) = (Arc::clone(&stop_good), Arc::clone(&acked));
        thread::spawn(move || good_appender(port, stop, acked))
    };
    let tailer = {
        let (done, acked) = (Arc::clone(&stop_good), Arc::clone(&acked));
        thread::spawn(move || good_tail(tail, done, acked, hard_deadline))
    };
    thread::sleep(Duration::from_millis(300));

    // Hostile phases, all at once.
    let phases = vec![
        spawn_phase("slowloris", move |r| phase_slowloris(port, r)),
        spawn_phase("oversized", move |r| phase_oversized(port, r)),
        spawn_phase("garbage", move |r| phase_garbage(port, r)),
        spawn_phase("idle", move |r| phase_idle(port, r)),
        spawn_phase("json", move |r| phase_json(port, r)),
        spawn_phase("flood", move |r| phase_flood(port, r)),
    ];
    let mut failures: Vec<String> = Vec::new();
    for (name, h) in phases {
        match h.join() {
            Ok(rep) => failures.extend(rep.failures.iter().map(|f| format!("[{name}] {f}"))),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("[{name}] phase panicked: {msg}"));
            }
        }
    }
    eprintln!(
        "hostile phases finished after {:.1}s",
        test_start.elapsed().as_secs_f64()
    );

    // A little more well-behaved traffic with the hostile load gone, then stop.
    thread::sleep(Duration::from_millis(500));
    stop_good.store(true, Ordering::SeqCst);
    let good = appender.join().expect("appender thread");
    let tail = tailer.join().expect("tail thread");
    thread::sleep(Duration::from_millis(500));
    sampling.store(false, Ordering::SeqCst);
    sampler.join().unwrap();
    let rss_after = rss_kb(pid).unwrap_or(0);
    let rss_peak = peak.load(Ordering::SeqCst).max(rss_after);

    let p50 = percentile(&good.latencies_us, 50.0);
    let p99 = percentile(&good.latencies_us, 99.0);
    let pmax = percentile(&good.latencies_us, 100.0);
    eprintln!(
        "RSS before {} / peak {} / after {} (limit {})",
        mb(rss_before),
        mb(rss_peak),
        mb(rss_after),
        mb(RSS_LIMIT_KB)
    );
    eprintln!(
        "well-behaved appends: {} acknowledged, latency p50 {} / p99 {} / max {}",
        good.acked,
        ms(p50),
        ms(p99),
        ms(pmax)
    );
    eprintln!(
        "well-behaved tail: {} events, delivery latency p50 {} / p99 {}",
        tail.seqs.len(),
        ms(percentile(&tail.latencies_us, 50.0)),
        ms(percentile(&tail.latencies_us, 99.0)),
    );

    failures.extend(good.failures.iter().cloned());
    failures.extend(tail.failures.iter().cloned());
    if good.acked < 100 {
        failures.push(format!(
            "only {} well-behaved appends acknowledged",
            good.acked
        ));
    }
    if Duration::from_micros(p99) >= GOOD_P99_LIMIT {
        failures.push(format!(
            "well-behaved append p99 {} ≥ {GOOD_P99_LIMIT:?}",
            ms(p99)
        ));
    }
    if tail.seqs != (1..=good.acked).collect::<Vec<_>>() {
        let first_bad = tail
            .seqs
            .iter()
            .enumerate()
            .position(|(i, s)| *s != i as u64 + 1);
        failures.push(format!(
            "well-behaved tail saw {} events, expected exactly 1..={} in order \
             (first deviation at index {first_bad:?})",
            tail.seqs.len(),
            good.acked
        ));
    }
    if rss_peak >= RSS_LIMIT_KB {
        failures.push(format!(
            "peak VmRSS {} ≥ {}",
            mb(rss_peak),
            mb(RSS_LIMIT_KB)
        ));
    }
    if !server.is_running() {
        failures.push("server process exited".into());
    } else {
        match try_request(
            port,
            b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            false,
            HOSTILE_READ_TIMEOUT,
        ) {
            Ok(resp) if resp.status == 200 => {}
            Ok(resp) => failures.push(format!(
                "/health/live answered {} {}",
                resp.status,
                resp.text()
            )),
            Err(e) => failures.push(format!("/health/live failed: {e}")),
        }
    }
    eprintln!("total test time {:.1}s", test_start.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
