//! The archive backend interface and its configuration (contract §11, §12.2).
//!
//! Adapters are blocking: they run on the archiver thread and on the cold-read
//! threads, never on a shard core. Each thread opens its own adapter instance
//! ([`ArchiveConfig::open`]), so no adapter needs to be `Sync`.

use std::path::PathBuf;

use super::event::{ArchiveEvent, SessionRecord};

/// What went wrong talking to the archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// The backend could not be reached or refused the request; retry later.
    #[error("archive unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not have the contract's shape (a chunk line missing a key…).
    #[error("archive data unreadable: {0}")]
    Unreadable(String),
}

impl From<super::event::Unreadable> for ArchiveError {
    fn from(e: super::event::Unreadable) -> Self {
        ArchiveError::Unreadable(e.0)
    }
}

/// A backend holding committed history. Writes are idempotent on `(session, seq)`
/// and, for session records, ordered by their revision (newer wins): the archiver
/// is at-least-once and two archivers (a leader change) may race.
pub trait Adapter: Send {
    /// `s3`, `postgres` or `fs` (metrics label).
    fn name(&self) -> &'static str;

    /// Stores session records, each only if it is newer than the stored one
    /// (greater `(version, updated_at)`, [`SessionRecord::supersedes`]); an
    /// older or equal record leaves the stored one as it is. Returns how many
    /// records were created or replaced.
    fn write_sessions(&mut self, sessions: &[SessionRecord]) -> Result<usize, ArchiveError>;

    /// The stored record of a session, None if there is none. Records of
    /// earlier versions read with version 1, `updated_at` = `created_at`, not
    /// archived.
    fn read_session(&mut self, session: &str) -> Result<Option<SessionRecord>, ArchiveError>;

    /// Stores `events` (ascending seqs of one session); existing seqs are kept as
    /// they are. Returns how many seqs were newly stored.
    fn write_events(
        &mut self,
        session: &SessionRecord,
        events: &[ArchiveEvent],
    ) -> Result<usize, ArchiveError>;

    /// Stores hot-tier frames (`(seq, frame)`, ascending seqs of one session):
    /// `write_events` of the parsed frames. The chunk stores (fs, s3) render
    /// their lines straight from the frames instead.
    fn write_frames(
        &mut self,
        session: &SessionRecord,
        frames: &[(u64, bytes::Bytes)],
    ) -> Result<usize, ArchiveError> {
        let events = frames
            .iter()
            .map(|(_, f)| ArchiveEvent::from_frame(f))
            .collect::<Result<Vec<_>, _>>()?;
        self.write_events(session, &events)
    }

    /// Events of `session` with `from ≤ seq ≤ to`, ascending. Missing seqs are simply
    /// absent (the caller checks contiguity).
    fn read_events(
        &mut self,
        session: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<ArchiveEvent>, ArchiveError>;

    /// Tail frames (decision 3, `tenant_id` rendered in) of the events with
    /// `from ≤ seq ≤ to`, ascending: what cold replay needs. Adapters that store
    /// lines override this to skip building JSON trees.
    fn read_frames(
        &mut self,
        session: &str,
        tenant_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, bytes::Bytes)>, ArchiveError> {
        Ok(self
            .read_events(session, from, to)?
            .iter()
            .map(|e| (e.seq, e.to_frame(tenant_id)))
            .collect())
    }
}

/// `STARCITE_ARCHIVE_ADAPTER` and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The S3 layout in a local directory (`STARCITE_ARCHIVE_FS_DIR`).
    Fs {
        dir: PathBuf,
    },
    S3(S3Config),
    Postgres(PostgresConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// `http(s)://host[:port]`; None → AWS.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub path_style: bool,
    pub prefix: String,
    pub max_write_retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub url: String,
    pub pool_size: u32,
    pub migrate_on_boot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    pub backend: Backend,
    /// `STARCITE_ARCHIVE_FLUSH_INTERVAL_MS`.
    pub flush_interval_ms: u64,
    /// Bound of the archive read cache, bytes (`STARCITE_ARCHIVE_READ_CACHE_MAX_SIZE`).
    pub read_cache_bytes: u64,
}

impl ArchiveConfig {
    /// Opens one adapter instance (one per thread that uses it).
    pub fn open(&self) -> Result<Box<dyn Adapter>, ArchiveError> {
        match &self.backend {
            Backend::Fs { dir } => Ok(Box::new(super::fs::FsAdapter::open(dir)?)),
            Backend::S3(c) => Ok(Box::new(super::s3::S3Adapter::open(c)?)),
            Backend::Postgres(c) => Ok(Box::new(super::postgres::PostgresAdapter::open(c)?)),
        }
    }

    pub fn adapter_name(&self) -> &'static str {
        match &self.backend {
            Backend::Fs { .. } => "fs",
            Backend::S3(_) => "s3",
            Backend::Postgres(_) => "postgres",
        }
    }
}
