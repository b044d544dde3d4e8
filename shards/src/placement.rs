//! Placement: session → group → core.
//!
//! The hash is XXH3-64 with seed 0 over the raw bytes of the session id
//! (decision 13): stable across platforms, versions and nodes, so every node maps
//! a session to the same group with no coordination.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the placement hash. Changing it remaps every session.
pub const PLACEMENT_SEED: u64 = 0;

/// The group that owns a session.
pub fn group_of(session_id: &str, num_groups: u32) -> u32 {
    debug_assert!(num_groups > 0);
    (xxh3_64_with_seed(session_id.as_bytes(), PLACEMENT_SEED) % u64::from(num_groups)) as u32
}

/// The core of a node that owns a group's local replica.
pub fn core_of(group: u32, cores: u32) -> u32 {
    debug_assert!(cores > 0);
    group % cores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spread() {
        // Pinned values: a change here remaps every existing session.
        assert_eq!(group_of("ses_abc", 256), group_of("ses_abc", 256));
        let pinned = xxh3_64_with_seed(b"hello", 0);
        assert_eq!(pinned, 0x9555e8555c62dcfd);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[group_of(&format!("session-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn cores_own_groups_round_robin() {
        assert_eq!(core_of(0, 2), 0);
        assert_eq!(core_of(5, 2), 1);
        assert_eq!(core_of(7, 1), 0);
    }
}
