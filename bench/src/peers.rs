//! `peer`: the same closed-loop append load (N producers, one publish in
//! flight each, 1 s warm-up, HDR histogram of every acknowledged publish)
//! against the systems users would pick instead, so `bench/compare` can put
//! them beside Starcite measured on the same machine in the same run:
//!
//! - `--system nats`: NATS JetStream, publish awaiting the stream's ack (the
//!   core NATS protocol by hand: `PUB subject reply`, the ack arrives as `MSG`
//!   on the reply inbox). `--create-stream R` first creates stream `BENCH`
//!   (`bench.>`, file storage, R replicas). Each producer publishes to its own
//!   subject `bench.<i>` of that one stream.
//! - `--system redis`: Redis Streams, `XADD <key> * d <payload>` (RESP by
//!   hand), one stream key per producer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{ms, new_hist, nodecost, plot, progress};

#[derive(Args, Clone)]
pub struct PeerArgs {
    /// `nats` or `redis`.
    #[arg(long)]
    system: String,
    /// host:port, several comma-separated (producers spread round-robin).
    #[arg(long)]
    addr: String,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    producers: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// NATS: create (or update) stream BENCH with this many replicas first.
    #[arg(long)]
    create_stream: Option<usize>,
    /// A label for the report (e.g. "redis appendfsync always").
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    json: Option<String>,
    /// Server process ids (comma-separated): their CPU time and context
    /// switches over the measured window, per acknowledged append.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

trait Pub {
    fn publish(&mut self, n: u64) -> Result<(), String>;
}

// ---------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------

struct Nats {
    w: TcpStream,
    r: BufReader<TcpStream>,
    subject: String,
    inbox: String,
    payload: Vec<u8>,
    line: String,
}

impl Nats {
    fn connect(addr: &str, subject: &str, payload_bytes: usize, id: &str) -> Result<Nats, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("nats {addr}: {e}"))?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if !line.starts_with("INFO") {
            return Err(format!("nats: expected INFO, got {line:?}"));
        }
        let inbox = format!("_INBOX.{id}");
        let mut w = s;
        w.write_all(
            format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"starcite-bench\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"headers\":false}}\r\nSUB {inbox}.* 1\r\nPING\r\n")
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let mut n = Nats {
            w,
            r,
            subject: subject.into(),
            inbox,
            payload: vec![b'x'; payload_bytes],
            line,
        };
        loop {
            n.line.clear();
            n.r.read_line(&mut n.line).map_err(|e| e.to_string())?;
            if n.line.starts_with("PONG") {
                break;
            }
            if n.line.starts_with("-ERR") {
                return Err(format!("nats: {}", n.line.trim()));
            }
        }
        Ok(n)
    }

    /// Sends `data` to `subject` and waits for the reply's payload.
    fn request(&mut self, subject: &str, n: u64, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut buf = format!("PUB {subject} {}.{n} {}\r\n", self.inbox, data.len()).into_bytes();
        buf.extend_from_slice(data);
        buf.extend_from_slice(b"\r\n");
        self.w.write_all(&buf).map_err(|e| e.to_string())?;
        loop {
            self.line.clear();
            if self
                .r
                .read_line(&mut self.line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("nats: connection closed".into());
            }
            if self.line.starts_with("PING") {
                self.w.write_all(b"PONG\r\n").map_err(|e| e.to_string())?;
                continue;
            }
            if self.line.starts_with("-ERR") {
                return Err(format!("nats: {}", self.line.trim()));
            }
            if let Some(rest) = self.line.strip_prefix("MSG ") {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let len: usize = parts
                    .last()
                    .and_then(|v| v.parse().ok())
                    .ok_or("nats: bad MSG")?;
                let mut body = vec![0u8; len + 2];
                self.r.read_exact(&mut body).map_err(|e| e.to_string())?;
                body.truncate(len);
                if parts[0].ends_with(&format!(".{n}")) {
                    return Ok(body);
                }
            }
        }
    }
}

impl Pub for Nats {
    fn publish(&mut self, n: u64) -> Result<(), String> {
        let subj = self.subject.clone();
        let p = std::mem::take(&mut self.payload);
        let r = self.request(&subj, n, &p);
        self.payload = p;
        let body = r?;
        if super::find(&body, b"\"error\"").is_some() || super::find(&body, b"\"seq\"").is_none() {
            return Err(format!("jetstream: {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
    cmd: Vec<u8>,
    line: String,
}

impl Redis {
    fn connect(addr: &str, key: &str, payload_bytes: usize) -> Result<Redis, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("redis {addr}: {e}"))?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let payload = "x".repeat(payload_bytes);
        let args = ["XADD", key, "*", "d", &payload];
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        Ok(Redis {
            w: s,
            r,
            cmd: cmd.into_bytes(),
            line: String::new(),
        })
    }
}

impl Pub for Redis {
    fn publish(&mut self, _n: u64) -> Result<(), String> {
        self.w.write_all(&self.cmd).map_err(|e| e.to_string())?;
        self.line.clear();
        if self
            .r
            .read_line(&mut self.line)
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("redis: connection closed".into());
        }
        match self.line.as_bytes().first() {
            Some(b'$') => {
                let len: usize = self.line[1..]
                    .trim()
                    .parse()
                    .map_err(|_| "redis: bad bulk")?;
                let mut b = vec![0u8; len + 2];
                self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
                Ok(())
            }
            _ => Err(format!("redis: {}", self.line.trim())),
        }
    }
}

// ---------------------------------------------------------------------------

struct Run {
    producers: usize,
    ok: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    samples: Vec<String>,
    /// Server CPU and context switches per append (`--pids`), else null.
    cost: Value,
}

fn run_one(a: &PeerArgs, producers: usize, tag: &str) -> Result<Run, String> {
    let addrs: Vec<String> = a.addr.split(',').map(|s| s.trim().to_owned()).collect();
    let mut pubs: Vec<Box<dyn Pub + Send>> = Vec::new();
    for i in 0..producers {
        let addr = &addrs[i % addrs.len()];
        pubs.push(match a.system.as_str() {
            "nats" => Box::new(Nats::connect(
                addr,
                &format!("bench.{tag}.{i}"),
                a.payload_bytes,
                &format!("{tag}{i}"),
            )?),
            "redis" => Box::new(Redis::connect(
                addr,
                &format!("bench:{tag}:{i}"),
                a.payload_bytes,
            )?),
            o => return Err(format!("unknown --system {o} (nats or redis)")),
        });
    }
    let warm = Duration::from_secs_f64(a.warmup_secs.max(0.0));
    let measure = Duration::from_secs(a.duration_secs);
    let start = Instant::now() + Duration::from_millis(50);
    let from = start + warm;
    let end = from + measure;
    let prog = progress::start(
        &format!("{} {producers} producers", a.system),
        (warm + measure).as_secs_f64(),
        Duration::from_millis(250),
    );
    let hs: Vec<_> = pubs
        .into_iter()
        .map(|mut p| {
            std::thread::spawn(move || {
                let mut h = new_hist();
                let (mut ok, mut err, mut samples) = (0u64, 0u64, Vec::new());
                std::thread::sleep(start.saturating_duration_since(Instant::now()));
                let mut n = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    n += 1;
                    let r = p.publish(n);
                    let t1 = Instant::now();
                    let measured = t0 >= from && t1 <= end;
                    match r {
                        Ok(()) => {
                            progress::ok();
                            if measured {
                                ok += 1;
                                let _ =
                                    h.record(((t1 - t0).as_micros() as u64).clamp(1, 60_000_000));
                            }
                        }
                        Err(e) => {
                            progress::err();
                            if measured {
                                err += 1;
                            }
                            if samples.len() < 3 {
                                samples.push(e);
                            }
                            if samples.len() >= 3 && ok == 0 {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                }
                (h, ok, err, samples)
            })
        })
        .collect();
    // The servers' counters at the edges of the measured window.
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    let cost_before = nodecost::sample(&a.pids, &[]);
    let probe =
        nodecost::SyscallProbe::start(&a.pids, end.saturating_duration_since(Instant::now()));
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cost_after = nodecost::sample(&a.pids, &[]);
    let syscalls = probe.and_then(nodecost::SyscallProbe::finish);
    let mut run = Run {
        producers,
        ok: 0,
        errors: 0,
        secs: measure.as_secs_f64(),
        hist: new_hist(),
        samples: Vec::new(),
        cost: Value::Null,
    };
    for h in hs {
        let (hh, ok, err, s) = h.join().map_err(|_| "publisher panicked")?;
        run.hist.add(&hh).map_err(|e| format!("{e:?}"))?;
        run.ok += ok;
        run.errors += err;
        for x in s {
            if run.samples.len() < 3 && !run.samples.contains(&x) {
                run.samples.push(x);
            }
        }
    }
    prog.finish();
    if !a.pids.is_empty() {
        // Only the process counters mean something for another system.
        let c = nodecost::per_append(&cost_before, &cost_after, run.ok, true, syscalls);
        run.cost = json!({
            "node_cpu_us": c["node_cpu_us"],
            "voluntary_ctx_switches": c["voluntary_ctx_switches"],
            "involuntary_ctx_switches": c["involuntary_ctx_switches"],
            "syscalls": c["syscalls"],
            "uring_submissions": c["uring_submissions"],
        });
    }
    Ok(run)
}

fn create_stream(addr: &str, replicas: usize) -> Result<String, String> {
    let mut c = Nats::connect(addr, "", 0, "admin")?;
    let cfg = json!({
        "name": "BENCH", "subjects": ["bench.>"], "storage": "file", "num_replicas": replicas,
        "retention": "limits", "discard": "old", "max_bytes": 4_000_000_000u64,
    })
    .to_string();
    let body = c.request("$JS.API.STREAM.CREATE.BENCH", 1, cfg.as_bytes())?;
    let s = String::from_utf8_lossy(&body).to_string();
    if s.contains("\"error\"") && !s.contains("already in use") {
        return Err(format!("create stream: {s}"));
    }
    Ok(s)
}

pub fn cmd_peer(a: PeerArgs) -> i32 {
    if a.system == "nats" {
        if let Some(r) = a.create_stream {
            // The JetStream cluster may need a moment to elect its meta leader.
            let first = a.addr.split(',').next().unwrap_or("").to_owned();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match create_stream(&first, r) {
                    Ok(s) => {
                        eprintln!("[peer] stream BENCH: {}", &s[..s.len().min(160)]);
                        break;
                    }
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("[peer] {e}; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 1;
                    }
                }
            }
        }
    }
    let tag = format!("{:x}", super::now_nanos() % 0xffff_ffff);
    let mut runs = Vec::new();
    for &n in &a.producers {
        eprintln!(
            "running: {} {n} producers, {} s (+{} s warm-up)",
            a.system, a.duration_secs, a.warmup_secs
        );
        match run_one(&a, n.max(1), &format!("{tag}{n}")) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
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
    println!(
        "{:>9} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "producers", "appends/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    for r in &runs {
        let f = |p: f64| {
            q(&r.hist, p)
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.3}"))
        };
        println!(
            "{:>9} {:>12.1} {:>9} {:>9} {:>9} {:>9} {:>8}",
            r.producers,
            r.ok as f64 / r.secs,
            f(0.5),
            f(0.9),
            f(0.99),
            f(1.0),
            r.errors
        );
    }
    let doc = json!({
        "benchmark": "append",
        "system": a.system,
        "label": a.label,
        "addr": a.addr,
        "closed_loop": true,
        "duration_secs": a.duration_secs,
        "warmup_secs": a.warmup_secs,
        "payload_bytes": a.payload_bytes,
        "results": runs.iter().map(|r| json!({
            "producers": r.producers,
            "appends": r.ok,
            "errors": r.errors,
            "measured_secs": r.secs,
            "throughput_per_sec": r.ok as f64 / r.secs,
            "latency_ms": {"p50": q(&r.hist, 0.5), "p90": q(&r.hist, 0.9), "p99": q(&r.hist, 0.99), "p99_9": q(&r.hist, 0.999), "max": q(&r.hist, 1.0), "mean": r.hist.mean() / 1000.0},
            "error_samples": r.samples,
            "per_append": r.cost,
        })).collect::<Vec<_>>(),
        "throughput_over_time": progress::take_all().into_iter().map(|(l, s)| json!({"run": l, "per_sec": s})).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc).unwrap();
    println!("{text}");
    if let Some(p) = &a.json {
        if let Err(e) = std::fs::write(p, format!("{text}\n")) {
            eprintln!("error: write {p}: {e}");
            return 1;
        }
    }
    if let Some(path) = plot::path_for(a.json.as_deref(), "latency") {
        let title = format!(
            "{} append latency (closed loop, {} B)",
            a.system, a.payload_bytes
        );
        plot::percentile_chart(
            &title,
            runs.iter()
                .map(|r| plot::Series {
                    label: format!("{} producers", r.producers),
                    points: plot::percentile_points(&r.hist),
                })
                .collect(),
        )
        .write(&path);
    }
    if runs.iter().any(|r| r.ok > 0) {
        0
    } else {
        1
    }
}
