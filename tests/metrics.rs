//! `/metrics` (decision 17, docs/metrics.md): every documented family appears,
//! and the ones that measure work move under load.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// Metric families documented in docs/metrics.md.
fn documented() -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `starcite_"))
        .map(|l| format!("starcite_{}", l.split(['`', '{']).next().unwrap()))
        .collect()
}

/// Sums every sample of each family (`_bucket` lines excluded).
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let r = get(port, "/metrics");
    assert_eq!(r.status, 200);
    let mut m = BTreeMap::new();
    for line in r
        .text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        let name = name_labels.split('{').next().unwrap();
        if name.ends_with("_bucket") {
            continue;
        }
        *m.entry(name.to_owned()).or_default() += value.parse::<f64>().unwrap();
    }
    m
}

fn family(m: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    m.get(name)
        .or_else(|| m.get(&format!("{name}_count")))
        .copied()
}

#[test]
fn every_documented_metric_appears_and_moves_under_load() {
    let s = Server::start_default();
    let p = s.port();
    let names = documented();
    assert!(names.len() >= 15, "{names:?}");
    create_session(p, "m");
    let before = scrape(p);
    for n in 1..=50 {
        append_ok(p, "m", &event("w", n));
    }
    let mut tail = Tail::connect(p, "m", "cursor=0");
    assert_eq!(tail.collect_events(50, Duration::from_secs(10)).len(), 50);
    let after = scrape(p);
    for name in &names {
        assert!(
            family(&after, name).is_some(),
            "{name} missing from /metrics"
        );
    }
    let moved = |name: &str, by: f64| {
        let b = family(&before, name).unwrap_or(0.0);
        let a = family(&after, name).unwrap();
        assert!(a >= b + by, "{name}: {b} -> {a}, expected +{by}");
    };
    moved("starcite_commands_applied_total", 50.0);
    moved("starcite_commit_latency_seconds", 50.0);
    moved("starcite_log_fsync_seconds", 1.0);
    moved("starcite_log_batch_commands", 1.0);
    moved("starcite_log_writes_total", 1.0);
    moved("starcite_log_fsyncs_total", 1.0);
    moved("starcite_log_write_bytes_total", 1000.0);
    moved("starcite_http_requests_total", 50.0);
    moved("starcite_hot_tier_bytes", 1000.0);
    assert!(family(&after, "starcite_tail_subscribers").unwrap() >= 1.0);
    assert!(family(&after, "starcite_raft_leaders").unwrap() >= 1.0);
    assert!(family(&after, "starcite_raft_elections_won_total").unwrap() >= 1.0);
    tail.close();
}

/// The archive families move once the archiver runs and a tail reads below the
/// hot tier (docs/metrics.md, docs/archive.md).
#[test]
fn archive_metrics_move_when_events_are_archived_and_replayed() {
    let s = Server::start(ServerOpts::new().env("STARCITE_ARCHIVE_FLUSH_INTERVAL_MS", "100"));
    let p = s.port();
    create_session(p, "am");
    for n in 1..=50 {
        append_ok(p, "am", &event("w", n));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(p);
        let acked = family(&m, "starcite_archive_events_acked_total").unwrap_or(0.0);
        if acked >= 50.0 && family(&m, "starcite_hot_tier_bytes") == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "archiver did not run: {acked}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tail = Tail::connect(p, "am", "cursor=0");
    assert_eq!(tail.collect_events(50, Duration::from_secs(10)).len(), 50);
    let m = scrape(p);
    assert!(family(&m, "starcite_archive_events_written_total").unwrap() >= 50.0);
    assert!(family(&m, "starcite_archive_flushes_total").unwrap() >= 1.0);
    assert!(family(&m, "starcite_archive_cold_read_events_total").unwrap() >= 50.0);
    assert!(family(&m, "starcite_archive_read_cache_bytes").unwrap() > 0.0);
    assert_eq!(family(&m, "starcite_archive_write_errors_total"), Some(0.0));
    assert_eq!(family(&m, "starcite_archive_lag_events"), Some(0.0));
    tail.close();
}
