//! The S3 archive adapter against a real S3-compatible server (`scripts/services`):
//! the objects it writes are read back directly from the bucket and checked against
//! the contract's layout (§11.1).
//!
//! Needs `STARCITE_TEST_S3_ENDPOINT` & co. (`eval "$(scripts/services env)"`). Without
//! them each test prints "skipped: no service" and passes, unless
//! `STARCITE_REQUIRE_SERVICES=1` (as `scripts/test` sets), where it fails.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use rusty_s3::actions::S3Action;
use rusty_s3::{Bucket, Credentials, UrlStyle};
use serde_json::{json, Map, Value};
use starcite::archive::adapter::{Adapter, ArchiveError, S3Config};
use starcite::archive::layout::{event_key, session_key};
use starcite::archive::s3::S3Adapter;
use starcite::archive::{ArchiveEvent, SessionRecord};

/// Tests share the server; the outage test stops it, so it runs alone.
static SERVER: RwLock<()> = RwLock::new(());

fn service_var(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ if std::env::var("STARCITE_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "{name} is not set but STARCITE_REQUIRE_SERVICES=1: start the services with \
             `scripts/services start` and `eval \"$(scripts/services env)\"`"
        ),
        _ => {
            eprintln!("skipped: no service ({name} is not set; see scripts/services)");
            None
        }
    }
}

/// A configuration with a prefix of its own, so tests never see each other's objects.
fn config(test: &str) -> Option<S3Config> {
    let endpoint = service_var("STARCITE_TEST_S3_ENDPOINT")?;
    let var = |n: &str, d: &str| std::env::var(n).unwrap_or_else(|_| d.to_owned());
    Some(S3Config {
        bucket: var("STARCITE_TEST_S3_BUCKET", "starcite-test"),
        region: var("STARCITE_TEST_S3_REGION", "us-east-1"),
        endpoint: Some(endpoint),
        access_key_id: Some(var("STARCITE_TEST_S3_ACCESS_KEY_ID", "starcite-test-key")),
        secret_access_key: Some(var(
            "STARCITE_TEST_S3_SECRET_ACCESS_KEY",
            "starcite-test-secret",
        )),
        session_token: None,
        path_style: true,
        prefix: format!("t/{test}-{}", unique()),
        max_write_retries: 4,
    })
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}{:04x}", rand::random::<u16>())
}

fn services_script() -> PathBuf {
    std::env::var("STARCITE_TEST_SERVICES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services"))
}

fn services(cmd: &str) {
    let status = Command::new(services_script())
        .arg(cmd)
        .status()
        .expect("run scripts/services");
    assert!(status.success(), "scripts/services {cmd} failed");
}

/// Direct access to the bucket, around the adapter.
struct Raw {
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
}

struct RawObject {
    body: String,
    content_type: Option<String>,
}

impl Raw {
    fn new(c: &S3Config) -> Raw {
        Raw {
            bucket: Bucket::new(
                c.endpoint.as_deref().unwrap().parse().unwrap(),
                UrlStyle::Path,
                c.bucket.clone(),
                c.region.clone(),
            )
            .unwrap(),
            credentials: Credentials::new(
                c.access_key_id.clone().unwrap(),
                c.secret_access_key.clone().unwrap(),
            ),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        }
    }

    fn get(&self, key: &str) -> Option<RawObject> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(Duration::from_secs(60));
        match self.agent.request_url("GET", &url).call() {
            Ok(r) => Some(RawObject {
                content_type: r.header("content-type").map(str::to_owned),
                body: r.into_string().unwrap(),
            }),
            Err(ureq::Error::Status(404, _)) => None,
            Err(e) => panic!("GET {key}: {e}"),
        }
    }

    fn put(&self, key: &str, body: &str) {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), key)
            .sign(Duration::from_secs(60));
        self.agent
            .request_url("PUT", &url)
            .set("Content-Type", "application/x-ndjson")
            .send_string(body)
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    }
}

fn session(id: &str) -> SessionRecord {
    SessionRecord::created(
        id,
        Some("Support chat".into()),
        "acme",
        ("alice", "user"),
        json!({"k": "v", "n": 1}).as_object().unwrap().clone(),
        1_772_360_131_004_518,
    )
}

fn ev(seq: u64) -> ArchiveEvent {
    let payload: Value = serde_json::from_str(&format!(
        r#"{{"n":{seq},"text":"héllo \"{seq}\"\n","big":123456789012345678901234567890,"f":1.50,"nested":{{"z":[true,null]}}}}"#
    ))
    .unwrap();
    let mut metadata = Map::new();
    metadata.insert("starcite_principal".into(), json!({"id": "alice"}));
    let mut refs = Map::new();
    if seq.is_multiple_of(3) {
        refs.insert("reply_to".into(), json!(seq - 1));
    }
    ArchiveEvent {
        seq,
        event_type: "message".into(),
        payload,
        actor: "user:alice".into(),
        producer_id: "writer-1".into(),
        producer_seq: seq,
        source: seq.is_multiple_of(2).then(|| "agent".to_owned()),
        metadata,
        refs,
        idempotency_key: seq.is_multiple_of(5).then(|| format!("idem-{seq}")),
        inserted_at_us: 1_772_360_131_000_000 + seq as i64 * 1_001,
    }
}

fn events(seqs: impl IntoIterator<Item = u64>) -> Vec<ArchiveEvent> {
    seqs.into_iter().map(ev).collect()
}

const LINE_KEYS: &[&str] = &[
    "seq",
    "type",
    "payload",
    "actor",
    "producer_id",
    "producer_seq",
    "source",
    "metadata",
    "refs",
    "idempotency_key",
    "inserted_at",
];

#[test]
fn s3_objects_have_the_contract_layout() {
    let Some(c) = config("layout") else { return };
    let _shared = SERVER.read().unwrap();
    let raw = Raw::new(&c);
    let mut a = S3Adapter::open(&c).unwrap();
    let s = session("ses/layout?1");
    a.write_sessions(std::slice::from_ref(&s)).unwrap();
    assert_eq!(a.write_events(&s, &events(1..=300)).unwrap(), 300);

    // Keys: <p>/events/v1/<unpadded url-safe base64>/<chunk_start>.ndjson
    let b64 = "c2VzL2xheW91dD8x";
    assert_eq!(
        event_key(&c.prefix, &s.id, 257),
        format!("{}/events/v1/{b64}/257.ndjson", c.prefix)
    );
    for (chunk, seqs) in [(1u64, 1..=256u64), (257, 257..=300)] {
        let key = format!("{}/events/v1/{b64}/{chunk}.ndjson", c.prefix);
        let obj = raw.get(&key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(obj.content_type.as_deref(), Some("application/x-ndjson"));
        assert!(!obj.body.ends_with('\n'), "no trailing newline");
        let lines: Vec<&str> = obj.body.split('\n').collect();
        assert_eq!(lines.len(), seqs.clone().count());
        for (line, seq) in lines.iter().zip(seqs) {
            let v: Map<String, Value> = serde_json::from_str(line).unwrap();
            for k in LINE_KEYS {
                assert!(v.contains_key(*k), "{k} missing in {line}");
            }
            assert_eq!(v["seq"], json!(seq));
            // Naive ISO-8601 with microseconds, no zone suffix.
            let at = v["inserted_at"].as_str().unwrap();
            assert_eq!(at.len(), 26, "{at}");
            assert!(!at.ends_with('Z') && !at.contains('+'), "{at}");
            assert_eq!(&at[19..20], ".");
            if seq % 2 == 1 {
                assert_eq!(v["source"], Value::Null);
            }
            if seq % 5 != 0 {
                assert_eq!(v["idempotency_key"], Value::Null);
            }
            assert_eq!(*line, ev(seq).to_line(Some("acme")));
            assert_eq!(ArchiveEvent::from_line(line).unwrap(), ev(seq));
        }
    }
    assert!(raw
        .get(&format!("{}/events/v1/{b64}/513.ndjson", c.prefix))
        .is_none());

    let blob = raw
        .get(&format!("{}/sessions/v1/{b64}.json", c.prefix))
        .expect("session blob");
    assert_eq!(blob.content_type.as_deref(), Some("application/json"));
    assert_eq!(blob.body, s.to_blob());
    let v: Map<String, Value> = serde_json::from_str(&blob.body).unwrap();
    let keys: Vec<&str> = v.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "id",
            "title",
            "tenant_id",
            "creator_principal",
            "metadata",
            "created_at",
            "updated_at",
            "version",
            "archived"
        ]
    );
    assert_eq!(v["created_at"], "2026-03-01T10:15:31.004518Z");
    assert_eq!(v["updated_at"], "2026-03-01T10:15:31.004518Z");
    assert_eq!((&v["version"], &v["archived"]), (&json!(1), &json!(false)));
    assert_eq!(
        v["creator_principal"],
        json!({"tenant_id": "acme", "id": "alice", "type": "user"})
    );
    assert_eq!(
        session_key(&c.prefix, &s.id),
        format!("{}/sessions/v1/{b64}.json", c.prefix)
    );
}

#[test]
fn s3_writes_are_idempotent_and_overlaps_count_only_new_events() {
    let Some(c) = config("idem") else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = S3Adapter::open(&c).unwrap();
    let s = session("ses-idem");
    assert_eq!(a.write_events(&s, &events(1..=100)).unwrap(), 100);
    assert_eq!(a.write_events(&s, &events(1..=100)).unwrap(), 0);
    assert_eq!(a.write_events(&s, &events(50..=300)).unwrap(), 200);
    assert_eq!(a.write_events(&s, &events(250..=520)).unwrap(), 220);
    assert_eq!(a.write_events(&s, &events(1..=520)).unwrap(), 0);
    // A gap filled later lands in place.
    assert_eq!(a.write_events(&s, &events(600..=610)).unwrap(), 11);
    assert_eq!(a.write_events(&s, &events(521..=599)).unwrap(), 79);
    let all = a.read_events("ses-idem", 1, 1000).unwrap();
    assert_eq!(all, events(1..=610));

    // An existing line wins over a rewrite with different content.
    let mut changed = ev(10);
    changed.payload = json!({"changed": true});
    assert_eq!(a.write_events(&s, &[changed]).unwrap(), 0);
    assert_eq!(a.read_events("ses-idem", 10, 10).unwrap(), vec![ev(10)]);
}

/// Catalog states of one session, oldest first: created, archived, patched
/// (version 2), unarchived.
fn revisions(id: &str) -> Vec<SessionRecord> {
    let v1 = session(id);
    let mut archived = v1.clone();
    archived.archived = true;
    archived.updated_at_us += 1_000;
    let mut patched = archived.clone();
    patched.version = 2;
    patched.title = Some("Renamed".into());
    patched
        .metadata
        .insert("added".into(), json!({"deep": [1, 2]}));
    patched.updated_at_us += 2_000;
    let mut unarchived = patched.clone();
    unarchived.archived = false;
    unarchived.updated_at_us += 1;
    vec![v1, archived, patched, unarchived]
}

/// The blob of an earlier version: the six keys only.
fn six_key_blob(s: &SessionRecord) -> String {
    let full = s.to_blob();
    format!("{}}}", &full[..full.find(",\"updated_at\"").unwrap()])
}

#[test]
fn s3_session_blobs_keep_the_newest_revision() {
    let Some(c) = config("sessions") else { return };
    let _shared = SERVER.read().unwrap();
    let raw = Raw::new(&c);
    let key = session_key(&c.prefix, "ses-rev");
    let mut a = S3Adapter::open(&c).unwrap();
    let mut b = S3Adapter::open(&c).unwrap();
    let revs = revisions("ses-rev");
    for (i, r) in revs.iter().enumerate() {
        assert_eq!(
            a.write_sessions(std::slice::from_ref(r)).unwrap(),
            1,
            "rev {i}"
        );
        let blob = raw.get(&key).unwrap();
        assert_eq!(blob.body, r.to_blob());
        assert_eq!(blob.content_type.as_deref(), Some("application/json"));
    }
    let newest = revs.last().unwrap();
    let v: Value = serde_json::from_str(&raw.get(&key).unwrap().body).unwrap();
    assert_eq!(v["title"], "Renamed");
    assert_eq!(v["metadata"]["added"], json!({"deep": [1, 2]}));
    assert_eq!((&v["version"], &v["archived"]), (&json!(2), &json!(false)));
    // Late writers of older states (a previous leader's archiver), and the same
    // state again, leave the blob alone.
    assert_eq!(b.write_sessions(&revs[..3]).unwrap(), 0);
    assert_eq!(a.write_sessions(std::slice::from_ref(newest)).unwrap(), 0);
    assert_eq!(raw.get(&key).unwrap().body, newest.to_blob());
    assert_eq!(b.read_session("ses-rev").unwrap().as_ref(), Some(newest));
    assert_eq!(b.read_session("ses-none").unwrap(), None);

    // A blob written by an earlier version (six keys) reads with defaults, is
    // kept by its own state, and replaced by any change.
    let old = session("ses-old");
    let old_key = session_key(&c.prefix, "ses-old");
    raw.put(&old_key, &six_key_blob(&old));
    assert_eq!(a.read_session("ses-old").unwrap(), Some(old.clone()));
    assert_eq!(a.write_sessions(std::slice::from_ref(&old)).unwrap(), 0);
    assert_eq!(raw.get(&old_key).unwrap().body, six_key_blob(&old));
    let changed = revisions("ses-old").remove(1);
    assert_eq!(a.write_sessions(std::slice::from_ref(&changed)).unwrap(), 1);
    assert_eq!(raw.get(&old_key).unwrap().body, changed.to_blob());

    // An unreadable blob: reads report it, the next write replaces it.
    raw.put(&old_key, "{\"id\":");
    assert!(matches!(
        a.read_session("ses-old"),
        Err(ArchiveError::Unreadable(_))
    ));
    assert_eq!(a.write_sessions(std::slice::from_ref(&changed)).unwrap(), 1);
    assert_eq!(a.read_session("ses-old").unwrap(), Some(changed));
}

/// Writers racing with different revisions of one session (conditional PUTs,
/// retried on 409/412): the blob ends as the newest revision, whatever the
/// interleaving.
#[test]
fn s3_concurrent_session_writers_keep_the_newest() {
    let Some(mut c) = config("sessions-race") else {
        return;
    };
    let _shared = SERVER.read().unwrap();
    c.max_write_retries = 20;
    let raw = Raw::new(&c);
    for round in 0..3 {
        let id = format!("ses-race-{round}");
        let revs = revisions(&id);
        let barrier = Arc::new(Barrier::new(revs.len()));
        let writers: Vec<_> = revs
            .iter()
            .cloned()
            .map(|r| {
                let (c, barrier) = (c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut a = S3Adapter::open(&c).unwrap();
                    barrier.wait();
                    a.write_sessions(&[r]).unwrap()
                })
            })
            .collect();
        let stored: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(stored >= 1, "someone wrote");
        let blob = raw.get(&session_key(&c.prefix, &id)).unwrap();
        assert_eq!(blob.body, revs.last().unwrap().to_blob(), "round {round}");
    }
}

#[test]
fn s3_reads_filter_to_the_range() {
    let Some(c) = config("range") else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = S3Adapter::open(&c).unwrap();
    let s = session("ses-range");
    a.write_events(&s, &events(1..=300)).unwrap();
    assert_eq!(
        a.read_events("ses-range", 250, 260).unwrap(),
        events(250..=260)
    );
    assert_eq!(a.read_events("ses-range", 1, 1).unwrap(), events(1..=1));
    assert_eq!(
        a.read_events("ses-range", 256, 257).unwrap(),
        events(256..=257)
    );
    assert_eq!(
        a.read_events("ses-range", 290, 5000).unwrap(),
        events(290..=300)
    );
    assert!(a.read_events("ses-range", 301, 400).unwrap().is_empty());
    assert!(a.read_events("ses-range", 10, 5).unwrap().is_empty());
    assert!(a
        .read_events("no-such-session", 1, 1000)
        .unwrap()
        .is_empty());
}

#[test]
fn s3_an_unreadable_line_makes_the_chunk_unreadable() {
    let Some(c) = config("unreadable") else {
        return;
    };
    let _shared = SERVER.read().unwrap();
    let raw = Raw::new(&c);
    let mut a = S3Adapter::open(&c).unwrap();
    let s = session("ses-bad");
    a.write_events(&s, &events(1..=10)).unwrap();
    let key = event_key(&c.prefix, "ses-bad", 1);
    let body = raw.get(&key).unwrap().body;
    // Line 5 loses its `refs` key.
    let broken: Vec<String> = body
        .split('\n')
        .enumerate()
        .map(|(i, l)| {
            if i == 4 {
                let mut v: Map<String, Value> = serde_json::from_str(l).unwrap();
                v.remove("refs");
                serde_json::to_string(&v).unwrap()
            } else {
                l.to_owned()
            }
        })
        .collect();
    raw.put(&key, &broken.join("\n"));
    assert!(matches!(
        a.read_events("ses-bad", 1, 3),
        Err(ArchiveError::Unreadable(_))
    ));
    // A write never papers over it either.
    assert!(matches!(
        a.write_events(&s, &events(11..=12)),
        Err(ArchiveError::Unreadable(_))
    ));
    raw.put(&key, "not json");
    assert!(matches!(
        a.read_events("ses-bad", 1, 3),
        Err(ArchiveError::Unreadable(_))
    ));
}

#[test]
fn s3_concurrent_writers_of_one_chunk_lose_nothing() {
    let Some(mut c) = config("race") else { return };
    let _shared = SERVER.read().unwrap();
    // Two writers hammering one chunk with no pause between writes (the archiver
    // writes once per tick): more retries than the default so neither starves.
    c.max_write_retries = 20;
    let s = session("ses-race");
    let writers = 2;
    let per_writer = 60u64;
    let barrier = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = (0..writers as u64)
        .map(|w| {
            let (c, s, barrier) = (c.clone(), s.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut a = S3Adapter::open(&c).unwrap();
                barrier.wait();
                let mut added = 0;
                // Writer 0 writes odd seqs, writer 1 even ones, one event at a time,
                // all into chunk 1: their read-merge-write cycles interleave, and a
                // lost update would drop the other writer's lines.
                for i in 0..per_writer {
                    let seq = i * writers as u64 + w + 1;
                    added += a.write_events(&s, &[ev(seq)]).unwrap();
                }
                added
            })
        })
        .collect();
    let added: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let total = per_writer * writers as u64;
    assert_eq!(added as u64, total, "every event counted once");
    let mut a = S3Adapter::open(&c).unwrap();
    let got = a.read_events("ses-race", 1, 1000).unwrap();
    let seqs: BTreeSet<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=total).collect::<BTreeSet<_>>());
    assert_eq!(got, events(1..=total));
}

/// Restarts the S3 server even if the test fails half-way.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = Command::new(services_script()).arg("resume-s3").status();
        let _ = Command::new(services_script()).arg("start-s3").status();
    }
}

#[test]
fn s3_store_down_is_unavailable_in_bounded_time_then_recovers() {
    let Some(c) = config("outage") else { return };
    let _alone = SERVER.write().unwrap_or_else(|e| e.into_inner());
    let _restore = Restore;
    let mut a = S3Adapter::open(&c).unwrap();
    let s = session("ses-outage");
    a.write_sessions(std::slice::from_ref(&s)).unwrap();
    assert_eq!(a.write_events(&s, &events(1..=100)).unwrap(), 100);

    // Process stopped: connections refused.
    services("stop-s3");
    let t = Instant::now();
    let r = a.write_events(&s, &events(101..=200));
    assert!(matches!(r, Err(ArchiveError::Unavailable(_))), "{r:?}");
    assert!(matches!(
        a.read_events("ses-outage", 1, 10),
        Err(ArchiveError::Unavailable(_))
    ));
    assert!(matches!(
        a.write_sessions(&[session("ses-outage-2")]),
        Err(ArchiveError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Back: the same adapter carries on, nothing lost (the server keeps its objects).
    services("start-s3");
    assert_eq!(a.write_events(&s, &events(101..=200)).unwrap(), 100);
    assert_eq!(
        a.read_events("ses-outage", 1, 300).unwrap(),
        events(1..=200)
    );

    // Process frozen: connections accepted, never answered → the request timeout.
    services("pause-s3");
    let t = Instant::now();
    let r = a.read_events("ses-outage", 1, 10);
    let waited = t.elapsed();
    services("resume-s3");
    assert!(matches!(r, Err(ArchiveError::Unavailable(_))), "{r:?}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    assert_eq!(a.write_events(&s, &events(150..=210)).unwrap(), 10);
    assert_eq!(
        a.read_events("ses-outage", 1, 300).unwrap(),
        events(1..=210)
    );
}
