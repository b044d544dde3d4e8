//! The archive end to end, per backend (issue 4): committed events reach the backend,
//! are evicted from the hot tier after the ack, and tails from old cursors replay
//! them from the archive stitched to the hot tier with no gap; a backend outage does
//! not stop appends and archiving catches up; a node killed mid-flush loses and
//! duplicates nothing.
//!
//! fs runs everywhere. s3 and postgres run against the real services that
//! `scripts/services` starts (`eval "$(scripts/services env)"`); without them these
//! tests say "skipped" — unless `STARCITE_REQUIRE_SERVICES=1` (the README's test
//! command sets it), where a missing service is a failure.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use starcite::archive::{ArchiveConfig, ArchiveEvent};

/// Tests that stop or share a service run one at a time.
static SERVICES: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Fs,
    S3,
    Pg,
}

struct Backend {
    kind: Kind,
    /// Environment for the node.
    env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

struct VarEnv(Vec<(String, String)>);

impl starcite::config::Env for VarEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn service_var(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("STARCITE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{name} is not set but STARCITE_REQUIRE_SERVICES=1: start the services (scripts/services start)"
            );
            None
        }
    }
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}-{:08x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    t ^ (std::process::id() << 16)
}

fn backend(kind: Kind) -> Option<Backend> {
    let mut env = vec![(
        "STARCITE_ARCHIVE_FLUSH_INTERVAL_MS".to_owned(),
        "200".to_owned(),
    )];
    let mut dir = None;
    match kind {
        Kind::Fs => {
            let d = tempfile::tempdir().unwrap();
            env.push(("STARCITE_ARCHIVE_ADAPTER".into(), "fs".into()));
            env.push((
                "STARCITE_ARCHIVE_FS_DIR".into(),
                d.path().display().to_string(),
            ));
            dir = Some(d);
        }
        Kind::S3 => {
            let endpoint = service_var("STARCITE_TEST_S3_ENDPOINT")?;
            let get = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
            env.push(("STARCITE_ARCHIVE_ADAPTER".into(), "s3".into()));
            env.push(("STARCITE_S3_ENDPOINT".into(), endpoint));
            env.push((
                "STARCITE_S3_BUCKET".into(),
                get("STARCITE_TEST_S3_BUCKET", "starcite-test"),
            ));
            env.push((
                "STARCITE_S3_REGION".into(),
                get("STARCITE_TEST_S3_REGION", "us-east-1"),
            ));
            env.push((
                "STARCITE_S3_ACCESS_KEY_ID".into(),
                get("STARCITE_TEST_S3_ACCESS_KEY_ID", "starcite-test-key"),
            ));
            env.push((
                "STARCITE_S3_SECRET_ACCESS_KEY".into(),
                get("STARCITE_TEST_S3_SECRET_ACCESS_KEY", "starcite-test-secret"),
            ));
            env.push(("STARCITE_S3_PREFIX".into(), unique("e2e")));
        }
        Kind::Pg => {
            let url = service_var("STARCITE_TEST_PG_URL")?;
            env.push(("STARCITE_ARCHIVE_ADAPTER".into(), "postgres".into()));
            env.push(("DATABASE_URL".into(), url));
        }
    }
    Some(Backend {
        kind,
        env,
        _dir: dir,
    })
}

impl Backend {
    fn opts(&self) -> ServerOpts {
        let mut o = ServerOpts::new();
        for (k, v) in &self.env {
            o = o.env(k, v);
        }
        o
    }

    /// The node's archive configuration, opened here to read what it wrote.
    fn config(&self) -> ArchiveConfig {
        starcite::archive::config::from_env(
            &VarEnv(self.env.clone()),
            false,
            &PathBuf::from("/nonexistent"),
        )
        .expect("archive config")
    }

    fn var(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} not in the backend's environment"))
    }

    /// A session's record read straight from the backend (the blob in the
    /// directory or bucket, the `sessions` row), None if absent: its JSON, with
    /// a row's columns as a blob's keys (`updated_at` null for a NULL column).
    fn raw_session(&self, id: &str) -> Option<Value> {
        use starcite::archive::layout::session_key;
        match self.kind {
            Kind::Fs => {
                let path = self.fs_dir().join(session_key("starcite", id));
                let body = std::fs::read_to_string(path).ok()?;
                Some(serde_json::from_str(&body).expect("blob is JSON"))
            }
            Kind::S3 => {
                use rusty_s3::actions::S3Action;
                let bucket = rusty_s3::Bucket::new(
                    self.var("STARCITE_S3_ENDPOINT").parse().unwrap(),
                    rusty_s3::UrlStyle::Path,
                    self.var("STARCITE_S3_BUCKET"),
                    self.var("STARCITE_S3_REGION"),
                )
                .unwrap();
                let creds = rusty_s3::Credentials::new(
                    self.var("STARCITE_S3_ACCESS_KEY_ID"),
                    self.var("STARCITE_S3_SECRET_ACCESS_KEY"),
                );
                let key = session_key(&self.var("STARCITE_S3_PREFIX"), id);
                let url = bucket
                    .get_object(Some(&creds), &key)
                    .sign(Duration::from_secs(60));
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                match agent.request_url("GET", &url).call() {
                    Ok(r) => Some(serde_json::from_str(&r.into_string().unwrap()).unwrap()),
                    Err(ureq::Error::Status(404, _)) => None,
                    Err(e) => panic!("GET {key}: {e}"),
                }
            }
            Kind::Pg => {
                let mut db = postgres::Client::connect(&self.var("DATABASE_URL"), postgres::NoTls)
                    .expect("connect to postgres");
                let row = db
                    .query_opt(
                        "SELECT json_build_object(
                            'id', id, 'title', title, 'tenant_id', tenant_id,
                            'creator_principal', creator_principal, 'metadata', metadata,
                            'updated_at', to_char(updated_at AT TIME ZONE 'UTC',
                                                  'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                            'version', version, 'archived', archived)::text
                         FROM sessions WHERE id = $1",
                        &[&id],
                    )
                    .expect("query sessions")?;
                Some(serde_json::from_str(&row.get::<_, String>(0)).unwrap())
            }
        }
    }

    fn read(&self, session: &str, from: u64, to: u64) -> Vec<ArchiveEvent> {
        let mut a = self.config().open().expect("open archive");
        a.read_events(session, from, to).expect("read archive")
    }

    /// Stops the service process (s3/postgres), or makes the directory unusable (fs).
    fn stop(&self) {
        match self.kind {
            Kind::Fs => {
                let dir = self.fs_dir();
                std::fs::rename(&dir, dir.with_extension("away")).unwrap();
                std::fs::write(&dir, b"not a directory").unwrap();
            }
            Kind::S3 => services(&["stop-s3"]),
            Kind::Pg => services(&["stop-pg"]),
        }
    }

    fn start(&self) {
        match self.kind {
            Kind::Fs => {
                let dir = self.fs_dir();
                std::fs::remove_file(&dir).unwrap();
                std::fs::rename(dir.with_extension("away"), &dir).unwrap();
            }
            Kind::S3 => services(&["start-s3"]),
            Kind::Pg => services(&["start-pg"]),
        }
    }

    fn fs_dir(&self) -> PathBuf {
        let v = &self
            .env
            .iter()
            .find(|(k, _)| k == "STARCITE_ARCHIVE_FS_DIR")
            .unwrap()
            .1;
        PathBuf::from(v)
    }
}

fn services(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run scripts/services");
    assert!(
        out.status.success(),
        "scripts/services {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sum of a metric's samples whose line starts with `name{` or `name `.
fn metric(port: u16, name: &str) -> u64 {
    let text = get(port, "/metrics").text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn body(n: u64) -> Value {
    json!({
        "type": "message",
        "payload": {"n": n, "text": format!("event number {n}"), "z": [1.50, null, true]},
        "producer_id": "p1",
        "producer_seq": n,
        "metadata": {"k": "v"},
        "refs": {"r": n},
        "source": if n % 2 == 0 { Value::from("agent") } else { Value::Null },
        "idempotency_key": format!("idem-{n}"),
    })
}

fn strip_nulls(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v
}

/// Every tier returns the same event, byte for byte once parsed (decision 3;
/// Postgres through its verbatim `frame` column).
fn same_event(_kind: Kind, live: &Value, cold: &Value) -> bool {
    live == cold
}

fn append_range(port: u16, session: &str, from: u64, to: u64) {
    let mut conn = HttpConn::new(port);
    for n in from..=to {
        let (st, v) = conn.post_json(&append_path(session), &strip_nulls(body(n)));
        assert_eq!(st, 201, "append {n}: {v}");
        assert_eq!(v["seq"], n);
    }
}

fn tail_all(port: u16, session: &str, cursor: u64, n: usize) -> Vec<Value> {
    let mut t = Tail::connect(port, session, &format!("cursor={cursor}&batch_size=1000"));
    let got = t.collect_events(n, Duration::from_secs(30));
    assert_eq!(got.len(), n, "tail from {cursor} got {} of {n}", got.len());
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e["seq"], cursor + 1 + i as u64, "gap-free, in order");
    }
    got
}

/// Appends three chunks' worth, waits for archive + eviction, then checks the
/// archive's content, cold replay from several cursors, and the hot/cold seam.
fn archive_evict_replay(kind: Kind) {
    let Some(b) = backend(kind) else {
        eprintln!("skipped: no {kind:?} service");
        return;
    };
    let _g = SERVICES.lock().unwrap_or_else(|p| p.into_inner());
    let server = Server::start(b.opts());
    let port = server.port();
    let session = unique("arch");
    create_session(port, &session);
    let mut live = Tail::connect(port, &session, "cursor=0");
    append_range(port, &session, 1, 700);
    let live = live.collect_events(700, Duration::from_secs(30));
    assert_eq!(live.len(), 700);

    wait_for("archive ack of 700 events", Duration::from_secs(60), || {
        metric(port, "starcite_archive_events_acked_total") >= 700
    });
    wait_for("hot tier eviction", Duration::from_secs(10), || {
        metric(port, "starcite_hot_tier_bytes") == 0
    });
    assert_eq!(metric(port, "starcite_archive_write_errors_total"), 0);

    // What the backend holds is exactly what was committed.
    let stored = b.read(&session, 1, 10_000);
    assert_eq!(stored.len(), 700);
    for (e, l) in stored.iter().zip(&live) {
        let tenant = l["tenant_id"].as_str().unwrap();
        let frame: Value = serde_json::from_slice(&e.to_frame(tenant)).unwrap();
        assert!(same_event(kind, l, &frame), "archived {frame} != live {l}");
    }

    // Cold replay from 0, from the middle of a chunk, from a chunk boundary.
    for cursor in [0u64, 100, 256, 699] {
        let got = tail_all(port, &session, cursor, 700 - cursor as usize);
        for (g, l) in got.iter().zip(&live[cursor as usize..]) {
            assert!(same_event(kind, l, g), "cold {g} != live {l}");
        }
    }
    // The seam: archived 1..=700, hot 701..=720.
    append_range(port, &session, 701, 720);
    let got = tail_all(port, &session, 650, 70);
    assert_eq!(got.last().unwrap()["seq"], 720);
    assert!(metric(port, "starcite_archive_cold_read_events_total") > 0);

    // Restart: archived_seq is replicated state, replay still works.
    let mut server = server;
    server.restart();
    let port = server.port();
    tail_all(port, &session, 0, 720);
    append_range(port, &session, 721, 730);
    wait_for("archive after restart", Duration::from_secs(60), || {
        b.read(&session, 1, 10_000).len() == 730
    });
}

#[test]
fn fs_archives_evicts_and_replays() {
    archive_evict_replay(Kind::Fs);
}

#[test]
fn s3_archives_evicts_and_replays() {
    archive_evict_replay(Kind::S3);
}

#[test]
fn postgres_archives_evicts_and_replays() {
    archive_evict_replay(Kind::Pg);
}

fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let text = body.map(Value::to_string);
    let r = request(
        port,
        method,
        path,
        &[("Content-Type", "application/json")],
        text.as_deref().map(str::as_bytes),
    );
    let v = r.json();
    (r.status, v)
}

/// The catalog members of a session body (GET/PATCH/archive answers) and of an
/// archived record, to compare them.
fn catalog(v: &Value) -> Value {
    json!({
        "id": v["id"],
        "title": v["title"],
        "metadata": v["metadata"],
        "updated_at": v["updated_at"],
        "version": v["version"],
        "archived": v["archived"],
    })
}

/// Waits until the backend's record of `id` has `want`'s catalog members.
fn wait_for_record(b: &Backend, id: &str, want: &Value) {
    let want = catalog(want);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = b.raw_session(id).map(|v| catalog(&v));
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive's record of {id} is {got:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Session state changes reach the archive's session record (issue 15): create,
/// flush; PATCH + archive, flush; unarchive, flush — each time the record read
/// straight from the backend has the session's catalog state (title, metadata,
/// version, updated_at, archived), and the node's own GET agrees. A restarted
/// node does not rewrite records that are current.
fn catalog_changes_reach_the_archive(kind: Kind) {
    let Some(b) = backend(kind) else {
        eprintln!("skipped: no {kind:?} service");
        return;
    };
    let _g = SERVICES.lock().unwrap_or_else(|p| p.into_inner());
    let mut server = Server::start(b.opts());
    let port = server.port();
    let id = unique("catalog");
    let path = format!("/v1/sessions/{}", pct(&id));
    let created = create_session_with(
        port,
        json!({"id": id, "title": "first", "metadata": {"a": "1", "n": {"x": 1}}}),
    );
    assert_eq!(
        (&created["version"], &created["archived"]),
        (&json!(1), &json!(false))
    );
    wait_for_record(&b, &id, &created);
    let record = b.raw_session(&id).unwrap();
    let (st, shown) = get_json(port, &path);
    assert_eq!(st, 200);
    assert_eq!(catalog(&shown), catalog(&created));
    assert_eq!(record["tenant_id"], shown["tenant_id"]);
    assert_eq!(record["creator_principal"], shown["creator_principal"]);
    append_range(port, &id, 1, 3);
    wait_for("the events archived", Duration::from_secs(30), || {
        b.read(&id, 1, 10).len() == 3
    });
    // The record follows the catalog, not appends (which move updated_at only).
    let (st, shown) = get_json(port, &path);
    assert_eq!(st, 200);
    assert_eq!(b.raw_session(&id).unwrap()["version"], 1);
    assert_ne!(shown["updated_at"], created["updated_at"]);

    let (st, patched) = call(
        port,
        "PATCH",
        &path,
        Some(
            &json!({"title": "second", "metadata": {"b": 2, "n": {"y": 2}}, "expected_version": 1}),
        ),
    );
    assert_eq!(st, 200, "{patched}");
    let (st, archived) = call(port, "POST", &format!("{path}/archive"), None);
    assert_eq!(st, 200, "{archived}");
    assert_eq!(archived["version"], 2);
    assert_eq!(archived["archived"], true);
    assert_eq!(archived["title"], "second");
    assert_eq!(
        archived["metadata"],
        json!({"a": "1", "n": {"y": 2}, "b": 2})
    );
    wait_for_record(&b, &id, &archived);

    let (st, unarchived) = call(port, "POST", &format!("{path}/unarchive"), None);
    assert_eq!(st, 200, "{unarchived}");
    assert_eq!(unarchived["archived"], false);
    wait_for_record(&b, &id, &unarchived);
    // The same state through the adapter (what a reader of the archive gets).
    let mut adapter = b.config().open().unwrap();
    let rec = adapter.read_session(&id).unwrap().unwrap();
    assert_eq!(
        (rec.version, rec.archived, rec.title.as_deref()),
        (2, false, Some("second"))
    );

    // A restart: the archiver looks at every session again, and finds the
    // records current (nothing rewritten); changes after it still arrive.
    server.restart();
    let port = server.port();
    wait_for("three archiver ticks", Duration::from_secs(30), || {
        metric(port, "starcite_archive_flushes_total") >= 3
    });
    assert_eq!(metric(port, "starcite_archive_sessions_written_total"), 0);
    assert_eq!(metric(port, "starcite_archive_write_errors_total"), 0);
    wait_for_record(&b, &id, &unarchived);
    let (st, again) = call(port, "PATCH", &path, Some(&json!({"title": null})));
    assert_eq!(st, 200, "{again}");
    assert_eq!(
        (&again["version"], &again["title"]),
        (&json!(3), &Value::Null)
    );
    wait_for_record(&b, &id, &again);
    assert_eq!(metric(port, "starcite_archive_sessions_written_total"), 1);
}

#[test]
fn fs_catalog_changes_reach_the_archive() {
    catalog_changes_reach_the_archive(Kind::Fs);
}

#[test]
fn s3_catalog_changes_reach_the_archive() {
    catalog_changes_reach_the_archive(Kind::S3);
}

#[test]
fn postgres_catalog_changes_reach_the_archive() {
    catalog_changes_reach_the_archive(Kind::Pg);
}

/// A catalog change the group's leader could not archive (backend down) reaches
/// the archive through the next leader: the leader is killed while the backend
/// is away, and the node that takes over — whose archiver had already passed
/// the change while it was a follower — writes the record once the backend is
/// back (it looks at every session of a group it comes to lead).
#[test]
fn fs_cluster_catalog_change_survives_a_leader_change() {
    use common::cluster::{Cluster, ClusterOpts};
    let b = backend(Kind::Fs).unwrap();
    let mut opts = ClusterOpts {
        num_groups: 1,
        env: b.env.clone(),
        ..ClusterOpts::default()
    };
    opts.env
        .retain(|(k, _)| k != "STARCITE_ARCHIVE_FLUSH_INTERVAL_MS");
    opts.env
        .push(("STARCITE_ARCHIVE_FLUSH_INTERVAL_MS".into(), "100".into()));
    let mut c = Cluster::start(opts);
    let id = unique("catalog-fo");
    let path = format!("/v1/sessions/{}", pct(&id));
    let (st, created) = post_json(
        c.http_port(0),
        "/v1/sessions",
        &json!({"id": id, "title": "before"}),
    );
    assert_eq!(st, 201, "{created}");
    wait_for_record(&b, &id, &created);

    b.stop();
    let outage = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let port = c.http_port(1);
        let (st, patched) = call(port, "PATCH", &path, Some(&json!({"title": "after"})));
        assert_eq!(st, 200, "{patched}");
        let (st, archived) = call(port, "POST", &format!("{path}/archive"), None);
        assert_eq!(st, 200, "{archived}");
        // Followers' archivers tick past the change (they lead nothing).
        std::thread::sleep(Duration::from_secs(1));
        let leader = c
            .own_leaders()
            .into_iter()
            .find(|(_, n)| *n == 1)
            .map(|(i, _)| i)
            .expect("one node leads the group");
        c.kill9(leader);
        let survivors: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
        wait_for("a new leader", Duration::from_secs(30), || {
            c.own_leaders().values().sum::<u64>() == 1
        });
        (leader, survivors, archived)
    }));
    b.start();
    let (leader, survivors, archived) = outage.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert_eq!(b.raw_session(&id).unwrap()["title"], "before");
    wait_for_record(&b, &id, &archived);
    let (st, shown) = get_json(c.http_port(survivors[0]), &path);
    assert_eq!(st, 200);
    assert_eq!(catalog(&shown), catalog(&archived));
    c.restart(leader);
    c.assert_no_panics();
}

/// The backend goes away: appends go on (hot tier grows), archiving resumes after
/// it returns, nothing lost or duplicated.
fn backend_outage(kind: Kind) {
    let Some(b) = backend(kind) else {
        eprintln!("skipped: no {kind:?} service");
        return;
    };
    let _g = SERVICES.lock().unwrap_or_else(|p| p.into_inner());
    let server = Server::start(b.opts());
    let port = server.port();
    let session = unique("outage");
    create_session(port, &session);
    append_range(port, &session, 1, 100);
    wait_for("first archive", Duration::from_secs(60), || {
        metric(port, "starcite_archive_events_acked_total") >= 100
    });
    b.stop();
    let outage = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        append_range(port, &session, 101, 400);
        wait_for("archive errors while down", Duration::from_secs(30), || {
            metric(port, "starcite_archive_write_errors_total") > 0
        });
        assert_eq!(metric(port, "starcite_archive_events_acked_total"), 100);
        assert!(metric(port, "starcite_hot_tier_bytes") > 0);
        // Tails still work: 1..=100 are in the archive read cache, the rest hot.
        tail_all(port, &session, 0, 400);
    }));
    b.start();
    if let Err(p) = outage {
        std::panic::resume_unwind(p);
    }
    wait_for(
        "catch-up after the backend returns",
        Duration::from_secs(90),
        || metric(port, "starcite_archive_events_acked_total") >= 400,
    );
    let stored = b.read(&session, 1, 10_000);
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=400).collect::<Vec<_>>(),
        "each seq once, in order"
    );
    tail_all(port, &session, 0, 400);
}

#[test]
fn fs_outage_then_catch_up() {
    backend_outage(Kind::Fs);
}

#[test]
fn s3_outage_then_catch_up() {
    backend_outage(Kind::S3);
}

#[test]
fn postgres_outage_then_catch_up() {
    backend_outage(Kind::Pg);
}

/// kill -9 while appends and flushes run; after restart every acknowledged append
/// is replayed exactly once from archive + hot tier, and the archive holds no seq
/// twice.
fn killed_mid_flush(kind: Kind) {
    let Some(b) = backend(kind) else {
        eprintln!("skipped: no {kind:?} service");
        return;
    };
    let _g = SERVICES.lock().unwrap_or_else(|p| p.into_inner());
    let mut server = Server::start(b.opts().env("STARCITE_ARCHIVE_FLUSH_INTERVAL_MS", "20"));
    let port = server.port();
    let session = unique("kill");
    create_session(port, &session);
    let mut acked = 0u64;
    let mut conn = HttpConn::with_timeout(port, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let n = acked + 1;
        match conn.try_post(
            &append_path(&session),
            strip_nulls(body(n)).to_string().as_bytes(),
        ) {
            Ok(r) if r.status == 201 => acked = n,
            other => panic!("append {n}: {:?}", other.map(|r| r.status)),
        }
        if n == 1500 {
            break;
        }
    }
    assert!(
        metric(port, "starcite_archive_events_written_total") > 0,
        "archiving ran"
    );
    server.kill();
    server.restart();
    let port = server.port();
    let got = tail_all(port, &session, 0, acked as usize);
    assert_eq!(got.len() as u64, acked);
    wait_for("archive catches up", Duration::from_secs(60), || {
        b.read(&session, 1, 100_000).len() as u64 == acked
    });
    let seqs: Vec<u64> = b.read(&session, 1, 100_000).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=acked).collect::<Vec<_>>());
}

#[test]
fn fs_node_killed_mid_flush() {
    killed_mid_flush(Kind::Fs);
}

#[test]
fn s3_node_killed_mid_flush() {
    killed_mid_flush(Kind::S3);
}

#[test]
fn postgres_node_killed_mid_flush() {
    killed_mid_flush(Kind::Pg);
}

/// A chunk missing from the archive, or unreadable, closes the tail with 1011 and
/// the reason (decision 6); it never skips events.
#[test]
fn missing_or_corrupt_archive_closes_the_tail() {
    let b = backend(Kind::Fs).unwrap();
    let server = Server::start(b.opts());
    let port = server.port();
    let session = "gap-session";
    create_session(port, session);
    append_range(port, session, 1, 300);
    wait_for("eviction", Duration::from_secs(60), || {
        metric(port, "starcite_archive_events_acked_total") >= 300
            && metric(port, "starcite_hot_tier_bytes") == 0
    });
    let chunk = b
        .fs_dir()
        .join("starcite/events/v1/Z2FwLXNlc3Npb24/1.ndjson");
    let body = std::fs::read_to_string(&chunk).unwrap();
    // Corrupt: a line without its keys. The node's read cache holds the chunk (the
    // archiver put it there), so restart to read the backend itself.
    std::fs::write(&chunk, body.replacen("\"refs\"", "\"nope\"", 1)).unwrap();
    let mut server = server;
    server.restart();
    let port = server.port();
    let mut t = Tail::connect(port, session, "cursor=0");
    match t.next_frame(Duration::from_secs(20)) {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!((code, reason.as_str()), (1011, "archive_read_unavailable"))
        }
        _ => panic!("expected a 1011 close"),
    }
    // Missing: the first chunk is gone; a cursor in the second chunk still works,
    // one in the first is a gap.
    std::fs::remove_file(&chunk).unwrap();
    tail_all(port, session, 256, 44);
    let mut t = Tail::connect(port, session, "cursor=10");
    match t.next_frame(Duration::from_secs(20)) {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!((code, reason.as_str()), (1011, "event_gap_detected"))
        }
        _ => panic!("expected a 1011 close"),
    }
}

/// A 3-node cluster archiving under load while the node leading the most groups is
/// killed and restarted: the new leaders resume archiving where `archived_seq`
/// says; afterwards every node replays every acknowledged append exactly once
/// (cold + hot), and the archive holds each seq of each session once.
fn cluster_leader_change(kind: Kind) {
    use common::cluster::{
        create_sessions, resolve_pending, session_ids, verify, Cluster, ClusterOpts, Load, LoadOpts,
    };
    let Some(b) = backend(kind) else {
        eprintln!("skipped: no {kind:?} service");
        return;
    };
    let _g = SERVICES.lock().unwrap_or_else(|p| p.into_inner());
    let mut opts = ClusterOpts::default();
    opts.env = b.env.clone();
    opts.env
        .retain(|(k, _)| k != "STARCITE_ARCHIVE_FLUSH_INTERVAL_MS");
    opts.env
        .push(("STARCITE_ARCHIVE_FLUSH_INTERVAL_MS".into(), "100".into()));
    let mut c = Cluster::start(opts);
    let sessions: Vec<String> = session_ids(&unique("arch-fo"), 6);
    create_sessions(&c.ports(), &sessions);
    let load = Load::start(LoadOpts::new("afo", sessions.len(), &sessions, &c.ports()));
    std::thread::sleep(Duration::from_secs(3));
    let leaders = c.own_leaders();
    let victim = leaders
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(i, _)| *i)
        .unwrap();
    let archived_before: u64 = c
        .ports()
        .iter()
        .map(|p| metric(*p, "starcite_archive_events_acked_total"))
        .sum();
    assert!(archived_before > 0, "nothing archived in the first 3 s");
    c.kill9(victim);
    std::thread::sleep(Duration::from_secs(5));
    c.restart(victim);
    std::thread::sleep(Duration::from_secs(2));
    let mut report = load.stop();
    report.assert_no_errors();
    let extra = resolve_pending(&c.ports(), &mut report.producers, Duration::from_secs(30));
    let mut acks = report.acks.clone();
    acks.extend(extra);
    let ports = c.ports();
    wait_for(
        "every node's hot tier drained by the archiver",
        Duration::from_secs(90),
        || {
            ports
                .iter()
                .all(|p| metric(*p, "starcite_hot_tier_bytes") == 0)
        },
    );
    let v = verify(&c, &c.all(), &sessions, &acks, true);
    for s in &sessions {
        let last = v.last[s];
        let seqs: Vec<u64> = b.read(s, 1, 1_000_000).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "archive of {s}");
    }
    c.assert_no_panics();
}

#[test]
fn fs_cluster_leader_change_mid_archive() {
    cluster_leader_change(Kind::Fs);
}

#[test]
fn s3_cluster_leader_change_mid_archive() {
    cluster_leader_change(Kind::S3);
}

#[test]
fn postgres_cluster_leader_change_mid_archive() {
    cluster_leader_change(Kind::Pg);
}

/// With the archive down the hot tier fills up to `STARCITE_EVENT_STORE_MAX_SIZE`,
/// then appends answer 429 `event_store_backpressure` (decision 10) instead of
/// growing without bound; once the archive is back they succeed again.
#[test]
fn fs_backpressure_while_the_archive_is_down() {
    let b = backend(Kind::Fs).unwrap();
    let server = Server::start(b.opts().env("STARCITE_EVENT_STORE_MAX_SIZE", "256KB"));
    let port = server.port();
    let session = "bp-session";
    create_session(port, session);
    b.stop();
    let mut conn = HttpConn::new(port);
    let mut refused = None;
    for n in 1..=5_000u64 {
        let (st, v) = conn.post_json(&append_path(session), &strip_nulls(body(n)));
        if st == 429 {
            assert_eq!(v["error"], "event_store_backpressure", "{v}");
            refused = Some(n);
            break;
        }
        assert_eq!(st, 201, "append {n}: {v}");
    }
    let refused = refused.expect("the hot-tier bound refuses appends");
    assert!(refused > 100, "some appends fit first ({refused})");
    b.start();
    wait_for(
        "appends accepted again after the archive returns",
        Duration::from_secs(60),
        || {
            conn.post_json(&append_path(session), &strip_nulls(body(refused)))
                .0
                == 201
        },
    );
    tail_all(port, session, 0, refused as usize);
}

/// Binary-protocol subscriptions replay from the archive too, with the same
/// events as the WebSocket tail.
#[test]
fn fs_wire_subscription_replays_from_the_archive() {
    use starcite_wire::client::{Client, ClientConfig};
    let b = backend(Kind::Fs).unwrap();
    let server = Server::start(b.opts());
    let port = server.port();
    let session = "wire-cold";
    create_session(port, session);
    append_range(port, session, 1, 600);
    wait_for("eviction", Duration::from_secs(60), || {
        metric(port, "starcite_archive_events_acked_total") >= 600
            && metric(port, "starcite_hot_tier_bytes") == 0
    });
    let ws = tail_all(port, session, 0, 600);
    let client = Client::connect(ClientConfig::new([format!(
        "127.0.0.1:{}",
        server.wire_port()
    )]))
    .expect("connect");
    let sub = client.subscribe(session, 0, 1000).expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 600 && Instant::now() < deadline {
        match sub.next_timeout(Duration::from_secs(5)) {
            Some(Ok(batch)) => got.extend(batch),
            Some(Err(e)) => panic!("subscription ended: {e:?}"),
            None => break,
        }
    }
    assert_eq!(got.len(), 600);
    for (i, (e, w)) in got.iter().zip(&ws).enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        let v: Value = serde_json::from_slice(&e.json).unwrap();
        assert_eq!(&v, w);
    }
    client.close();
}
