//! `starcite-bench archive`: archive throughput, hot and cold replay throughput,
//! and append latency with and without the archiver, against a node this command
//! starts itself (one node, 127.0.0.1, its own data directory).
//!
//! The archive backend comes from the environment, exactly as for the node
//! (`STARCITE_ARCHIVE_ADAPTER`, `STARCITE_S3_*`, `DATABASE_URL`; `fs` by default).
//!
//! 1. Node with the archiver idle (flush interval one day): append latency for
//!    `--producers` closed-loop producers ("without archiver"), then fill up to
//!    `--events` events over `--sessions` sessions, then replay every session
//!    from cursor 0 over WebSocket tails (hot replay rate). SIGTERM.
//! 2. Restart with a 100 ms flush interval: time until the archiver has
//!    acknowledged the whole backlog (archive rate), then append latency again
//!    while the archiver runs ("with archiver"). SIGTERM.
//! 3. Restart (empty read cache, archiver idle): replay every session from 0 —
//!    everything comes from the backend (cold replay rate).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::{create_session, parse_url, run_append, RunResult, Target};

#[derive(Args, Clone)]
pub struct ArchiveArgs {
    /// The starcite binary to start.
    #[arg(long, default_value = "target/release/starcite")]
    bin: PathBuf,
    /// Events in the backlog to archive and replay.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Sessions the events are spread over.
    #[arg(long, default_value_t = 64)]
    sessions: usize,
    /// Closed-loop producers of the latency runs (and of the fill).
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Measured seconds of each latency run.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Payload size of every event.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Shard cores of the node.
    #[arg(long, default_value_t = 2)]
    cores: u32,
    /// Write the JSON report here as well.
    #[arg(long)]
    json: Option<String>,
}

struct Node {
    child: Child,
    port: u16,
    target: Target,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // Below the ephemeral range (see tests/common): client sockets never hold it.
    let seed = std::process::id() as u64 * 7919 + super::now_nanos();
    for k in 0..20_000u64 {
        let port = 10_000 + ((seed + k * 40_503) % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

fn start(
    a: &ArchiveArgs,
    data: &std::path::Path,
    port: u16,
    flush_ms: u64,
) -> Result<Node, String> {
    let log = std::fs::File::create(data.join(format!("node-{flush_ms}.log")))
        .map_err(|e| e.to_string())?;
    let child = Command::new(&a.bin)
        .arg("dev")
        .env("PORT", port.to_string())
        .env("STARCITE_WIRE_PORT", "0")
        .env("STARCITE_RAFT_DATA_DIR", data.join("node"))
        .env("STARCITE_CORES", a.cores.to_string())
        .env("STARCITE_ARCHIVE_FLUSH_INTERVAL_MS", flush_ms.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start {}: {e}", a.bin.display()))?;
    let target = parse_url(&format!("http://127.0.0.1:{port}"))?;
    let node = Node {
        child,
        port,
        target,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = super::get_once(&node.target, "/health/ready", Duration::from_secs(2)) {
            if r.status == 200 {
                return Ok(node);
            }
        }
        if Instant::now() > deadline {
            return Err("node not ready within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut node: Node) {
    // SAFETY: kill(2) on the pid of a child we started.
    unsafe { libc_kill(node.child.id() as i32, 15) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = node.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Sum of a metric's samples.
fn metric(t: &Target, name: &str) -> u64 {
    let Ok(r) = super::get_once(t, "/metrics", Duration::from_secs(5)) else {
        return 0;
    };
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn latency_run(a: &ArchiveArgs, node: &Node, tag: &str) -> Result<RunResult, String> {
    // Through the CLI parser, so every other `append` option keeps its default.
    let argv = [
        "starcite-bench".to_owned(),
        "append".to_owned(),
        format!("--url=http://127.0.0.1:{}", node.port),
        format!("--producers={}", a.producers),
        format!("--duration-secs={}", a.latency_secs),
        format!("--payload-bytes={}", a.payload_bytes),
    ];
    let args = match <super::Cli as clap::Parser>::try_parse_from(argv) {
        Ok(super::Cli {
            cmd: super::Cmd::Append(args),
        }) => args,
        Ok(_) => return Err("append arguments".into()),
        Err(e) => return Err(e.to_string()),
    };
    let targets = vec![parse_url(&args.url)?];
    run_append(&args, &targets, a.producers, tag)
}

/// Appends `total` events over `sessions` with `producers` threads.
fn fill(a: &ArchiveArgs, node: &Node, sessions: &[String]) -> Result<(u64, f64), String> {
    let per = a.events.div_ceil(a.producers as u64);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..a.producers)
        .map(|i| {
            let addr = node.target.addr;
            let host = node.target.host_header.clone();
            let mine: Vec<String> = sessions
                .iter()
                .skip(i)
                .step_by(a.producers)
                .cloned()
                .collect();
            let pad = a.payload_bytes;
            std::thread::spawn(move || -> Result<u64, String> {
                let mut conn = super::Conn::new(addr, Duration::from_secs(10));
                let mut n = 0u64;
                let tpls: Vec<_> = mine
                    .iter()
                    .map(|s| super::ReqTemplate::new(&host, s, &format!("fill-{i}"), pad, None))
                    .collect();
                let mut req = Vec::new();
                let mut seq = vec![1u64; tpls.len()];
                while n < per {
                    let k = (n as usize) % tpls.len().max(1);
                    tpls[k].render(seq[k], &mut req);
                    let r = conn.roundtrip(&req).map_err(|e| e.to_string())?;
                    if r.status != 201 {
                        return Err(format!("fill append: {}", r.status));
                    }
                    seq[k] += 1;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "fill thread panicked")??;
    }
    Ok((total, t0.elapsed().as_secs_f64()))
}

/// Tails every session from cursor 0 until its last seq; events/s overall.
fn replay(node: &Node, sessions: &[(String, u64)]) -> Result<(u64, f64), String> {
    let t0 = Instant::now();
    let chunks: Vec<Vec<(String, u64)>> = (0..4)
        .map(|k| sessions.iter().skip(k).step_by(4).cloned().collect())
        .collect();
    let port = node.port;
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|mine| {
            std::thread::spawn(move || -> Result<u64, String> {
                let mut n = 0;
                for (s, last) in mine {
                    n += tail_count(port, &s, last)?;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "replay thread panicked")??;
    }
    Ok((total, t0.elapsed().as_secs_f64()))
}

fn tail_count(port: u16, session: &str, last: u64) -> Result<u64, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let url = format!(
        "ws://127.0.0.1:{port}/v1/sessions/{}/tail?cursor=0&batch_size=1000",
        super::pct(session)
    );
    let (mut ws, _) = tungstenite::client::client(url.as_str(), stream)
        .map_err(|e| format!("tail {session}: {e}"))?;
    let mut seen = 0u64;
    while seen < last {
        match ws.read().map_err(|e| format!("tail {session}: {e}"))? {
            tungstenite::Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                let batch = v.as_array().map_or(1, Vec::len) as u64;
                let first = v.as_array().and_then(|a| a.first()).unwrap_or(&v)["seq"]
                    .as_u64()
                    .unwrap_or(0);
                if first != seen + 1 {
                    return Err(format!(
                        "tail {session}: expected seq {} got {first}",
                        seen + 1
                    ));
                }
                seen += batch;
            }
            tungstenite::Message::Close(c) => {
                return Err(format!("tail {session} closed after {seen}: {c:?}"))
            }
            _ => {}
        }
    }
    let _ = ws.close(None);
    Ok(seen)
}

fn lat(r: &RunResult) -> Value {
    let v = r.to_json();
    json!({"throughput_per_sec": v["throughput_per_sec"], "p50_ms": v["latency_ms"]["p50"], "p99_ms": v["latency_ms"]["p99"], "errors": v["errors"]})
}

pub fn cmd_archive(a: ArchiveArgs) -> i32 {
    match run(&a) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if let Some(path) = &a.json {
                if let Err(e) = std::fs::write(path, report.to_string()) {
                    eprintln!("error: write {path}: {e}");
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

fn run(a: &ArchiveArgs) -> Result<Value, String> {
    let adapter = std::env::var("STARCITE_ARCHIVE_ADAPTER").unwrap_or_else(|_| "fs".into());
    let tmp = std::env::temp_dir().join(format!("starcite-bench-archive-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let port = free_port();
    let tag = format!("{:x}", super::now_nanos() % 0xffff_ffff);

    eprintln!(
        "[1/3] archiver idle: latency, fill {} events, hot replay",
        a.events
    );
    let node = start(a, &tmp, port, 86_400_000)?;
    let without = latency_run(a, &node, &format!("{tag}-noarch"))?;
    let sessions: Vec<String> = (0..a.sessions).map(|i| format!("arch-{tag}-{i}")).collect();
    for s in &sessions {
        create_session(&node.target, s, None, Duration::from_secs(10))?;
    }
    let (filled, fill_secs) = fill(a, &node, &sessions)?;
    let lasts = last_seqs(&node.target, &sessions)?;
    let (hot_n, hot_secs) = replay(&node, &lasts)?;
    stop(node);

    eprintln!("[2/3] archiver on: drain the backlog, latency while archiving");
    let node = start(a, &tmp, port, 100)?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(600);
    while metric(&node.target, "starcite_hot_tier_bytes") > 0 {
        if Instant::now() > deadline {
            return Err("archiver did not drain the backlog within 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain_secs = t0.elapsed().as_secs_f64();
    let acked = metric(&node.target, "starcite_archive_events_acked_total");
    let with = latency_run(a, &node, &format!("{tag}-arch"))?;
    let errors = metric(&node.target, "starcite_archive_write_errors_total");
    stop(node);

    eprintln!("[3/3] cold replay from the backend");
    let node = start(a, &tmp, port, 86_400_000)?;
    let (cold_n, cold_secs) = replay(&node, &lasts)?;
    let cold_served = metric(&node.target, "starcite_archive_cold_read_events_total");
    stop(node);
    let _ = std::fs::remove_dir_all(&tmp);

    Ok(json!({
        "adapter": adapter,
        "events": filled,
        "sessions": a.sessions,
        "payload_bytes": a.payload_bytes,
        "fill": {"secs": fill_secs, "appends_per_sec": filled as f64 / fill_secs},
        "archive": {"events_acked": acked, "secs": drain_secs, "events_per_sec": acked as f64 / drain_secs, "write_errors": errors},
        "hot_replay": {"events": hot_n, "secs": hot_secs, "events_per_sec": hot_n as f64 / hot_secs},
        "cold_replay": {"events": cold_n, "from_archive": cold_served, "secs": cold_secs, "events_per_sec": cold_n as f64 / cold_secs},
        "append_without_archiver": lat(&without),
        "append_with_archiver": lat(&with),
        "producers": a.producers,
    }))
}

/// `last_seq` of every listed session (one page of up to 1,000).
fn last_seqs(t: &Target, sessions: &[String]) -> Result<Vec<(String, u64)>, String> {
    let r = super::get_once(t, "/v1/sessions?limit=1000", Duration::from_secs(10))
        .map_err(|e| format!("list: {e}"))?;
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("list: {e}"))?;
    let rows = v["sessions"].as_array().cloned().unwrap_or_default();
    Ok(sessions
        .iter()
        .map(|s| {
            let last = rows
                .iter()
                .find(|r| r["id"] == s.as_str())
                .and_then(|r| r["last_seq"].as_u64())
                .unwrap_or(0);
            (s.clone(), last)
        })
        .collect())
}
