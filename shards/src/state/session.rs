//! One session's replicated state and its hot tier.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value};

use super::producers::Producers;

/// An unarchived event kept in memory, already rendered as its JSON frame.
#[derive(Debug, Clone)]
pub struct HotEntry {
    pub seq: u64,
    pub frame: Bytes,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub tenant_id: String,
    pub title: Option<String>,
    pub metadata_json: String,
    /// Parsed once at create for list filters.
    pub metadata: Map<String, Value>,
    pub principal_id: String,
    pub principal_type: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    /// Catalog version: 1 at create, +1 per PATCH.
    pub version: u64,
    /// Hidden from the default list (archive/unarchive); appends still allowed.
    pub archived: bool,
    pub last_seq: u64,
    pub archived_seq: u64,
    pub producers: Producers,
    /// Events `archived_seq + 1 ..= last_seq`, ascending.
    pub hot: VecDeque<HotEntry>,
    /// Local, not replicated: the [`next_catalog_gen`] stamp of this replica's
    /// last apply of a catalog change (create, PATCH, a real archive/unarchive)
    /// or of its restore from a snapshot or checkpoint. The archiver rewrites
    /// the session's archive record when this moved past what it last scanned.
    pub catalog_gen: u64,
}

/// The process-wide catalog generation: a local, monotone stamp (never
/// replicated, never persisted; it restarts with the process, as does the
/// archiver that reads it).
static CATALOG_GEN: AtomicU64 = AtomicU64::new(0);

/// A fresh catalog stamp, greater than every earlier one of this process.
pub fn next_catalog_gen() -> u64 {
    CATALOG_GEN.fetch_add(1, Ordering::SeqCst) + 1
}

/// The latest catalog stamp handed out. Anything stamped later is greater.
pub fn catalog_gen() -> u64 {
    CATALOG_GEN.load(Ordering::SeqCst)
}

impl Session {
    /// Hot events with `seq > after`, at most `limit`.
    pub fn hot_after(&self, after: u64, limit: usize) -> impl Iterator<Item = &HotEntry> {
        let first = self.hot.front().map_or(u64::MAX, |e| e.seq);
        let skip = after.saturating_sub(first.saturating_sub(1));
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.hot.iter().skip(skip).take(limit)
    }

    /// Whether every filter `(key, value)` matches a top-level string value.
    pub fn matches(&self, filters: &[(String, String)]) -> bool {
        filters
            .iter()
            .all(|(k, v)| matches!(self.metadata.get(k), Some(Value::String(s)) if s == v))
    }
}

/// Renders the stored frame of an event: `{"seq":N,<body>,"inserted_at":"…"}`.
pub fn render_frame(seq: u64, body: &str, inserted_at_us: i64) -> Bytes {
    let mut out = String::with_capacity(body.len() + 64);
    out.push_str("{\"seq\":");
    out.push_str(itoa::Buffer::new().format(seq));
    out.push(',');
    out.push_str(body);
    out.push_str(",\"inserted_at\":\"");
    crate::time::push_micros(&mut out, inserted_at_us);
    out.push_str("\"}");
    Bytes::from(out)
}
