//! `failover`: a self-started cluster under steady open-loop load; after
//! `--before-secs` the node leading the most Raft groups
//! (`starcite_raft_leaders`) is killed with SIGKILL. Producers behave like real
//! clients: a failed append (I/O error, 5xx, timeout) is retried with the same
//! `producer_seq` (deduplicated if it had landed) on the next node, and
//! latency is measured from the intended send time of the first attempt, so
//! the stall shows up in full in the percentiles.
//!
//! Unavailability window: for every producer, the longest time between two
//! successful acknowledgements from one second before the kill on (minus the
//! schedule interval); the report gives the maximum and the median over the
//! producers, and the p99 of appends intended before the kill, around it
//! (−1 s … +5 s) and after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::cluster::{metric, ClusterArgs, LocalCluster};
use super::{create_session, ms, new_hist, plot, progress, Conn, ReqTemplate, Target};

#[derive(Args, Clone)]
pub struct FailoverArgs {
    #[arg(long, default_value = "target/release/starcite")]
    bin: PathBuf,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Producers (one session and one connection each).
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Total appends/s (open loop).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Load before the kill (the first second is warm-up).
    #[arg(long, default_value_t = 10)]
    before_secs: u64,
    /// Load after the kill.
    #[arg(long, default_value_t = 15)]
    after_secs: u64,
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Per-attempt timeout, ms.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Extra node environment, KEY=VALUE.
    #[arg(long = "env")]
    env: Vec<String>,
    #[arg(long)]
    json: Option<String>,
}

/// (intended ns, done ns, ok) per scheduled append; done = 0 if never done.
type Rec = (u64, u64, bool);

#[allow(clippy::too_many_arguments)]
fn producer(
    targets: Vec<Target>,
    first_target: usize,
    session: String,
    pid: String,
    a: FailoverArgs,
    interval: Duration,
    phase: Duration,
    base: Instant,
    end: Instant,
) -> (Vec<Rec>, Vec<String>) {
    let n = targets.len();
    let tpls: Vec<ReqTemplate> = targets
        .iter()
        .map(|t| ReqTemplate::new(&t.host_header, &session, &pid, a.payload_bytes, None))
        .collect();
    let timeout = Duration::from_millis(a.timeout_ms.max(100));
    let mut conns: Vec<Conn> = targets.iter().map(|t| Conn::new(t.addr, timeout)).collect();
    let mut cur = first_target % n;
    let mut recs = Vec::new();
    let mut samples = Vec::new();
    let mut req = Vec::new();
    let mut seq = 1u64;
    let first = base + phase;
    let mut k = 0u32;
    let hard_end = end + Duration::from_secs(20);
    loop {
        let intended = first + interval * k;
        if intended >= end {
            break;
        }
        k += 1;
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let i_ns = (intended - base).as_nanos() as u64;
        loop {
            if Instant::now() > hard_end {
                recs.push((i_ns, 0, false));
                return (recs, samples);
            }
            tpls[cur].render(seq, &mut req);
            let r = conns[cur].roundtrip(&req);
            match r {
                Ok(resp) if resp.status == 201 => {
                    progress::ok();
                    seq += 1;
                    recs.push((i_ns, base.elapsed().as_nanos() as u64, true));
                    break;
                }
                Ok(resp) if resp.status == 409 => {
                    // Our bookkeeping is behind the server's: move on.
                    seq += 1;
                    recs.push((i_ns, base.elapsed().as_nanos() as u64, true));
                    if samples.len() < 5 {
                        samples.push(format!("409 {}", String::from_utf8_lossy(&resp.body)));
                    }
                    break;
                }
                other => {
                    progress::err();
                    if samples.len() < 5 {
                        samples.push(match other {
                            Ok(resp) => format!(
                                "{} {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body[..resp.body.len().min(120)])
                            ),
                            Err(e) => format!("io: {e}"),
                        });
                    }
                    cur = (cur + 1) % n;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    (recs, samples)
}

fn p(h: &Histogram<u64>, q: f64) -> Value {
    if h.len() == 0 {
        Value::Null
    } else {
        json!(ms(h.value_at_quantile(q)))
    }
}

pub fn cmd_failover(a: FailoverArgs) -> i32 {
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

fn run(a: &FailoverArgs) -> Result<(String, Value), String> {
    let ca = ClusterArgs {
        bin: a.bin.clone(),
        nodes: a.nodes,
        cores: 1,
        rf: None,
        env: a.env.clone(),
        run: None,
        secs: 0,
    };
    let mut cluster = LocalCluster::start(&ca)?;
    let targets: Vec<Target> = (0..a.nodes).map(|i| cluster.target(i)).collect();
    let tag = format!("{:x}", super::now_nanos() % 0xffff_ffff);
    let np = a.producers.max(1);
    let sessions: Vec<String> = (0..np).map(|i| format!("fo-{tag}-{i}")).collect();
    for s in &sessions {
        create_session(&targets[0], s, None, Duration::from_secs(10))?;
    }
    let total = a.before_secs + a.after_secs;
    let base = Instant::now() + Duration::from_millis(100);
    let end = base + Duration::from_secs(total);
    let prog = progress::start("failover", total as f64, Duration::from_millis(100));
    let hs: Vec<_> = (0..np)
        .map(|i| {
            let (iv, ph) = super::openloop::schedule(a.rate, np, i);
            let targets: Vec<Target> = (0..a.nodes).map(|k| cluster.target(k)).collect();
            let s = sessions[i].clone();
            let pid = format!("fo-{tag}-{i}");
            let a = a.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || producer(targets, i, s, pid, a, iv, ph, base, end))
                .expect("spawn")
        })
        .collect();
    // Kill the node leading the most groups.
    std::thread::sleep(
        (base + Duration::from_secs(a.before_secs)).saturating_duration_since(Instant::now()),
    );
    let leaders: Vec<f64> = targets
        .iter()
        .map(|t| metric(t, "starcite_raft_leaders"))
        .collect();
    let victim = leaders
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.partial_cmp(y.1).unwrap())
        .map(|(i, _)| i)
        .unwrap_or(0);
    let vpid = cluster.pid(victim);
    let kill_at = Instant::now();
    cluster.kill9(victim);
    let kill_ns = (kill_at - base).as_nanos() as u64;
    eprintln!(
        "\n[failover] killed {} (pid {:?}, leading {} of {:?} groups) at {:.2} s",
        cluster.nodes[victim].name,
        vpid,
        leaders[victim],
        leaders,
        kill_ns as f64 / 1e9
    );
    let mut all = Vec::new();
    let mut samples = Vec::new();
    let mut stalls = Vec::new();
    for h in hs {
        let (recs, s) = h.join().map_err(|_| "producer panicked")?;
        for x in s {
            if samples.len() < 6 && !samples.contains(&x) {
                samples.push(x);
            }
        }
        // Longest gap between successive successful acks from kill-1s on.
        let from = kill_ns.saturating_sub(1_000_000_000);
        let mut dones: Vec<u64> = recs
            .iter()
            .filter(|r| r.2 && r.1 >= from)
            .map(|r| r.1)
            .collect();
        dones.sort_unstable();
        let mut prev = from.max(
            recs.iter()
                .filter(|r| r.2 && r.1 < from)
                .map(|r| r.1)
                .max()
                .unwrap_or(from),
        );
        let mut gap = 0u64;
        for d in dones {
            gap = gap.max(d.saturating_sub(prev));
            prev = d;
        }
        let iv = (np as f64 / a.rate * 1e9) as u64;
        stalls.push(gap.saturating_sub(iv) as f64 / 1e9);
        all.extend(recs);
    }
    let series = prog.finish();
    drop(cluster);
    stalls.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let max_stall = stalls.last().copied().unwrap_or(0.0);
    let med_stall = stalls[stalls.len() / 2];
    let affected = stalls.iter().filter(|&&s| s > 0.1).count();

    let warm = 1_000_000_000u64;
    let (mut hb, mut ha, mut hf) = (new_hist(), new_hist(), new_hist());
    let mut never = 0;
    let mut secs_p99: std::collections::BTreeMap<u64, Histogram<u64>> = Default::default();
    for &(i, d, ok) in &all {
        if !ok || d == 0 {
            never += 1;
            continue;
        }
        let us = ((d.saturating_sub(i)) / 1000).clamp(1, 60_000_000);
        if i < warm {
            continue;
        }
        if i < kill_ns.saturating_sub(1_000_000_000) {
            let _ = hb.record(us);
        } else if i < kill_ns + 5_000_000_000 {
            let _ = ha.record(us);
        } else {
            let _ = hf.record(us);
        }
        let _ = secs_p99
            .entry(i / 250_000_000)
            .or_insert_with(new_hist)
            .record(us);
    }
    let kill_s = kill_ns as f64 / 1e9;
    let p99_series: Vec<(f64, f64)> = secs_p99
        .iter()
        .map(|(k, h)| (*k as f64 * 0.25 - kill_s, ms(h.value_at_quantile(0.99))))
        .collect();
    let thr_series: Vec<(f64, f64)> = series.iter().map(|&(t, v)| (t - 0.1 - kill_s, v)).collect();
    let table = format!(
        "killed {} (led {} groups) at t={:.2} s; unavailability window (longest ack gap of a producer): max {:.3} s, median {:.3} s; {} of {} producers stalled > 100 ms\n{:>8} {:>9} {:>9} {:>9} {:>9}\n{:>8} {:>9} {:>9} {:>9} {:>9}\n{:>8} {:>9} {:>9} {:>9} {:>9}\n{:>8} {:>9} {:>9} {:>9} {:>9}",
        victim + 1, leaders[victim], kill_s, max_stall, med_stall, affected, np,
        "window", "appends", "p50 ms", "p99 ms", "max ms",
        "before", hb.len(), fmtv(p(&hb, 0.5)), fmtv(p(&hb, 0.99)), fmtv(p(&hb, 1.0)),
        "around", ha.len(), fmtv(p(&ha, 0.5)), fmtv(p(&ha, 0.99)), fmtv(p(&ha, 1.0)),
        "after", hf.len(), fmtv(p(&hf, 0.5)), fmtv(p(&hf, 0.99)), fmtv(p(&hf, 1.0)),
    );
    let win = |h: &Histogram<u64>| json!({"appends": h.len(), "p50_ms": p(h, 0.5), "p99_ms": p(h, 0.99), "max_ms": p(h, 1.0)});
    let doc = json!({
        "benchmark": "failover",
        "nodes": a.nodes,
        "producers": np,
        "rate_per_sec": a.rate,
        "payload_bytes": a.payload_bytes,
        "killed_node": format!("n{}", victim + 1),
        "leaders_before_kill": leaders,
        "kill_at_secs": kill_s,
        "unavailability_secs_max": max_stall,
        "unavailability_secs_median": med_stall,
        "producers_stalled_over_100ms": affected,
        "stall_secs_per_producer": stalls,
        "never_acked": never,
        "before": win(&hb),
        "around": win(&ha),
        "after": win(&hf),
        "error_samples": samples,
        "target_resume_secs": 3.0,
        "throughput_over_time": [{"run": "acks/s", "per_sec": thr_series}],
        "p99_over_time": [{"run": "p99 (250 ms buckets)", "per_sec": p99_series}],
    });
    if let Some(path) = plot::path_for(a.json.as_deref(), "throughput") {
        let mut c = plot::time_chart(
            "failover: acknowledged appends/s (t = 0: kill -9)",
            "appends/s",
            plot::series_from_json(&doc["throughput_over_time"]),
        );
        c.marks = vec![(0.0, "kill -9".into())];
        c.write(&path);
    }
    if let Some(path) = plot::path_for(a.json.as_deref(), "p99") {
        let mut c = plot::time_chart(
            "failover: p99 by intended send time (t = 0: kill -9)",
            "p99 latency (ms)",
            plot::series_from_json(&doc["p99_over_time"]),
        );
        c.marks = vec![(0.0, "kill -9".into())];
        c.write(&path);
    }
    if let Some(path) = plot::path_for(a.json.as_deref(), "latency") {
        plot::percentile_chart(
            "failover: latency before / around / after the kill",
            vec![
                plot::Series {
                    label: "before".into(),
                    points: plot::percentile_points(&hb),
                },
                plot::Series {
                    label: "around (-1..+5 s)".into(),
                    points: plot::percentile_points(&ha),
                },
                plot::Series {
                    label: "after".into(),
                    points: plot::percentile_points(&hf),
                },
            ],
        )
        .write(&path);
    }
    Ok((table, doc))
}

fn fmtv(v: Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}
