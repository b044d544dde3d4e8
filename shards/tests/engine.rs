//! The shard driven by an in-memory "disk": the same calls the io_uring driver
//! makes, without I/O. Covers group commit, recovery from the bytes written,
//! torn tails, and checkpoints.

use rkyv::util::AlignedVec;
use starcite_shards::recovery::{recover, Recovered, SegmentInput};
use starcite_shards::shard::{Outputs, Proposal, Shard, ShardConfig};
use starcite_shards::state::machine::Outcome;
use starcite_shards::EngineError;
use starcite_wire::log::{encode_segment_header, segment_file_name};

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn config(checkpoint_bytes: u64) -> ShardConfig {
    ShardConfig {
        core: 0,
        cores: 1,
        num_groups: 4,
        raft_id: 1,
        groups: (0..4).map(|g| (g, vec![1])).collect(),
        dedupe_window: 128,
        producer_cap: 10_000,
        hot_bytes_limit: 1 << 30,
        incarnation: rand_incarnation(),
        checkpoint_bytes,
        segment_bytes: (checkpoint_bytes / 4).max(4096),
    }
}

fn rand_incarnation() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A whole "disk": segments as byte vectors.
struct MemLog {
    segments: Vec<(u64, Vec<u8>)>,
    /// Segments deleted as obsolete, oldest first (for crafting logs).
    deleted: Vec<(u64, Vec<u8>)>,
}

impl MemLog {
    fn new() -> Self {
        let mut header = Vec::new();
        encode_segment_header(0, &mut header);
        Self {
            segments: vec![(1, header)],
            deleted: Vec::new(),
        }
    }

    fn inputs(&self) -> Vec<SegmentInput> {
        self.segments
            .iter()
            .map(|(seq, bytes)| {
                let mut aligned = AlignedVec::<16>::new();
                aligned.extend_from_slice(bytes);
                SegmentInput {
                    name: segment_file_name(0, *seq),
                    seq: *seq,
                    bytes: aligned,
                }
            })
            .collect()
    }

    fn recover(&self) -> Recovered {
        recover(&self.inputs(), 0, |_| true).expect("recovery succeeds")
    }
}

/// Runs the shard until it has no more work, writing into `log`.
fn drive(shard: &mut Shard<u64>, log: &mut MemLog) -> Outputs<u64> {
    let mut all = Outputs::default();
    while shard.has_ready() {
        let mut buf = Vec::new();
        all.extend(shard.prepare_write(&mut buf));
        log.segments.last_mut().unwrap().1.extend_from_slice(&buf);
        all.extend(shard.on_durable());
        if shard.wants_new_segment() {
            let mut seg = Vec::new();
            encode_segment_header(0, &mut seg);
            let next = log.segments.last().unwrap().0 + 1;
            log.segments.push((next, seg));
            shard.segment_started(next);
        }
        let before = shard.obsolete_before();
        let (keep, gone) = std::mem::take(&mut log.segments)
            .into_iter()
            .partition(|(s, _)| *s >= before);
        log.segments = keep;
        log.deleted.extend::<Vec<_>>(gone);
        shard.segments_deleted(before);
    }
    all
}

fn create(id: &str) -> Proposal {
    Proposal::Create {
        id: id.into(),
        tenant_id: "service".into(),
        title: None,
        metadata_json: "{}".into(),
        principal_id: "service".into(),
        principal_type: "service".into(),
    }
}

fn append(session: &str, producer: &str, pseq: u64) -> Proposal {
    Proposal::Append {
        session: session.into(),
        producer_id: producer.into(),
        producer_seq: pseq,
        fingerprint: [pseq as u8; 16],
        expected_seq: None,
        body: format!("\"type\":\"t\",\"payload\":{{\"n\":{pseq}}}"),
    }
}

/// `config` with a single group.
fn one_group(checkpoint_bytes: u64) -> ShardConfig {
    let mut cfg = config(checkpoint_bytes);
    cfg.num_groups = 1;
    cfg.groups = vec![(0, vec![1])];
    cfg
}

fn start(log: &MemLog, checkpoint_bytes: u64) -> Shard<u64> {
    Shard::new(config(checkpoint_bytes), log.recover(), &logger()).expect("shard starts")
}

fn settle(shard: &mut Shard<u64>, log: &mut MemLog) {
    drive(shard, log);
    assert!(
        shard.all_groups_led(),
        "single-voter groups elect themselves"
    );
}

/// Pipelined group commit: while one batch is being written the shard takes
/// more proposals and collects the next batch, and answers each command only
/// once the batch holding it is durable.
#[test]
fn the_next_batch_forms_while_one_is_written() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 1, 10).unwrap();
    drive(&mut shard, &mut log);
    shard.propose(append("s", "p", 1), 2, 20).unwrap();
    let mut first = Vec::new();
    assert!(shard.prepare_write(&mut first).completions.is_empty());
    assert!(shard.batch_needs_sync());
    // The first batch is in flight: a second command is taken and collected.
    shard.propose(append("s", "p", 2), 3, 21).unwrap();
    let mut second = Vec::new();
    assert!(shard.collect(&mut second).completions.is_empty());
    assert!(
        !second.is_empty(),
        "the second command's entry is collected"
    );
    assert_eq!(shard.read("s", 0, 10).unwrap().last_seq, 0);
    // The first batch is durable: its command is answered with the next
    // collection; the second is not (its batch is not even written).
    log.segments.last_mut().unwrap().1.extend_from_slice(&first);
    assert!(shard.on_durable().completions.is_empty());
    let answered = shard.prepare_write(&mut second).completions;
    let answered: Vec<u64> = answered.into_iter().map(|(w, _)| w).collect();
    assert_eq!(answered, vec![2]);
    assert_eq!(shard.read("s", 0, 10).unwrap().last_seq, 1);
    log.segments
        .last_mut()
        .unwrap()
        .1
        .extend_from_slice(&second);
    shard.on_durable();
    let out = drive(&mut shard, &mut log);
    let answered: Vec<u64> = out.completions.into_iter().map(|(w, _)| w).collect();
    assert_eq!(answered, vec![3]);
    // Both survive a restart from the log.
    drop(shard);
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    assert_eq!(shard.read("s", 0, 10).unwrap().last_seq, 2);
}

#[test]
fn appends_are_answered_after_the_batch_is_durable() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("s1"), 1, 10).unwrap();
    for i in 1..=5 {
        shard
            .propose(append("s1", "p", i), 10 + i, 20)
            .unwrap_or_else(|_| panic!("propose {i}"));
    }
    // Nothing is answered before the write is durable.
    let mut buf = Vec::new();
    let early = shard.prepare_write(&mut buf);
    assert!(early.completions.is_empty());
    log.segments.last_mut().unwrap().1.extend_from_slice(&buf);
    let mut out = shard.on_durable();
    out.extend(drive(&mut shard, &mut log));
    let mut done: Vec<_> = out.completions.into_iter().collect();
    done.sort_by_key(|(w, _)| *w);
    assert_eq!(done[0], (1, Ok(Outcome::Created { created_at_us: 10 })));
    for i in 1..=5u64 {
        assert_eq!(
            done[i as usize],
            (
                10 + i,
                Ok(Outcome::Appended {
                    seq: i,
                    last_seq: i,
                    deduped: false
                })
            )
        );
    }
    assert_eq!(out.notifications.len(), 5);
    let read = shard.read("s1", 2, 10).unwrap();
    assert_eq!(
        read.events.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
}

#[test]
fn recovery_restores_every_durable_append() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    for s in 0..8 {
        shard.propose(create(&format!("s{s}")), 0, 1).unwrap();
    }
    drive(&mut shard, &mut log);
    for i in 1..=50 {
        for s in 0..8 {
            shard
                .propose(append(&format!("s{s}"), "p", i), i, 2)
                .unwrap();
        }
        drive(&mut shard, &mut log);
    }
    let before: Vec<_> = (0..8)
        .map(|s| shard.read(&format!("s{s}"), 0, 1000).unwrap())
        .collect();
    drop(shard);
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    for s in 0..8 {
        assert_eq!(shard.read(&format!("s{s}"), 0, 1000).unwrap(), before[s]);
    }
    // Producer windows survived: a retry dedupes, the next seq continues.
    shard
        .propose(append("s0", "p", 50), 7, 3)
        .map_err(|e| e.1)
        .unwrap();
    shard.propose(append("s0", "p", 51), 8, 3).unwrap();
    let out = drive(&mut shard, &mut log);
    let mut done = out.completions;
    done.sort_by_key(|(w, _)| *w);
    assert_eq!(
        done[0].1,
        Ok(Outcome::Appended {
            seq: 50,
            last_seq: 50,
            deduped: true
        })
    );
    assert_eq!(
        done[1].1,
        Ok(Outcome::Appended {
            seq: 51,
            last_seq: 51,
            deduped: false
        })
    );
}

#[test]
fn torn_tail_loses_only_the_unacknowledged_batch() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    shard.propose(append("s", "p", 1), 1, 1).unwrap();
    drive(&mut shard, &mut log);
    let acked_len = log.segments[0].1.len();
    // A second batch written but torn mid-record by a crash: never acknowledged.
    shard.propose(append("s", "p", 2), 2, 1).unwrap();
    let mut buf = Vec::new();
    shard.prepare_write(&mut buf);
    log.segments[0].1.extend_from_slice(&buf[..buf.len() / 2]);
    drop(shard);
    let recovered = log.recover();
    assert_eq!(
        recovered.truncate.as_ref().map(|t| t.1),
        Some(acked_len as u64)
    );
    let mut shard: Shard<u64> = Shard::new(config(u64::MAX), recovered, &logger()).unwrap();
    log.segments[0].1.truncate(acked_len);
    settle(&mut shard, &mut log);
    assert_eq!(shard.read("s", 0, 10).unwrap().last_seq, 1);
}

#[test]
fn corruption_before_the_tail_stops_recovery() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    for i in 1..=3 {
        shard.propose(append("s", "p", i), i, 1).unwrap();
        drive(&mut shard, &mut log);
    }
    let seg = &mut log.segments[0].1;
    seg[40] ^= 0x55; // inside the first record's payload
    let err = recover(&log.inputs(), 0, |_| true)
        .err()
        .expect("corruption is an error");
    let msg = err.to_string();
    assert!(msg.contains("raft-0-") && msg.contains("offset"), "{msg}");
}

#[test]
fn checkpoints_bound_the_log_and_preserve_state() {
    let mut log = MemLog::new();
    let mut shard = start(&log, 16 * 1024);
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    for i in 1..=2_000 {
        shard.propose(append("s", "p", i), i, 1).unwrap();
        if i % 10 == 0 {
            drive(&mut shard, &mut log);
        }
    }
    // Retries that dedupe grow the log but not the state: compaction must keep
    // the log proportional to the state.
    for i in 0..6_000u64 {
        shard
            .propose(append("s", "p", 2_000 - i % 100), i, 1)
            .unwrap();
        if i % 10 == 0 {
            drive(&mut shard, &mut log);
        }
    }
    drive(&mut shard, &mut log);
    assert!(log.segments[0].0 > 1, "old segments were reclaimed");
    let total: usize = log.segments.iter().map(|s| s.1.len()).sum();
    let before = shard.read("s", 1990, 100).unwrap();
    drop(shard);
    let mut shard = start(&log, 16 * 1024);
    settle(&mut shard, &mut log);
    assert_eq!(shard.read("s", 1990, 100).unwrap(), before);
    assert_eq!(shard.read("s", 0, 1).unwrap().events[0].0, 1);
    // Log size is bounded by the state, not by the history written.
    let state_bytes = shard.hot_bytes() as usize;
    assert!(
        total < 3 * state_bytes + 64 * 1024,
        "log {total} vs state {state_bytes}"
    );
}

#[test]
fn backpressure_rejects_appends_over_the_hot_bound() {
    let mut log = MemLog::new();
    let mut cfg = config(u64::MAX);
    cfg.hot_bytes_limit = 2_000;
    let mut shard: Shard<u64> = Shard::new(cfg, log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    let mut rejected = None;
    for i in 1..=100 {
        if let Err((_, e)) = shard.propose(append("s", "p", i), i, 1) {
            rejected = Some((i, e));
            break;
        }
        drive(&mut shard, &mut log);
    }
    let (at, err) = rejected.expect("the bound is reached");
    assert_eq!(err, EngineError::Backpressure);
    assert!(at > 5, "some appends fit first");
}

fn ack(session: &str, upto: u64) -> Proposal {
    Proposal::AckArchived {
        session: session.into(),
        upto,
    }
}

/// The archiver's view: scan returns unarchived events of led groups; an ack
/// evicts them (reads below answer `Archived`), frees the hot bound, and the
/// state (archived_seq + the remaining hot events) survives checkpoints and
/// recovery (decision 7).
#[test]
fn archive_scan_and_ack_evict_and_survive_recovery() {
    let mut log = MemLog::new();
    let mut cfg = config(16 * 1024);
    cfg.hot_bytes_limit = 60_000;
    let mut shard: Shard<u64> = Shard::new(cfg.clone(), log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    for s in ["a", "b", "empty"] {
        shard.propose(create(s), 0, 100).unwrap();
    }
    drive(&mut shard, &mut log);
    for i in 1..=300 {
        shard.propose(append("a", "p", i), i, 1).unwrap();
        if i <= 10 {
            shard.propose(append("b", "p", i), i, 1).unwrap();
        }
        drive(&mut shard, &mut log);
    }
    // Until the hot bound is hit: then only archiving makes room.
    let mut n = 301;
    while shard.propose(append("a", "p", n), n, 1).is_ok() {
        drive(&mut shard, &mut log);
        n += 1;
    }
    let last = n - 1;
    let stamp = starcite_shards::state::session::catalog_gen();

    let (work, more) = shard.archive_scan(None, 100, usize::MAX, 0);
    assert!(!more);
    let ids: Vec<&str> = work.iter().map(|w| w.session.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["a", "b", "empty"],
        "sessions created since stamp 0 come too, even empty"
    );
    assert_eq!(work[0].events.len(), 100, "per-session cap");
    assert_eq!(work[0].events[0].0, 1);
    assert!(work[2].events.is_empty());
    let (later, _) = shard.archive_scan(None, 100, usize::MAX, stamp);
    assert_eq!(
        later.len(),
        2,
        "sessions without events or catalog changes since the stamp are skipped"
    );
    let (budgeted, more) = shard.archive_scan(None, 100, 1, 0);
    assert_eq!(
        (budgeted.len(), more),
        (1, true),
        "the byte budget stops a scan early"
    );
    let (after_a, _) = shard.archive_scan(Some("a"), 100, usize::MAX, 0);
    assert_eq!(
        after_a[0].session.id, "b",
        "scans resume after a session id"
    );

    let hot_before = shard.hot_bytes();
    shard.propose(ack("a", 250), 9_000, 2).unwrap();
    shard.propose(ack("b", 10_000), 9_001, 2).unwrap();
    let out = drive(&mut shard, &mut log);
    let mut acks: Vec<_> = out
        .completions
        .into_iter()
        .filter(|(w, _)| *w >= 9_000)
        .collect();
    acks.sort_by_key(|(w, _)| *w);
    assert_eq!(acks[0].1, Ok(Outcome::Acked { archived_seq: 250 }));
    assert_eq!(
        acks[1].1,
        Ok(Outcome::Acked { archived_seq: 10 }),
        "capped at last_seq"
    );
    assert!(shard.hot_bytes() < hot_before);
    assert_eq!(
        shard.read("a", 100, 10),
        Err(EngineError::Archived { archived_seq: 250 })
    );
    assert_eq!(shard.read("a", 250, 1).unwrap().events[0].0, 251);
    assert!(shard.read("b", 10, 10).unwrap().events.is_empty());
    // Room again.
    shard.propose(append("a", "p", n), n, 1).unwrap();
    drive(&mut shard, &mut log);
    let (work, _) = shard.archive_scan(None, 10_000, usize::MAX, stamp);
    assert_eq!(work.len(), 1);
    assert_eq!((work[0].archived_seq, work[0].events[0].0), (250, 251));
    assert_eq!(work[0].events.last().unwrap().0, last + 1);

    // Recovery keeps archived_seq and exactly the unarchived events.
    let before = shard.read("a", 250, 1000).unwrap();
    drop(shard);
    let mut shard: Shard<u64> = Shard::new(cfg, log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    assert_eq!(shard.read("a", 250, 1000).unwrap(), before);
    assert_eq!(
        shard.read("a", 0, 1),
        Err(EngineError::Archived { archived_seq: 250 })
    );
}

/// Catalog changes reach the archiver's scan: a session without unarchived
/// events comes back once it is patched, archived or unarchived after the
/// archiver's stamp (a no-op archive does not bring it back), with its new
/// catalog state; a restart (restore) brings every session back once.
#[test]
fn archive_scan_returns_sessions_whose_catalog_changed() {
    use starcite_shards::state::session::catalog_gen;
    let mut log = MemLog::new();
    let cfg = config(16 * 1024);
    let mut shard: Shard<u64> = Shard::new(cfg.clone(), log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    for s in ["c1", "c2", "c3"] {
        shard.propose(create(s), 0, 100).unwrap();
    }
    drive(&mut shard, &mut log);
    let ids = |w: &[starcite_shards::shard::ArchiveWork]| {
        w.iter().map(|w| w.session.id.clone()).collect::<Vec<_>>()
    };
    let stamp = catalog_gen();
    assert!(shard
        .archive_scan(None, 100, usize::MAX, stamp)
        .0
        .is_empty());

    shard
        .propose(
            Proposal::Patch {
                session: "c2".into(),
                set_title: true,
                title: Some("renamed".into()),
                metadata_json: Some(r#"{"k":"v"}"#.into()),
                expected_version: None,
            },
            1,
            200,
        )
        .unwrap();
    let archive = |s: &str, archived| Proposal::SetArchived {
        session: s.into(),
        archived,
    };
    shard.propose(archive("c3", true), 2, 200).unwrap();
    drive(&mut shard, &mut log);
    let (work, more) = shard.archive_scan(None, 100, usize::MAX, stamp);
    assert!(!more);
    assert_eq!(ids(&work), vec!["c2", "c3"]);
    assert!(work.iter().all(|w| w.events.is_empty()));
    let c2 = &work[0].session;
    assert_eq!((c2.version, c2.title.as_deref()), (2, Some("renamed")));
    assert_eq!(c2.metadata["k"], "v");
    let c3 = &work[1].session;
    assert_eq!((c3.version, c3.archived), (1, true));
    assert!(c3.updated_at_us > c3.created_at_us);

    let stamp = catalog_gen();
    shard.propose(archive("c3", true), 3, 300).unwrap();
    drive(&mut shard, &mut log);
    assert!(
        shard
            .archive_scan(None, 100, usize::MAX, stamp)
            .0
            .is_empty(),
        "a no-op archive changes nothing to write"
    );
    shard.propose(archive("c3", false), 4, 300).unwrap();
    drive(&mut shard, &mut log);
    let (work, _) = shard.archive_scan(None, 100, usize::MAX, stamp);
    assert_eq!(ids(&work), vec!["c3"]);
    assert!(!work[0].session.archived);

    // A restarted replica has not archived anything yet: every session comes.
    let stamp = catalog_gen();
    drop(shard);
    let mut shard: Shard<u64> = Shard::new(cfg, log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    let (work, _) = shard.archive_scan(None, 100, usize::MAX, stamp);
    assert_eq!(ids(&work), vec!["c1", "c2", "c3"]);
    let stamp = catalog_gen();
    assert!(shard
        .archive_scan(None, 100, usize::MAX, stamp)
        .0
        .is_empty());
}

/// An append whose body is `len` bytes of JSON.
fn big_append(session: &str, producer: &str, pseq: u64, len: usize) -> Proposal {
    let head = "\"type\":\"t\",\"payload\":{\"s\":\"";
    let fill = len - head.len() - 2;
    Proposal::Append {
        session: session.into(),
        producer_id: producer.into(),
        producer_seq: pseq,
        fingerprint: [pseq as u8; 16],
        expected_seq: None,
        body: format!("{head}{}\"}}", "x".repeat(fill)),
    }
}

/// `(offset, record kind)` of every frame in a segment, with its payload length.
fn frames_of(bytes: &[u8]) -> Vec<(u64, &'static str, usize)> {
    use starcite_wire::record::ArchivedLogRecord;
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    let seg = starcite_wire::log::decode_segment(&aligned).unwrap();
    seg.frames
        .iter()
        .map(|(offset, payload)| {
            let record = rkyv::access::<ArchivedLogRecord, rkyv::rancor::Error>(payload).unwrap();
            let kind = match record {
                ArchivedLogRecord::Entries { .. } => "entries",
                ArchivedLogRecord::HardState { .. } => "hard_state",
                ArchivedLogRecord::Snapshot { .. } => "snapshot",
                ArchivedLogRecord::SnapshotPart { .. } => "snapshot_part",
                ArchivedLogRecord::ChunkedSnapshot { .. } => "chunked_snapshot",
                ArchivedLogRecord::Membership { .. } => "membership",
            };
            (*offset, kind, payload.len())
        })
        .collect()
}

const BIG: usize = 7_900_000;

/// Issue 13: nine ~7.9 MB appends to one session in one batch are more than a
/// log frame (64 MiB) of entries. They are written as several records, all
/// acknowledged, and recovered.
#[test]
fn a_batch_over_a_frame_is_split_into_records() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("big"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    for i in 1..=9 {
        shard.propose(big_append("big", "p", i, BIG), i, 2).unwrap();
    }
    let mut buf = Vec::new();
    shard.prepare_write(&mut buf);
    assert!(
        buf.len() > starcite_wire::log::MAX_FRAME_PAYLOAD,
        "one batch over a frame"
    );
    log.segments.last_mut().unwrap().1.extend_from_slice(&buf);
    let mut out = shard.on_durable();
    out.extend(drive(&mut shard, &mut log));
    let mut seqs: Vec<u64> = out
        .completions
        .iter()
        .map(|(_, r)| match r {
            Ok(Outcome::Appended { seq, .. }) => *seq,
            other => panic!("{other:?}"),
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    let entries: Vec<usize> = log
        .segments
        .iter()
        .flat_map(|(_, b)| frames_of(b))
        .filter(|f| f.1 == "entries")
        .map(|f| f.2)
        .collect();
    assert!(
        entries.iter().filter(|len| **len > BIG).count() >= 4,
        "{entries:?}"
    );
    assert!(entries
        .iter()
        .all(|len| *len <= starcite_wire::limits::ENTRIES_RECORD_BYTES + BIG + 4096));
    drop(shard);
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    let read = shard.read("big", 0, 100).unwrap();
    assert_eq!(read.events.len(), 9);
    assert!(read.events.iter().all(|(_, frame)| frame.len() > BIG));
}

/// Issue 13: a checkpoint of a group holding more than a log frame of unarchived
/// events writes its snapshot in parts, and recovery reassembles it.
#[test]
fn a_snapshot_over_a_frame_is_written_in_parts_and_recovered() {
    let mut log = MemLog::new();
    let mut shard = start(&log, 1024 * 1024);
    settle(&mut shard, &mut log);
    shard.propose(create("big"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    for i in 1..=9 {
        shard.propose(big_append("big", "p", i, BIG), i, 2).unwrap();
        drive(&mut shard, &mut log);
    }
    assert!(shard.hot_bytes() as usize > starcite_wire::log::MAX_FRAME_PAYLOAD);
    // Retries dedupe: they grow the log, not the state, until a checkpoint is due.
    let mut retries = 0;
    while !log
        .segments
        .iter()
        .any(|(_, b)| frames_of(b).iter().any(|f| f.1 == "chunked_snapshot"))
    {
        retries += 1;
        assert!(retries < 40, "no checkpoint");
        shard
            .propose(big_append("big", "p", 9, BIG), 100 + retries, 3)
            .unwrap();
        drive(&mut shard, &mut log);
    }
    let frames: Vec<_> = log
        .segments
        .iter()
        .flat_map(|(_, b)| frames_of(b))
        .collect();
    let parts = frames.iter().filter(|f| f.1 == "snapshot_part").count();
    assert!(parts >= 9, "{parts} parts");
    assert!(frames
        .iter()
        .all(|f| f.2 <= starcite_wire::limits::SNAPSHOT_CHUNK + 64 * 1024 || f.1 == "entries"));
    let before = shard.read("big", 0, 100).unwrap();
    drop(shard);
    let mut shard = start(&log, 1024 * 1024);
    settle(&mut shard, &mut log);
    assert_eq!(shard.read("big", 0, 100).unwrap(), before);
    assert_eq!(before.events.len(), 9);
    // The producer window came back too: the retry still dedupes.
    shard.propose(big_append("big", "p", 9, BIG), 1, 4).unwrap();
    let out = drive(&mut shard, &mut log);
    assert!(matches!(
        out.completions[0].1,
        Ok(Outcome::Appended {
            seq: 9,
            deduped: true,
            ..
        })
    ));
}

/// Issue 13: recovery never skips a missing entries record.
#[test]
fn a_gap_in_the_entries_stops_recovery_with_file_and_offset() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    for i in 1..=6 {
        shard.propose(append("s", "p", i), i, 1).unwrap();
        drive(&mut shard, &mut log);
    }
    drop(shard);
    // Cut out one entries record from the middle of the log.
    let seg = &mut log.segments[0].1;
    let frames = frames_of(seg);
    let entries: Vec<_> = frames.iter().filter(|f| f.1 == "entries").collect();
    let victim = entries[entries.len() / 2];
    let start_at = victim.0 as usize;
    let next = frames
        .iter()
        .find(|f| f.0 > victim.0)
        .map_or(seg.len(), |f| f.0 as usize);
    seg.drain(start_at..next);
    let err = recover(&log.inputs(), 0, |_| true)
        .err()
        .expect("a gap is an error");
    let msg = err.to_string();
    assert!(
        matches!(err, starcite_shards::recovery::RecoveryError::Gap { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("raft-0-") && msg.contains("offset") && msg.contains("gap"),
        "{msg}"
    );
}

/// Issue 13: a flipped bit in the last frame, written completely and
/// acknowledged, is corruption, not a torn tail to truncate.
#[test]
fn a_flipped_bit_in_the_last_acknowledged_frame_is_corruption() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    shard.propose(append("s", "p", 1), 1, 1).unwrap();
    let out = drive(&mut shard, &mut log);
    assert!(!out.completions.is_empty(), "acknowledged");
    drop(shard);
    let seg = &mut log.segments[0].1;
    let last = frames_of(seg).last().unwrap().0 as usize;
    seg[last + 16 + 3] ^= 0x10;
    let err = recover(&log.inputs(), 0, |_| true)
        .err()
        .expect("damage to the last frame is an error");
    let msg = err.to_string();
    assert!(
        msg.contains("raft-0-") && msg.contains(&format!("offset {last}")),
        "{msg}"
    );
}

/// A command larger than a log entry may be is refused (413 at the gateway),
/// never proposed.
#[test]
fn a_command_over_the_entry_limit_is_refused() {
    let mut log = MemLog::new();
    let mut shard = start(&log, u64::MAX);
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    let err = shard
        .propose(
            big_append("s", "p", 1, starcite_wire::limits::MAX_ENTRY),
            1,
            2,
        )
        .err()
        .expect("refused");
    assert_eq!(err.1, EngineError::TooLarge);
    // One at the request-body limit is fine.
    shard
        .propose(
            big_append("s", "p", 1, starcite_wire::limits::REQUEST_BODY),
            2,
            2,
        )
        .unwrap();
    let out = drive(&mut shard, &mut log);
    assert!(matches!(
        out.completions[0].1,
        Ok(Outcome::Appended { seq: 1, .. })
    ));
}

/// A checkpoint cut off by a crash right after its snapshot record (the
/// unsynced rest of the batch lost) must not cost the entries after that
/// snapshot which an earlier segment holds durably: recovery keeps them
/// (a snapshot at the point already held keeps the log after it) and keeps
/// that segment pinned, so it is not deleted as obsolete. Found by the
/// simulator (seed 205707 with wipes forced on): a follower lost six
/// acknowledged entries this way.
#[test]
fn a_torn_checkpoint_keeps_the_entries_an_earlier_segment_holds() {
    let mut log = MemLog::new();
    // Small checkpoints: the group is snapshotted into later segments.
    let mut shard = Shard::new(one_group(2048), log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    for i in 1..=40 {
        shard.propose(append("s", "p", i), i, 1).unwrap();
        drive(&mut shard, &mut log);
    }
    drop(shard);
    // No more checkpoints: the next appends follow the last snapshot record.
    let mut shard = Shard::new(one_group(u64::MAX), log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    for i in 41..=45 {
        shard.propose(append("s", "p", i), i, 1).unwrap();
        drive(&mut shard, &mut log);
    }
    drop(shard);
    let before = log.recover();
    let g = &before.groups[&0];
    let (snapshot, last) = (g.storage.snapshot_index(), g.storage.last_index_now());
    let pin = g.pin_segment.expect("pinned");
    assert!(
        last > snapshot,
        "entries follow the snapshot: {snapshot}..{last}"
    );
    // The same checkpoint written again into a new segment, torn after its
    // snapshot, membership and hard state records (nothing of its entries).
    let (seq, bytes) = log.segments.iter().find(|(s, _)| *s == pin).unwrap();
    let frames = frames_of(bytes);
    let at = frames
        .iter()
        .position(|f| f.1 == "snapshot")
        .expect("a snapshot");
    assert_eq!(
        frames[at..at + 3].iter().map(|f| f.1).collect::<Vec<_>>(),
        ["snapshot", "membership", "hard_state"]
    );
    let end = frames.get(at + 3).map_or(bytes.len(), |f| f.0 as usize);
    let mut torn = Vec::new();
    encode_segment_header(0, &mut torn);
    torn.extend_from_slice(&bytes[frames[at].0 as usize..end]);
    let next = log.segments.last().unwrap().0 + 1;
    assert!(*seq < next);
    log.segments.push((next, torn));

    let after = log.recover();
    let g = &after.groups[&0];
    assert_eq!(g.storage.snapshot_index(), snapshot);
    assert_eq!(g.storage.last_index_now(), last, "no entry lost");
    assert_eq!(
        g.pin_segment,
        Some(pin),
        "the segment with the entries stays"
    );
    let mut shard = Shard::new(one_group(u64::MAX), after, &logger()).unwrap();
    settle(&mut shard, &mut log);
    let read = shard.read("s", 0, 100).unwrap();
    assert_eq!(
        read.events.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=45).collect::<Vec<_>>()
    );
    // More work deletes no segment it still needs: a later restart has it all.
    shard.propose(append("s", "p", 46), 46, 1).unwrap();
    drive(&mut shard, &mut log);
    drop(shard);
    let shard: Shard<u64> = Shard::new(one_group(u64::MAX), log.recover(), &logger()).unwrap();
    assert_eq!(shard.read("s", 0, 100).unwrap().events.len(), 46);
}

/// First and last index of an entries record (None for other records).
fn entries_span(bytes: &[u8], offset: u64) -> Option<(u64, u64)> {
    use starcite_wire::record::ArchivedLogRecord;
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    let seg = starcite_wire::log::decode_segment(&aligned).unwrap();
    let (_, payload) = seg.frames.iter().find(|(o, _)| *o == offset)?;
    match rkyv::access::<ArchivedLogRecord, rkyv::rancor::Error>(payload).unwrap() {
        ArchivedLogRecord::Entries { entries, .. } => Some((
            entries.first()?.index.to_native(),
            entries.last()?.index.to_native(),
        )),
        _ => None,
    }
}

/// A checkpoint's snapshot written after the entries it keeps, once the
/// segments before those entries are deleted: recovery reads the kept entries
/// while the log still has a gap (nothing before them), then the snapshot. The
/// entries holding the snapshot's own index with its term are the log the
/// checkpoint was taken from; the ones after it are kept, and the next records
/// connect to them. Found by the simulator (seed 21435): recovery dropped the
/// kept entries and then refused to start ("entries … start at 75 but the log
/// holds up to 73").
#[test]
fn a_checkpoint_written_after_the_entries_it_keeps_reconnects_them() {
    // The kept entries from one before the snapshot's index (seed 21435), and
    // from right after it (seed 710538 with disk wipes: a torn checkpoint lost
    // its copy of the tail, the entries before it were kept, and the
    // segment before them was deleted).
    checkpoint_after_its_entries(-1);
    checkpoint_after_its_entries(1);
    // A run that starts later does not continue the snapshot: still a gap.
    checkpoint_after_its_entries(2);
}

/// Segment A: the entries from the snapshot's index + `from` up to two past
/// it; segment B: the checkpoint, then the rest.
fn checkpoint_after_its_entries(from: i64) {
    let mut log = MemLog::new();
    let mut shard = Shard::new(one_group(u64::MAX), log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    shard.propose(create("s"), 0, 1).unwrap();
    drive(&mut shard, &mut log);
    for i in 1..=20 {
        shard.propose(append("s", "p", i), i, 1).unwrap();
        drive(&mut shard, &mut log);
    }
    drop(shard);
    // One checkpoint (tiny threshold), then no more.
    let mut shard = Shard::new(one_group(1), log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    shard.propose(append("s", "p", 21), 21, 1).unwrap();
    drive(&mut shard, &mut log);
    drop(shard);
    let mut shard = Shard::new(one_group(u64::MAX), log.recover(), &logger()).unwrap();
    settle(&mut shard, &mut log);
    for i in 22..=25 {
        shard.propose(append("s", "p", i), i, 1).unwrap();
        drive(&mut shard, &mut log);
    }
    drop(shard);
    let whole = log.recover();
    let snap = whole.groups[&0].storage.snapshot_index();
    let last = whole.groups[&0].storage.last_index_now();
    assert!(snap > 3 && last > snap + 3, "snapshot {snap}, last {last}");

    // Every entries record and the checkpoint's records, in log order.
    let mut entries = Vec::new();
    let mut checkpoint = Vec::new();
    for (_, bytes) in log.deleted.iter().chain(&log.segments) {
        let frames = frames_of(bytes);
        for (i, f) in frames.iter().enumerate() {
            let end = frames.get(i + 1).map_or(bytes.len(), |n| n.0 as usize);
            let frame = bytes[f.0 as usize..end].to_vec();
            if f.1 == "entries" {
                entries.push((entries_span(bytes, f.0).unwrap(), frame));
            } else if f.1 == "snapshot" && checkpoint.is_empty() {
                checkpoint.push(frame);
            } else if (1..3).contains(&checkpoint.len()) {
                checkpoint.push(frame); // its membership and hard state
            }
        }
    }
    // Segment A: the entries from just before the snapshot to two past it
    // (everything earlier deleted). Segment B: the checkpoint, then the
    // entries after those, none of A's repeated.
    let kept_to = snap + 2;
    let mut a = Vec::new();
    encode_segment_header(0, &mut a);
    let mut covered = 0;
    for ((first, end), frame) in &entries {
        let joins = match covered {
            0 => (*first..=*end).contains(&snap.saturating_add_signed(from)),
            _ => *first == covered + 1 && covered < kept_to,
        };
        if joins {
            a.extend_from_slice(frame);
            covered = *end;
        }
    }
    let mut b = Vec::new();
    encode_segment_header(0, &mut b);
    for frame in &checkpoint {
        b.extend_from_slice(frame);
    }
    let mut next = covered + 1;
    for ((first, end), frame) in &entries {
        if *first == next {
            b.extend_from_slice(frame);
            next = end + 1;
        }
    }
    assert_eq!(next, last + 1, "the crafted log reaches the end");
    let crafted = MemLog {
        segments: vec![(7, a), (8, b)],
        deleted: Vec::new(),
    };
    if from > 1 {
        let err = recover(&crafted.inputs(), 0, |_| true)
            .err()
            .expect("a gap");
        assert!(
            matches!(err, starcite_shards::recovery::RecoveryError::Gap { .. }),
            "{err}"
        );
        return;
    }
    let recovered = crafted.recover();
    let g = &recovered.groups[&0];
    assert_eq!(g.storage.snapshot_index(), snap);
    assert_eq!(g.storage.last_index_now(), last, "no entry lost");
    let mut crafted = crafted;
    let mut shard = Shard::new(one_group(u64::MAX), recovered, &logger()).unwrap();
    settle(&mut shard, &mut crafted);
    let read = shard.read("s", 0, 100).unwrap();
    assert_eq!(
        read.events.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=25).collect::<Vec<_>>()
    );
}
