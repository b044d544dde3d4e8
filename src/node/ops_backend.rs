//! The node's answers to operator commands (the admin socket, `starcite ops`).

use std::sync::Arc;

use starcite_shards::placement::core_of;

use super::control::ControlState;
use crate::config::Config;
use crate::ops::server::{OpsBackend, OpsError};

pub struct NodeOps {
    pub control: Arc<ControlState>,
    pub cfg: Config,
}

impl NodeOps {
    fn target<'a>(&'a self, node: Option<&'a str>) -> Result<&'a str, OpsError> {
        let node = node.unwrap_or(self.control.me());
        if self.control.topo.writers.iter().any(|w| w == node) {
            Ok(node)
        } else {
            Err(OpsError::InvalidWriteNode(node.to_owned()))
        }
    }
}

impl OpsBackend for NodeOps {
    fn status(&self) -> serde_json::Value {
        let topo = &self.control.topo;
        let me = topo.me.as_str();
        let writer = topo.is_writer();
        let local_groups: Vec<u32> = (0..topo.num_groups)
            .filter(|g| topo.replicates(*g))
            .collect();
        let mut observer = self.control.status_json();
        observer["status"] = "ok".into();
        observer["ready_nodes"] = self.control.ready_nodes().into();
        let leaders = observer["leaders_per_node"].clone();
        let fair = f64::from(topo.num_groups) / topo.writers.len().max(1) as f64;
        serde_json::json!({
            "node": me,
            "version": crate::version(),
            "local_write_node": writer,
            "local_mode": if writer { "write_node" } else { "router_node" },
            "local_ready": self.local_ready(),
            "local_drained": self.control.local_drained(),
            "write_nodes": topo.writers,
            "write_replication_factor": self.cfg.replication_factor,
            "num_groups": topo.num_groups,
            "cores": topo.cores,
            "local_groups": local_groups,
            "groups_per_core": (0..topo.cores).map(|c| local_groups.iter().filter(|g| core_of(**g, topo.cores) == c).count()).collect::<Vec<_>>(),
            "raft_storage": {
                "starcite_data_dir": self.cfg.data_dir,
                "ra_data_dir": self.cfg.data_dir.join("log"),
                "ra_wal_data_dir": self.cfg.data_dir.join("log"),
            },
            "leaders": { "per_node": leaders, "fair_share": fair },
            "observer": observer,
        })
    }

    fn ready_nodes(&self) -> Vec<String> {
        self.control.ready_nodes()
    }

    fn drain(&self, node: Option<&str>) -> Result<(), OpsError> {
        let node = self.target(node)?;
        self.control.set_drained(node, true);
        Ok(())
    }

    fn undrain(&self, node: Option<&str>) -> Result<(), OpsError> {
        let node = self.target(node)?;
        self.control.set_drained(node, false);
        Ok(())
    }

    fn local_ready(&self) -> bool {
        let topo = &self.control.topo;
        if !topo.is_writer() {
            return self.control.ready_nodes().len() > topo.writers.len() / 2;
        }
        !self.control.is_drained(&topo.me) && self.control.ready_nodes().contains(&topo.me)
    }

    fn local_drained(&self) -> bool {
        // Drained = marked, out of the ready set, and leading no group any more.
        self.control.local_drained() && self.control.local_leaders() == 0
    }

    fn replace_node(&self, node: &str) -> Result<serde_json::Value, OpsError> {
        let node = self.target(Some(node))?;
        self.control
            .replace_node(node)
            .map_err(OpsError::Unavailable)
    }

    fn group_replicas(&self, group: u32) -> Result<Vec<String>, OpsError> {
        let topo = &self.control.topo;
        if group >= topo.num_groups {
            return Err(OpsError::InvalidGroupId(group));
        }
        Ok(topo.replicas(group).map(str::to_owned).collect())
    }
}
