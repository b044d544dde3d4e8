//! Where an append's time goes, summed over every append a node handled:
//! `parse` (gateway: body parsed and validated, proposal built), `forward` (the
//! round trip to the leader's node when this node does not lead), `handoff`
//! (queued for the owner core until its engine loop takes it), `commit`
//! (proposed → durable on a quorum → applied) and `owner` (the owner core's
//! whole share: handoff + commit + the reply's way back). Process-wide relaxed
//! counters: one `fetch_add` per stage per append. `starcite-bench append`
//! reads them from `/metrics` before and after a window and divides by the
//! acknowledged appends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Parse = 0,
    Forward = 1,
    Handoff = 2,
    Commit = 3,
    Owner = 4,
}

pub const STAGES: [(Stage, &str); 5] = [
    (Stage::Parse, "parse"),
    (Stage::Forward, "forward"),
    (Stage::Handoff, "handoff"),
    (Stage::Commit, "commit"),
    (Stage::Owner, "owner"),
];

static NANOS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static PEER_FRAMES: AtomicU64 = AtomicU64::new(0);

pub fn record(stage: Stage, d: Duration) {
    NANOS[stage as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

pub fn seconds(stage: Stage) -> f64 {
    NANOS[stage as usize].load(Ordering::Relaxed) as f64 / 1e9
}

/// Frames written to peers by every core's transport.
pub fn peer_frames_sent(n: u64) {
    PEER_FRAMES.fetch_add(n, Ordering::Relaxed);
}

pub fn peer_frames() -> u64 {
    PEER_FRAMES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_sums_accumulate() {
        let before = seconds(Stage::Forward);
        record(Stage::Forward, Duration::from_millis(3));
        record(Stage::Forward, Duration::from_millis(2));
        assert!(seconds(Stage::Forward) - before >= 0.005 - 1e-9);
    }
}
