//! The static cluster topology every node computes identically: write nodes,
//! Raft ids, and the replicas of every group (rendezvous placement).

use starcite_shards::membership;
use starcite_shards::placement::{core_of, group_of, replicas};

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Topology {
    pub me: String,
    /// Every cluster node (write and router nodes).
    pub nodes: Vec<String>,
    /// Write nodes, in `STARCITE_WRITE_NODE_IDS` order: Raft id = index + 1.
    pub writers: Vec<String>,
    pub num_groups: u32,
    pub cores: u32,
    /// `replicas[g]` = indexes into `writers` of group g's replicas.
    replicas: Vec<Vec<usize>>,
    /// This node's Raft incarnation (see `super::identity`).
    pub incarnation: u64,
}

impl Topology {
    pub fn new(cfg: &Config) -> Self {
        Self::from_parts(
            &cfg.node_name,
            cfg.cluster_nodes.clone(),
            cfg.write_node_ids.clone(),
            cfg.num_groups,
            cfg.cores,
            cfg.replication_factor as usize,
        )
    }

    /// The topology seen by node `me` (the simulator builds its nodes' this way).
    pub fn from_parts(
        me: &str,
        nodes: Vec<String>,
        writers: Vec<String>,
        num_groups: u32,
        cores: u32,
        rf: usize,
    ) -> Self {
        let replicas = (0..num_groups)
            .map(|g| {
                replicas(g, &writers, rf)
                    .into_iter()
                    .filter_map(|n| writers.iter().position(|w| w == n))
                    .collect()
            })
            .collect();
        Topology {
            me: me.to_owned(),
            nodes,
            writers,
            num_groups,
            cores,
            replicas,
            incarnation: 0,
        }
    }

    /// The same topology for incarnation `incarnation` of this node.
    pub fn with_incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = incarnation;
        self
    }

    pub fn is_writer(&self) -> bool {
        self.writers.contains(&self.me)
    }

    /// The Raft id of a write node: this node's current incarnation for
    /// `me`, the original incarnation (the initial membership) for others.
    /// The node's slot (1-based position among the writers): the part of its
    /// Raft id that every incarnation shares.
    pub fn slot(&self, node: &str) -> Option<u64> {
        Some(self.writers.iter().position(|w| w == node)? as u64 + 1)
    }

    pub fn raft_id(&self, node: &str) -> Option<u64> {
        let slot = self.writers.iter().position(|w| w == node)? as u64 + 1;
        let incarnation = if node == self.me { self.incarnation } else { 0 };
        Some(membership::raft_id(slot, incarnation))
    }

    /// The node behind a Raft id, whatever its incarnation.
    pub fn node_of(&self, raft_id: u64) -> Option<&str> {
        let i = usize::try_from(membership::slot_of(raft_id).checked_sub(1)?).ok()?;
        self.writers.get(i).map(String::as_str)
    }

    pub fn group(&self, session: &str) -> u32 {
        group_of(session, self.num_groups)
    }

    pub fn replicas(&self, group: u32) -> impl Iterator<Item = &str> {
        self.replicas[group as usize]
            .iter()
            .map(|i| self.writers[*i].as_str())
    }

    pub fn replicates(&self, group: u32) -> bool {
        self.replicas(group).any(|n| n == self.me)
    }

    /// The groups core `core` replicates locally, with their voters' Raft ids.
    pub fn local_groups(&self, core: u32) -> Vec<(u32, Vec<u64>)> {
        (0..self.num_groups)
            .filter(|g| core_of(*g, self.cores) == core && self.replicates(*g))
            .map(|g| {
                (
                    g,
                    self.replicas[g as usize]
                        .iter()
                        .map(|i| *i as u64 + 1)
                        .collect(),
                )
            })
            .collect()
    }

    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .map(String::as_str)
            .filter(|n| *n != self.me)
    }

    pub fn single_node(&self) -> bool {
        self.nodes.len() == 1
    }
}
