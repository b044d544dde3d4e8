//! `summarize --dir bench/results`: medians over the rounds of
//! `bench/compare` (`runs/<system>-<round>.json`) → `compare.json`,
//! `compare.md` and comparison plots, plus a table of the other scenarios'
//! key figures (`summary.md`) from the JSON documents in the directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use super::plot::{Chart, Series};

#[derive(Args, Clone)]
pub struct SummarizeArgs {
    #[arg(long, default_value = "bench/results")]
    dir: PathBuf,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Some(if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    })
}

fn read(p: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

const NAMES: [(&str, &str); 5] = [
    ("starcite-http", "Starcite 3 nodes, HTTP"),
    (
        "starcite-single",
        "Starcite 1 node (starcite dev defaults), HTTP",
    ),
    (
        "starcite-wire",
        "Starcite 3 nodes, binary protocol (pipelined)",
    ),
    ("nats", "NATS JetStream 3 nodes, R3 file stream"),
    ("redis", "Redis Streams, appendfsync always"),
];

pub fn cmd_summarize(a: SummarizeArgs) -> i32 {
    // system → producers → [(throughput, p50, p90, p99, p99.9, node CPU µs
    // per append)]
    let mut by: BTreeMap<String, BTreeMap<u64, Vec<[f64; 7]>>> = BTreeMap::new();
    let mut rounds: BTreeMap<String, usize> = BTreeMap::new();
    let runs = a.dir.join("runs");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&runs)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Some((sys, _round)) = stem.rsplit_once('-') else {
            continue;
        };
        let Some(doc) = read(&p) else { continue };
        *rounds.entry(sys.to_owned()).or_default() += 1;
        for r in doc["results"].as_array().cloned().unwrap_or_default() {
            let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
            let l = &r["latency_ms"];
            by.entry(sys.to_owned())
                .or_default()
                .entry(r["producers"].as_u64().unwrap_or(0))
                .or_default()
                .push([
                    f(&r["throughput_per_sec"]),
                    f(&l["p50"]),
                    f(&l["p90"]),
                    f(&l["p99"]),
                    f(&l["p99_9"]),
                    f(&r["per_append"]["node_cpu_us"]),
                    f(&r["per_append"]["syscalls"]),
                ]);
        }
    }
    let mut md = String::from("| system | producers | appends/s | p50 ms | p99 ms | node CPU µs/append | syscalls/append | rounds |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut out = serde_json::Map::new();
    let mut thr_series = Vec::new();
    let mut p99_series = Vec::new();
    let mut curves: BTreeMap<u64, Vec<Series>> = BTreeMap::new();
    let xs = |n: u64| (n as f64).log2();
    for (key, label) in NAMES {
        let Some(m) = by.get(key) else { continue };
        let mut rows = Vec::new();
        let (mut ts, mut ps) = (Vec::new(), Vec::new());
        for (&n, v) in m {
            let col = |i: usize| median(v.iter().map(|x| x[i]).collect());
            let (t, p50, p90, p99, p999) = (col(0), col(1), col(2), col(3), col(4));
            let (cpu, syscalls) = (col(5), col(6));
            md.push_str(&format!(
                "| {label} | {n} | {} | {} | {} | {} | {} | {} |\n",
                t.map_or("-".into(), |x| format!("{:.0}", x)),
                p50.map_or("-".into(), |x| format!("{x:.2}")),
                p99.map_or("-".into(), |x| format!("{x:.2}")),
                cpu.map_or("-".into(), |x| format!("{x:.0}")),
                syscalls.map_or("-".into(), |x| format!("{x:.1}")),
                v.len()
            ));
            rows.push(json!({"producers": n, "throughput_per_sec": t, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "p99_9_ms": p999, "node_cpu_us_per_append": cpu, "syscalls_per_append": syscalls, "rounds": v.len()}));
            if let Some(t) = t {
                ts.push((xs(n), t));
            }
            if let Some(p) = p99 {
                ps.push((xs(n), p));
            }
            let pts: Vec<(f64, f64)> = [(0.30103, p50), (1.0, p90), (2.0, p99), (3.0, p999)]
                .iter()
                .filter_map(|(x, y)| Some((*x, (*y)?)))
                .collect();
            curves.entry(n).or_default().push(Series {
                label: label.to_owned(),
                points: pts,
            });
        }
        thr_series.push(Series {
            label: label.to_owned(),
            points: ts,
        });
        p99_series.push(Series {
            label: label.to_owned(),
            points: ps,
        });
        out.insert(
            key.to_owned(),
            json!({"label": label, "rounds": rounds.get(key), "results": rows}),
        );
    }
    let ticks: Vec<(f64, String)> = [1u64, 2, 4, 8, 16, 32, 64, 128]
        .iter()
        .map(|&n| (xs(n), n.to_string()))
        .collect();
    let chart = |title: &'static str, ylabel: &'static str, series: Vec<Series>| Chart {
        title,
        xlabel: "concurrent producers (log scale)",
        ylabel,
        series,
        x_ticks: Some(ticks.clone()),
        x_range: None,
        y_max: None,
        marks: Vec::new(),
    };
    if !thr_series.is_empty() {
        chart(
            "appends/s by concurrency (median of rounds)",
            "appends/s",
            thr_series,
        )
        .write(&a.dir.join("compare-throughput.svg"));
        chart(
            "append p99 by concurrency (median of rounds)",
            "p99 latency (ms)",
            p99_series,
        )
        .write(&a.dir.join("compare-p99.svg"));
        for (n, s) in curves {
            let title = format!("append latency percentiles, {n} producer(s) (median of rounds)");
            let mut c = super::plot::percentile_chart(&title, s);
            c.x_range = Some((0.0, 3.0));
            std::fs::write(a.dir.join(format!("compare-latency-{n}.svg")), c.svg()).ok();
        }
        let _ = std::fs::write(
            a.dir.join("compare.json"),
            serde_json::to_string_pretty(&Value::Object(out)).unwrap() + "\n",
        );
        let _ = std::fs::write(a.dir.join("compare.md"), &md);
        println!("{md}");
    }
    // Other scenarios.
    let mut s = String::new();
    let get = |f: &str| read(&a.dir.join(f));
    let num = |v: &Value| {
        v.as_f64().map_or("-".to_string(), |x| {
            if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        })
    };
    if let Some(d) = get("tail.json") {
        s.push_str(&format!("| tail: {} subscribers, {} events/s | ack→receipt p50 {} ms, p99 {} ms, p99.9 {} ms; send→receipt p99 {} ms; {} deliveries/s, {} missing |\n",
            d["subscribers"], d["target_rate_per_sec"], num(&d["ack_to_receipt_ms"]["p50"]), num(&d["ack_to_receipt_ms"]["p99"]), num(&d["ack_to_receipt_ms"]["p99_9"]), num(&d["send_to_receipt_ms"]["p99"]), num(&d["deliveries_per_sec"]), d["missing_deliveries"]));
    }
    if let Some(d) = get("tail-idle.json") {
        s.push_str(&format!("| idle tails: {} sockets | node RSS {} MB (before: {} MB), {} bytes/socket, still open {} |\n",
            d["open_sockets"], num(&d["rss_after_mb"]), num(&d["rss_before_mb"]), num(&d["bytes_per_socket"]), d["sampled_still_open"].as_str().unwrap_or("?")));
    }
    if let Some(d) = get("replay.json") {
        s.push_str(&format!(
            "| hot replay: {} events | {} events/s (median of {} passes) |\n",
            d["events"],
            num(&d["median_events_per_sec"]),
            d["passes"].as_array().map_or(0, Vec::len)
        ));
    }
    if let Some(d) = get("archive.json") {
        s.push_str(&format!("| archive ({}): {} events | archive {} events/s; hot replay {} events/s; cold replay {} events/s |\n", d["adapter"].as_str().unwrap_or("?"), d["events"], num(&d["archive"]["events_per_sec"]), num(&d["hot_replay"]["events_per_sec"]), num(&d["cold_replay"]["events_per_sec"])));
    }
    if let Some(d) = get("failover.json") {
        s.push_str(&format!("| failover: kill -9 of {} under {} appends/s | unavailability max {} s (median producer {} s); p99 before {} ms, around {} ms, after {} ms |\n",
            d["killed_node"].as_str().unwrap_or("?"), d["rate_per_sec"], num(&d["unavailability_secs_max"]), num(&d["unavailability_secs_median"]), num(&d["before"]["p99_ms"]), num(&d["around"]["p99_ms"]), num(&d["after"]["p99_ms"])));
    }
    if let Some(d) = get("openloop.json") {
        for r in d["results"].as_array().cloned().unwrap_or_default() {
            s.push_str(&format!("| open loop {} appends/s, {} producers | achieved {}/s, p50 {} ms, p99 {} ms, p99.9 {} ms, errors {} |\n",
                d["open_loop_rate_per_sec"], r["producers"], num(&r["throughput_per_sec"]), num(&r["latency_ms"]["p50"]), num(&r["latency_ms"]["p99"]), num(&r["latency_ms"]["p99_9"]), r["errors"]));
        }
    }
    if let Some(d) = get("idle-cpu.json") {
        s.push_str(&format!(
            "| idle node of a 3-node cluster | {}% of one core |\n",
            num(&d["percent_of_one_core"])
        ));
    }
    if !s.is_empty() {
        let s = format!("| scenario | result |\n| --- | --- |\n{s}");
        let _ = std::fs::write(a.dir.join("summary.md"), &s);
        println!("{s}");
    }
    0
}
