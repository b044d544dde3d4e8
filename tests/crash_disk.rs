//! Crash and disk-failure tests on real filesystems (root only: loop devices
//! and tmpfs mounts; see docs/testing.md).
//!
//! - Power loss: the data dir is an ext4 filesystem on a loop device whose
//!   image file is copied right after `kill -9`. The copy holds what reached
//!   the device and nothing of the page cache, like a disk after a power cut:
//!   writes that were not fdatasync'ed are gone. Every acknowledged append must
//!   be in it. A build that skips fdatasync (test-only fault point) must lose
//!   acknowledged appends under the same procedure: the harness bites.
//! - Full disk: the data dir is a small tmpfs; appends until ENOSPC must stop
//!   the node with a clear log line and exit status 70, and after the disk is
//!   grown the restarted node holds every acknowledged append.
//! - fsync error: ext4 on a loop device whose image lives on a small tmpfs:
//!   once the image cannot grow, the device fails writes, so fdatasync fails
//!   (EIO, or ENOSPC passed up from the loop device, or EROFS once the journal
//!   aborted) while every write() succeeded: exit 70 with the failing call in
//!   the log line, and a restart on the repaired disk serves again. (Known
//!   open issue about acknowledged appends there: see docs/testing.md.)
//!
//! Set STARCITE_SKIP_PRIVILEGED_TESTS=1 to skip them where mounting is not allowed.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn privileged() -> bool {
    if std::env::var("STARCITE_SKIP_PRIVILEGED_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: STARCITE_SKIP_PRIVILEGED_TESTS=1");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    assert_eq!(
        euid, 0,
        "these tests mount loop devices and tmpfs: run them as root, or set STARCITE_SKIP_PRIVILEGED_TESTS=1"
    );
    true
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mount point that is unmounted (lazily, so a busy one cannot hang the
/// test) when dropped.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(dir: &Path, args: &[&str]) -> Mount {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut cmd = vec!["mount"];
        cmd.extend_from_slice(args);
        let d = dir.to_str().expect("utf-8 path");
        cmd.push(d);
        sh(&cmd);
        Mount {
            dir: dir.to_owned(),
        }
    }

    fn unmount(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            self.dir = PathBuf::new();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn mkfs_ext4(image: &Path, size: &str) {
    sh(&["truncate", "-s", size, image.to_str().unwrap()]);
    // No lazy init threads writing behind the test's back, and no discard:
    // inode tables and the journal are really written, so on an image file
    // they take their space in the backing store up front.
    sh(&[
        "mkfs.ext4",
        "-q",
        "-F",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
        image.to_str().unwrap(),
    ]);
}

#[derive(Debug, Clone)]
struct Ack {
    session: String,
    seq: u64,
    producer: String,
    pseq: u64,
}

/// Producers appending (each to its own session) until `stop` or the server
/// goes away; returns every acknowledged append.
fn load(port: u16, sessions: &[String], pad: usize, stop: Arc<AtomicBool>) -> Vec<Ack> {
    let handles: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, session)| {
            let stop = stop.clone();
            let session = session.clone();
            std::thread::spawn(move || {
                let producer = format!("p{i}");
                let mut c = HttpConn::with_timeout(port, Duration::from_secs(10));
                let mut acks = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut pseq = 1;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let body = json!({
                        "type": "disk.test",
                        "payload": {"n": pseq, "pad": "x".repeat(pad)},
                        "producer_id": producer,
                        "producer_seq": pseq,
                    });
                    match c.try_post(&append_path(&session), body.to_string().as_bytes()) {
                        Ok(r) if r.status == 201 => {
                            let seq = r.json()["seq"].as_u64().expect("seq");
                            acks.push(Ack {
                                session: session.clone(),
                                seq,
                                producer: producer.clone(),
                                pseq,
                            });
                            pseq += 1;
                        }
                        // Anything else: the node is failing or gone.
                        _ => break,
                    }
                }
                acks
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("producer thread"))
        .collect()
}

/// How many acknowledged appends the server on `port` does not hold (at
/// their seq, with their producer fields).
fn missing_acks(port: u16, acks: &[Ack]) -> usize {
    let mut per: BTreeMap<&str, Vec<&Ack>> = BTreeMap::new();
    for a in acks {
        per.entry(&a.session).or_default().push(a);
    }
    let rows = list_all(port, "");
    let mut missing = 0;
    for (session, acks) in per {
        let last = rows
            .iter()
            .find(|r| r["id"] == session)
            .and_then(|r| r["last_seq"].as_u64())
            .unwrap_or(0);
        let evs = if last > 0 {
            read_all_events(port, session, last, Duration::from_secs(30))
        } else {
            Vec::new()
        };
        let by_seq: BTreeMap<u64, &Value> = evs
            .iter()
            .filter_map(|e| Some((e["seq"].as_u64()?, e)))
            .collect();
        for a in acks {
            let ok = by_seq.get(&a.seq).is_some_and(|e| {
                e["producer_id"] == json!(a.producer) && e["producer_seq"] == json!(a.pseq)
            });
            if !ok && missing < 5 {
                eprintln!(
                    "missing: {a:?}; the session's last_seq is {last}, {} events read",
                    evs.len()
                );
            }
            missing += usize::from(!ok);
        }
    }
    missing
}

fn sessions(port: u16, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        create_session(port, id);
    }
    ids
}

/// Runs load on a server whose data dir is ext4 on a loop device, cuts the
/// power (`kill -9`, then copies the device image), restarts on the copy and
/// returns (acknowledged, missing after the power cut).
fn power_cut(extra_env: &[(&str, &str)]) -> (usize, usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("disk.img");
    mkfs_ext4(&image, "256M");
    // commit=600: the journal commits only when fdatasync asks for it.
    let live = Mount::new(
        &tmp.path().join("live"),
        &["-o", "loop,commit=600", image.to_str().unwrap()],
    );
    let data = live.dir.join("data");
    let mut opts = ServerOpts::new().data_dir(&data);
    for (k, v) in extra_env {
        opts = opts.env(k, v);
    }
    let mut server = Server::start(opts);
    let ids = sessions(server.port(), "power", 6);
    let stop = Arc::new(AtomicBool::new(false));
    let port = server.port();
    let producers = {
        let stop = stop.clone();
        let ids = ids.clone();
        std::thread::spawn(move || load(port, &ids, 200, stop))
    };
    std::thread::sleep(Duration::from_secs(3));
    server.kill();
    // Power cut: what the device holds now, without the page cache.
    let snapshot = tmp.path().join("after-power-cut.img");
    sh(&[
        "cp",
        "--sparse=always",
        image.to_str().unwrap(),
        snapshot.to_str().unwrap(),
    ]);
    stop.store(true, Ordering::Relaxed);
    let acks = producers.join().expect("producers");
    let live_bytes = log_bytes(&data.join("log"));
    drop(live);
    let after = Mount::new(
        &tmp.path().join("after"),
        &["-o", "loop", snapshot.to_str().unwrap()],
    );
    let data_after = after.dir.join("data");
    let kept_bytes = log_bytes(&data_after.join("log"));
    eprintln!(
        "power cut: {} appends acknowledged; log bytes in the page cache {live_bytes}, on the device {kept_bytes} ({} unsynced bytes dropped)",
        acks.len(),
        live_bytes.saturating_sub(kept_bytes)
    );
    let restarted = Server::start(ServerOpts::new().data_dir(&data_after));
    let missing = missing_acks(restarted.port(), &acks);
    drop(restarted);
    drop(after);
    (acks.len(), missing)
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn power_cut_keeps_every_acknowledged_append() {
    if !privileged() {
        return;
    }
    let (acked, missing) = power_cut(&[]);
    assert!(acked > 50, "too few appends acknowledged: {acked}");
    assert_eq!(
        missing, 0,
        "{missing} of {acked} acknowledged appends lost by a power cut"
    );
}

/// The same power cut against a build that acknowledges without fdatasync
/// (test-only fault point, debug builds only) must lose acknowledged appends:
/// proof that the power cut really drops unsynced data.
#[test]
fn power_cut_catches_a_missing_fdatasync() {
    if !privileged() {
        return;
    }
    let (acked, missing) = power_cut(&[("STARCITE_TEST_FAULT", "skip_fdatasync")]);
    assert!(acked > 50, "too few appends acknowledged: {acked}");
    assert!(
        missing > 0,
        "a node that never calls fdatasync lost none of {acked} acknowledged appends: the power cut is not dropping unsynced writes"
    );
}

/// Waits for the server to exit on its own; returns the exit code and log.
fn expect_exit(server: &mut Server, within: Duration) -> (Option<i32>, String) {
    let status = server.wait_exit(within);
    let log = server.log_tail();
    let status =
        status.unwrap_or_else(|| panic!("the node kept running on a failing disk; log:\n{log}"));
    (status.code(), log)
}

#[test]
fn full_disk_stops_the_node_and_loses_nothing() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut fs = Mount::new(
        &tmp.path().join("small"),
        // Room for the direct-I/O log's preallocated segments (2 cores x
        // 20 MiB, plus a zero-filled spare each) and some appends.
        &["-t", "tmpfs", "-o", "size=96m", "tmpfs"],
    );
    let data = fs.dir.join("data");
    let mut server = Server::start(ServerOpts::new().data_dir(&data));
    let ids = sessions(server.port(), "full", 4);
    let acks = load(
        server.port(),
        &ids,
        16 * 1024,
        Arc::new(AtomicBool::new(false)),
    );
    let (code, log) = expect_exit(&mut server, Duration::from_secs(30));
    eprintln!("{} appends acknowledged before the disk filled", acks.len());
    assert_eq!(code, Some(70), "exit status on a full disk; log:\n{log}");
    assert!(
        log.contains("No space left on device") && log.contains("stopping the node"),
        "no clear log line for the full disk:\n{log}"
    );
    assert!(
        acks.len() > 20,
        "too few appends before the disk filled: {}",
        acks.len()
    );
    // Grow the disk (same files) and restart.
    sh(&["mount", "-o", "remount,size=512m", fs.dir.to_str().unwrap()]);
    server.restart();
    let missing = missing_acks(server.port(), &acks);
    assert_eq!(
        missing, 0,
        "{missing} acknowledged appends lost after a full disk"
    );
    // And the node takes appends again.
    let (st, v) = append(
        server.port(),
        &ids[0],
        &json!({"type": "after", "payload": {}, "producer_id": "after", "producer_seq": 1}),
    );
    assert_eq!(st, 201, "append after growing the disk: {v}");
    drop(server);
    fs.unmount();
}

#[test]
fn fsync_error_stops_the_node_and_loses_nothing() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // The image of a 256 MB ext4 lives on a 48 MB tmpfs: once the image
    // cannot grow, the loop device fails writes and fdatasync reports EIO.
    let mut backing = Mount::new(
        &tmp.path().join("backing"),
        &["-t", "tmpfs", "-o", "size=48m", "tmpfs"],
    );
    let image = backing.dir.join("disk.img");
    mkfs_ext4(&image, "256M");
    let mut fs = Mount::new(
        &tmp.path().join("fs"),
        &["-o", "loop", image.to_str().unwrap()],
    );
    let data = fs.dir.join("data");
    let mut server = Server::start(ServerOpts::new().data_dir(&data));
    let ids = sessions(server.port(), "eio", 4);
    let acks = load(
        server.port(),
        &ids,
        16 * 1024,
        Arc::new(AtomicBool::new(false)),
    );
    let (code, log) = expect_exit(&mut server, Duration::from_secs(60));
    eprintln!(
        "{} appends acknowledged before the device failed",
        acks.len()
    );
    assert_eq!(code, Some(70), "exit status on an fsync error; log:\n{log}");
    // The device error surfaces at fdatasync: EIO, or ENOSPC passed up from
    // the loop device's backing store (or EROFS once the journal aborted).
    assert!(
        log.contains("stopping the node")
            && (log.contains("log append failed: fdatasync: ")
                || log.contains("log append failed: O_DSYNC write: ")
                || log.contains("log new segment failed: "))
            && [
                "Input/output error",
                "No space left on device",
                "Read-only file system"
            ]
            .iter()
            .any(|e| log.contains(e)),
        "no clear log line for the failed fsync:\n{log}"
    );
    assert!(
        acks.len() > 20,
        "too few appends before the device failed: {}",
        acks.len()
    );
    // A healthy disk: grow the backing store, repair the filesystem, restart.
    fs.unmount();
    sh(&[
        "mount",
        "-o",
        "remount,size=320m",
        backing.dir.to_str().unwrap(),
    ]);
    // Repair: e2fsck replays the journal and fixes what the failed writes
    // left (exit 1 or 2: errors corrected). Without it the kernel may mount
    // a file system marked with errors read-only.
    let fsck = Command::new("e2fsck")
        .args(["-fy", image.to_str().unwrap()])
        .output()
        .expect("e2fsck runs");
    assert!(
        matches!(fsck.status.code(), Some(0..=2)),
        "e2fsck could not repair the image: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let fs2 = Mount::new(
        &tmp.path().join("fs2"),
        &["-o", "loop", image.to_str().unwrap()],
    );
    let restarted = Server::start(ServerOpts::new().data_dir(fs2.dir.join("data")));
    // With direct I/O (the default) an acknowledged append was written
    // O_DSYNC before its ack: none may be missing. The buffered path
    // (`STARCITE_LOG_DIRECT_IO=false`) has a known open issue here
    // (docs/testing.md, "Known issues"): it is reported, not asserted.
    let missing = missing_acks(restarted.port(), &acks);
    let buffered = std::env::var("STARCITE_LOG_DIRECT_IO").is_ok_and(|v| v == "false")
        || log.contains("the file system refuses O_DIRECT");
    eprintln!(
        "after the fsync error: {missing} of {} acknowledged appends missing ({} log)",
        acks.len(),
        if buffered { "buffered" } else { "direct" }
    );
    if !buffered {
        assert_eq!(
            missing, 0,
            "acknowledged appends lost after an fsync error with direct I/O"
        );
    }
    // The repaired node takes appends again.
    let (st, v) = append(
        restarted.port(),
        &ids[0],
        &json!({"type": "after", "payload": {}, "producer_id": "after", "producer_seq": 1}),
    );
    assert_eq!(st, 201, "append after repairing the disk: {v}");
    drop(restarted);
    drop(fs2);
    backing.unmount();
}
