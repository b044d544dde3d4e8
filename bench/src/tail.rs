//! `tail`: delivery latency to M WebSocket subscribers of one session while
//! producers append at a fixed rate (open loop), and `--idle N`: N idle tail
//! sockets on a node and the node's resident memory.
//!
//! Latency: every subscriber notes when it receives each seq; the producers
//! note when they intended to send each append and when its 201 (with the
//! seq) came back. Reported per (subscriber, event): ack → receipt (what a
//! reader of the session sees after the writer was told "stored"; clamped at
//! 0 when the event arrived before the writer's ack, counted separately) and
//! intended send → receipt (end to end, coordinated-omission-correct).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::cluster::{ClusterArgs, LocalCluster};
use super::{
    create_session, ms, new_hist, parse_url, pct, plot, progress, Conn, ReqTemplate, Target,
};

#[derive(Args, Clone)]
pub struct TailArgs {
    /// Node URL(s); subscribers are spread over them, producers too.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    url: String,
    /// Subscribers of the session.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Appends/s into the session (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Producer connections sharing the rate (one append in flight each;
    /// enough that rate / producers stays well below 1 / append latency).
    #[arg(long, default_value_t = 16)]
    producers: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Threads reading the subscribers' sockets (epoll, sockets dealt round
    /// robin). 0: one blocking thread per subscriber, as before 2026-12-06;
    /// on a small host those threads' wake-ups dominate both the client's and
    /// the node's CPU and the measured latency.
    #[arg(long, default_value_t = 2)]
    subscriber_threads: usize,
    /// Idle mode: open this many idle tail sockets instead and report the
    /// node's RSS (needs --pid, or --start-node).
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Sessions the idle sockets are spread over.
    #[arg(long, default_value_t = 100)]
    idle_sessions: usize,
    /// Hold the idle sockets this long before measuring.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// PID of the node behind the first --url (for RSS).
    #[arg(long)]
    pid: Option<u32>,
    /// Start a one-node server of our own (1 core, no per-address and a large
    /// tail-socket cap) instead of using --url.
    #[arg(long)]
    start_node: bool,
    #[arg(long, default_value = "target/release/starcite")]
    bin: PathBuf,
    #[arg(long)]
    json: Option<String>,
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// `"seq":N` in a tail frame or append response, without a JSON parse.
fn find_seq(b: &[u8]) -> Option<u64> {
    let p = super::find(b, b"\"seq\":")? + 6;
    let mut n = 0u64;
    let mut any = false;
    for &c in &b[p..] {
        if c.is_ascii_digit() {
            n = n * 10 + (c - b'0') as u64;
            any = true;
        } else if c == b' ' && !any {
            continue;
        } else {
            break;
        }
    }
    any.then_some(n)
}

pub fn cmd_tail(a: TailArgs) -> i32 {
    let mut own = None;
    let (urls, pid) = if a.start_node {
        let n = a.idle.max(a.subscribers) + 1000;
        let ca = ClusterArgs {
            bin: a.bin.clone(),
            nodes: 1,
            cores: 1,
            rf: None,
            env: vec![
                "STARCITE_MAX_CONNECTIONS_PER_IP=0".into(),
                format!("STARCITE_MAX_TAIL_SOCKETS={n}"),
            ],
            run: None,
            secs: 0,
        };
        match LocalCluster::start(&ca) {
            Ok(c) => {
                let u = c.urls();
                let p = c.pid(0);
                own = Some(c);
                (u, p)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    } else {
        (a.url.clone(), a.pid)
    };
    let targets: Vec<Target> = match urls.split(',').map(|u| parse_url(u.trim())).collect() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let r = if a.idle > 0 {
        idle(&a, &targets, pid)
    } else {
        latency(&a, &targets, pid)
    };
    drop(own);
    match r {
        Ok((table, doc)) => {
            println!("{table}");
            let text = serde_json::to_string_pretty(&doc).unwrap();
            println!("{text}");
            if let Some(p) = &a.json {
                if let Err(e) = std::fs::write(p, format!("{text}\n")) {
                    eprintln!("error: write {p}: {e}");
                    return 1;
                }
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------------------
// idle sockets
// ---------------------------------------------------------------------------

/// A WebSocket upgrade done by hand (a bare socket per tail: the client side
/// stays small enough for 10,000 of them in one process).
fn ws_connect(t: &Target, path: &str) -> Result<TcpStream, String> {
    let mut s =
        TcpStream::connect_timeout(&t.addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        t.host_header
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while super::find(&buf, b"\r\n\r\n").is_none() {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during upgrade".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&buf[..buf.len().min(200)]).to_string();
        return Err(format!("upgrade refused: {line}"));
    }
    Ok(s)
}

fn idle(a: &TailArgs, targets: &[Target], pid: Option<u32>) -> Result<(String, Value), String> {
    let pid = pid.ok_or("--idle needs --pid (the node behind the first --url) or --start-node")?;
    let t = &targets[0];
    let tag = format!("{:x}", super::now_nanos() % 0xffff_ffff);
    let sessions: Vec<String> = (0..a.idle_sessions.max(1))
        .map(|i| format!("idle-{tag}-{i}"))
        .collect();
    for s in &sessions {
        create_session(t, s, None, Duration::from_secs(10))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kb(pid).ok_or("cannot read the node's VmRSS")?;
    let prog = progress::start(
        &format!("{} idle tails", a.idle),
        a.idle as f64 / 2000.0 + a.hold_secs as f64,
        Duration::from_millis(250),
    );
    let t0 = Instant::now();
    let mut socks = Vec::with_capacity(a.idle);
    let mut errors = 0u64;
    let mut sample = None;
    for i in 0..a.idle {
        let s = &sessions[i % sessions.len()];
        match ws_connect(t, &format!("/v1/sessions/{}/tail?cursor=0", pct(s))) {
            Ok(sock) => {
                progress::ok();
                socks.push(sock);
            }
            Err(e) => {
                progress::err();
                errors += 1;
                if sample.is_none() {
                    sample = Some(e);
                }
                if errors > 100 && socks.is_empty() {
                    break;
                }
            }
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(a.hold_secs));
    let after = rss_kb(pid).ok_or("cannot read the node's VmRSS")?;
    prog.finish();
    // Still open? A read with a short timeout must time out (no EOF, no close frame).
    let mut alive = 0usize;
    let step = (socks.len() / 200).max(1);
    for s in socks.iter_mut().step_by(step) {
        let _ = s.set_read_timeout(Some(Duration::from_millis(2)));
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                alive += 1
            }
            _ => {}
        }
    }
    let checked = socks.len().div_ceil((socks.len() / 200).max(1));
    let subs = super::cluster::metric(t, "starcite_tail_subscribers");
    let n = socks.len();
    drop(socks);
    let per = if n > 0 {
        (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
    } else {
        0.0
    };
    let table =
        format!(
        "{:>8} {:>8} {:>14} {:>14} {:>14} {:>12}\n{:>8} {:>8} {:>14.1} {:>14.1} {:>14.0} {:>12.2}",
        "sockets", "errors", "RSS before MB", "RSS after MB", "bytes/socket", "open s",
        n, errors, before as f64 / 1024.0, after as f64 / 1024.0, per, open_secs
    );
    let doc = json!({
        "benchmark": "tail-idle",
        "url": t.host_header,
        "pid": pid,
        "requested": a.idle,
        "open_sockets": n,
        "errors": errors,
        "error_sample": sample,
        "sampled_still_open": format!("{alive}/{checked}"),
        "server_tail_subscribers": subs,
        "rss_before_mb": before as f64 / 1024.0,
        "rss_after_mb": after as f64 / 1024.0,
        "bytes_per_socket": per,
        "open_secs": open_secs,
        "target_mb": 200,
    });
    Ok((table, doc))
}

// ---------------------------------------------------------------------------
// delivery latency
// ---------------------------------------------------------------------------

struct SubResult {
    recv: Vec<(u64, u64)>,
    error: Option<String>,
}

fn latency(a: &TailArgs, targets: &[Target], _pid: Option<u32>) -> Result<(String, Value), String> {
    let tag = format!("{:x}", super::now_nanos() % 0xffff_ffff);
    let session = format!("tail-{tag}");
    create_session(&targets[0], &session, None, Duration::from_secs(10))?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    eprintln!("[tail] connecting {} subscribers", a.subscribers);
    let urls: Vec<(std::net::SocketAddr, String)> = (0..a.subscribers)
        .map(|i| {
            let t = &targets[i % targets.len()];
            let url = format!(
                "ws://{}/v1/sessions/{}/tail?cursor=0",
                t.host_header,
                pct(&session)
            );
            (t.addr, url)
        })
        .collect();
    let subs: Vec<std::thread::JoinHandle<Vec<SubResult>>> = if a.subscriber_threads == 0 {
        urls.into_iter()
            .enumerate()
            .map(|(i, (addr, url))| {
                let stop = stop.clone();
                let connected = connected.clone();
                std::thread::Builder::new()
                    .name(format!("sub-{i}"))
                    .stack_size(256 * 1024)
                    .spawn(move || vec![subscriber(addr, &url, base, stop, connected)])
                    .expect("spawn subscriber")
            })
            .collect()
    } else {
        let mut shares: Vec<Vec<(std::net::SocketAddr, String)>> =
            vec![Vec::new(); a.subscriber_threads.min(a.subscribers.max(1))];
        let n = shares.len();
        for (i, u) in urls.into_iter().enumerate() {
            shares[i % n].push(u);
        }
        shares
            .into_iter()
            .enumerate()
            .map(|(i, share)| {
                let stop = stop.clone();
                let connected = connected.clone();
                std::thread::Builder::new()
                    .name(format!("subs-{i}"))
                    .spawn(move || subscriber_pool(share, base, stop, connected))
                    .expect("spawn subscriber pool")
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < a.subscribers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let nconn = connected.load(Ordering::Relaxed);
    eprintln!(
        "[tail] {nconn} subscribers connected; appending {} /s",
        a.rate
    );

    let warm = Duration::from_secs_f64(a.warmup_secs.max(0.0));
    let measure = Duration::from_secs(a.duration_secs);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warm;
    let end = measure_from + measure;
    let prog = progress::start(
        "tail deliveries",
        (warm + measure).as_secs_f64(),
        Duration::from_millis(250),
    );
    let acks: Arc<Mutex<HashMap<u64, (u64, u64)>>> = Arc::new(Mutex::new(HashMap::new()));
    let np = a.producers.max(1);
    let prods: Vec<_> = (0..np)
        .map(|i| {
            let t = &targets[i % targets.len()];
            let tpl = ReqTemplate::new(
                &t.host_header,
                &session,
                &format!("tail-{tag}-{i}"),
                a.payload_bytes,
                None,
            );
            let addr = t.addr;
            let (iv, ph) = super::openloop::schedule(a.rate, np, i);
            let acks = acks.clone();
            std::thread::spawn(move || producer(addr, tpl, iv, ph, start, end, base, acks))
        })
        .collect();
    let mut perr = 0u64;
    let mut perr_sample = None;
    for p in prods {
        let (e, s) = p.join().map_err(|_| "producer panicked")?;
        perr += e;
        if perr_sample.is_none() {
            perr_sample = s;
        }
    }
    // Let the subscribers catch up (bounded), then stop them.
    let last = acks.lock().unwrap().keys().copied().max().unwrap_or(0);
    let expected = last * nconn as u64;
    let catch = Instant::now() + Duration::from_secs(10);
    while Instant::now() < catch && RECEIVED.load(Ordering::Relaxed) < expected {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let series = prog.finish();
    let mut results = Vec::new();
    for s in subs {
        results.extend(s.join().map_err(|_| "subscriber panicked")?);
    }
    let acks = acks.lock().unwrap();
    let from_ns = (measure_from - base).as_nanos() as u64;
    let mut ack_h = new_hist();
    let mut e2e_h = new_hist();
    let mut before_ack = 0u64;
    let mut missing = 0u64;
    let mut sub_errors = Vec::new();
    let measured: Vec<u64> = acks
        .iter()
        .filter(|(_, (intended, _))| *intended >= from_ns)
        .map(|(s, _)| *s)
        .collect();
    for r in &results {
        if let Some(e) = &r.error {
            if sub_errors.len() < 3 {
                sub_errors.push(e.clone());
            }
        }
        let got: HashMap<u64, u64> = r.recv.iter().copied().collect();
        for s in &measured {
            let (intended, ack) = acks[s];
            match got.get(s) {
                Some(&rt) => {
                    if rt < ack {
                        before_ack += 1;
                    }
                    let _ = ack_h.record((rt.saturating_sub(ack) / 1000).clamp(1, 60_000_000));
                    let _ = e2e_h.record((rt.saturating_sub(intended) / 1000).clamp(1, 60_000_000));
                }
                None => missing += 1,
            }
        }
    }
    let q = |h: &Histogram<u64>, p: f64| {
        if h.len() == 0 {
            Value::Null
        } else {
            json!(ms(h.value_at_quantile(p)))
        }
    };
    let secs = measure.as_secs_f64();
    let deliveries = ack_h.len();
    let table = format!(
        "{:>11} {:>8} {:>11} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n{:>11} {:>8} {:>11.0} {:>13.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n(first row: ack→receipt ms; end to end from intended send: p50 {} p99 {} ms)",
        "subscribers", "events", "appends/s", "deliveries/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "missing",
        nconn,
        measured.len(),
        measured.len() as f64 / secs,
        deliveries as f64 / secs,
        fmt(q(&ack_h, 0.5)), fmt(q(&ack_h, 0.9)), fmt(q(&ack_h, 0.99)), fmt(q(&ack_h, 0.999)),
        fmt(if ack_h.len() == 0 { Value::Null } else { json!(ms(ack_h.max())) }),
        missing,
        fmt(q(&e2e_h, 0.5)), fmt(q(&e2e_h, 0.99)),
    );
    let doc = json!({
        "benchmark": "tail",
        "url": a.url,
        "subscribers": nconn,
        "target_rate_per_sec": a.rate,
        "producers": np,
        "payload_bytes": a.payload_bytes,
        "duration_secs": a.duration_secs,
        "events_measured": measured.len(),
        "appends_per_sec": measured.len() as f64 / secs,
        "append_errors": perr,
        "append_error_sample": perr_sample,
        "deliveries": deliveries,
        "deliveries_per_sec": deliveries as f64 / secs,
        "missing_deliveries": missing,
        "received_before_ack": before_ack,
        "subscriber_errors": sub_errors,
        "ack_to_receipt_ms": {"p50": q(&ack_h, 0.5), "p90": q(&ack_h, 0.9), "p99": q(&ack_h, 0.99), "p99_9": q(&ack_h, 0.999), "max": if ack_h.len()==0 {Value::Null} else {json!(ms(ack_h.max()))}},
        "send_to_receipt_ms": {"p50": q(&e2e_h, 0.5), "p90": q(&e2e_h, 0.9), "p99": q(&e2e_h, 0.99), "p99_9": q(&e2e_h, 0.999)},
        "deliveries_over_time": [{"run": "deliveries", "per_sec": series}],
        "target_p99_ms": 2.0,
    });
    if let (Some(lat), Some(thr)) = (
        plot::path_for(a.json.as_deref(), "latency"),
        plot::path_for(a.json.as_deref(), "throughput"),
    ) {
        let title = format!(
            "tail delivery latency ({nconn} subscribers, {} events/s)",
            a.rate
        );
        plot::percentile_chart(
            &title,
            vec![
                plot::Series {
                    label: "ack → receipt".into(),
                    points: plot::percentile_points(&ack_h),
                },
                plot::Series {
                    label: "send → receipt".into(),
                    points: plot::percentile_points(&e2e_h),
                },
            ],
        )
        .write(&lat);
        plot::time_chart(
            "tail deliveries over time",
            "deliveries/s",
            plot::series_from_json(&doc["deliveries_over_time"]),
        )
        .write(&thr);
    }
    Ok((table, doc))
}

fn fmt(v: Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

/// Receipts by all subscribers (for the bounded catch-up wait).
static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

type Ws = tungstenite::WebSocket<TcpStream>;

/// Connects and upgrades one subscriber (blocking, bounded by timeouts).
fn connect_ws(addr: std::net::SocketAddr, url: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    tungstenite::client::client(url, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| format!("upgrade: {e}"))
}

/// Notes every seq of a text frame as received at `now`.
fn note_frame(out: &mut SubResult, b: &[u8], now: u64) {
    // One event per frame (batch_size 1), or an array of them.
    let mut off = 0;
    while let Some(seq) = find_seq(&b[off..]) {
        out.recv.push((seq, now));
        progress::ok();
        RECEIVED.fetch_add(1, Ordering::Relaxed);
        off += super::find(&b[off..], b"\"seq\":").unwrap() + 6;
    }
}

/// What one `read` of a subscriber socket meant. `false`: the subscriber ended.
fn on_read(
    out: &mut SubResult,
    r: tungstenite::Result<tungstenite::Message>,
    base: Instant,
) -> Option<bool> {
    match r {
        Ok(tungstenite::Message::Text(t)) => {
            note_frame(out, t.as_bytes(), now_ns(base));
            Some(true)
        }
        Ok(tungstenite::Message::Close(c)) => {
            out.error = Some(format!("closed: {c:?}"));
            Some(false)
        }
        Ok(_) => Some(true),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => {
            out.error = Some(format!("read: {e}"));
            Some(false)
        }
    }
}

/// One blocking thread per subscriber (`--subscriber-threads 0`).
fn subscriber(
    addr: std::net::SocketAddr,
    url: &str,
    base: Instant,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
) -> SubResult {
    let mut out = SubResult {
        recv: Vec::with_capacity(1 << 14),
        error: None,
    };
    let mut ws = match connect_ws(addr, url) {
        Ok(ws) => ws,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    connected.fetch_add(1, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        if on_read(&mut out, ws.read(), base) == Some(false) {
            break;
        }
    }
    out
}

/// Several subscribers read by one thread: non-blocking sockets, one epoll
/// set (level-triggered; each ready socket is read until it would block).
fn subscriber_pool(
    share: Vec<(std::net::SocketAddr, String)>,
    base: Instant,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
) -> Vec<SubResult> {
    use std::os::fd::AsRawFd;
    let mut outs: Vec<SubResult> = Vec::with_capacity(share.len());
    let mut socks: Vec<Option<Ws>> = Vec::with_capacity(share.len());
    // SAFETY: plain syscall; the fd is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (addr, url) in &share {
        let mut out = SubResult {
            recv: Vec::with_capacity(1 << 14),
            error: None,
        };
        let ws = match connect_ws(*addr, url) {
            Ok(ws) if ep >= 0 && ws.get_ref().set_nonblocking(true).is_ok() => {
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: socks.len() as u64,
                };
                // SAFETY: valid epoll fd and socket fd, `ev` outlives the call.
                let rc = unsafe {
                    libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ws.get_ref().as_raw_fd(), &mut ev)
                };
                if rc == 0 {
                    connected.fetch_add(1, Ordering::Relaxed);
                    Some(ws)
                } else {
                    out.error = Some(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
                    None
                }
            }
            Ok(_) => {
                out.error = Some(format!(
                    "epoll/nonblocking: {}",
                    std::io::Error::last_os_error()
                ));
                None
            }
            Err(e) => {
                out.error = Some(e);
                None
            }
        };
        outs.push(out);
        socks.push(ws);
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; socks.len().max(1)];
    while ep >= 0 && !stop.load(Ordering::Relaxed) && socks.iter().any(Option::is_some) {
        // SAFETY: `events` has room for `len` entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 200) };
        for ev in events.iter().take(n.max(0) as usize) {
            let i = ev.u64 as usize;
            let Some(ws) = socks[i].as_mut() else {
                continue;
            };
            let alive = loop {
                match on_read(&mut outs[i], ws.read(), base) {
                    Some(true) => continue,
                    Some(false) => break false,
                    None => break true,
                }
            };
            if !alive {
                socks[i] = None; // closes the socket, which leaves the epoll set
            }
        }
    }
    if ep >= 0 {
        // SAFETY: closing the epoll fd created above.
        unsafe { libc::close(ep) };
    }
    outs
}

#[allow(clippy::too_many_arguments)]
fn producer(
    addr: std::net::SocketAddr,
    tpl: ReqTemplate,
    interval: Duration,
    phase: Duration,
    start: Instant,
    end: Instant,
    base: Instant,
    acks: Arc<Mutex<HashMap<u64, (u64, u64)>>>,
) -> (u64, Option<String>) {
    let mut conn = Conn::new(addr, Duration::from_secs(10));
    let mut req = Vec::new();
    let mut errors = 0;
    let mut sample = None;
    let mut seq = 1u64;
    let first = start + phase;
    let mut k = 0u32;
    loop {
        let intended = first + interval * k;
        if intended >= end || Instant::now() > end + super::openloop::GRACE {
            break;
        }
        k += 1;
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        tpl.render(seq, &mut req);
        match conn.roundtrip(&req) {
            Ok(r) if r.status == 201 => {
                let ack = now_ns(base);
                seq += 1;
                if let Some(s) = find_seq(&r.body) {
                    acks.lock()
                        .unwrap()
                        .insert(s, ((intended - base).as_nanos() as u64, ack));
                }
            }
            Ok(r) => {
                errors += 1;
                sample.get_or_insert_with(|| {
                    format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
                });
            }
            Err(e) => {
                errors += 1;
                sample.get_or_insert_with(|| format!("io: {e}"));
            }
        }
    }
    (errors, sample)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_seq() {
        assert_eq!(super::find_seq(br#"{"seq":42,"last_seq":42}"#), Some(42));
        assert_eq!(super::find_seq(br#"[{"a":1,"seq": 7}]"#), Some(7));
        assert_eq!(super::find_seq(b"{}"), None);
    }
}
