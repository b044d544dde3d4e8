//! Archive counters shared by the archiver, the cold readers and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Events the backend newly stored.
    pub events_written: AtomicU64,
    /// Session records the backend created or replaced (a newer revision).
    pub sessions_written: AtomicU64,
    /// Events acknowledged through Raft (evicted from the hot tier).
    pub events_acked: AtomicU64,
    /// Failed backend writes (each is retried later).
    pub write_errors: AtomicU64,
    /// Failed `ack_archived` proposals (retried on the next tick).
    pub ack_errors: AtomicU64,
    /// Committed events this node leads that are not archived yet (last scan).
    pub lag_events: AtomicU64,
    /// Completed flush ticks.
    pub flushes: AtomicU64,
    /// Events served from the archive to tails, and failed cold reads.
    pub cold_events: AtomicU64,
    pub cold_errors: AtomicU64,
    /// Cold reads answered by the read cache without touching the backend.
    pub cache_hits: AtomicU64,
}

impl ArchiveStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl ArchiveStats {
    /// Prometheus text for these counters (`adapter` label), plus the read cache size.
    pub fn render(&self, adapter: &str, cache_bytes: usize, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &str, u64); 10] = [
            (
                "starcite_archive_events_written_total",
                "Events newly stored by the archive backend.",
                "counter",
                Self::get(&self.events_written),
            ),
            (
                "starcite_archive_sessions_written_total",
                "Session records created or replaced by a newer revision in the archive backend.",
                "counter",
                Self::get(&self.sessions_written),
            ),
            (
                "starcite_archive_events_acked_total",
                "Events acknowledged as archived through Raft (evicted from the hot tier).",
                "counter",
                Self::get(&self.events_acked),
            ),
            (
                "starcite_archive_write_errors_total",
                "Failed archive writes (retried with backoff).",
                "counter",
                Self::get(&self.write_errors),
            ),
            (
                "starcite_archive_ack_errors_total",
                "ack_archived proposals that did not commit (retried next tick).",
                "counter",
                Self::get(&self.ack_errors),
            ),
            (
                "starcite_archive_lag_events",
                "Committed events led by this node not yet archived (at the last flush).",
                "gauge",
                Self::get(&self.lag_events),
            ),
            (
                "starcite_archive_flushes_total",
                "Completed archiver ticks.",
                "counter",
                Self::get(&self.flushes),
            ),
            (
                "starcite_archive_cold_read_events_total",
                "Events served to tails from the archive.",
                "counter",
                Self::get(&self.cold_events),
            ),
            (
                "starcite_archive_cold_read_errors_total",
                "Cold reads that failed (unavailable or gap).",
                "counter",
                Self::get(&self.cold_errors),
            ),
            (
                "starcite_archive_read_cache_hits_total",
                "Cold reads answered from the read cache.",
                "counter",
                Self::get(&self.cache_hits),
            ),
        ];
        for (name, help, kind, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{adapter=\"{adapter}\"}} {value}");
        }
        let _ = writeln!(out, "# HELP starcite_archive_read_cache_bytes Bytes held by the archive read cache.\n# TYPE starcite_archive_read_cache_bytes gauge\nstarcite_archive_read_cache_bytes {cache_bytes}");
    }
}
