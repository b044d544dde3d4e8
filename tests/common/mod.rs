//! Black-box test harness: runs the real `starcite` binary and talks to it over
//! raw HTTP/1.1 and WebSocket (tungstenite) on loopback.
//!
//! Every server is a child process of the test; it is SIGKILLed (only that PID)
//! when the `Server` value is dropped, so a failing test never leaves it behind.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    /// Data directory to use instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
}

impl ServerOpts {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    pub fn data_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(p.into());
        self
    }
}

pub struct Server {
    child: Option<Child>,
    port: u16,
    /// The binary protocol port (`STARCITE_WIRE_PORT`): every spawned server gets
    /// its own (SO_REUSEPORT would let two local servers share one silently).
    wire_port: u16,
    opts: ServerOpts,
    data_dir: PathBuf,
    /// Holds the temporary data dir and the log files; removed on drop.
    _tmp: tempfile::TempDir,
    log_dir: PathBuf,
    starts: u32,
}

/// Picks a free loopback port below the kernel's ephemeral range (32768+).
///
/// Ports handed out by binding port 0 come from the ephemeral range, where client
/// sockets of other tests (thousands of them in TIME_WAIT after a load test) can
/// hold the same number and make a server's second `SO_REUSEPORT` listener fail
/// with "address in use". Below 32768 only listeners live.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports (held together while chosen, so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let mut held = Vec::with_capacity(n);
    let mut tries = 0u32;
    while held.len() < n {
        tries += 1;
        assert!(tries < 100_000, "no free port below 32768");
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = seed.wrapping_add(k.wrapping_mul(40_503)) % 22_000;
        let port = 10_000 + x as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Server {
    /// Starts a dev server with default options and waits until it is ready.
    pub fn start_default() -> Server {
        Server::start(ServerOpts::new())
    }

    /// Starts `starcite dev` and waits (at most 30 s) for `/health/ready` = 200.
    pub fn start(opts: ServerOpts) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("starcite-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = match &opts.data_dir {
            Some(p) => p.clone(),
            None => tmp.path().join("data"),
        };
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let log_dir = tmp.path().join("logs");
        std::fs::create_dir_all(&log_dir).expect("create log dir");
        let mut s = Server {
            child: None,
            port: 0,
            wire_port: 0,
            opts,
            data_dir,
            _tmp: tmp,
            log_dir,
            starts: 0,
        };
        s.spawn_and_wait();
        s
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("server-{}.log", self.starts))
    }

    fn spawn_and_wait(&mut self) {
        self.starts += 1;
        self.port = free_port();
        self.wire_port = free_port();
        let log = std::fs::File::create(self.log_path()).expect("create log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_starcite"));
        cmd.arg("dev")
            .current_dir(self.data_dir.parent().unwrap_or(Path::new("/tmp")))
            .env("PORT", self.port.to_string())
            .env("STARCITE_WIRE_PORT", self.wire_port.to_string())
            .env("STARCITE_RAFT_DATA_DIR", &self.data_dir)
            .env("STARCITE_CORES", "2")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn starcite binary");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last: String;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "starcite exited before becoming ready ({status}); log tail:\n{}",
                        self.log_tail()
                    );
                }
            }
            match try_request(
                self.port,
                b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                false,
                Duration::from_secs(2),
            ) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("status {} body {}", r.status, r.text()),
                Err(e) => last = format!("{e}"),
            }
            if Instant::now() > deadline {
                let tail = self.log_tail();
                self.kill();
                panic!(
                    "starcite not ready within {READY_TIMEOUT:?} (last: {last}); log tail:\n{tail}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Last ~60 lines of the current server log (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        let from = lines.len().saturating_sub(60);
        lines[from..].join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The binary protocol port (see docs/wire-protocol.md).
    pub fn wire_port(&self) -> u16 {
        self.wire_port
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILL the server (only this child) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill -9 (if still running) and start again on the same data dir
    /// (on a fresh port); waits for readiness.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait();
    }

    /// Sends SIGTERM to the server process (does not wait).
    pub fn send_sigterm(&mut self) {
        let pid = self.pid().expect("server not running");
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit. Returns its exit status
    /// (None if it did not exit in time; it is then still running and will be
    /// killed on drop).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait up to `timeout` for exit.
    pub fn sigterm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// True while the child process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "---- starcite log tail (port {}) ----\n{}",
                self.port,
                self.log_tail()
            );
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Parses the body as JSON; panics with the raw body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

fn find_subslice(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Reads one HTTP/1.1 response from `stream`; `buf` holds already-read bytes
/// and keeps any bytes read past the end of this response.
pub fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> std::io::Result<Response> {
    let mut tmp = [0u8; 16384];
    // Head.
    let head_end = loop {
        if let Some(p) = find_subslice(buf, b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a complete response head ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(buf)
                ),
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "bad status code"))?;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let mut body = Vec::new();
    if !no_body {
        let chunked = get("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(p) = find_subslice(buf, b"\r\n") {
                        break p;
                    }
                    let n = stream.read(&mut tmp)?;
                    if n == 0 {
                        return Err(ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&tmp[..n]);
                };
                let size_s = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_s.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "bad chunk size"))?;
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    let n = stream.read(&mut tmp)?;
                    if n == 0 {
                        return Err(ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(cl) = get("content-length") {
            let len: usize = cl
                .parse()
                .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "bad content-length"))?;
            while buf.len() < len {
                let n = stream.read(&mut tmp)?;
                if n == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            body.extend_from_slice(&buf[..len]);
            buf.drain(..len);
        } else {
            // Read until close.
            body.append(buf);
            loop {
                let n = stream.read(&mut tmp)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&tmp[..n]);
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

pub fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends exactly `raw` on a fresh connection and reads one response. The write
/// happens on a helper thread so that a server answering early (e.g. 413
/// before the body is read) is still observed.
pub fn try_request(
    port: u16,
    raw: &[u8],
    head_request: bool,
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut stream = connect(port, timeout)?;
    let mut w = stream.try_clone()?;
    let resp = if raw.len() > 64 * 1024 {
        let data = raw.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
        let mut buf = Vec::new();
        let r = read_response(&mut stream, &mut buf, head_request);
        let _ = stream.shutdown(Shutdown::Both);
        let _ = writer.join();
        r
    } else {
        w.write_all(raw)?;
        let mut buf = Vec::new();
        read_response(&mut stream, &mut buf, head_request)
    };
    resp
}

/// Like `try_request` with the 10 s timeout; panics on I/O failure.
pub fn raw_request(port: u16, raw: &[u8]) -> Response {
    let head = raw.starts_with(b"HEAD ");
    try_request(port, raw, head, IO_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "raw request failed: {e}; request head: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        )
    })
}

/// Builds a request with `Host`, `Connection: close`, the given extra headers
/// and (when `body` is Some) a Content-Length.
pub fn build_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    raw_request(port, &build_request(method, path, headers, body))
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, &[], None)
}

/// GET, returns (status, JSON body).
pub fn get_json(port: u16, path: &str) -> (u16, Value) {
    let r = get(port, path);
    let v = r.json();
    (r.status, v)
}

/// POST a raw body with `Content-Type: application/json`.
pub fn post_raw(port: u16, path: &str, body: &[u8]) -> Response {
    request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body),
    )
}

/// POST a JSON value, returns (status, JSON body).
pub fn post_json(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let r = post_raw(port, path, body.to_string().as_bytes());
    let v = r.json();
    (r.status, v)
}

/// Keep-alive HTTP/1.1 connection (for loops of many requests).
pub struct HttpConn {
    port: u16,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl HttpConn {
    pub fn new(port: u16) -> Self {
        Self::with_timeout(port, IO_TIMEOUT)
    }
    pub fn with_timeout(port: u16, timeout: Duration) -> Self {
        HttpConn {
            port,
            stream: None,
            buf: Vec::new(),
            timeout,
        }
    }

    /// One request; on any I/O error the connection is dropped (the next
    /// call reconnects) and the error returned. Does NOT retry.
    pub fn try_post(&mut self, path: &str, body: &[u8]) -> std::io::Result<Response> {
        if self.stream.is_none() {
            self.stream = Some(connect(self.port, self.timeout)?);
            self.buf.clear();
        }
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let res = (|| {
            let s = self.stream.as_mut().unwrap();
            s.write_all(&req)?;
            read_response(s, &mut self.buf, false)
        })();
        match res {
            Ok(r) => {
                if r.header("connection")
                    .map(|v| v.eq_ignore_ascii_case("close"))
                    .unwrap_or(false)
                {
                    self.stream = None;
                }
                Ok(r)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    pub fn post_json(&mut self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .try_post(path, body.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}"));
        let v = r.json();
        (r.status, v)
    }
}

// ---------------------------------------------------------------------------
// API helpers
// ---------------------------------------------------------------------------

/// Percent-encodes a path segment / query value (everything but unreserved).
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn append_path(session: &str) -> String {
    format!("/v1/sessions/{}/append", pct(session))
}

/// Creates a session with the given id (201 asserted); returns the body.
pub fn create_session(port: u16, id: &str) -> Value {
    create_session_with(port, serde_json::json!({ "id": id }))
}

pub fn create_session_with(port: u16, body: Value) -> Value {
    let (st, v) = post_json(port, "/v1/sessions", &body);
    assert_eq!(st, 201, "create session {body}: {v}");
    v
}

/// A minimal valid append body.
pub fn event(producer: &str, pseq: u64) -> Value {
    serde_json::json!({
        "type": "test.event",
        "payload": {"n": pseq, "producer": producer},
        "producer_id": producer,
        "producer_seq": pseq,
    })
}

pub fn append(port: u16, session: &str, body: &Value) -> (u16, Value) {
    post_json(port, &append_path(session), body)
}

/// Appends and asserts a fresh 201; returns the seq.
pub fn append_ok(port: u16, session: &str, body: &Value) -> u64 {
    let (st, v) = append(port, session, body);
    assert_eq!(st, 201, "append {body} -> {v}");
    assert_eq!(v["deduped"], Value::Bool(false), "append {body} -> {v}");
    v["seq"].as_u64().expect("seq")
}

/// Asserts the standard error envelope with the given status and code.
#[track_caller]
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (want_status, Some(want_code)),
        "expected {want_status} {want_code}, got {status} {body}"
    );
    assert!(
        body.get("message").map(|m| m.is_string()).unwrap_or(false),
        "error body lacks a string `message`: {body}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "error envelope must have exactly `error` and `message`: {body}"
    );
}

/// Asserts an error response (raw) has the envelope.
#[track_caller]
pub fn assert_error_resp(r: &Response, want_status: u16, want_code: &str) {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| {
        panic!(
            "expected {want_status} {want_code}, got {} with non-JSON body {:?}",
            r.status,
            r.text()
        )
    });
    assert_error(r.status, &v, want_status, want_code);
}

/// Lists all sessions (following next_cursor) with an optional extra query.
pub fn list_all(port: u16, extra_query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut q = format!("/v1/sessions?limit=1000{extra_query}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={}", pct(c)));
        }
        let (st, v) = get_json(port, &q);
        assert_eq!(st, 200, "list {q}: {v}");
        out.extend(
            v["sessions"]
                .as_array()
                .expect("sessions array")
                .iter()
                .cloned(),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("list did not terminate");
}

/// The session's `last_seq` as reported by list (§14.8).
pub fn session_last_seq(port: u16, id: &str) -> u64 {
    let rows = list_all(port, "");
    let row = rows
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("session {id} not in list"));
    row["last_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("list row lacks integer last_seq: {row}"))
}

/// Checks `inserted_at`/`created_at` format: RFC 3339 UTC, 6 fractional digits, `Z`.
pub fn is_micro_ts(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 27 {
        return false;
    }
    let digit = |i: usize| b[i].is_ascii_digit();
    (0..4).all(digit)
        && b[4] == b'-'
        && (5..7).all(digit)
        && b[7] == b'-'
        && (8..10).all(digit)
        && b[10] == b'T'
        && (11..13).all(digit)
        && b[13] == b':'
        && (14..16).all(digit)
        && b[16] == b':'
        && (17..19).all(digit)
        && b[19] == b'.'
        && (20..26).all(digit)
        && b[26] == b'Z'
}

// ---------------------------------------------------------------------------
// WebSocket tail
// ---------------------------------------------------------------------------

pub struct Tail {
    pub ws: WebSocket<TcpStream>,
    /// Close frame received (code, reason), if any.
    pub closed: Option<(u16, String)>,
}

pub enum Frame {
    /// A text frame, parsed as JSON.
    Json(Value),
    /// Connection closed (close frame code/reason if one was received).
    Closed(Option<(u16, String)>),
    /// Nothing arrived within the timeout.
    Timeout,
    /// A frame that is neither a JSON text frame nor a close (binary, non-JSON text).
    Other(String),
}

pub fn tail_url(port: u16, session: &str, query: &str) -> String {
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("ws://127.0.0.1:{port}/v1/sessions/{}/tail{q}", pct(session))
}

impl Tail {
    /// Connects; on a non-101 answer returns Err((status, body)).
    pub fn try_connect(port: u16, session: &str, query: &str) -> Result<Tail, (u16, Vec<u8>)> {
        let stream = connect(port, IO_TIMEOUT).map_err(|e| (0, e.to_string().into_bytes()))?;
        let url = tail_url(port, session, query);
        // No client-side size limits: a batch of large events can legitimately
        // exceed tungstenite's default 16 MiB frame limit.
        let mut cfg = tungstenite::protocol::WebSocketConfig::default();
        cfg.max_message_size = None;
        cfg.max_frame_size = None;
        match tungstenite::client::client_with_config(url.as_str(), stream, Some(cfg)) {
            Ok((ws, resp)) => {
                assert_eq!(resp.status().as_u16(), 101);
                Ok(Tail { ws, closed: None })
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                Err((status, body))
            }
            Err(tungstenite::HandshakeError::Failure(e)) => Err((0, e.to_string().into_bytes())),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                Err((0, b"handshake interrupted (timeout)".to_vec()))
            }
        }
    }

    pub fn connect(port: u16, session: &str, query: &str) -> Tail {
        match Tail::try_connect(port, session, query) {
            Ok(t) => t,
            Err((st, body)) => panic!(
                "tail connect {session}?{query} failed: {st} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Waits up to `timeout` for the next data frame.
    pub fn next_frame(&mut self, timeout: Duration) -> Frame {
        if self.closed.is_some() {
            return Frame::Closed(self.closed.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Frame::Timeout;
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            let _ = self.ws.get_mut().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return match serde_json::from_str(&t) {
                        Ok(v) => Frame::Json(v),
                        Err(_) => Frame::Other(format!("non-JSON text frame {t:?}")),
                    }
                }
                Ok(Message::Binary(b)) => {
                    return Frame::Other(format!("binary frame of {} bytes", b.len()))
                }
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {
                    // Flush the automatic pong.
                    let _ = self.ws.flush();
                    continue;
                }
                Ok(Message::Close(cf)) => {
                    let c = cf.map(|f| (u16::from(f.code), f.reason.into_owned()));
                    self.closed = Some(c.clone().unwrap_or((1005, String::new())));
                    // Complete the closing handshake.
                    let _ = self.ws.flush();
                    return Frame::Closed(c);
                }
                Err(tungstenite::Error::Io(e))
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
                {
                    continue;
                }
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {
                    self.closed = Some((1006, String::new()));
                    return Frame::Closed(None);
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    self.closed = Some((1006, "reset without closing handshake".into()));
                    return Frame::Closed(None);
                }
                Err(e) => {
                    eprintln!("tail socket error (treated as an abnormal close): {e}");
                    self.closed = Some((1006, format!("{e}")));
                    return Frame::Closed(None);
                }
            }
        }
    }

    /// Collects events (arrays flattened) until `n` events have arrived or
    /// `timeout` passes. Panics on non-event frames.
    pub fn collect_events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.next_frame(deadline - now) {
                Frame::Json(Value::Array(a)) => {
                    assert!(!a.is_empty(), "empty array frame");
                    out.extend(a)
                }
                Frame::Json(v) => {
                    assert!(v.is_object(), "frame is neither object nor array: {v}");
                    out.push(v)
                }
                Frame::Timeout => break,
                Frame::Closed(c) => {
                    panic!("tail closed ({c:?}) after {} of {n} events", out.len())
                }
                Frame::Other(s) => panic!("unexpected frame: {s}"),
            }
        }
        out
    }

    /// Collects raw frames (not flattened) until `n` events have arrived or timeout.
    pub fn collect_frames(&mut self, n_events: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        let mut count = 0;
        while count < n_events {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.next_frame(deadline - now) {
                Frame::Json(v) => {
                    count += match &v {
                        Value::Array(a) => a.len(),
                        _ => 1,
                    };
                    frames.push(v);
                }
                Frame::Timeout => break,
                Frame::Closed(c) => panic!("tail closed ({c:?})"),
                Frame::Other(s) => panic!("unexpected frame: {s}"),
            }
        }
        frames
    }

    /// Asserts that no data frame arrives within `d`.
    #[track_caller]
    pub fn assert_silent(&mut self, d: Duration) {
        match self.next_frame(d) {
            Frame::Timeout => {}
            Frame::Json(v) => panic!("expected silence, got frame {v}"),
            Frame::Closed(c) => panic!("expected silence, socket closed {c:?}"),
            Frame::Other(s) => panic!("expected silence, got {s}"),
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// Seqs of a list of events.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("event without seq: {e}"))
        })
        .collect()
}

/// Reads a whole session from cursor 0 until `last_seq` via tail (batch 1000).
pub fn read_all_events(port: u16, session: &str, last_seq: u64, timeout: Duration) -> Vec<Value> {
    let mut t = Tail::connect(port, session, "cursor=0&batch_size=1000");
    let evs = t.collect_events(last_seq as usize, timeout);
    t.close();
    evs
}
pub mod cluster;
