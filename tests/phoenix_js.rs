//! A real third-party client against the Phoenix socket: the Phoenix
//! JavaScript client (npm `phoenix`, the one the current SDK is built on) with
//! `ws` as its WebSocket, under Node 20 — `tests/js/phoenix_client/test.mjs`
//! (join from a cursor, batches, reconnect with rejoin from the last cursor, gap
//! handling, many topics, lifecycle) against a dev node and against a 3-node
//! cluster through nodes that lead nothing (a router) or are followers.
//!
//! Needs Node ≥ 20 (`STARCITE_NODE`, else `node` on PATH) and npm; the npm
//! packages are installed from the lockfile on first use (`scripts/test` does
//! both on a fresh machine).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use common::cluster::{run_bounded, Cluster, ClusterOpts};
use common::*;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/phoenix_client")
}

fn node_bin() -> String {
    std::env::var("STARCITE_NODE").unwrap_or_else(|_| "node".to_owned())
}

/// Checks Node ≥ 20 and installs the locked npm packages once.
fn prepare() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut v = Command::new(node_bin());
        v.arg("--version");
        let out = run_bounded(v, Duration::from_secs(20));
        let major: u32 = out
            .stdout
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            major >= 20,
            "Node >= 20 is required (set STARCITE_NODE; scripts/test installs it): {} {}",
            out.stdout,
            out.stderr
        );
        if client_dir()
            .join("node_modules/phoenix/package.json")
            .exists()
        {
            return;
        }
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(client_dir());
        let out = run_bounded(npm, Duration::from_secs(180));
        assert_eq!(out.code, 0, "npm ci: {}\n{}", out.stdout, out.stderr);
    });
}

fn run_client(write_port: u16, socket_port: u16, prefix: &str) {
    prepare();
    let mut cmd = Command::new(node_bin());
    cmd.arg("test.mjs")
        .current_dir(client_dir())
        .env(
            "STARCITE_WRITE_URL",
            format!("http://127.0.0.1:{write_port}"),
        )
        .env(
            "STARCITE_SOCKET_URL",
            format!("http://127.0.0.1:{socket_port}"),
        )
        .env("STARCITE_PREFIX", prefix);
    let out = run_bounded(cmd, Duration::from_secs(150));
    eprintln!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "phoenix client run failed: {}", out.stderr);
    assert!(out.stdout.trim_end().ends_with("PASS"), "{}", out.stdout);
}

#[test]
fn phoenix_js_client_against_a_dev_node() {
    let s = Server::start_default();
    run_client(s.port(), s.port(), "dev");
}

#[test]
fn phoenix_js_client_against_a_cluster_through_non_leaders() {
    let c = Cluster::start(ClusterOpts {
        writers: 3,
        routers: 1,
        rf: 3,
        ..ClusterOpts::default()
    });
    // A router leads nothing and replicates nothing: remote reads.
    let router = c.all().into_iter().find(|i| !c.node(*i).writer).unwrap();
    run_client(c.http_port(0), c.http_port(router), "viarouter");
    // A writer other than the one taking the appends: a follower for most groups.
    run_client(c.http_port(0), c.http_port(2), "viafollower");
}
