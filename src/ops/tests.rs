use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use serde_json::{json, Value};

use super::cli::{execute, execute_rpc, resolve_data_dir, Outcome, Timing};
use super::protocol::{LineReader, MAX_REQUEST_BYTES};
use super::rpc::parse_rpc;
use super::server::{serve_admin_with, ServeOptions, MAX_CONNECTIONS};
use super::*;

// ---------------------------------------------------------------------------
// A fake node

struct Fake {
    me: String,
    write_nodes: Vec<String>,
    num_groups: u32,
    draining: Mutex<BTreeSet<String>>,
    /// `local_ready` answers true from this many-th check on.
    ready_after: AtomicUsize,
    ready_checks: AtomicUsize,
    panic_on_status: AtomicBool,
    replace_calls: AtomicUsize,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            me: "n1".to_owned(),
            write_nodes: vec!["n1".to_owned(), "n2".to_owned(), "n3".to_owned()],
            num_groups: 16,
            draining: Mutex::new(BTreeSet::new()),
            ready_after: AtomicUsize::new(1),
            ready_checks: AtomicUsize::new(0),
            panic_on_status: AtomicBool::new(false),
            replace_calls: AtomicUsize::new(0),
        })
    }

    fn target(&self, node: Option<&str>) -> Result<String, OpsError> {
        let n = node.unwrap_or(&self.me).to_owned();
        if self.write_nodes.contains(&n) {
            Ok(n)
        } else {
            Err(OpsError::InvalidWriteNode(n))
        }
    }
}

impl OpsBackend for Fake {
    fn status(&self) -> Value {
        if self.panic_on_status.load(Ordering::SeqCst) {
            panic!("fake status failure");
        }
        json!({
            "node": self.me,
            "local_write_node": true,
            "local_mode": "write_node",
            "local_ready": true,
            "local_drained": self.local_drained(),
            "write_nodes": self.write_nodes,
            "write_replication_factor": 3,
            "num_groups": self.num_groups,
            "local_groups": [0, 1, 2],
            "observer": { "status": "ok", "ready_nodes": self.ready_nodes() },
        })
    }

    fn ready_nodes(&self) -> Vec<String> {
        let draining = self.draining.lock().unwrap();
        self.write_nodes
            .iter()
            .filter(|n| !draining.contains(*n))
            .cloned()
            .collect()
    }

    fn drain(&self, node: Option<&str>) -> Result<(), OpsError> {
        let n = self.target(node)?;
        self.draining.lock().unwrap().insert(n);
        Ok(())
    }

    fn undrain(&self, node: Option<&str>) -> Result<(), OpsError> {
        let n = self.target(node)?;
        self.draining.lock().unwrap().remove(&n);
        Ok(())
    }

    fn local_ready(&self) -> bool {
        let checks = self.ready_checks.fetch_add(1, Ordering::SeqCst) + 1;
        checks >= self.ready_after.load(Ordering::SeqCst)
    }

    fn local_drained(&self) -> bool {
        self.draining.lock().unwrap().contains(&self.me)
    }

    /// n3 runs a new incarnation and becomes a voter in one more of its three
    /// groups per call; n2 runs its original one; n1's replacement never ends.
    fn replace_node(&self, node: &str) -> Result<Value, OpsError> {
        let n = self.target(Some(node))?;
        let voter = match n.as_str() {
            "n3" => (self.replace_calls.fetch_add(1, Ordering::SeqCst) + 1).min(3),
            "n2" => {
                return Err(OpsError::Unavailable(
                    "n2 runs its original incarnation (raft id 2)".to_owned(),
                ))
            }
            _ => 0,
        };
        Ok(json!({
            "node": n, "raft_id": 65539, "incarnation": 1, "voter_groups": voter,
            "groups": 3, "done": voter == 3,
        }))
    }

    fn group_replicas(&self, group: u32) -> Result<Vec<String>, OpsError> {
        if group >= self.num_groups {
            return Err(OpsError::InvalidGroupId(group));
        }
        let n = self.write_nodes.len();
        Ok((0..n)
            .map(|i| self.write_nodes[(group as usize + i) % n].clone())
            .collect())
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn start(fake: &Arc<Fake>) -> (tempfile::TempDir, AdminServer) {
    start_with(fake, ServeOptions::default())
}

fn start_with(fake: &Arc<Fake>, opts: ServeOptions) -> (tempfile::TempDir, AdminServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_admin_with(dir.path(), fake.clone(), opts).unwrap();
    (dir, server)
}

fn run(dir: &Path, cmd: OpsCommand) -> Outcome {
    execute(dir, &cmd, &Timing::default())
}

fn ok(stdout: &str) -> Outcome {
    Outcome {
        code: 0,
        stdout: stdout.to_owned(),
        stderr: String::new(),
    }
}

fn connect(dir: &Path) -> UnixStream {
    UnixStream::connect(socket_path(dir)).unwrap()
}

fn read_response(stream: &UnixStream, reader: &mut LineReader) -> Option<Value> {
    let line = reader
        .read_line(stream, 1 << 20, Instant::now() + Duration::from_secs(5))
        .unwrap()?;
    Some(serde_json::from_slice(&line).unwrap())
}

/// Sends raw bytes on a fresh connection and returns the first answer.
fn raw(dir: &Path, bytes: &[u8]) -> Value {
    let stream = connect(dir);
    let _ = (&stream).write_all(bytes);
    read_response(&stream, &mut LineReader::default()).expect("an answer")
}

fn wait_ready(ms: u64) -> OpsCommand {
    OpsCommand::WaitReady {
        ms: None,
        timeout_ms: ms,
    }
}

// ---------------------------------------------------------------------------
// Every op through the CLI layer

#[test]
fn status_prints_pretty_json() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    let out = run(dir.path(), OpsCommand::Status);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.ends_with("}\n") && out.stdout.contains("\n  \"node\": \"n1\""),
        "{}",
        out.stdout
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v, fake.status());
}

#[test]
fn queries_and_drain_cycle() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    let d = dir.path();
    assert_eq!(run(d, OpsCommand::ReadyNodes), ok("ready_nodes=n1,n2,n3\n"));
    assert_eq!(
        run(d, OpsCommand::LocalDrained),
        ok("local_drained=false\n")
    );

    assert_eq!(run(d, OpsCommand::Drain { node: None }), ok("ok\n"));
    assert_eq!(run(d, OpsCommand::ReadyNodes), ok("ready_nodes=n2,n3\n"));
    assert_eq!(run(d, OpsCommand::LocalDrained), ok("local_drained=true\n"));
    assert_eq!(
        run(
            d,
            OpsCommand::WaitDrained {
                ms: None,
                timeout_ms: 1000
            }
        ),
        ok("local_drained=true\n")
    );
    assert_eq!(
        run(
            d,
            OpsCommand::Drain {
                node: Some("n2".to_owned())
            }
        ),
        ok("ok\n")
    );
    assert_eq!(run(d, OpsCommand::ReadyNodes), ok("ready_nodes=n3\n"));

    assert_eq!(run(d, OpsCommand::Undrain { node: None }), ok("ok\n"));
    assert_eq!(
        run(
            d,
            OpsCommand::Undrain {
                node: Some(" n2 ".to_owned())
            }
        ),
        ok("ok\n")
    );
    assert_eq!(run(d, OpsCommand::ReadyNodes), ok("ready_nodes=n1,n2,n3\n"));

    let bad = run(
        d,
        OpsCommand::Drain {
            node: Some("router9".to_owned()),
        },
    );
    assert_eq!(bad.code, 1);
    assert!(bad.stdout.is_empty());
    assert!(
        bad.stderr.contains("invalid_write_node")
            && bad.stderr.contains("\"router9\" is not a write node"),
        "{bad:?}"
    );
    let bad = run(
        d,
        OpsCommand::Undrain {
            node: Some("router9".to_owned()),
        },
    );
    assert_eq!(bad.code, 1);

    let empty = run(
        d,
        OpsCommand::Drain {
            node: Some("  ".to_owned()),
        },
    );
    assert_eq!(empty.code, 2, "{empty:?}");
    assert_eq!(fake.ready_nodes().len(), 3);
}

#[test]
fn group_replicas_and_invalid_group() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    assert_eq!(
        run(dir.path(), OpsCommand::GroupReplicas { group: 7 }),
        ok("group_7_replicas=n2,n3,n1\n")
    );
    assert_eq!(
        run(dir.path(), OpsCommand::GroupReplicas { group: 0 }),
        ok("group_0_replicas=n1,n2,n3\n")
    );
    let bad = run(dir.path(), OpsCommand::GroupReplicas { group: 16 });
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("invalid_group_id")
            && bad.stderr.contains("group id 16 is out of range"),
        "{bad:?}"
    );
}

#[test]
fn local_ready_single_check() {
    let fake = Fake::new();
    fake.ready_after.store(usize::MAX, Ordering::SeqCst);
    let (dir, _server) = start(&fake);
    assert_eq!(
        run(dir.path(), OpsCommand::LocalReady),
        ok("local_ready=false\n")
    );
    fake.ready_after.store(0, Ordering::SeqCst);
    assert_eq!(
        run(dir.path(), OpsCommand::LocalReady),
        ok("local_ready=true\n")
    );
}

#[test]
fn wait_ready_succeeds_once_the_node_flips() {
    let fake = Fake::new();
    fake.ready_after.store(3, Ordering::SeqCst);
    let (dir, _server) = start(&fake);
    let t0 = Instant::now();
    assert_eq!(
        run(dir.path(), wait_ready(10_000)),
        ok("local_ready=true\n")
    );
    let took = t0.elapsed();
    assert_eq!(fake.ready_checks.load(Ordering::SeqCst), 3);
    // Two 200 ms pauses between the three checks.
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn wait_ready_times_out() {
    let fake = Fake::new();
    fake.ready_after.store(usize::MAX, Ordering::SeqCst);
    let (dir, _server) = start(&fake);
    let t0 = Instant::now();
    let out = run(dir.path(), wait_ready(500));
    let took = t0.elapsed();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr
            .contains("timed out after 500 ms: local_ready is still false"),
        "{out:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let checks = fake.ready_checks.load(Ordering::SeqCst);
    assert!((2..=5).contains(&checks), "{checks} checks");

    // The positional form wins over the default; 0 = a single check.
    let before = fake.ready_checks.load(Ordering::SeqCst);
    let out = run(
        dir.path(),
        OpsCommand::WaitReady {
            ms: Some(0),
            timeout_ms: 30_000,
        },
    );
    assert_eq!(out.code, 1);
    assert_eq!(fake.ready_checks.load(Ordering::SeqCst), before + 1);
}

#[test]
fn wait_drained_times_out_when_not_drained() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    let out = run(
        dir.path(),
        OpsCommand::WaitDrained {
            ms: Some(250),
            timeout_ms: 30_000,
        },
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("local_drained is still false"),
        "{out:?}"
    );
}

#[test]
fn unreachable_socket_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), OpsCommand::Status);
    assert_eq!(out.code, 3, "{out:?}");
    let expected = format!(
        "is the node running? looked for {}",
        socket_path(dir.path()).display()
    );
    assert!(out.stderr.contains(&expected), "{out:?}");

    // A missing data directory is the same.
    let out = run(&dir.path().join("nope"), OpsCommand::ReadyNodes);
    assert_eq!(out.code, 3, "{out:?}");

    // The wait commands keep trying until their deadline, then say why.
    let t0 = Instant::now();
    let out = run(dir.path(), wait_ready(300));
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("timed out after 300 ms")
            && out.stderr.contains("is the node running?"),
        "{out:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn wait_ready_rides_out_a_node_start() {
    let fake = Fake::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let starter = {
        let fake = fake.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            serve_admin(&path, fake).unwrap()
        })
    };
    let out = run(dir.path(), wait_ready(5_000));
    assert_eq!(out, ok("local_ready=true\n"));
    drop(starter.join().unwrap());
}

// ---------------------------------------------------------------------------
// rpc expressions

#[test]
fn rpc_expression_table() {
    use OpsCommand as C;
    let drain = |n: Option<&str>| C::Drain {
        node: n.map(str::to_owned),
    };
    let undrain = |n: Option<&str>| C::Undrain {
        node: n.map(str::to_owned),
    };
    let good: Vec<(&str, OpsCommand)> = vec![
        ("Starcite.ControlPlane.Ops.status()", C::Status),
        ("  Starcite.ControlPlane.Ops.status()\n", C::Status),
        ("Starcite.ControlPlane.Ops . status ( )", C::Status),
        ("Starcite.ControlPlane.Ops.status", C::Status),
        ("status()", C::Status),
        ("Starcite.ControlPlane.Ops.ready_nodes()", C::ReadyNodes),
        ("Starcite.ControlPlane.Ops.local_ready()", C::LocalReady),
        ("Starcite.ControlPlane.Ops.local_drained()", C::LocalDrained),
        ("Starcite.ControlPlane.Ops.drain_node()", drain(None)),
        (
            "Starcite.ControlPlane.Ops.drain_node(\"starcite@10.0.0.2\")",
            drain(Some("starcite@10.0.0.2")),
        ),
        (
            "Starcite.ControlPlane.Ops.drain_node(\\\"starcite@10.0.0.2\\\")",
            drain(Some("starcite@10.0.0.2")),
        ),
        (
            "Starcite.ControlPlane.Ops.drain_node('starcite@10.0.0.2')",
            drain(Some("starcite@10.0.0.2")),
        ),
        (
            "Starcite.ControlPlane.Ops.drain_node(starcite@10.0.0.2)",
            drain(Some("starcite@10.0.0.2")),
        ),
        (
            "Starcite.ControlPlane.Ops.drain_node( :\"starcite@10.0.0.2\" )",
            drain(Some("starcite@10.0.0.2")),
        ),
        (
            "Starcite.ControlPlane.Ops.drain_node(:n2)",
            drain(Some("n2")),
        ),
        ("Starcite.ControlPlane.Ops.undrain_node()", undrain(None)),
        (
            "Starcite.ControlPlane.Ops.undrain_node(\"n2\")",
            undrain(Some("n2")),
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_drained(30000)",
            C::WaitDrained {
                ms: None,
                timeout_ms: 30_000,
            },
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_drained()",
            C::WaitDrained {
                ms: None,
                timeout_ms: 30_000,
            },
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_ready(60000)",
            C::WaitReady {
                ms: None,
                timeout_ms: 60_000,
            },
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_ready(60_000)",
            C::WaitReady {
                ms: None,
                timeout_ms: 60_000,
            },
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_ready( 0 )",
            C::WaitReady {
                ms: None,
                timeout_ms: 0,
            },
        ),
        (
            "Starcite.ControlPlane.Ops.group_replicas(7)",
            C::GroupReplicas { group: 7 },
        ),
        (
            "Starcite.ControlPlane.Ops.group_replicas(4294967295)",
            C::GroupReplicas { group: u32::MAX },
        ),
    ];
    for (expr, want) in good {
        assert_eq!(parse_rpc(expr), Ok(want), "{expr:?}");
    }
    let bad: Vec<(&str, &str)> = vec![
        ("", "empty expression"),
        ("   ", "empty expression"),
        (
            "Starcite.ControlPlane.Ops.frobnicate()",
            "unknown function Starcite.ControlPlane.Ops.frobnicate/0",
        ),
        ("Starcite.ControlPlane.Ops.status(1)", "takes no argument"),
        (
            "Starcite.ControlPlane.Ops.ready_nodes(\"x\")",
            "takes no argument",
        ),
        ("Starcite.ControlPlane.Opsx.status()", "cannot understand"),
        ("Starcite.Other.status()", "cannot understand"),
        ("Starcite.ControlPlane.Ops.status(", "cannot understand"),
        ("Starcite.ControlPlane.Ops.status())", "single argument"),
        (
            "Starcite.ControlPlane.Ops.status() extra",
            "cannot understand",
        ),
        (
            "Starcite.ControlPlane.Ops.group_replicas()",
            "needs a group id",
        ),
        (
            "Starcite.ControlPlane.Ops.group_replicas(-1)",
            "group id must be an integer",
        ),
        (
            "Starcite.ControlPlane.Ops.group_replicas(4294967296)",
            "group id must be an integer",
        ),
        (
            "Starcite.ControlPlane.Ops.group_replicas(\"7\")",
            "got the string",
        ),
        (
            "Starcite.ControlPlane.Ops.group_replicas(7, 8)",
            "single argument",
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_ready(abc)",
            "non-negative integer",
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_ready(1__0)",
            "non-negative integer",
        ),
        (
            "Starcite.ControlPlane.Ops.wait_local_ready(\"100\")",
            "got the string",
        ),
        (
            "Starcite.ControlPlane.Ops.drain_node(\"a\", \"b\")",
            "single argument",
        ),
        ("Starcite.ControlPlane.Ops.drain_node(\"a)", "unterminated"),
        (
            "Starcite.ControlPlane.Ops.drain_node(\"\")",
            "node name is empty",
        ),
        (
            "Starcite.ControlPlane.Ops.drain_node(a b)",
            "single argument",
        ),
        (
            ":rpc.call(:n1, Starcite.ControlPlane.Ops, :status, [])",
            "cannot understand",
        ),
        ("1 + 1", "cannot understand"),
    ];
    for (expr, want) in bad {
        match parse_rpc(expr) {
            Ok(cmd) => panic!("{expr:?} parsed as {cmd:?}"),
            Err(msg) => assert!(msg.contains(want), "{expr:?}: {msg:?} lacks {want:?}"),
        }
    }
}

#[test]
fn rpc_runs_against_the_node() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    let t = Timing::default();
    let out = execute_rpc(
        dir.path(),
        "Starcite.ControlPlane.Ops.drain_node(\"n2\")",
        &t,
    );
    assert_eq!(out, ok("ok\n"));
    assert_eq!(
        execute_rpc(dir.path(), "Starcite.ControlPlane.Ops.ready_nodes()", &t),
        ok("ready_nodes=n1,n3\n")
    );
    assert_eq!(
        execute_rpc(
            dir.path(),
            "Starcite.ControlPlane.Ops.group_replicas(7)",
            &t
        ),
        ok("group_7_replicas=n2,n3,n1\n")
    );
    assert_eq!(
        execute_rpc(
            dir.path(),
            "Starcite.ControlPlane.Ops.wait_local_ready(60000)",
            &t
        ),
        ok("local_ready=true\n")
    );
    let status = execute_rpc(dir.path(), "Starcite.ControlPlane.Ops.status()", &t);
    assert_eq!(status.code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&status.stdout).unwrap()["node"],
        "n1"
    );
    let bad = execute_rpc(dir.path(), "Starcite.ControlPlane.Ops.explode()", &t);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.starts_with("starcite: error: unknown function"),
        "{bad:?}"
    );
    // Usage errors are reported without needing a node.
    let nowhere = tempfile::tempdir().unwrap();
    assert_eq!(execute_rpc(nowhere.path(), "nonsense(", &t).code, 2);
    assert_eq!(
        execute_rpc(nowhere.path(), "Starcite.ControlPlane.Ops.status()", &t).code,
        3
    );
}

// ---------------------------------------------------------------------------
// The socket server

#[test]
fn socket_is_private() {
    let fake = Fake::new();
    let (dir, server) = start(&fake);
    let meta = std::fs::symlink_metadata(socket_path(dir.path())).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        server.path(),
        std::fs::canonicalize(dir.path())
            .unwrap()
            .join("admin.sock")
    );
}

#[test]
fn request_size_limit() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    // Exactly the limit is fine.
    let head = br#"{"op":"ready_nodes","pad":""#;
    let tail = br#""}"#;
    let mut line = head.to_vec();
    line.resize(MAX_REQUEST_BYTES - tail.len(), b'x');
    line.extend_from_slice(tail);
    assert_eq!(line.len(), MAX_REQUEST_BYTES);
    line.push(b'\n');
    assert_eq!(
        raw(dir.path(), &line),
        json!({"ok": true, "result": ["n1", "n2", "n3"]})
    );

    // One byte more is rejected, and the connection closed.
    let mut big = head.to_vec();
    big.resize(MAX_REQUEST_BYTES + 1 - tail.len(), b'x');
    big.extend_from_slice(tail);
    big.push(b'\n');
    let stream = connect(dir.path());
    let _ = (&stream).write_all(&big);
    let mut reader = LineReader::default();
    let answer = read_response(&stream, &mut reader).unwrap();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["error"], "request_too_large");
    assert!(
        read_response(&stream, &mut reader).is_none(),
        "connection should be closed"
    );

    // A huge line with no newline at all is cut off early too.
    let stream = connect(dir.path());
    let writer = {
        let stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                if (&stream).write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let answer = read_response(&stream, &mut LineReader::default()).unwrap();
    assert_eq!(answer["error"], "request_too_large");
    drop(stream);
    writer.join().unwrap();
}

#[test]
fn several_requests_per_connection_and_bad_ones() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    let stream = connect(dir.path());
    (&stream)
        .write_all(
            b"{\"op\":\"ready_nodes\"}\r\nnot json\n[1]\n{\"op\":\"nope\"}\n\n{\"op\":\"group_replicas\",\"group\":-1}\n\
              {\"op\":\"drain\",\"node\":5}\n{\"op\":\"drain\",\"node\":\"zz\"}\n{\"op\":\"group_replicas\",\"group\":3,\"extra\":1}\n",
        )
        .unwrap();
    let mut reader = LineReader::default();
    let mut next = || read_response(&stream, &mut reader).unwrap();
    assert_eq!(next(), json!({"ok": true, "result": ["n1", "n2", "n3"]}));
    for want in [
        "not valid JSON",
        "must be a JSON object",
        "unknown op \"nope\"",
        "empty request",
        "\"group\" must be",
        "\"node\" must be",
    ] {
        let v = next();
        assert_eq!(v["error"], "bad_request", "{v}");
        assert!(
            v["message"].as_str().unwrap().contains(want),
            "{v} lacks {want}"
        );
    }
    let v = next();
    assert_eq!(v["error"], "invalid_write_node");
    assert_eq!(
        v["message"],
        "\"zz\" is not a write node (not listed in STARCITE_WRITE_NODE_IDS)"
    );
    assert_eq!(next(), json!({"ok": true, "result": ["n1", "n2", "n3"]}));
    // A last request ended by end-of-stream instead of a newline is still answered.
    (&stream).write_all(b"{\"op\":\"local_drained\"}").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(next(), json!({"ok": true, "result": false}));
}

#[test]
fn backend_panic_is_an_internal_error() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    fake.panic_on_status.store(true, Ordering::SeqCst);
    let out = run(dir.path(), OpsCommand::Status);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("internal: the node failed while running status"),
        "{out:?}"
    );
    fake.panic_on_status.store(false, Ordering::SeqCst);
    assert_eq!(run(dir.path(), OpsCommand::Status).code, 0);
}

#[test]
fn idle_connections_time_out() {
    let fake = Fake::new();
    let (dir, _server) = start_with(
        &fake,
        ServeOptions {
            read_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        },
    );
    let t0 = Instant::now();
    let stream = connect(dir.path());
    (&stream).write_all(b"{\"op\":\"sta").unwrap();
    let mut reader = LineReader::default();
    let v = read_response(&stream, &mut reader).unwrap();
    assert_eq!(v["error"], "timeout");
    assert!(read_response(&stream, &mut reader).is_none());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn connection_limit() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    // Fill every slot with a connection the server has certainly accepted.
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let stream = connect(dir.path());
        (&stream)
            .write_all(b"{\"op\":\"local_drained\"}\n")
            .unwrap();
        let mut reader = LineReader::default();
        assert_eq!(read_response(&stream, &mut reader).unwrap()["ok"], true);
        held.push(stream);
    }
    let extra = raw(dir.path(), b"{\"op\":\"status\"}\n");
    assert_eq!(extra["error"], "too_many_connections", "{extra}");
    let out = run(dir.path(), OpsCommand::ReadyNodes);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("too_many_connections"), "{out:?}");
    // A wait command treats a full server as "not yet".
    held.pop();
    let out = run(dir.path(), wait_ready(3_000));
    assert_eq!(out, ok("local_ready=true\n"));
}

#[test]
fn stop_closes_connections_and_removes_the_socket() {
    let fake = Fake::new();
    let (dir, server) = start(&fake);
    let sock = socket_path(dir.path());
    assert!(sock.exists());
    // An accepted connection, idle between requests.
    let idle = connect(dir.path());
    let mut reader = LineReader::default();
    (&idle).write_all(b"{\"op\":\"local_drained\"}\n").unwrap();
    assert_eq!(read_response(&idle, &mut reader).unwrap()["ok"], true);
    let t0 = Instant::now();
    server.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(!sock.exists());
    assert!(
        read_response(&idle, &mut reader).is_none(),
        "idle connection should be closed"
    );
    assert_eq!(run(dir.path(), OpsCommand::Status).code, 3);

    // Drop does the same.
    let (dir, server) = start(&fake);
    let sock = socket_path(dir.path());
    assert_eq!(run(dir.path(), OpsCommand::ReadyNodes).code, 0);
    drop(server);
    assert!(!sock.exists());
}

#[test]
fn stale_live_and_foreign_socket_files() {
    let fake = Fake::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = socket_path(dir.path());

    // A socket file left behind by a crashed node is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let first = serve_admin(dir.path(), fake.clone()).unwrap();
    assert_eq!(run(dir.path(), OpsCommand::ReadyNodes).code, 0);

    // A socket some live process serves is left alone.
    let err = serve_admin(dir.path(), fake.clone())
        .err()
        .expect("second server must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert_eq!(run(dir.path(), OpsCommand::ReadyNodes).code, 0);

    // At shutdown only our own socket file is removed.
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"not ours").unwrap();
    drop(first);
    assert_eq!(std::fs::read(&sock).unwrap(), b"not ours");

    // Something that is not a socket is never deleted.
    let err = serve_admin(dir.path(), fake.clone())
        .err()
        .expect("must refuse a regular file");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not ours");

    // A missing data directory is created.
    let nested = dir.path().join("a/b");
    let server = serve_admin(&nested, fake).unwrap();
    assert_eq!(run(&nested, OpsCommand::ReadyNodes).code, 0);
    drop(server);
}

#[test]
fn too_long_socket_path_is_a_clear_error() {
    let fake = Fake::new();
    let dir = tempfile::tempdir().unwrap();
    let deep: PathBuf = dir.path().join("d".repeat(120));
    let err = serve_admin(&deep, fake).err().expect("must fail");
    assert!(err.to_string().contains("too long"), "{err}");
    let out = run(&deep, OpsCommand::Status);
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("too long"), "{out:?}");
}

// ---------------------------------------------------------------------------
// Command line

#[derive(clap::Parser, Debug)]
#[command(name = "starcite")]
struct TestCli {
    #[command(subcommand)]
    command: TestCommand,
}

/// Mirrors how src/main.rs is meant to wire the operator commands in.
#[derive(clap::Subcommand, Debug, PartialEq)]
enum TestCommand {
    Start,
    Dev,
    #[command(flatten)]
    Operator(OperatorCommand),
}

fn parse(args: &[&str]) -> Result<TestCommand, clap::Error> {
    TestCli::try_parse_from(std::iter::once("starcite").chain(args.iter().copied()))
        .map(|c| c.command)
}

#[test]
fn clap_wiring() {
    TestCli::command().debug_assert();
    let ops = |data_dir: Option<&str>, cmd| {
        TestCommand::Operator(OperatorCommand::Ops {
            data_dir: data_dir.map(PathBuf::from),
            cmd,
        })
    };
    assert_eq!(parse(&["dev"]).unwrap(), TestCommand::Dev);
    assert_eq!(
        parse(&["ops", "status"]).unwrap(),
        ops(None, OpsCommand::Status)
    );
    assert_eq!(
        parse(&["ops", "ready-nodes"]).unwrap(),
        ops(None, OpsCommand::ReadyNodes)
    );
    assert_eq!(
        parse(&["ops", "drain"]).unwrap(),
        ops(None, OpsCommand::Drain { node: None })
    );
    assert_eq!(
        parse(&["ops", "undrain", "n2"]).unwrap(),
        ops(
            None,
            OpsCommand::Undrain {
                node: Some("n2".into())
            }
        )
    );
    assert_eq!(
        parse(&["ops", "group-replicas", "7"]).unwrap(),
        ops(None, OpsCommand::GroupReplicas { group: 7 })
    );
    assert_eq!(
        parse(&["ops", "--data-dir", "/x", "wait-ready", "--timeout-ms", "5"]).unwrap(),
        ops(
            Some("/x"),
            OpsCommand::WaitReady {
                ms: None,
                timeout_ms: 5
            }
        )
    );
    assert_eq!(
        parse(&["ops", "wait-drained", "500", "--data-dir", "/y"]).unwrap(),
        ops(
            Some("/y"),
            OpsCommand::WaitDrained {
                ms: Some(500),
                timeout_ms: 30_000
            }
        )
    );
    assert_eq!(
        parse(&["ops", "wait-ready"]).unwrap(),
        ops(
            None,
            OpsCommand::WaitReady {
                ms: None,
                timeout_ms: 30_000
            }
        )
    );
    assert_eq!(
        parse(&["rpc", "Starcite.ControlPlane.Ops.status()"]).unwrap(),
        TestCommand::Operator(OperatorCommand::Rpc {
            data_dir: None,
            expr: "Starcite.ControlPlane.Ops.status()".into()
        })
    );
    assert_eq!(
        parse(&[
            "rpc",
            "--data-dir",
            "/z",
            "Starcite.ControlPlane.Ops.drain_node(\"n2\")"
        ])
        .unwrap(),
        TestCommand::Operator(OperatorCommand::Rpc {
            data_dir: Some("/z".into()),
            expr: "Starcite.ControlPlane.Ops.drain_node(\"n2\")".into()
        })
    );
    for bad in [
        &["ops", "group-replicas", "-1"][..],
        &["ops", "group-replicas", "x"],
        &["ops", "group-replicas"],
        &["ops", "wait-ready", "soon"],
        &["ops", "wait-ready", "5", "--timeout-ms", "6"],
        &["ops", "frobnicate"],
        &["ops"],
        &["rpc"],
    ] {
        let err = parse(bad).expect_err(&format!("{bad:?} should not parse"));
        assert_eq!(err.exit_code(), 2, "{bad:?}");
    }
}

#[test]
fn data_dir_resolution() {
    assert_eq!(
        resolve_data_dir(Some("/flag".into()), Some("/env".into())),
        PathBuf::from("/flag")
    );
    assert_eq!(
        resolve_data_dir(None, Some(" /env ".into())),
        PathBuf::from("/env")
    );
    assert_eq!(
        resolve_data_dir(None, Some("  ".into())),
        PathBuf::from("./starcite-data")
    );
    assert_eq!(
        resolve_data_dir(Some("".into()), None),
        PathBuf::from("./starcite-data")
    );
    assert_eq!(
        resolve_data_dir(None, None),
        PathBuf::from("./starcite-data")
    );
}

#[test]
fn replace_node_waits_for_every_group_and_reports_progress() {
    let fake = Fake::new();
    let (dir, _server) = start(&fake);
    let quick = Timing {
        request_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
    };
    let cmd = |node: &str, timeout_ms| OpsCommand::ReplaceNode {
        node: node.to_owned(),
        timeout_ms,
    };
    let done = execute(dir.path(), &cmd("n3", 10_000), &quick);
    assert_eq!(done.code, 0, "{done:?}");
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "replace-node n3: incarnation 1 (raft id 65539) is a voter in 1/3 groups",
            "replace-node n3: incarnation 1 (raft id 65539) is a voter in 2/3 groups",
            "replace-node n3: incarnation 1 (raft id 65539) is a voter in 3/3 groups",
            "replaced=n3",
        ]
    );
    // Not a new incarnation: a clear error at once, exit 1.
    let bad = execute(dir.path(), &cmd("n2", 10_000), &quick);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("original incarnation"), "{bad:?}");
    // Unknown node: exit 1 naming it.
    let unknown = execute(dir.path(), &cmd("n9", 10_000), &quick);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("n9"), "{unknown:?}");
    // Never finishing: bounded by the timeout, exit 1 with the last progress.
    let t = Instant::now();
    let slow = execute(dir.path(), &cmd("n1", 300), &quick);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(slow.code, 1, "{slow:?}");
    assert!(slow.stderr.contains("timed out after 300 ms"), "{slow:?}");
    assert!(slow.stderr.contains("0/3"), "{slow:?}");
    // The runbook form.
    assert_eq!(
        parse_rpc("Starcite.ControlPlane.Ops.replace_node(\"n3\")").unwrap(),
        cmd("n3", super::cli::DEFAULT_REPLACE_MS)
    );
    assert!(parse_rpc("Starcite.ControlPlane.Ops.replace_node()").is_err());
    // And the command line.
    assert_eq!(
        parse(&["ops", "replace-node", "n3", "--timeout-ms", "5"]).unwrap(),
        TestCommand::Operator(OperatorCommand::Ops {
            data_dir: None,
            cmd: cmd("n3", 5),
        })
    );
    assert!(
        parse(&["ops", "replace-node"]).is_err(),
        "the node is required"
    );
}
