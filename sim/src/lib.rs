//! Deterministic simulation of a whole Starcite cluster.
//!
//! The production engine loop (`starcite::node::engine_loop::EngineLoop`, with
//! its `Shard` and segment log) runs unchanged; only the clock, network, disk
//! and randomness are simulated. See docs/testing.md.

pub mod checker;
pub mod config;
pub mod disk;
pub mod exec;
pub mod net;
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
    pub fault_points: starcite_shards::fault::FaultReport,
}

/// Runs one seed to completion.
///
/// A panic anywhere in the engine is itself a violation: it is caught and
/// reported with the seed rather than ending the batch.
pub fn run_seed(seed: u64) -> SeedReport {
    run_config(SimConfig::from_seed(seed))
}

/// Runs one seed with a given (possibly adjusted) configuration.
pub fn run_config(config: SimConfig) -> SeedReport {
    let seed = config.seed;
    starcite_shards::fault::install(seed ^ 0xFA17, config.fault_point_probability);
    let run = std::panic::catch_unwind(|| {
        let mut world = World::new(config.clone());
        world.run();
        (world.stats.clone(), world.checker.violations.clone())
    });
    let fault_points = starcite_shards::fault::uninstall();
    match run {
        Ok((stats, violations)) => SeedReport {
            seed,
            config,
            stats,
            violations,
            fault_points,
        },
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned());
            let violations = vec![format!("engine panicked: {msg}")];
            SeedReport {
                seed,
                config,
                stats: Stats::default(),
                violations,
                fault_points,
            }
        }
    }
}
