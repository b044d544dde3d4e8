//! `replay`: events/s replayed from the hot tier. Fills `--sessions` sessions
//! with `--events` events (closed loop, `--producers` connections), then
//! `--readers` threads tail every session from cursor 0 (`batch_size`
//! `--batch-size`) until its last seq, `--runs` times; the median pass is
//! reported. Cold replay (from the archive) is measured by
//! `starcite-bench archive`, which restarts its node so every event comes
//! from the backend.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::{create_session, parse_url, pct, plot, progress, Conn, ReqTemplate, Target};

#[derive(Args, Clone)]
pub struct ReplayArgs {
    /// Node URL(s): fill producers and readers are spread over them.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    url: String,
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 32)]
    sessions: usize,
    /// Fill connections.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Concurrent replaying tails.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Replay passes (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    json: Option<String>,
}

fn fill(
    a: &ReplayArgs,
    targets: &[Target],
    sessions: &[String],
    tag: &str,
) -> Result<(u64, f64), String> {
    let np = a.producers.max(1).min(sessions.len());
    let per_session = a.events.div_ceil(sessions.len() as u64);
    let prog = progress::start("fill", a.events as f64 / 5000.0, Duration::from_millis(250));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..np)
        .map(|i| {
            let t = &targets[i % targets.len()];
            let mine: Vec<ReqTemplate> = sessions
                .iter()
                .skip(i)
                .step_by(np)
                .map(|s| {
                    ReqTemplate::new(
                        &t.host_header,
                        s,
                        &format!("fill-{tag}-{i}"),
                        a.payload_bytes,
                        None,
                    )
                })
                .collect();
            let addr = t.addr;
            std::thread::spawn(move || -> Result<u64, String> {
                let mut conn = Conn::new(addr, Duration::from_secs(10));
                let mut req = Vec::new();
                let mut n = 0;
                for tpl in &mine {
                    let mut seq = 1;
                    while seq <= per_session {
                        tpl.render(seq, &mut req);
                        match conn.roundtrip(&req) {
                            Ok(r) if r.status == 201 => {
                                seq += 1;
                                n += 1;
                                progress::ok();
                            }
                            Ok(r) if r.status == 503 || r.status == 429 => {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Ok(r) => {
                                return Err(format!(
                                    "fill append: {} {}",
                                    r.status,
                                    String::from_utf8_lossy(&r.body)
                                ))
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in hs {
        total += h.join().map_err(|_| "fill thread panicked")??;
    }
    prog.finish();
    Ok((total, t0.elapsed().as_secs_f64()))
}

/// Tails `session` from 0 to `last`; events read.
fn tail_count(t: &Target, session: &str, last: u64, batch: usize) -> Result<u64, String> {
    let stream = TcpStream::connect(t.addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let url = format!(
        "ws://{}/v1/sessions/{}/tail?cursor=0&batch_size={batch}",
        t.host_header,
        pct(session)
    );
    let (mut ws, _) = tungstenite::client::client(url.as_str(), stream)
        .map_err(|e| format!("tail {session}: {e}"))?;
    let mut seen = 0u64;
    while seen < last {
        match ws.read().map_err(|e| format!("tail {session}: {e}"))? {
            tungstenite::Message::Text(t) => {
                let b = t.as_bytes();
                let mut off = 0;
                let mut n = 0;
                while let Some(p) = super::find(&b[off..], b"\"seq\":") {
                    off += p + 6;
                    n += 1;
                }
                seen += n;
                for _ in 0..n {
                    progress::ok();
                }
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

fn pass(
    a: &ReplayArgs,
    targets: &[Target],
    sessions: &[(String, u64)],
) -> Result<(u64, f64), String> {
    let nr = a.readers.max(1);
    let t0 = Instant::now();
    let hs: Vec<_> = (0..nr)
        .map(|k| {
            let mine: Vec<(String, u64)> = sessions.iter().skip(k).step_by(nr).cloned().collect();
            let t = parse_url(&format!(
                "http://{}",
                targets[k % targets.len()].host_header
            ))
            .unwrap();
            let batch = a.batch_size;
            std::thread::spawn(move || -> Result<u64, String> {
                let mut n = 0;
                for (s, last) in mine {
                    n += tail_count(&t, &s, last, batch)?;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in hs {
        total += h.join().map_err(|_| "reader panicked")??;
    }
    Ok((total, t0.elapsed().as_secs_f64()))
}

pub fn cmd_replay(a: ReplayArgs) -> i32 {
    match run(&a) {
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

fn run(a: &ReplayArgs) -> Result<(String, Value), String> {
    let targets: Vec<Target> = a
        .url
        .split(',')
        .map(|u| parse_url(u.trim()))
        .collect::<Result<_, _>>()?;
    let tag = format!("{:x}", super::now_nanos() % 0xffff_ffff);
    let sessions: Vec<String> = (0..a.sessions.max(1))
        .map(|i| format!("replay-{tag}-{i}"))
        .collect();
    for s in &sessions {
        create_session(&targets[0], s, None, Duration::from_secs(10))?;
    }
    eprintln!(
        "[replay] filling {} events into {} sessions",
        a.events,
        sessions.len()
    );
    let (filled, fill_secs) = fill(a, &targets, &sessions, &tag)?;
    let per = a.events.div_ceil(sessions.len() as u64);
    let lasts: Vec<(String, u64)> = sessions.iter().map(|s| (s.clone(), per)).collect();
    let mut passes = Vec::new();
    let mut series = Vec::new();
    for r in 0..a.runs.max(1) {
        let prog = progress::start(
            &format!("replay pass {}", r + 1),
            filled as f64 / 100_000.0,
            Duration::from_millis(100),
        );
        let (n, secs) = pass(a, &targets, &lasts)?;
        let s = prog.finish();
        series.push(json!({"run": format!("pass {}", r + 1), "per_sec": s}));
        passes.push((n, secs, n as f64 / secs));
    }
    let mut rates: Vec<f64> = passes.iter().map(|p| p.2).collect();
    rates.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let median = rates[rates.len() / 2];
    let mut table = format!(
        "{:>6} {:>10} {:>8} {:>12}\n",
        "pass", "events", "secs", "events/s"
    );
    for (i, (n, s, r)) in passes.iter().enumerate() {
        table.push_str(&format!("{:>6} {:>10} {:>8.2} {:>12.0}\n", i + 1, n, s, r));
    }
    table.push_str(&format!(
        "median hot replay: {median:.0} events/s ({} readers, batch {})",
        a.readers, a.batch_size
    ));
    let doc = json!({
        "benchmark": "replay",
        "tier": "hot",
        "url": a.url,
        "events": filled,
        "sessions": sessions.len(),
        "payload_bytes": a.payload_bytes,
        "readers": a.readers,
        "batch_size": a.batch_size,
        "fill": {"secs": fill_secs, "appends_per_sec": filled as f64 / fill_secs},
        "passes": passes.iter().map(|(n, s, r)| json!({"events": n, "secs": s, "events_per_sec": r})).collect::<Vec<_>>(),
        "median_events_per_sec": median,
        "replay_over_time": series,
    });
    if let Some(p) = plot::path_for(a.json.as_deref(), "throughput") {
        plot::time_chart(
            "hot replay throughput",
            "events/s",
            plot::series_from_json(&doc["replay_over_time"]),
        )
        .write(&p);
    }
    Ok((table, doc))
}
