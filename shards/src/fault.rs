//! Fault points: rare branches that a simulator can force to run, and a record
//! of which were reached (FoundationDB's BUGGIFY, in small).
//!
//! In production no plan is installed and `point` is one thread-local read
//! returning false. The simulator installs a seeded plan per run; each reached
//! point then fires with the plan's probability, deterministically.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// Every fault point in the engine, for the reach report.
pub const ALL_POINTS: &[&str] = &[
    "shard.propose.reject",
    "shard.prepare.defer_group",
    "shard.checkpoint.force",
    "shard.read.short",
    "group.snapshot.resend_early",
];

struct Plan {
    state: u64,
    probability: f64,
    report: FaultReport,
}

/// How often each point was reached, and how often it fired.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    pub reached: BTreeMap<&'static str, u64>,
    pub fired: BTreeMap<&'static str, u64>,
}

impl FaultReport {
    pub fn merge(&mut self, other: &FaultReport) {
        for (k, v) in &other.reached {
            *self.reached.entry(k).or_default() += v;
        }
        for (k, v) in &other.fired {
            *self.fired.entry(k).or_default() += v;
        }
    }
}

thread_local! {
    static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
}

/// Installs a plan on this thread: every reached point fires with `probability`.
pub fn install(seed: u64, probability: f64) {
    PLAN.with(|p| {
        *p.borrow_mut() = Some(Plan {
            state: seed,
            probability,
            report: FaultReport::default(),
        })
    });
}

/// Removes this thread's plan and returns what it recorded.
pub fn uninstall() -> FaultReport {
    PLAN.with(|p| {
        p.borrow_mut()
            .take()
            .map(|plan| plan.report)
            .unwrap_or_default()
    })
}

/// Whether the fault at `name` should be injected now.
#[inline]
pub fn point(name: &'static str) -> bool {
    PLAN.with(|p| {
        let mut guard = p.borrow_mut();
        let Some(plan) = guard.as_mut() else {
            return false;
        };
        debug_assert!(
            ALL_POINTS.contains(&name),
            "unregistered fault point {name}"
        );
        *plan.report.reached.entry(name).or_default() += 1;
        plan.state = plan.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = plan.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let fire = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 <= plan.probability;
        if fire {
            *plan.report.fired.entry(name).or_default() += 1;
        }
        fire
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_plan_never_fires_and_plans_are_reproducible() {
        assert!(!point("shard.read.short"));
        install(7, 0.5);
        let a: Vec<bool> = (0..64).map(|_| point("shard.read.short")).collect();
        let report = uninstall();
        install(7, 0.5);
        let b: Vec<bool> = (0..64).map(|_| point("shard.read.short")).collect();
        uninstall();
        assert_eq!(a, b);
        assert!(a.iter().any(|x| *x) && a.iter().any(|x| !*x));
        assert_eq!(report.reached["shard.read.short"], 64);
        assert!(!point("shard.read.short"), "uninstalled");
    }
}
