//! Postgres adapter (§11.2): tables `events` and `sessions`, created or migrated at
//! boot (`MIGRATE_ON_BOOT`). Events are written with `INSERT … ON CONFLICT DO
//! NOTHING`; session rows with an upsert that replaces a row only by a newer
//! revision (`(version, updated_at)`, see `SessionRecord::supersedes`).
//!
//! One synchronous connection per adapter instance (each archiver or cold-read thread
//! opens its own adapter, so `DB_POOL_SIZE` has nothing to size here). A failed
//! request reports [`ArchiveError::Unavailable`] and drops a broken connection; the
//! next call connects again, so the archiver can keep the adapter across retries.
//!
//! JSON travels as text both ways (`$n::text::jsonb` in, `col::text` out) and is
//! parsed by the workspace's `serde_json` (arbitrary precision): numbers keep every
//! digit Postgres keeps (`numeric`); jsonb normalises key order and whitespace.
//! Timestamps are `timestamp(0)` holding UTC; `inserted_at`/`created_at` are truncated
//! (not rounded) to whole seconds before they are sent. `sessions.updated_at` is
//! `timestamptz` with microseconds (as upstream's), sent as RFC 3339 text.

use std::time::Duration;

use postgres::{Client, Config, NoTls, Row};
use serde_json::{Map, Value};

use super::adapter::{Adapter, ArchiveError, PostgresConfig};
use super::event::{ArchiveEvent, SessionRecord};

/// Rows per `INSERT` (§11.2).
pub const BATCH: usize = 5_000;
/// Bound on establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Server-side bound on any one statement.
const STATEMENT_TIMEOUT: &str = "60s";
/// Key of the advisory lock serialising migrations across nodes booting together.
const MIGRATION_LOCK: i64 = 0x5374_6172_6369_7465; // "Starcite"

/// The schema history. Versions are recorded in `schema_migrations` (the standard
/// bookkeeping table: `version bigint` primary key, `inserted_at timestamp(0)`); each
/// step is also written to be harmless on a database that already has its effect.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        20_250_101_000_001,
        "CREATE TABLE IF NOT EXISTS events (
            session_id text NOT NULL,
            seq bigint NOT NULL,
            type text NOT NULL,
            payload jsonb NOT NULL,
            actor text NOT NULL,
            source text,
            metadata jsonb NOT NULL DEFAULT '{}',
            refs jsonb NOT NULL DEFAULT '{}',
            idempotency_key text,
            inserted_at timestamp(0) NOT NULL,
            PRIMARY KEY (session_id, seq)
        );
        CREATE INDEX IF NOT EXISTS events_session_id_inserted_at_index
            ON events (session_id, inserted_at);",
    ),
    (
        20_250_101_000_002,
        "CREATE TABLE IF NOT EXISTS sessions (
            id text PRIMARY KEY,
            title text,
            metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamp(0) NOT NULL
        );",
    ),
    (
        20_250_101_000_003,
        "ALTER TABLE events
            ADD COLUMN IF NOT EXISTS producer_id text,
            ADD COLUMN IF NOT EXISTS producer_seq bigint;
        CREATE INDEX IF NOT EXISTS events_session_id_producer_id_producer_seq_index
            ON events (session_id, producer_id, producer_seq);
        DROP INDEX IF EXISTS events_session_id_inserted_at_index;",
    ),
    (
        20_250_101_000_004,
        "ALTER TABLE sessions
            ADD COLUMN IF NOT EXISTS creator_principal jsonb,
            ADD COLUMN IF NOT EXISTS tenant_id text;
        UPDATE sessions
            SET tenant_id = COALESCE(creator_principal->>'tenant_id',
                                     metadata->>'tenant_id',
                                     'service')
            WHERE tenant_id IS NULL;
        ALTER TABLE sessions ALTER COLUMN tenant_id SET NOT NULL;
        CREATE INDEX IF NOT EXISTS sessions_metadata_index ON sessions USING GIN (metadata);
        CREATE INDEX IF NOT EXISTS sessions_tenant_id_index ON sessions (tenant_id);",
    ),
    (
        // Ours, additive: the event verbatim (its NDJSON line, §11.1), so cold reads
        // return exactly what the hot tier held — jsonb reorders keys and
        // timestamp(0) drops the microseconds. Other readers ignore the column.
        20_261_127_000_001,
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS frame text;",
    ),
    (
        // The session catalog's state, with upstream's column names and types
        // (`version bigint`, `archived boolean`, `updated_at timestamptz`) and its
        // `(tenant_id, archived, id)` index. Rows of earlier versions (and rows
        // inserted by them during a rolling upgrade) get version 1, not archived,
        // and `updated_at` = `created_at`; `updated_at` stays nullable so such
        // inserts keep working, and readers take `created_at` for a NULL.
        20_261_204_000_001,
        "ALTER TABLE sessions
            ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1,
            ADD COLUMN IF NOT EXISTS archived boolean NOT NULL DEFAULT false,
            ADD COLUMN IF NOT EXISTS updated_at timestamptz;
        UPDATE sessions SET updated_at = created_at AT TIME ZONE 'UTC'
            WHERE updated_at IS NULL;
        CREATE INDEX IF NOT EXISTS sessions_tenant_id_archived_id_index
            ON sessions (tenant_id, archived, id);",
    ),
];

const INSERT_EVENTS: &str = "INSERT INTO events
        (session_id, seq, type, payload, actor, source, metadata, refs,
         idempotency_key, inserted_at, producer_id, producer_seq, frame)
    SELECT $1, u.seq, u.type, u.payload::jsonb, u.actor, u.source, u.metadata::jsonb,
           u.refs::jsonb, u.idempotency_key, to_timestamp(u.ts) AT TIME ZONE 'UTC',
           u.producer_id, u.producer_seq, u.frame
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[],
                $12::bigint[], $13::text[])
         AS u(seq, type, payload, actor, source, metadata, refs, idempotency_key, ts,
              producer_id, producer_seq, frame)
    ON CONFLICT (session_id, seq) DO NOTHING";

/// Inserts a session row, or replaces the catalog columns of an existing one if
/// the incoming revision is greater (the creation columns never change).
const UPSERT_SESSION: &str = "INSERT INTO sessions
        (id, title, metadata, created_at, creator_principal, tenant_id,
         version, updated_at, archived)
    VALUES ($1, $2, $3::text::jsonb, to_timestamp($4::bigint) AT TIME ZONE 'UTC',
            $5::text::jsonb, $6, $7, $8::text::timestamptz, $9)
    ON CONFLICT (id) DO UPDATE SET
        title = EXCLUDED.title,
        metadata = EXCLUDED.metadata,
        version = EXCLUDED.version,
        updated_at = EXCLUDED.updated_at,
        archived = EXCLUDED.archived
    WHERE (sessions.version,
           COALESCE(sessions.updated_at, sessions.created_at AT TIME ZONE 'UTC'))
        < (EXCLUDED.version, EXCLUDED.updated_at)";

const SELECT_SESSION: &str = "SELECT id, title, tenant_id, creator_principal::text,
           metadata::text, extract(epoch FROM created_at)::bigint, version,
           (extract(epoch FROM COALESCE(updated_at, created_at AT TIME ZONE 'UTC'))
              * 1000000)::bigint,
           archived
    FROM sessions
    WHERE id = $1";

const SELECT_EVENTS: &str = "SELECT seq, type, payload::text, actor, source, metadata::text,
           refs::text, idempotency_key,
           extract(epoch FROM inserted_at)::bigint, producer_id, producer_seq, frame
    FROM events
    WHERE session_id = $1 AND seq BETWEEN $2 AND $3
    ORDER BY seq";

pub struct PostgresAdapter {
    config: Config,
    client: Option<Client>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Unavailable(format!("postgres {what}: {e}"))
}

/// Unix microseconds → whole Unix seconds, truncated (towards the past).
pub fn whole_seconds(us: i64) -> i64 {
    us.div_euclid(1_000_000)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PostgresAdapter {
    /// Connects (bounded), and creates or migrates the schema when `migrate_on_boot`.
    pub fn open(config: &PostgresConfig) -> Result<Self, ArchiveError> {
        let mut pg: Config = config.url.parse().map_err(|e| unavailable("URL", e))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        // A peer that vanished without closing the socket (host down, cable pulled)
        // is noticed within seconds, not after the kernel's default of ~15 minutes.
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(15));
        if pg.get_application_name().is_none() {
            pg.application_name("starcite-archiver");
        }
        let mut adapter = PostgresAdapter {
            config: pg,
            client: None,
        };
        adapter.client()?;
        if config.migrate_on_boot {
            let result = migrate(adapter.client.as_mut().expect("connected"));
            adapter.check(result)?;
        }
        Ok(adapter)
    }

    /// The connection, (re)connecting if there is none or it was closed.
    fn client(&mut self) -> Result<&mut Client, ArchiveError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = self
                .config
                .connect(NoTls)
                .map_err(|e| unavailable("connect", e))?;
            client
                .batch_execute(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))
                .map_err(|e| unavailable("connect", e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Maps a query error to `Unavailable`, dropping the connection unless the
    /// server answered (a database error leaves the session usable).
    fn check<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, ArchiveError> {
        result.map_err(|e| {
            let broken =
                e.as_db_error().is_none() || self.client.as_ref().is_none_or(Client::is_closed);
            if broken {
                self.client = None;
            }
            unavailable("query", e)
        })
    }

    fn insert_batch(
        &mut self,
        session: &str,
        events: &[ArchiveEvent],
    ) -> Result<u64, ArchiveError> {
        let mut seq = Vec::with_capacity(events.len());
        let mut typ = Vec::with_capacity(events.len());
        let mut payload = Vec::with_capacity(events.len());
        let mut actor = Vec::with_capacity(events.len());
        let mut source = Vec::with_capacity(events.len());
        let mut metadata = Vec::with_capacity(events.len());
        let mut refs = Vec::with_capacity(events.len());
        let mut idem = Vec::with_capacity(events.len());
        let mut ts = Vec::with_capacity(events.len());
        let mut producer_id = Vec::with_capacity(events.len());
        let mut producer_seq = Vec::with_capacity(events.len());
        let mut frame = Vec::with_capacity(events.len());
        for e in events {
            // The verbatim line keeps every character (JSON escapes NUL as \u0000);
            // the contract's columns cannot hold NUL (text, jsonb), so there it
            // becomes U+FFFD rather than blocking the session's archiving forever.
            frame.push(e.to_line(None));
            seq.push(to_i64(e.seq));
            typ.push(no_nul(&e.event_type));
            payload.push(json_no_nul(&e.payload));
            actor.push(no_nul(&e.actor));
            source.push(e.source.as_deref().map(no_nul));
            metadata.push(json_no_nul(&Value::Object(e.metadata.clone())));
            refs.push(json_no_nul(&Value::Object(e.refs.clone())));
            idem.push(e.idempotency_key.as_deref().map(no_nul));
            ts.push(whole_seconds(e.inserted_at_us));
            producer_id.push(no_nul(&e.producer_id));
            producer_seq.push(to_i64(e.producer_seq));
        }
        let client = self.client()?;
        let result = client.execute(
            INSERT_EVENTS,
            &[
                &session,
                &seq,
                &typ,
                &payload,
                &actor,
                &source,
                &metadata,
                &refs,
                &idem,
                &ts,
                &producer_id,
                &producer_seq,
                &frame,
            ],
        );
        self.check(result)
    }
}

/// Creates `schema_migrations` and applies every missing step of [`MIGRATIONS`], in
/// one transaction under an advisory lock (nodes booting together take turns).
pub fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version bigint PRIMARY KEY,
            inserted_at timestamp(0)
        )",
    )?;
    let done: Vec<i64> = tx
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, inserted_at)
             VALUES ($1, date_trunc('second', now() AT TIME ZONE 'UTC'))",
            &[version],
        )?;
    }
    tx.commit()
}

fn json_text(row: &Row, i: usize, what: &str) -> Result<Value, ArchiveError> {
    let text: String = row
        .try_get(i)
        .map_err(|e| ArchiveError::Unreadable(format!("{what}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ArchiveError::Unreadable(format!("{what}: {e}")))
}

fn json_object(row: &Row, i: usize, what: &str) -> Result<Map<String, Value>, ArchiveError> {
    match json_text(row, i, what)? {
        Value::Object(m) => Ok(m),
        other => Err(ArchiveError::Unreadable(format!(
            "{what} is not an object: {other}"
        ))),
    }
}

/// `s` with NUL characters replaced (Postgres text cannot hold them).
fn no_nul(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

/// JSON text of `v` with NUL characters in strings and keys replaced (jsonb
/// rejects `\u0000`).
fn json_no_nul(v: &Value) -> String {
    let text = serde_json::to_string(v).expect("JSON value serialises");
    if !text.contains("\\u0000") {
        return text;
    }
    fn scrub(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(no_nul(s)),
            Value::Array(a) => Value::Array(a.iter().map(scrub).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (no_nul(k), scrub(v))).collect())
            }
            other => other.clone(),
        }
    }
    serde_json::to_string(&scrub(v)).expect("JSON value serialises")
}

/// A `sessions` row ([`SELECT_SESSION`]). A row without a creator (written by
/// another tool) reads with an empty principal.
fn session_from_row(row: &Row) -> Result<SessionRecord, ArchiveError> {
    let bad = |what: &str, e: postgres::Error| ArchiveError::Unreadable(format!("{what}: {e}"));
    let principal: Option<String> = row.try_get(3).map_err(|e| bad("creator_principal", e))?;
    let principal: Map<String, Value> = match principal {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| ArchiveError::Unreadable(format!("creator_principal: {e}")))?,
        None => Map::new(),
    };
    let field = |k: &str| {
        principal
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let created: i64 = row.try_get(5).map_err(|e| bad("created_at", e))?;
    let version: i64 = row.try_get(6).map_err(|e| bad("version", e))?;
    Ok(SessionRecord {
        id: row.try_get(0).map_err(|e| bad("id", e))?,
        title: row.try_get(1).map_err(|e| bad("title", e))?,
        tenant_id: row.try_get(2).map_err(|e| bad("tenant_id", e))?,
        principal_id: field("id"),
        principal_type: field("type"),
        metadata: json_object(row, 4, "metadata")?,
        created_at_us: created.saturating_mul(1_000_000),
        updated_at_us: row.try_get(7).map_err(|e| bad("updated_at", e))?,
        version: u64::try_from(version)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| ArchiveError::Unreadable(format!("version {version}")))?,
        archived: row.try_get(8).map_err(|e| bad("archived", e))?,
    })
}

fn event_from_row(row: &Row) -> Result<ArchiveEvent, ArchiveError> {
    let bad = |what: &str, e: postgres::Error| ArchiveError::Unreadable(format!("{what}: {e}"));
    let frame: Option<String> = row.try_get(11).map_err(|e| bad("frame", e))?;
    if let Some(line) = frame {
        return Ok(ArchiveEvent::from_line(&line)?);
    }
    let seq: i64 = row.try_get(0).map_err(|e| bad("seq", e))?;
    let producer_seq: Option<i64> = row.try_get(10).map_err(|e| bad("producer_seq", e))?;
    let inserted_at: i64 = row.try_get(8).map_err(|e| bad("inserted_at", e))?;
    Ok(ArchiveEvent {
        seq: u64::try_from(seq).map_err(|_| ArchiveError::Unreadable(format!("seq {seq}")))?,
        event_type: row.try_get(1).map_err(|e| bad("type", e))?,
        payload: json_text(row, 2, "payload")?,
        actor: row.try_get(3).map_err(|e| bad("actor", e))?,
        // Rows from before the producer columns existed carry no producer.
        producer_id: row
            .try_get::<_, Option<String>>(9)
            .map_err(|e| bad("producer_id", e))?
            .unwrap_or_default(),
        producer_seq: producer_seq.map_or(0, |s| s.max(0) as u64),
        source: row.try_get(4).map_err(|e| bad("source", e))?,
        metadata: json_object(row, 5, "metadata")?,
        refs: json_object(row, 6, "refs")?,
        idempotency_key: row.try_get(7).map_err(|e| bad("idempotency_key", e))?,
        inserted_at_us: inserted_at.saturating_mul(1_000_000),
    })
}

impl Adapter for PostgresAdapter {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn write_sessions(&mut self, sessions: &[SessionRecord]) -> Result<usize, ArchiveError> {
        let mut stored = 0;
        for s in sessions {
            let metadata = json_no_nul(&Value::Object(s.metadata.clone()));
            let principal = s.principal_json();
            let created = whole_seconds(s.created_at_us);
            let version = to_i64(s.version);
            let updated = starcite_shards::time::format_micros(s.updated_at_us);
            let title = s.title.as_deref().map(no_nul);
            let client = self.client()?;
            let result = client.execute(
                UPSERT_SESSION,
                &[
                    &s.id,
                    &title,
                    &metadata,
                    &created,
                    &principal,
                    &s.tenant_id,
                    &version,
                    &updated,
                    &s.archived,
                ],
            );
            stored += self.check(result)? as usize;
        }
        Ok(stored)
    }

    fn read_session(&mut self, session: &str) -> Result<Option<SessionRecord>, ArchiveError> {
        let client = self.client()?;
        let result = client.query_opt(SELECT_SESSION, &[&session]);
        match self.check(result)? {
            None => Ok(None),
            Some(row) => session_from_row(&row).map(Some),
        }
    }

    fn write_events(
        &mut self,
        session: &SessionRecord,
        events: &[ArchiveEvent],
    ) -> Result<usize, ArchiveError> {
        let mut added = 0;
        for batch in events.chunks(BATCH) {
            added += self.insert_batch(&session.id, batch)? as usize;
        }
        Ok(added)
    }

    fn read_events(
        &mut self,
        session: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<ArchiveEvent>, ArchiveError> {
        let (from, to) = (to_i64(from), to_i64(to));
        let client = self.client()?;
        let result = client.query(SELECT_EVENTS, &[&session, &from, &to]);
        let rows = self.check(result)?;
        rows.iter().map(event_from_row).collect()
    }

    fn read_frames(
        &mut self,
        session: &str,
        tenant_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, bytes::Bytes)>, ArchiveError> {
        let (from, to) = (to_i64(from), to_i64(to));
        let client = self.client()?;
        let result = client.query(SELECT_EVENTS, &[&session, &from, &to]);
        let rows = self.check(result)?;
        rows.iter()
            .map(|row| {
                let frame: Option<String> = row
                    .try_get(11)
                    .map_err(|e| ArchiveError::Unreadable(format!("frame: {e}")))?;
                match frame {
                    Some(line) => Ok(super::event::line_to_frame(&line, tenant_id)?),
                    None => {
                        let e = event_from_row(row)?;
                        Ok((e.seq, e.to_frame(tenant_id)))
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_truncate_to_whole_seconds() {
        assert_eq!(whole_seconds(1_999_999), 1);
        assert_eq!(whole_seconds(2_000_000), 2);
        assert_eq!(whole_seconds(-1), -1);
        assert_eq!(whole_seconds(0), 0);
    }

    #[test]
    fn migrations_are_ascending_and_unique() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
    }

    #[test]
    fn an_unreachable_server_is_unavailable_quickly() {
        let started = std::time::Instant::now();
        let r = PostgresAdapter::open(&PostgresConfig {
            url: "postgres://starcite@127.0.0.1:9/none".into(),
            pool_size: 1,
            migrate_on_boot: true,
        });
        assert!(matches!(r, Err(ArchiveError::Unavailable(_))));
        assert!(started.elapsed() < CONNECT_TIMEOUT * 2);
    }
}
