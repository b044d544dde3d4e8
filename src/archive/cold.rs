//! Cold reads for tails whose cursor is below the hot tier (§9.5, decision 6).
//!
//! Reads run on dedicated reader threads with their own adapter instances, never
//! on a shard core: a core's task asks through a bounded channel and awaits the
//! answer with a timeout. The read cache is consulted first, on the asking core
//! (a short critical section, no I/O). Callers check that the answer is exactly the
//! range they asked for; anything else is a gap, never skipped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::adapter::{Adapter, ArchiveConfig, ArchiveError};
use super::cache::ChunkCache;
use super::layout::{chunk_start, CHUNK};
use super::stats::ArchiveStats;

/// Reader threads per node.
const READERS: usize = 2;
/// Queued cold reads per node before callers wait.
const QUEUE: usize = 256;
/// How long a tail waits for one cold read.
pub const COLD_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a cold read gave nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdError {
    /// The archive could not be read (`archive_read_unavailable`).
    Unavailable,
    /// The archive lacks events it should hold (`event_gap_detected`).
    Gap,
}

struct ColdRequest {
    session: String,
    tenant_id: String,
    from: u64,
    to: u64,
    reply: flume::Sender<Result<Vec<(u64, Bytes)>, ColdError>>,
}

/// A node's cold tier: cheap to clone, usable from any core.
#[derive(Clone)]
pub struct ColdTier {
    tx: flume::Sender<ColdRequest>,
    pub cache: Arc<ChunkCache>,
    pub stats: Arc<ArchiveStats>,
    /// The adapter's name (metrics label).
    pub adapter: &'static str,
}

impl ColdTier {
    /// Starts the reader threads.
    pub fn start(config: &ArchiveConfig, stats: Arc<ArchiveStats>) -> ColdTier {
        let (tx, rx) = flume::bounded::<ColdRequest>(QUEUE);
        let cache = Arc::new(ChunkCache::new(config.read_cache_bytes));
        for i in 0..READERS {
            let (rx, config, cache) = (rx.clone(), config.clone(), cache.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("cold-read-{i}"))
                .spawn(move || reader_loop(&rx, &config, &cache));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a cold-read thread");
            }
        }
        ColdTier {
            tx,
            cache,
            stats,
            adapter: config.adapter_name(),
        }
    }

    /// Events `from ..= to` of a session, exactly and in order.
    pub async fn read(
        &self,
        session: &str,
        tenant_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Bytes)>, ColdError> {
        if let Some(hit) = self.cache.get(session, from, to) {
            ArchiveStats::add(&self.stats.cache_hits, 1);
            ArchiveStats::add(&self.stats.cold_events, hit.len() as u64);
            return Ok(hit);
        }
        let (reply, answer) = flume::bounded(1);
        let req = ColdRequest {
            session: session.to_owned(),
            tenant_id: tenant_id.to_owned(),
            from,
            to,
            reply,
        };
        let exchange = async {
            self.tx.send_async(req).await.ok()?;
            answer.recv_async().await.ok()
        };
        let result = match monoio::time::timeout(COLD_TIMEOUT, exchange).await {
            Ok(Some(r)) => r,
            _ => Err(ColdError::Unavailable),
        };
        match &result {
            Ok(events) => ArchiveStats::add(&self.stats.cold_events, events.len() as u64),
            Err(_) => ArchiveStats::add(&self.stats.cold_errors, 1),
        }
        result
    }
}

impl ColdTier {
    /// The replay step below the hot tier (§9.5): events `after + 1 ..=
    /// min(after + limit, archived_seq)`, exactly, or the reason a stream must stop
    /// with (`archive_read_unavailable` / `event_gap_detected`, decision 6).
    pub async fn read_below_hot(
        &self,
        session: &str,
        tenant_id: &str,
        after: u64,
        archived_seq: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Bytes)>, &'static str> {
        let to = archived_seq.min(after.saturating_add(limit));
        if after >= to {
            return Ok(Vec::new());
        }
        self.read(session, tenant_id, after + 1, to)
            .await
            .map_err(|e| match e {
                ColdError::Unavailable => "archive_read_unavailable",
                ColdError::Gap => "event_gap_detected",
            })
    }
}

fn reader_loop(rx: &flume::Receiver<ColdRequest>, config: &ArchiveConfig, cache: &ChunkCache) {
    let mut adapter: Option<Box<dyn Adapter>> = None;
    while let Ok(req) = rx.recv() {
        if req.reply.is_disconnected() {
            continue; // the tail gave up waiting
        }
        if adapter.is_none() {
            match config.open() {
                Ok(a) => adapter = Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "cold read: archive unavailable");
                    let _ = req.reply.send(Err(ColdError::Unavailable));
                    continue;
                }
            }
        }
        let Some(a) = adapter.as_mut() else { continue };
        let result = read_range(a.as_mut(), cache, &req);
        if let Err(e) = &result {
            tracing::warn!(session = %req.session, from = req.from, to = req.to, error = ?e, "cold read failed");
            if *e == ColdError::Unavailable {
                adapter = None; // reconnect next time
            }
        }
        let _ = req.reply.send(result);
    }
}

/// Reads whole chunks (so they can be cached) and returns `from ..= to`.
fn read_range(
    adapter: &mut dyn Adapter,
    cache: &ChunkCache,
    req: &ColdRequest,
) -> Result<Vec<(u64, Bytes)>, ColdError> {
    let mut out = Vec::new();
    let mut chunk = chunk_start(req.from);
    while chunk <= req.to {
        let last = chunk + CHUNK - 1;
        let (lo, hi) = (req.from.max(chunk), req.to.min(last));
        if let Some(hit) = cache.get(&req.session, lo, hi) {
            out.extend(hit);
        } else {
            let frames = adapter
                .read_frames(&req.session, &req.tenant_id, chunk, last)
                .map_err(|e| match e {
                    ArchiveError::Unavailable(_) | ArchiveError::Unreadable(_) => {
                        ColdError::Unavailable
                    }
                })?;
            cache.put(&req.session, &frames);
            out.extend(frames.into_iter().filter(|(s, _)| (lo..=hi).contains(s)));
        }
        chunk += CHUNK;
    }
    let exact = out.len() as u64 == req.to + 1 - req.from
        && out
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == req.from + i as u64);
    if exact {
        Ok(out)
    } else {
        Err(ColdError::Gap)
    }
}
