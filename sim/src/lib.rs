//! Deterministic simulation of a whole Starcite cluster.
//!
//! The production engine (`starcite_shards::Shard`) runs unchanged; only the
//! clock, network, disk and randomness are simulated. See docs/testing.md.

pub mod checker;
pub mod config;
pub mod disk;
pub mod rng;
pub mod workload;
pub mod world;

use config::SimConfig;
use world::{Stats, World};

/// The outcome of one seed.
pub struct SeedReport {
    pub seed: u64,
    pub config: SimConfig,
    pub stats: Stats,
    pub violations: Vec<String>,
}

/// Runs one seed to completion.
pub fn run_seed(seed: u64) -> SeedReport {
    let config = SimConfig::from_seed(seed);
    let mut world = World::new(config.clone());
    world.run();
    SeedReport { seed, config, stats: world.stats.clone(), violations: world.checker.violations.clone() }
}
