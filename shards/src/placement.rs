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

/// The replicas of a group: rendezvous (highest-random-weight) hashing of
/// `(group, node)` over the write nodes; the `rf` highest scores win, ties broken
/// by node name. Every node computes the same answer with no coordination.
/// Score = XXH3-64 (seed 0) of the group id as 4 little-endian bytes followed by
/// the node name's bytes.
pub fn replicas<'a>(group: u32, write_nodes: &'a [String], rf: usize) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = write_nodes
        .iter()
        .map(|node| {
            let mut key = group.to_le_bytes().to_vec();
            key.extend_from_slice(node.as_bytes());
            (xxh3_64_with_seed(&key, PLACEMENT_SEED), node.as_str())
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().take(rf).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_balanced() {
        let nodes: Vec<String> = (0..5).map(|i| format!("n{i}@127.0.0.1")).collect();
        let mut load = [0usize; 5];
        for g in 0..256 {
            let r = replicas(g, &nodes, 3);
            assert_eq!(r.len(), 3);
            assert_eq!(r, replicas(g, &nodes, 3));
            let mut dedup = r.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), 3);
            for n in r {
                load[nodes.iter().position(|x| x == n).unwrap()] += 1;
            }
        }
        // 768 replica slots over 5 nodes: each near 154.
        assert!(load.iter().all(|&l| (120..190).contains(&l)), "{load:?}");
        // Removing a node only moves the groups it held.
        let four = &nodes[..4];
        for g in 0..256 {
            let before = replicas(g, &nodes, 3);
            if !before.contains(&nodes[4].as_str()) {
                assert_eq!(replicas(g, four, 3), before);
            }
        }
    }

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
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn cores_own_groups_round_robin() {
        assert_eq!(core_of(0, 2), 0);
        assert_eq!(core_of(5, 2), 1);
        assert_eq!(core_of(7, 1), 0);
    }
}
