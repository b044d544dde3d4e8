//! The node's Raft incarnation, kept in `<data dir>/incarnation.json`.
//!
//! A node's Raft id is its slot in `STARCITE_WRITE_NODE_IDS` plus an
//! incarnation (see `starcite_shards::membership`). The original disk of a
//! node is incarnation 0. A node whose disk was lost starts with an EMPTY data
//! dir and `STARCITE_REJOIN=true`: it takes a new incarnation (the current
//! time in milliseconds, so later replacements are always newer) and joins
//! its groups as a new member once the operator runs
//! `starcite ops replace-node <node>`. The file is written atomically (temp
//! file, fsync, rename, directory fsync) before the node serves anything, and
//! is read on every later start, so `STARCITE_REJOIN` left set is harmless.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;

pub const FILE_NAME: &str = "incarnation.json";

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    node: String,
    incarnation: u64,
}

/// Reads the data dir's incarnation, or decides and persists it on the first
/// start of this data dir.
pub fn load_or_create(cfg: &Config) -> Result<u64, String> {
    let path = cfg.data_dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => {
            let id: Identity =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            if id.node != cfg.node_name {
                return Err(format!(
                    "{} belongs to node {:?}, not {:?}: a data dir cannot change its node name",
                    path.display(),
                    id.node,
                    cfg.node_name
                ));
            }
            if cfg.rejoin {
                tracing::info!(
                    incarnation = id.incarnation,
                    "STARCITE_REJOIN ignored: this data dir already has its incarnation"
                );
            }
            return Ok(id.incarnation);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let fresh = is_fresh(&cfg.data_dir)?;
    let replicated = cfg.replication_factor > 1 && cfg.write_node_ids.len() > 1;
    if cfg.rejoin && fresh && !replicated {
        tracing::warn!(
            "STARCITE_REJOIN ignored: without replication there is no replica to catch up from (the lost data is gone)"
        );
    }
    let incarnation = if cfg.rejoin && fresh && replicated {
        super::control::now_ms().max(1)
    } else {
        if cfg.rejoin {
            tracing::warn!(
                "STARCITE_REJOIN ignored: the data dir already holds a log (a replacement starts with an empty data dir)"
            );
        }
        0
    };
    if incarnation > 0 {
        tracing::warn!(
            node = %cfg.node_name,
            incarnation,
            "empty data dir with STARCITE_REJOIN: starting as a new incarnation; run `starcite ops replace-node {}` to make it a member of its groups",
            cfg.node_name
        );
    }
    let body = serde_json::to_vec(&Identity {
        node: cfg.node_name.clone(),
        incarnation,
    })
    .map_err(|e| e.to_string())?;
    write_atomic(&path, &body)?;
    Ok(incarnation)
}

/// No log and no layout file yet: a data dir this node has never written.
fn is_fresh(dir: &Path) -> Result<bool, String> {
    if dir.join("layout.json").exists() {
        return Ok(false);
    }
    match fs::read_dir(dir.join("log")) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("{}: {e}", dir.join("log").display())),
    }
}

/// Writes `path` so that a crash leaves either the old file or the whole new
/// one: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(body).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}
