//! `starcite-sim`: run seeds of the deterministic cluster simulation.
//!
//! ```text
//! starcite-sim --seeds 500            # seeds 0..500
//! starcite-sim --from 1000 --seeds 50 # seeds 1000..1050
//! starcite-sim --replay 4242 -v       # one seed, with its configuration
//! ```

use std::time::Instant;

use starcite_sim::run_seed;

struct Args {
    from: u64,
    seeds: u64,
    replay: Option<u64>,
    verbose: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        from: 0,
        seeds: 100,
        replay: None,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--from" => args.from = num("--from")?,
            "--seeds" => args.seeds = num("--seeds")?,
            "--replay" => args.replay = Some(num("--replay")?),
            "-v" | "--verbose" => args.verbose = true,
            "-h" | "--help" => {
                println!("usage: starcite-sim [--from SEED] [--seeds N] [--replay SEED] [-v]\n\nRuns seeds of the deterministic cluster simulation and prints seeds/s, faults\ninjected and invariant violations. Exit status 1 if any seed violates an invariant.\nSIM_DISK_WIPE=1 in the environment forces disk wipes (replacements) on in every seed.");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("starcite-sim: {e}");
            std::process::exit(2);
        }
    };
    let (from, count) = match args.replay {
        Some(seed) => (seed, 1),
        None => (args.from, args.seeds),
    };
    // Panics are reported per seed; keep their default backtraces off the output.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut totals = starcite_sim::world::Stats::default();
    let mut points = starcite_shards::fault::FaultReport::default();
    for seed in from..from + count {
        let report = run_seed(seed);
        if args.verbose {
            println!("seed {seed}: {:?}\n  {:?}", report.config, report.stats);
        }
        add(&mut totals, &report.stats);
        points.merge(&report.fault_points);
        if !report.violations.is_empty() {
            println!("seed {seed} FAILED:");
            for v in report.violations.iter().take(10) {
                println!("  {v}");
            }
            let env = if std::env::var("SIM_DISK_WIPE").is_ok() {
                "SIM_DISK_WIPE=1 "
            } else {
                ""
            };
            println!("  replay: {env}cargo run --release -p starcite-sim -- --replay {seed} -v");
            failed.push(seed);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} seeds in {secs:.1} s ({:.1} seeds/s); acknowledged appends {}; faults: crashes {}, torn writes {}, lost unsynced writes {}, partitions {}, dropped msgs {}, duplicated msgs {}, fsync spikes {}, disk errors {} (node stops {}), disk wipes (replacements) {}, client timeouts {}; segments deleted after checkpoints {}, dedupes {}, expected_seq conflicts {}, leadership moves to the writer {}",
        count as f64 / secs,
        totals.acked, totals.crashes, totals.torn_writes, totals.lost_writes, totals.partitions,
        totals.dropped, totals.duplicated, totals.fsync_spikes, totals.disk_errors, totals.core_stops, totals.disk_wipes, totals.client_timeouts,
        totals.checkpoints, totals.dedupes, totals.expected_conflicts, totals.follow_moves
    );
    println!("fault points (reached / fired):");
    for name in starcite_shards::fault::ALL_POINTS {
        let reached = points.reached.get(name).copied().unwrap_or(0);
        let fired = points.fired.get(name).copied().unwrap_or(0);
        println!(
            "  {name:32} {reached:>9} / {fired}{}",
            if fired == 0 { "   <- never fired" } else { "" }
        );
    }
    println!(
        "invariant violations: {} seed(s) {:?}",
        failed.len(),
        failed
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

fn add(t: &mut starcite_sim::world::Stats, s: &starcite_sim::world::Stats) {
    t.acked += s.acked;
    t.crashes += s.crashes;
    t.torn_writes += s.torn_writes;
    t.lost_writes += s.lost_writes;
    t.partitions += s.partitions;
    t.dropped += s.dropped;
    t.duplicated += s.duplicated;
    t.fsync_spikes += s.fsync_spikes;
    t.disk_errors += s.disk_errors;
    t.core_stops += s.core_stops;
    t.disk_wipes += s.disk_wipes;
    t.client_timeouts += s.client_timeouts;
    t.checkpoints += s.checkpoints;
    t.follow_moves += s.follow_moves;
    t.dedupes += s.dedupes;
    t.expected_conflicts += s.expected_conflicts;
}
