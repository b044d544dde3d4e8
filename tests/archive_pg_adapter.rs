//! The Postgres archive adapter against a real PostgreSQL (`scripts/services`): the
//! schema, rows and behaviour of the contract (§11.2), checked with SQL directly.
//!
//! Needs `STARCITE_TEST_PG_URL` (`eval "$(scripts/services env)"`). Without it each
//! test prints "skipped: no service" and passes, unless `STARCITE_REQUIRE_SERVICES=1`
//! (as `scripts/test` sets), where it fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde_json::{json, Map, Value};
use starcite::archive::adapter::{Adapter, ArchiveError, PostgresConfig};
use starcite::archive::postgres::PostgresAdapter;
use starcite::archive::{ArchiveEvent, SessionRecord};

/// Tests share the server; the outage test stops it, so it runs alone.
static SERVER: RwLock<()> = RwLock::new(());

fn pg_url() -> Option<String> {
    const VAR: &str = "STARCITE_TEST_PG_URL";
    match std::env::var(VAR) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ if std::env::var("STARCITE_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "{VAR} is not set but STARCITE_REQUIRE_SERVICES=1: start the services with \
             `scripts/services start` and `eval \"$(scripts/services env)\"`"
        ),
        _ => {
            eprintln!("skipped: no service ({VAR} is not set; see scripts/services)");
            None
        }
    }
}

fn config(url: &str) -> PostgresConfig {
    PostgresConfig {
        url: url.to_owned(),
        pool_size: 1,
        migrate_on_boot: true,
    }
}

fn sql(url: &str) -> Client {
    Client::connect(url, NoTls).expect("connect for checks")
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{nanos:x}{:04x}", rand::random::<u16>())
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

fn session(id: &str) -> SessionRecord {
    SessionRecord::created(
        id,
        Some("Support chat".into()),
        "acme",
        ("alice", "user"),
        json!({"k": "v", "n": 1}).as_object().unwrap().clone(),
        // 2026-03-01T10:15:31.904518Z: stored as …:31, truncated, not rounded.
        1_772_360_131_904_518,
    )
}

const BASE_US: i64 = 1_772_360_131_000_000;

fn ev(seq: u64) -> ArchiveEvent {
    let payload: Value = serde_json::from_str(&format!(
        r#"{{"n":{seq},"text":"héllo \"{seq}\"\n","big":123456789012345678901234567890,"f":1.50,"neg":-0.000001,"nested":{{"z":[true,null,{{"b":1,"a":2}}]}}}}"#
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
        // 0.9 s past a whole second on odd seqs: truncation must not round up.
        inserted_at_us: BASE_US + seq as i64 * 1_000_000 + if seq % 2 == 1 { 900_000 } else { 0 },
    }
}

/// What the table gives back: timestamps at whole seconds.
fn stored(seq: u64) -> ArchiveEvent {
    let mut e = ev(seq);
    e.inserted_at_us = e.inserted_at_us.div_euclid(1_000_000) * 1_000_000;
    e
}

fn events(seqs: impl IntoIterator<Item = u64>) -> Vec<ArchiveEvent> {
    seqs.into_iter().map(ev).collect()
}

fn stored_events(seqs: impl IntoIterator<Item = u64>) -> Vec<ArchiveEvent> {
    seqs.into_iter().map(stored).collect()
}

/// `(name, data type, nullable, default, datetime precision)`.
type Column = (String, String, bool, Option<String>, Option<i32>);

#[test]
fn pg_schema_is_the_contract_one_and_migrations_are_idempotent() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    // Twice, and concurrently: migrations serialise and apply once.
    let a = std::thread::spawn({
        let url = url.clone();
        move || PostgresAdapter::open(&config(&url)).map(|_| ())
    });
    PostgresAdapter::open(&config(&url)).unwrap();
    a.join().unwrap().unwrap();
    PostgresAdapter::open(&config(&url)).unwrap();

    let mut db = sql(&url);
    let columns = |db: &mut Client, table: &str| -> Vec<Column> {
        db.query(
            "SELECT column_name::text, data_type::text, is_nullable = 'YES',
                    column_default::text, datetime_precision::int
             FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1
             ORDER BY ordinal_position",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
    };
    let ts = "timestamp without time zone";
    let c = |n: &str, t: &str, null: bool, def: Option<&str>| {
        let p = (t == ts).then_some(0);
        (n.to_owned(), t.to_owned(), null, def.map(str::to_owned), p)
    };
    assert_eq!(
        columns(&mut db, "events"),
        vec![
            c("session_id", "text", false, None),
            c("seq", "bigint", false, None),
            c("type", "text", false, None),
            c("payload", "jsonb", false, None),
            c("actor", "text", false, None),
            c("source", "text", true, None),
            c("metadata", "jsonb", false, Some("'{}'::jsonb")),
            c("refs", "jsonb", false, Some("'{}'::jsonb")),
            c("idempotency_key", "text", true, None),
            c("inserted_at", ts, false, None),
            c("producer_id", "text", true, None),
            c("producer_seq", "bigint", true, None),
            // Ours, additive (docs/archive.md "Fidelity"): the event verbatim.
            c("frame", "text", true, None),
        ]
    );
    assert_eq!(
        columns(&mut db, "sessions"),
        vec![
            c("id", "text", false, None),
            c("title", "text", true, None),
            c("metadata", "jsonb", false, Some("'{}'::jsonb")),
            c("created_at", ts, false, None),
            c("creator_principal", "jsonb", true, None),
            c("tenant_id", "text", false, None),
            // The catalog state, upstream's names and types (docs/archive.md).
            c("version", "bigint", false, Some("1")),
            c("archived", "boolean", false, Some("false")),
            (
                "updated_at".into(),
                "timestamp with time zone".into(),
                true,
                None,
                Some(6)
            ),
        ]
    );
    let indexes: Vec<(String, String)> = db
        .query(
            "SELECT tablename::text, indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename IN ('events', 'sessions')
             ORDER BY indexname",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let has = |table: &str, def: &str| indexes.iter().any(|(t, d)| t == table && d.contains(def));
    assert!(
        has(
            "events",
            "UNIQUE INDEX events_pkey ON public.events USING btree (session_id, seq)"
        ),
        "{indexes:#?}"
    );
    assert!(
        has(
            "events",
            "USING btree (session_id, producer_id, producer_seq)"
        ),
        "{indexes:#?}"
    );
    assert!(!has("events", "(session_id, inserted_at)"), "{indexes:#?}");
    assert!(
        has(
            "sessions",
            "UNIQUE INDEX sessions_pkey ON public.sessions USING btree (id)"
        ),
        "{indexes:#?}"
    );
    assert!(has("sessions", "USING gin (metadata)"), "{indexes:#?}");
    assert!(has("sessions", "USING btree (tenant_id)"), "{indexes:#?}");
    assert!(
        has(
            "sessions",
            "sessions_tenant_id_archived_id_index ON public.sessions USING btree (tenant_id, archived, id)"
        ),
        "{indexes:#?}"
    );
    assert_eq!(indexes.len(), 6, "{indexes:#?}");

    let versions: Vec<i64> = db
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = starcite::archive::postgres::MIGRATIONS
        .iter()
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(versions, expected);
}

#[test]
fn pg_rows_have_the_contract_content() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let s = session(&unique("ses/rows"));
    a.write_sessions(std::slice::from_ref(&s)).unwrap();
    assert_eq!(a.write_events(&s, &events(1..=300)).unwrap(), 300);

    let mut db = sql(&url);
    let rows = db
        .query(
            "SELECT seq, type, payload = $2::text::jsonb, actor, source, metadata::text,
                    refs::text, idempotency_key,
                    to_char(inserted_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'),
                    producer_id, producer_seq, payload->>'big', payload->>'f'
             FROM events WHERE session_id = $1 ORDER BY seq",
            &[&s.id, &serde_json::to_string(&ev(1).payload).unwrap()],
        )
        .unwrap();
    assert_eq!(rows.len(), 300);
    for (row, seq) in rows.iter().zip(1u64..) {
        let e = ev(seq);
        assert_eq!(row.get::<_, i64>(0), seq as i64);
        assert_eq!(row.get::<_, String>(1), "message");
        assert_eq!(row.get::<_, bool>(2), seq == 1);
        assert_eq!(row.get::<_, String>(3), "user:alice");
        assert_eq!(row.get::<_, Option<String>>(4), e.source);
        let metadata: Value = serde_json::from_str(&row.get::<_, String>(5)).unwrap();
        assert_eq!(metadata, Value::Object(e.metadata.clone()));
        let refs: Value = serde_json::from_str(&row.get::<_, String>(6)).unwrap();
        assert_eq!(refs, Value::Object(e.refs.clone()));
        assert_eq!(row.get::<_, Option<String>>(7), e.idempotency_key);
        // timestamp(0): whole seconds, truncated (odd seqs are at .9 s).
        let at = row.get::<_, String>(8);
        assert_eq!(at, format!("2026-03-01T10:{}.000000", mm_ss(31 + seq)));
        assert_eq!(row.get::<_, Option<String>>(9).as_deref(), Some("writer-1"));
        assert_eq!(row.get::<_, Option<i64>>(10), Some(seq as i64));
        assert_eq!(row.get::<_, String>(11), "123456789012345678901234567890");
        assert_eq!(row.get::<_, String>(12), "1.50");
    }

    let row = db
        .query_one(
            "SELECT id, title, metadata::text, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'),
                    creator_principal::text, tenant_id
             FROM sessions WHERE id = $1",
            &[&s.id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), s.id);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("Support chat")
    );
    let metadata: Value = serde_json::from_str(&row.get::<_, String>(2)).unwrap();
    assert_eq!(metadata, json!({"k": "v", "n": 1}));
    assert_eq!(row.get::<_, String>(3), "2026-03-01 10:15:31.000000");
    let principal: Value = serde_json::from_str(&row.get::<_, String>(4)).unwrap();
    assert_eq!(
        principal,
        json!({"tenant_id": "acme", "id": "alice", "type": "user"})
    );
    assert_eq!(row.get::<_, String>(5), "acme");

    // And back through the adapter: equal but for the sub-second part.
    assert_eq!(a.read_events(&s.id, 1, 300).unwrap(), events(1..=300));
}

/// `MM:SS` of 10:15:00 + `secs` seconds (below an hour).
fn mm_ss(secs: u64) -> String {
    let t = 15 * 60 + secs;
    format!("{:02}:{:02}", t / 60, t % 60)
}

#[test]
fn pg_writes_are_idempotent_in_batches_and_count_only_new_rows() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let s = session(&unique("ses-idem"));
    assert_eq!(a.write_events(&s, &events(1..=100)).unwrap(), 100);
    assert_eq!(a.write_events(&s, &events(1..=100)).unwrap(), 0);
    assert_eq!(a.write_events(&s, &events(50..=300)).unwrap(), 200);
    // More than one 5,000-row batch, overlapping what is there.
    assert_eq!(a.write_events(&s, &events(1..=12_000)).unwrap(), 11_700);
    assert_eq!(a.write_events(&s, &events(1..=12_000)).unwrap(), 0);
    assert_eq!(a.read_events(&s.id, 1, 20_000).unwrap(), events(1..=12_000));

    // An existing row wins over a rewrite with different content.
    let mut changed = ev(10);
    changed.payload = json!({"changed": true});
    assert_eq!(a.write_events(&s, &[changed]).unwrap(), 0);
    assert_eq!(a.read_events(&s.id, 10, 10).unwrap(), events(10..=10));
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
    patched.title = None;
    patched
        .metadata
        .insert("added".into(), json!({"deep": [1, 2]}));
    patched.updated_at_us += 2_000;
    let mut unarchived = patched.clone();
    unarchived.archived = false;
    unarchived.updated_at_us += 1;
    vec![v1, archived, patched, unarchived]
}

/// The catalog columns of a row, straight from the table:
/// (title, metadata, version, updated_at as RFC 3339 µs text or NULL, archived,
/// tenant_id, creator_principal).
type CatalogRow = (
    Option<String>,
    Value,
    i64,
    Option<String>,
    bool,
    String,
    Value,
);

fn catalog_row(db: &mut Client, id: &str) -> CatalogRow {
    let r = db
        .query_one(
            "SELECT title, metadata::text, version,
                    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    archived, tenant_id, creator_principal::text,
                    count(*) OVER ()
             FROM sessions WHERE id = $1",
            &[&id],
        )
        .unwrap();
    assert_eq!(r.get::<_, i64>(7), 1, "one row");
    (
        r.get(0),
        serde_json::from_str(&r.get::<_, String>(1)).unwrap(),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        serde_json::from_str(&r.get::<_, String>(6)).unwrap(),
    )
}

fn expected_row(s: &SessionRecord) -> CatalogRow {
    (
        s.title.clone(),
        Value::Object(s.metadata.clone()),
        s.version as i64,
        Some(starcite_shards::time::format_micros(s.updated_at_us)),
        s.archived,
        s.tenant_id.clone(),
        serde_json::from_str(&s.principal_json()).unwrap(),
    )
}

#[test]
fn pg_session_rows_keep_the_newest_revision() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let mut b = PostgresAdapter::open(&config(&url)).unwrap();
    let mut db = sql(&url);
    let id = unique("ses-rev");
    let revs = revisions(&id);
    for (i, r) in revs.iter().enumerate() {
        assert_eq!(
            a.write_sessions(std::slice::from_ref(r)).unwrap(),
            1,
            "rev {i}"
        );
        assert_eq!(catalog_row(&mut db, &id), expected_row(r), "rev {i}");
    }
    let newest = revs.last().unwrap();
    // Late writers of older states, and the same state again: no change.
    assert_eq!(b.write_sessions(&revs[..3]).unwrap(), 0);
    assert_eq!(a.write_sessions(std::slice::from_ref(newest)).unwrap(), 0);
    assert_eq!(catalog_row(&mut db, &id), expected_row(newest));
    // The creation columns never change, even from a newer record.
    let mut newer = newest.clone();
    newer.version = 3;
    newer.tenant_id = "other".into();
    newer.created_at_us += 60_000_000;
    assert_eq!(a.write_sessions(std::slice::from_ref(&newer)).unwrap(), 1);
    let row = catalog_row(&mut db, &id);
    assert_eq!((row.2, row.5.as_str()), (3, "acme"));
    // Read back through the adapter: created_at is whole seconds (timestamp(0)).
    let back = b.read_session(&id).unwrap().unwrap();
    let mut want = newer.clone();
    want.tenant_id = "acme".into();
    want.created_at_us = newest.created_at_us / 1_000_000 * 1_000_000;
    assert_eq!(back, want);
    assert_eq!(b.read_session(&unique("ses-none")).unwrap(), None);
}

/// The catalog migration on a database an earlier version created and filled:
/// existing rows get version 1, not archived, `updated_at` = `created_at`, and
/// running the migrations again changes nothing.
#[test]
fn pg_catalog_migration_upgrades_existing_rows() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut db = sql(&url);
    let schema = unique("upgrade").replace(['-', '/'], "_").to_lowercase();
    db.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let mut old = sql(&url);
    old.batch_execute(&format!("SET search_path TO {schema}"))
        .unwrap();
    // The schema as the previous release left it.
    let (catalog_step, earlier) = starcite::archive::postgres::MIGRATIONS
        .split_last()
        .unwrap();
    old.batch_execute(
        "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0))",
    )
    .unwrap();
    for (version, step) in earlier {
        old.batch_execute(step).unwrap();
        old.execute(
            "INSERT INTO schema_migrations VALUES ($1, now())",
            &[version],
        )
        .unwrap();
    }
    old.batch_execute(
        "INSERT INTO sessions (id, title, metadata, created_at, creator_principal, tenant_id)
         VALUES ('s1', 't', '{\"a\":1}', '2026-03-01 10:15:31', NULL, 'acme'),
                ('s2', NULL, '{}', '2026-03-02 00:00:00', NULL, 'acme')",
    )
    .unwrap();
    let state = |db: &mut Client| -> Vec<(String, i64, bool, String)> {
        db.query(
            "SELECT id, version, archived,
                    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')
             FROM sessions ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    };
    for _ in 0..2 {
        starcite::archive::postgres::migrate(&mut old).unwrap();
        assert_eq!(
            state(&mut old),
            vec![
                ("s1".into(), 1, false, "2026-03-01 10:15:31.000000".into()),
                ("s2".into(), 1, false, "2026-03-02 00:00:00.000000".into()),
            ]
        );
    }
    let applied: i64 = old
        .query_one(
            "SELECT count(*) FROM schema_migrations WHERE version = $1",
            &[&catalog_step.0],
        )
        .unwrap()
        .get(0);
    assert_eq!(applied, 1);
    drop(old);
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

/// A row inserted the way earlier versions did (no catalog columns) reads as
/// version 1, not archived, `updated_at` = `created_at`; its own state does not
/// rewrite it, any change does.
#[test]
fn pg_rows_of_earlier_versions_read_with_defaults_and_get_replaced() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let mut db = sql(&url);
    let id = unique("ses-old");
    let mut old = session(&id);
    // Whole seconds, as an earlier version stored created_at.
    old.created_at_us = 1_772_360_131_000_000;
    old.updated_at_us = old.created_at_us;
    db.execute(
        "INSERT INTO sessions (id, title, metadata, created_at, creator_principal, tenant_id)
         VALUES ($1, $2, $3::text::jsonb, to_timestamp($4::bigint) AT TIME ZONE 'UTC',
                 $5::text::jsonb, $6)",
        &[
            &id,
            &old.title,
            &serde_json::to_string(&old.metadata).unwrap(),
            &(old.created_at_us / 1_000_000),
            &old.principal_json(),
            &old.tenant_id,
        ],
    )
    .unwrap();
    let row = catalog_row(&mut db, &id);
    assert_eq!((row.2, row.3, row.4), (1, None, false), "column defaults");
    assert_eq!(a.read_session(&id).unwrap(), Some(old.clone()));
    assert_eq!(a.write_sessions(std::slice::from_ref(&old)).unwrap(), 0);
    assert_eq!(
        catalog_row(&mut db, &id).3,
        None,
        "same revision: untouched"
    );
    let mut archived = old.clone();
    archived.archived = true;
    archived.updated_at_us += 1;
    assert_eq!(
        a.write_sessions(std::slice::from_ref(&archived)).unwrap(),
        1
    );
    assert_eq!(catalog_row(&mut db, &id), expected_row(&archived));
}

#[test]
fn pg_reads_filter_to_the_range_and_json_round_trips() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let s = session(&unique("ses-range"));
    a.write_events(&s, &events(1..=300)).unwrap();
    assert_eq!(a.read_events(&s.id, 250, 260).unwrap(), events(250..=260));
    assert_eq!(
        a.read_events(&s.id, 290, u64::MAX).unwrap(),
        events(290..=300)
    );
    assert!(a.read_events(&s.id, 301, 400).unwrap().is_empty());
    assert!(a.read_events(&s.id, 10, 5).unwrap().is_empty());
    assert!(a
        .read_events("no-such-session", 1, 1000)
        .unwrap()
        .is_empty());

    // Arbitrary-precision numbers and escapes survive jsonb (key order does not
    // matter: values compare as JSON).
    let got = &a.read_events(&s.id, 7, 7).unwrap()[0];
    assert_eq!(got.payload, ev(7).payload);
    assert_eq!(
        got.payload["big"].to_string(),
        "123456789012345678901234567890"
    );
    assert_eq!(got.payload["f"].to_string(), "1.50");
    assert_eq!(got.payload["text"], "héllo \"7\"\n");
}

/// Rows written by other tools (no `frame`) are read from the contract's columns:
/// whole-second timestamps, JSON compared as values.
#[test]
fn pg_rows_without_the_verbatim_frame_read_from_the_contract_columns() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let s = session(&unique("ses-ref"));
    a.write_events(&s, &events(1..=10)).unwrap();
    assert_eq!(a.read_events(&s.id, 1, 10).unwrap(), events(1..=10));
    sql(&url)
        .execute(
            "UPDATE events SET frame = NULL WHERE session_id = $1",
            &[&s.id],
        )
        .unwrap();
    assert_eq!(a.read_events(&s.id, 1, 10).unwrap(), stored_events(1..=10));
}

/// NUL characters cannot live in Postgres text/jsonb: the contract's columns get
/// U+FFFD, the verbatim frame keeps the event exact, and archiving is not blocked.
#[test]
fn pg_events_with_nul_characters_are_archived_exactly() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let s = session(&unique("ses-nul"));
    let mut e = ev(1);
    e.payload = json!({"t": "a\u{0}b", "k\u{0}": [1, "\u{0}"]});
    e.actor = "user:al\u{0}ice".into();
    e.source = Some("s\u{0}".into());
    assert_eq!(a.write_events(&s, std::slice::from_ref(&e)).unwrap(), 1);
    assert_eq!(a.read_events(&s.id, 1, 1).unwrap(), vec![e]);
    let row = sql(&url)
        .query_one(
            "SELECT actor, payload->>'t' FROM events WHERE session_id = $1",
            &[&s.id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "user:al\u{FFFD}ice");
    assert_eq!(row.get::<_, String>(1), "a\u{FFFD}b");
}

#[test]
fn pg_an_unreadable_row_is_reported() {
    let Some(url) = pg_url() else { return };
    let _shared = SERVER.read().unwrap();
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let s = session(&unique("ses-bad"));
    a.write_events(&s, &events(1..=3)).unwrap();
    sql(&url)
        .execute(
            "UPDATE events SET metadata = '[1]', frame = NULL WHERE session_id = $1 AND seq = 2",
            &[&s.id],
        )
        .unwrap();
    assert_eq!(a.read_events(&s.id, 1, 1).unwrap(), events(1..=1));
    assert!(matches!(
        a.read_events(&s.id, 1, 3),
        Err(ArchiveError::Unreadable(_))
    ));
}

/// Restarts PostgreSQL even if the test fails half-way.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = Command::new(services_script()).arg("start-pg").status();
    }
}

#[test]
fn pg_server_down_is_unavailable_then_the_adapter_reconnects() {
    let Some(url) = pg_url() else { return };
    let _alone = SERVER.write().unwrap_or_else(|e| e.into_inner());
    let _restore = Restore;
    let mut a = PostgresAdapter::open(&config(&url)).unwrap();
    let s = session(&unique("ses-outage"));
    a.write_sessions(std::slice::from_ref(&s)).unwrap();
    assert_eq!(a.write_events(&s, &events(1..=100)).unwrap(), 100);

    services("stop-pg");
    let t = Instant::now();
    let r = a.write_events(&s, &events(101..=200));
    assert!(matches!(r, Err(ArchiveError::Unavailable(_))), "{r:?}");
    assert!(matches!(
        a.read_events(&s.id, 1, 10),
        Err(ArchiveError::Unavailable(_))
    ));
    assert!(matches!(
        a.write_sessions(&[session(&unique("ses-outage-2"))]),
        Err(ArchiveError::Unavailable(_))
    ));
    assert!(matches!(
        PostgresAdapter::open(&config(&url)),
        Err(ArchiveError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    services("start-pg");
    // The same adapter reconnects on its next call; nothing was lost or duplicated.
    assert_eq!(a.write_events(&s, &events(50..=200)).unwrap(), 100);
    assert_eq!(a.read_events(&s.id, 1, 1000).unwrap(), events(1..=200));
}
