//! Prometheus metrics: fixed-bucket histograms owned by each core's engine
//! loop (no sharing on the hot path), and lock-free request counters shared by
//! the gateways. `/metrics` merges them on demand.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A cumulative histogram with fixed upper bounds (Prometheus `le`).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Latency buckets in seconds: 50 µs … 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Batch-size buckets (commands per log write).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Renders `<name>_bucket{le=..}`, `_sum`, `_count` (with HELP/TYPE).
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Routes counted by `starcite_http_requests_total`.
pub const ROUTES: &[&str] = &[
    "create", "list", "append", "tail", "socket", "health", "metrics", "other",
];
/// Statuses counted individually; anything else is `other`.
pub const STATUSES: &[u16] = &[
    101, 200, 201, 400, 401, 403, 404, 406, 409, 413, 429, 500, 503,
];

/// Requests by route and status: relaxed atomic increments, no locks.
pub struct RequestCounters {
    counts: Vec<AtomicU64>,
}

impl Default for RequestCounters {
    fn default() -> Self {
        Self {
            counts: (0..ROUTES.len() * (STATUSES.len() + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl RequestCounters {
    pub fn count(&self, route: &str, status: u16) {
        let r = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        let s = STATUSES
            .iter()
            .position(|x| *x == status)
            .unwrap_or(STATUSES.len());
        self.counts[r * (STATUSES.len() + 1) + s].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let name = "starcite_http_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP requests by route and status.\n# TYPE {name} counter"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for s in 0..=STATUSES.len() {
                let n = self.counts[r * (STATUSES.len() + 1) + s].load(Ordering::Relaxed);
                if n > 0 {
                    let status = STATUSES
                        .get(s)
                        .map_or("other".to_owned(), |c| c.to_string());
                    let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_merges() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut other = Histogram::new(&[1.0, 2.0]);
        other.observe(1.0);
        h.merge(&other);
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
    }

    #[test]
    fn requests_counted_by_route_and_status() {
        let c = RequestCounters::default();
        c.count("append", 201);
        c.count("append", 201);
        c.count("weird", 999);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("route=\"append\",status=\"201\"} 2"), "{out}");
        assert!(out.contains("route=\"other\",status=\"other\"} 1"), "{out}");
    }
}
