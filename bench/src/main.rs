//! `starcite-bench`: closed-loop load generator for the Starcite HTTP API.
//!
//! ```text
//! starcite-bench append --url http://127.0.0.1:4000 --producers 1,16,64 \
//!     --duration-secs 10 --payload-bytes 200 [--sessions N] [--json out.json]
//! starcite-bench idle-cpu --pid P --secs 10
//! ```
//!
//! `append`: for each producer count, every producer is one OS thread with its
//! own keep-alive TCP connection sending raw HTTP/1.1 POSTs (request bytes
//! precomputed; only `producer_seq` changes), one request in flight at a time.
//! Latency of every request completed after the warm-up is recorded in a
//! per-producer HDR histogram; histograms are merged per run.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod archive;
mod cluster;
mod failover;
mod fsync_probe;
mod nodecost;
mod openloop;
mod peers;
mod plot;
mod progress;
mod replay;
mod summarize;
mod tail;

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "starcite-bench",
    about = "Load generator and benchmarks for Starcite"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop append throughput/latency over HTTP.
    Append(AppendArgs),
    /// CPU use of an (idle) process, in % of one core, from /proc/PID/stat.
    IdleCpu(IdleArgs),
    /// Archive throughput, hot/cold replay throughput, append latency with and
    /// without the archiver (starts its own node).
    Archive(archive::ArchiveArgs),
    /// Delivery latency from append ack to receipt at M subscribers of one
    /// session; or `--idle N` idle tail sockets and the node's memory.
    Tail(tail::TailArgs),
    /// Events/s replayed from the hot tier over WebSocket tails.
    Replay(replay::ReplayArgs),
    /// Steady load on a self-started 3-node cluster while the node leading the
    /// most groups is killed: unavailability window, p99 before/around/after.
    Failover(failover::FailoverArgs),
    /// Start a local N-node cluster on 127.0.0.1 and run another scenario
    /// against it (`--run "append --producers 1,16"`), or just keep it up.
    Cluster(cluster::ClusterArgs),
    /// The same closed-loop append load against NATS JetStream or Redis
    /// Streams (for the comparison in docs/performance.md).
    Peer(peers::PeerArgs),
    /// The disk's durable-append floor: latency, CPU and context switches per
    /// durable write for io_uring/blocking, buffered/O_DIRECT|O_DSYNC.
    FsyncProbe(fsync_probe::FsyncProbeArgs),
    /// Medians of `bench/compare`'s rounds, comparison plots, summary tables.
    Summarize(summarize::SummarizeArgs),
}

#[derive(Args, Clone)]
struct AppendArgs {
    /// Base URL of a Starcite node (http only); several, comma-separated, spread
    /// the producers over the nodes of a cluster round-robin.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    url: String,
    /// Comma-separated producer counts; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    producers: Vec<usize>,
    /// Measured duration of each run (warm-up excluded).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up before measuring, per run.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Approximate size of the event payload in bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Number of sessions shared by the producers (round-robin). 0 = one
    /// session per producer.
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// Bearer token to send (for JWT-mode servers).
    #[arg(long)]
    token: Option<String>,
    /// Write the JSON report here as well.
    #[arg(long)]
    json: Option<String>,
    /// Per-request I/O timeout.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// `http` (JSON over HTTP/1.1) or `wire` (the binary protocol).
    #[arg(long, default_value = "http")]
    transport: String,
    /// Requests in flight per producer (HTTP: pipelined on the keep-alive
    /// connection; wire: pipelined on the client's connection).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Wire: the most appends a producer sends at once when it refills its
    /// pipeline (`Client::append_batch`, one write per connection); 1 sends
    /// each append on its own, as before 2026-12-06.
    #[arg(long, default_value_t = 32)]
    wire_batch: usize,
    /// Wire addresses (`host:port`, comma-separated; the nodes' STARCITE_WIRE_PORT)
    /// for `--transport wire`. Sessions are still created over `--url`.
    #[arg(long)]
    wire: Option<String>,
    /// Wire clients (each with one connection per node) shared by the
    /// producers round-robin; 0 = one client per producer.
    #[arg(long, default_value_t = 0)]
    wire_clients: usize,
    /// Open loop: send on a fixed schedule of `--rate` appends/s in total
    /// (spread over the producers, one in flight each, HTTP), latency from each
    /// request's intended send time (coordinated-omission-correct).
    #[arg(long)]
    open_loop: bool,
    /// Total target rate of `--open-loop`, appends/s.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// PIDs of the node processes (comma-separated): their CPU and context
    /// switches over each measured window are reported per acknowledged append
    /// (`starcite-bench cluster` passes them).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Do not count the nodes' system calls and io_uring submissions (by
    /// default counted with `perf stat` tracepoints over each window when
    /// `--pids` is given and the machine allows it).
    #[arg(long)]
    no_perf: bool,
    /// Nodes whose /metrics are read before and after each window (log writes,
    /// fsyncs, stage times per append); default: every `--url`.
    #[arg(long)]
    metrics_urls: Option<String>,
}

#[derive(Args)]
struct IdleArgs {
    /// Process id to measure.
    #[arg(long)]
    pid: u32,
    /// Measurement window.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Write the JSON report here as well.
    #[arg(long)]
    json: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Append(a) => cmd_append(a),
        Cmd::IdleCpu(a) => cmd_idle_cpu(a),
        Cmd::Archive(a) => archive::cmd_archive(a),
        Cmd::Tail(a) => tail::cmd_tail(a),
        Cmd::Replay(a) => replay::cmd_replay(a),
        Cmd::Failover(a) => failover::cmd_failover(a),
        Cmd::Cluster(a) => cluster::cmd_cluster(a),
        Cmd::Peer(a) => peers::cmd_peer(a),
        Cmd::Summarize(a) => summarize::cmd_summarize(a),
        Cmd::FsyncProbe(a) => fsync_probe::cmd_fsync_probe(a),
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------
// URL / HTTP plumbing
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host_header: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported: {url}"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    if hostport.is_empty() {
        return Err(format!("no host in {url}"));
    }
    let with_port = if hostport.starts_with('[') {
        if hostport.contains("]:") {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        }
    } else if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port} resolves to nothing"))?;
    Ok(Target {
        addr,
        host_header: hostport.to_string(),
    })
}

struct Conn {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    rbuf: Box<[u8; 65536]>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

impl Conn {
    fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Conn {
            addr,
            timeout,
            stream: None,
            buf: Vec::with_capacity(4096),
            rbuf: Box::new([0u8; 65536]),
        }
    }

    fn ensure(&mut self) -> std::io::Result<()> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.stream = Some(s);
            self.buf.clear();
        }
        Ok(())
    }

    /// Sends `req` and reads one response. On error the connection is dropped.
    fn roundtrip(&mut self, req: &[u8]) -> std::io::Result<Resp> {
        self.ensure()?;
        let r = self.roundtrip_inner(req);
        match &r {
            Ok(resp) if resp.close => self.stream = None,
            Err(_) => self.stream = None,
            _ => {}
        }
        r
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let s = self.stream.as_mut().unwrap();
        let n = s.read(&mut self.rbuf[..])?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&self.rbuf[..n]);
        Ok(())
    }

    fn roundtrip_inner(&mut self, req: &[u8]) -> std::io::Result<Resp> {
        self.stream.as_mut().unwrap().write_all(req)?;
        self.read_response()
    }

    /// Writes requests without reading (HTTP pipelining).
    fn send_only(&mut self, req: &[u8]) -> std::io::Result<()> {
        self.ensure()?;
        let r = self.stream.as_mut().unwrap().write_all(req);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    /// Reads the next response of a pipelined connection.
    fn recv_one(&mut self) -> std::io::Result<Resp> {
        let r = self.read_response();
        match &r {
            Ok(resp) if resp.close => self.stream = None,
            Err(_) => self.stream = None,
            _ => {}
        }
        r
    }

    fn read_response(&mut self) -> std::io::Result<Resp> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "non-UTF-8 head"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "bad status line"))?;
        let mut len = None;
        let mut close = false;
        let mut chunked = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        self.buf.drain(..head_end + 4);
        if chunked {
            return Err(std::io::Error::new(
                ErrorKind::Unsupported,
                "chunked responses are not supported by the bench client",
            ));
        }
        let body = match len {
            Some(n) => {
                while self.buf.len() < n {
                    self.fill()?;
                }
                self.buf.drain(..n).collect()
            }
            None => {
                close = true;
                loop {
                    match self.fill() {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                std::mem::take(&mut self.buf)
            }
        };
        Ok(Resp {
            status,
            body,
            close,
        })
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn post_once(
    t: &Target,
    path: &str,
    body: &[u8],
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Resp> {
    let mut c = Conn::new(t.addr, timeout);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        t.host_header,
        body.len()
    );
    if let Some(tok) = token {
        req.push_str(&format!("Authorization: Bearer {tok}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    c.roundtrip(&bytes)
}

/// One GET on a fresh connection.
fn get_once(t: &Target, path: &str, timeout: Duration) -> std::io::Result<Resp> {
    let mut c = Conn::new(t.addr, timeout);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.host_header
    );
    c.roundtrip(req.as_bytes())
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn pct(s: &str) -> String {
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

// ---------------------------------------------------------------------------
// append
// ---------------------------------------------------------------------------

/// Precomputed request: `prefix` + producer_seq + `suffix`, with the
/// Content-Length patched per request.
struct ReqTemplate {
    head_before_len: Vec<u8>,
    body_prefix: Vec<u8>,
    body_suffix: Vec<u8>,
}

impl ReqTemplate {
    fn new(
        host: &str,
        session: &str,
        producer_id: &str,
        payload_bytes: usize,
        token: Option<&str>,
    ) -> Self {
        let mut head = format!(
            "POST /v1/sessions/{}/append HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n",
            pct(session)
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("Content-Length: ");
        // Payload {"data":"xxx…"} sized to roughly payload_bytes.
        let fill = payload_bytes.saturating_sub(11).max(1);
        let pid = serde_json::to_string(producer_id).unwrap();
        let body_prefix = format!(
            r#"{{"type":"bench.append","payload":{{"data":"{}"}},"producer_id":{pid},"producer_seq":"#,
            "x".repeat(fill)
        );
        ReqTemplate {
            head_before_len: head.into_bytes(),
            body_prefix: body_prefix.into_bytes(),
            body_suffix: b"}".to_vec(),
        }
    }

    fn render(&self, seq: u64, out: &mut Vec<u8>) {
        out.clear();
        let digits = itoa(seq);
        let len = self.body_prefix.len() + digits.len() + self.body_suffix.len();
        out.extend_from_slice(&self.head_before_len);
        out.extend_from_slice(itoa(len as u64).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body_prefix);
        out.extend_from_slice(digits.as_bytes());
        out.extend_from_slice(&self.body_suffix);
    }
}

fn itoa(n: u64) -> String {
    n.to_string()
}

#[derive(Default)]
struct ProducerResult {
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    hist: Option<Histogram<u64>>,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

struct RunResult {
    producers: usize,
    sessions: usize,
    ok: u64,
    errors: u64,
    measured_secs: f64,
    hist: Histogram<u64>,
    error_samples: Vec<String>,
    /// Node cost per acknowledged append over the measured window.
    cost: Value,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl RunResult {
    fn throughput(&self) -> f64 {
        if self.measured_secs > 0.0 {
            self.ok as f64 / self.measured_secs
        } else {
            0.0
        }
    }
    fn to_json(&self) -> Value {
        let h = &self.hist;
        let empty = h.len() == 0;
        let q = |p: f64| {
            if empty {
                Value::Null
            } else {
                json!(ms(h.value_at_quantile(p)))
            }
        };
        json!({
            "producers": self.producers,
            "sessions": self.sessions,
            "appends": self.ok,
            "errors": self.errors,
            "measured_secs": self.measured_secs,
            "throughput_per_sec": self.throughput(),
            "latency_ms": {
                "p50": q(0.50),
                "p90": q(0.90),
                "p99": q(0.99),
                "p99_9": q(0.999),
                "max": if empty { Value::Null } else { json!(ms(h.max())) },
                "mean": if empty { Value::Null } else { json!(h.mean() / 1000.0) },
            },
            "error_samples": self.error_samples,
            "per_append": self.cost,
        })
    }
}

fn create_session(
    t: &Target,
    id: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let body = json!({"id": id, "title": "bench", "metadata": {"bench": "append"}}).to_string();
    match post_once(t, "/v1/sessions", body.as_bytes(), token, timeout) {
        Ok(r) if r.status == 201 || r.status == 409 => Ok(()),
        Ok(r) => Err(format!(
            "create session {id}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )),
        Err(e) => Err(format!("create session {id}: {e}")),
    }
}

fn run_append(
    args: &AppendArgs,
    targets: &[Target],
    producers: usize,
    run_tag: &str,
) -> Result<RunResult, String> {
    if args.open_loop && (args.transport != "http" || args.pipeline > 1) {
        return Err("--open-loop is HTTP with one append in flight per producer (no --transport wire, no --pipeline)".into());
    }
    let t = &targets[0];
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let token = args.token.as_deref();
    let n_sessions = if args.sessions == 0 {
        producers
    } else {
        args.sessions
    };
    let sessions: Vec<String> = (0..n_sessions)
        .map(|i| format!("bench-{run_tag}-p{producers}-s{i}"))
        .collect();
    for s in &sessions {
        create_session(t, s, token, timeout)?;
    }
    let wire_clients = match args.transport.as_str() {
        "wire" => {
            let nodes: Vec<String> = args
                .wire
                .as_deref()
                .ok_or("--transport wire needs --wire host:port[,host:port...]")?
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect();
            let n = if args.wire_clients == 0 {
                producers
            } else {
                args.wire_clients
            };
            let per = args.pipeline.max(1) * producers.div_ceil(n);
            let mut clients = Vec::new();
            for _ in 0..n {
                clients.push(wire::connect(&nodes, args.token.as_deref(), per)?);
            }
            Some(clients)
        }
        "http" => None,
        other => return Err(format!("unknown --transport {other} (http or wire)")),
    };
    let warmup = Duration::from_secs_f64(args.warmup_secs.max(0.0));
    let measure = Duration::from_secs(args.duration_secs);
    // Common clock for all producers.
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let prog = progress::start(
        &format!("{producers} producers"),
        (warmup + measure).as_secs_f64(),
        Duration::from_millis(250),
    );

    let handles: Vec<_> = (0..producers)
        .map(|i| {
            let session = sessions[i % sessions.len()].clone();
            let producer_id = format!("bench-{run_tag}-{producers}-{i}");
            let t = &targets[i % targets.len()];
            let tpl = ReqTemplate::new(
                &t.host_header,
                &session,
                &producer_id,
                args.payload_bytes,
                token,
            );
            let addr = t.addr;
            let pipeline = args.pipeline.max(1);
            let wire_batch = args.wire_batch.max(1);
            let wire = wire_clients.as_ref().map(|c| c[i % c.len()].clone());
            let payload_bytes = args.payload_bytes;
            let open = args
                .open_loop
                .then(|| openloop::schedule(args.rate, producers, i));
            std::thread::Builder::new()
                .name(format!("producer-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || match wire {
                    Some(client) => wire::producer_loop(
                        client,
                        &session,
                        &producer_id,
                        payload_bytes,
                        (pipeline, wire_batch),
                        (start, measure_from, end),
                    ),
                    None if open.is_some() => {
                        let (iv, ph) = open.unwrap();
                        openloop::producer_loop(
                            addr,
                            timeout,
                            tpl,
                            iv,
                            ph,
                            start,
                            measure_from,
                            end,
                        )
                    }
                    None if pipeline > 1 => {
                        http_pipelined_loop(addr, timeout, tpl, pipeline, start, measure_from, end)
                    }
                    None => producer_loop(addr, timeout, tpl, start, measure_from, end),
                })
                .expect("spawn producer thread")
        })
        .collect();

    // Node counters at the start and the end of the measured window.
    let metric_targets: Vec<Target> = match &args.metrics_urls {
        Some(list) => list
            .split(',')
            .filter_map(|u| parse_url(u.trim()).ok())
            .collect(),
        None => targets.to_vec(),
    };
    let sleep_until = |at: Instant| {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
    };
    sleep_until(measure_from);
    let cost_before = nodecost::sample(&args.pids, &metric_targets);
    let probe = if args.no_perf {
        None
    } else {
        nodecost::SyscallProbe::start(&args.pids, end.saturating_duration_since(Instant::now()))
    };
    sleep_until(end);
    let cost_after = nodecost::sample(&args.pids, &metric_targets);
    let syscalls = probe.and_then(nodecost::SyscallProbe::finish);
    let mut hist = new_hist();
    let mut ok = 0;
    let mut errors = 0;
    let mut samples = Vec::new();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "producer thread panicked".to_string())?;
        ok += r.ok;
        errors += r.errors;
        if let Some(ph) = r.hist {
            hist.add(&ph)
                .map_err(|e| format!("merge histogram: {e:?}"))?;
        }
        for s in r.error_samples {
            if samples.len() < 5 && !samples.contains(&s) {
                samples.push(s);
            }
        }
    }
    prog.finish();
    Ok(RunResult {
        producers,
        sessions: n_sessions,
        ok,
        errors,
        measured_secs: measure.as_secs_f64(),
        cost: nodecost::per_append(
            &cost_before,
            &cost_after,
            ok,
            !args.pids.is_empty(),
            syscalls,
        ),
        hist,
        error_samples: samples,
    })
}

fn producer_loop(
    addr: SocketAddr,
    timeout: Duration,
    tpl: ReqTemplate,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ProducerResult {
    let mut res = ProducerResult::default();
    let mut hist = new_hist();
    let mut conn = Conn::new(addr, timeout);
    let mut req = Vec::with_capacity(tpl.head_before_len.len() + tpl.body_prefix.len() + 64);
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
    let _ = conn.ensure();
    let mut seq: u64 = 1;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        tpl.render(seq, &mut req);
        let r = conn.roundtrip(&req);
        let t1 = Instant::now();
        let measured = t0 >= measure_from && t1 <= end;
        match r {
            Ok(resp) if resp.status == 201 => {
                seq += 1;
                progress::ok();
                if measured {
                    res.ok += 1;
                    let us = (t1 - t0).as_micros().max(1) as u64;
                    let _ = hist.record(us.min(60_000_000));
                }
            }
            Ok(resp) => {
                // A 409 producer_seq_conflict would mean our seq bookkeeping
                // diverged (e.g. an earlier timeout that committed); a retry
                // of the same seq dedupes, so keep the seq and move on.
                if measured {
                    res.errors += 1;
                }
                if res.error_samples.len() < 3 {
                    res.error_samples.push(format!(
                        "{} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    ));
                }
                if resp.status == 409 {
                    // Resync: the seq was probably already accepted.
                    seq += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                if measured {
                    res.errors += 1;
                }
                if res.error_samples.len() < 3 {
                    res.error_samples.push(format!("io: {e}"));
                }
                // Same seq is retried on a new connection (dedupes if it landed).
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    res.hist = Some(hist);
    res
}

/// HTTP/1.1 pipelining: `depth` requests on the wire, one written per response read.
fn http_pipelined_loop(
    addr: SocketAddr,
    timeout: Duration,
    tpl: ReqTemplate,
    depth: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ProducerResult {
    let mut res = ProducerResult::default();
    let mut hist = new_hist();
    let mut conn = Conn::new(addr, timeout);
    let mut req = Vec::new();
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
    let mut seq: u64 = 1;
    let mut sent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    loop {
        let now = Instant::now();
        if now >= end && sent.is_empty() {
            break;
        }
        if now < end && sent.len() < depth {
            tpl.render(seq, &mut req);
            if conn.send_only(&req).is_ok() {
                sent.push_back(now);
                seq += 1;
                continue;
            }
        }
        if sent.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let r = conn.recv_one();
        let t1 = Instant::now();
        let t0 = sent.pop_front().unwrap();
        let measured = t0 >= measure_from && t1 <= end;
        match r {
            Ok(resp) if resp.status == 201 => {
                progress::ok();
                if measured {
                    res.ok += 1;
                    let _ = hist.record(((t1 - t0).as_micros().max(1) as u64).min(60_000_000));
                }
            }
            Ok(resp) => {
                if measured {
                    res.errors += 1;
                }
                if res.error_samples.len() < 3 {
                    res.error_samples.push(format!(
                        "{} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    ));
                }
            }
            Err(e) => {
                // The connection is gone with everything in flight on it.
                if measured {
                    res.errors += 1 + sent.len() as u64;
                }
                if res.error_samples.len() < 3 {
                    res.error_samples.push(format!("io: {e}"));
                }
                sent.clear();
            }
        }
    }
    res.hist = Some(hist);
    res
}

/// The binary-protocol transport (starcite-wire's client).
mod wire {
    use super::{new_hist, ProducerResult};
    use starcite_wire::client::{Ack, Client, ClientConfig, Pending};
    use starcite_wire::proto::AppendFields;
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    pub fn connect(
        nodes: &[String],
        token: Option<&str>,
        inflight: usize,
    ) -> Result<Client, String> {
        let mut cfg = ClientConfig::new(nodes.iter().cloned()).max_inflight(inflight.max(1));
        if let Some(t) = token {
            cfg = cfg.token(t);
        }
        Client::connect(cfg).map_err(|e| format!("wire connect: {e}"))
    }

    pub fn producer_loop(
        client: Client,
        session: &str,
        producer_id: &str,
        payload_bytes: usize,
        (depth, batch): (usize, usize),
        (start, measure_from, end): (Instant, Instant, Instant),
    ) -> ProducerResult {
        let mut res = ProducerResult::default();
        let mut hist = new_hist();
        let pad = "x".repeat(payload_bytes.saturating_sub(40));
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
        let mut seq = 1u64;
        let mut window: VecDeque<(Instant, Pending<Ack>)> = VecDeque::new();
        let mut answered = |t0: Instant, r: Result<Ack, starcite_wire::client::ClientError>| {
            let t1 = Instant::now();
            let measured = t0 >= measure_from && t1 <= end;
            match r {
                Ok(_) => {
                    crate::progress::ok();
                    if measured {
                        res.ok += 1;
                        let us = (t1 - t0).as_micros().max(1) as u64;
                        let _ = hist.record(us.min(60_000_000));
                    }
                }
                Err(e) => {
                    if measured {
                        res.errors += 1;
                    }
                    if res.error_samples.len() < 3 {
                        res.error_samples.push(format!("wire: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        loop {
            let now = Instant::now();
            if now < end && window.len() < depth {
                let n = (depth - window.len()).min(batch);
                let fields: Vec<AppendFields> = (0..n)
                    .map(|_| {
                        let f = AppendFields {
                            event_type: "bench.append".into(),
                            payload: format!("{{\"n\":{seq},\"pad\":\"{pad}\"}}").into_bytes(),
                            producer_id: producer_id.to_owned(),
                            producer_seq: seq,
                            ..Default::default()
                        };
                        seq += 1;
                        f
                    })
                    .collect();
                let sent = client.append_batch(session, fields);
                window.extend(sent.into_iter().map(|p| (now, p)));
                continue;
            }
            let Some((t0, p)) = window.pop_front() else {
                break;
            };
            answered(t0, p.wait());
            // Every answer already in, so that the refill goes out together.
            while let Some(r) = window.front().and_then(|(_, p)| p.try_take()) {
                if let Some((t0, _)) = window.pop_front() {
                    answered(t0, r);
                }
            }
        }
        res.hist = Some(hist);
        res
    }
}

fn cmd_append(args: AppendArgs) -> i32 {
    let t: Vec<Target> = match args
        .url
        .split(',')
        .map(|u| parse_url(u.trim()))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if args.producers.is_empty() || args.producers.contains(&0) {
        eprintln!("error: --producers must be positive counts");
        return 2;
    }
    let run_tag = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut results = Vec::new();
    for &n in &args.producers {
        eprintln!(
            "running: {} transport, pipeline {}, {n} producers, {} s (+{} s warm-up), payload {} B, sessions {}",
            args.transport,
            args.pipeline,
            args.duration_secs,
            args.warmup_secs,
            args.payload_bytes,
            if args.sessions == 0 { n } else { args.sessions }
        );
        match run_append(&args, &t, n, &run_tag) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    println!(
        "{:>9} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "producers",
        "sessions",
        "appends/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors"
    );
    for r in &results {
        let h = &r.hist;
        let f = |p: f64| {
            if h.len() == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", ms(h.value_at_quantile(p)))
            }
        };
        println!(
            "{:>9} {:>8} {:>12.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            r.producers,
            r.sessions,
            r.throughput(),
            f(0.5),
            f(0.9),
            f(0.99),
            f(0.999),
            if h.len() == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", ms(h.max()))
            },
            r.errors
        );
    }
    if results.iter().any(|r| !r.cost.is_null()) {
        println!(
            "per acknowledged append (all nodes): {:>9} {:>10} {:>10} {:>10} {:>8} {:>10} {:>9} {:>9}  stage µs",
            "producers", "cpu µs", "vol cs", "invol cs", "fsyncs", "cmds/fsync", "syscalls", "uring sqe"
        );
        for r in &results {
            let c = &r.cost;
            let f = |k: &str, d: usize| {
                c[k].as_f64()
                    .map_or("-".to_string(), |v| format!("{v:.d$}"))
            };
            let stages = c["stage_us"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {:.0}", v.as_f64().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!(
                "                                     {:>9} {:>10} {:>10} {:>10} {:>8} {:>10} {:>9} {:>9}  {}",
                r.producers,
                f("node_cpu_us", 1),
                f("voluntary_ctx_switches", 2),
                f("involuntary_ctx_switches", 2),
                f("fsyncs", 3),
                f("commands_per_fsync", 1),
                f("syscalls", 2),
                f("uring_submissions", 2),
                stages
            );
        }
    }
    let doc = json!({
        "benchmark": "append",
        "url": args.url,
        "transport": args.transport,
        "pipeline": args.pipeline,
        "wire": args.wire,
        "duration_secs": args.duration_secs,
        "warmup_secs": args.warmup_secs,
        "payload_bytes": args.payload_bytes,
        "sessions_option": args.sessions,
        "closed_loop": !args.open_loop,
        "open_loop_rate_per_sec": if args.open_loop { json!(args.rate) } else { Value::Null },
        "throughput_over_time": progress::take_all()
            .into_iter()
            .map(|(label, s)| json!({"run": label, "per_sec": s}))
            .collect::<Vec<_>>(),
        "results": results.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc).unwrap();
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, format!("{text}\n")) {
            eprintln!("error: write {path}: {e}");
            return 1;
        }
    }
    println!("{text}");
    plot::append_plots(args.json.as_deref(), &doc, &results);
    let any_ok = results.iter().any(|r| r.ok > 0);
    if any_ok {
        0
    } else {
        eprintln!("error: no append succeeded");
        1
    }
}

// ---------------------------------------------------------------------------
// idle-cpu
// ---------------------------------------------------------------------------

/// utime + stime in clock ticks from /proc/PID/stat.
fn proc_cpu_ticks(pid: u32) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces/parens).
    let after = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or("malformed /proc stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')' : f[0] = state (field 3); utime = field 14 → f[11], stime = field 15 → f[12].
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("no utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("no stime")?;
    Ok(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&v: &u64| v > 0)
        .unwrap_or(100)
}

fn cmd_idle_cpu(a: IdleArgs) -> i32 {
    let hz = clock_ticks_per_sec();
    let t0 = Instant::now();
    let before = match proc_cpu_ticks(a.pid) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    std::thread::sleep(Duration::from_secs(a.secs.max(1)));
    let after = match proc_cpu_ticks(a.pid) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu_secs = (after.saturating_sub(before)) as f64 / hz as f64;
    let pct = cpu_secs / wall * 100.0;
    println!(
        "pid {} used {:.3} s CPU in {:.2} s wall: {:.2}% of one core",
        a.pid, cpu_secs, wall, pct
    );
    let doc = json!({
        "benchmark": "idle-cpu",
        "pid": a.pid,
        "wall_secs": wall,
        "cpu_secs": cpu_secs,
        "clock_ticks_per_sec": hz,
        "percent_of_one_core": pct,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap();
    if let Some(path) = &a.json {
        if let Err(e) = std::fs::write(path, format!("{text}\n")) {
            eprintln!("error: write {path}: {e}");
            return 1;
        }
    }
    println!("{text}");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_renders_valid_json_with_content_length() {
        let t = ReqTemplate::new("h:1", "s 1", "p", 200, None);
        let mut out = Vec::new();
        t.render(12345, &mut out);
        let s = String::from_utf8(out).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/sessions/s%201/append HTTP/1.1\r\n"));
        let cl: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(cl, body.len());
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["producer_seq"], 12345);
        assert_eq!(v["producer_id"], "p");
        let payload_len = serde_json::to_string(&v["payload"]).unwrap().len();
        assert!((195..=205).contains(&payload_len), "{payload_len}");
    }

    #[test]
    fn parses_urls() {
        let t = parse_url("http://127.0.0.1:4000").unwrap();
        assert_eq!(t.addr.port(), 4000);
        assert_eq!(t.host_header, "127.0.0.1:4000");
        assert!(parse_url("https://x").is_err());
    }
}
