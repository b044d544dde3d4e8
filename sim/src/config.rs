//! Per-seed randomised configuration of a simulated run.

use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub cores: u32,
    pub groups: u32,
    pub rf: usize,
    pub sessions: usize,
    pub producers_per_session: usize,
    pub appends_per_producer: u64,
    /// Appends a producer keeps in flight (pipelining).
    pub pipeline_depth: usize,
    /// Probability that a message is dropped / duplicated.
    pub drop: f64,
    pub duplicate: f64,
    /// Network delay bounds (µs); reordering follows from the spread.
    pub delay_us: (u64, u64),
    /// fsync latency bounds (µs), and the chance of a 20–80 ms spike.
    pub fsync_us: (u64, u64),
    pub fsync_spike: f64,
    /// Faults happen during `0..fault_window_us`; then everything heals.
    pub fault_window_us: u64,
    pub crash_interval_us: u64,
    pub partition_interval_us: u64,
    /// Chance that a log append, sync or segment creation fails (EIO/ENOSPC).
    pub disk_error: f64,
    /// Client gives up on an attempt after this long and retries.
    pub client_timeout_us: u64,
    pub use_expected_seq: f64,
    pub checkpoint_bytes: u64,
    pub tails: usize,
    /// After healing, pending work must finish within this much virtual time.
    pub liveness_bound_us: u64,
    /// Probability that a crashed node comes back with an empty disk (a
    /// replaced drive): it restarts as a new incarnation and is approved for
    /// replacement (a Raft membership change). Half the seeds; all of them
    /// with `SIM_DISK_WIPE` set.
    pub disk_wipe: f64,
    /// Probability with which each reached fault point in the engine fires.
    pub fault_point_probability: f64,
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0xC0FF_EE00);
        let nodes = if r.chance(0.5) { 3 } else { 5 };
        SimConfig {
            seed,
            nodes,
            cores: r.range(1, 2) as u32,
            groups: r.range(1, 6) as u32,
            rf: 3,
            sessions: r.range(1, 5) as usize,
            producers_per_session: r.range(1, 3) as usize,
            appends_per_producer: r.range(5, 40),
            pipeline_depth: [1, 1, 2, 4][r.range(0, 3) as usize],
            drop: [0.0, 0.01, 0.05][r.range(0, 2) as usize],
            duplicate: [0.0, 0.01, 0.03][r.range(0, 2) as usize],
            delay_us: (50, r.range(200, 20_000)),
            fsync_us: (100, r.range(300, 3_000)),
            fsync_spike: [0.0, 0.01][r.range(0, 1) as usize],
            fault_window_us: r.range(2, 12) * 1_000_000,
            crash_interval_us: r.range(1, 6) * 1_000_000,
            partition_interval_us: r.range(1, 6) * 1_000_000,
            disk_error: [0.0, 0.002][r.range(0, 1) as usize],
            client_timeout_us: r.range(500, 3_000) * 1_000,
            use_expected_seq: [0.0, 0.2][r.range(0, 1) as usize],
            checkpoint_bytes: [4 * 1024, 64 * 1024, u64::MAX][r.range(0, 2) as usize],
            tails: r.range(0, 3) as usize,
            liveness_bound_us: 60_000_000,
            fault_point_probability: [0.0, 0.01, 0.05][r.range(0, 2) as usize],
            disk_wipe: if std::env::var("SIM_DISK_WIPE").is_ok() {
                0.5
            } else {
                [0.0, 0.5][r.range(0, 1) as usize]
            },
        }
    }
}
