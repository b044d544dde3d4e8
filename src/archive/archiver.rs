//! The archiver thread (§9.4, decision 7): one per node, off every shard core.
//!
//! Every `STARCITE_ARCHIVE_FLUSH_INTERVAL_MS` (measured from the end of the previous
//! tick) it asks each core for the committed, unarchived events of the groups this
//! node leads, and for the sessions whose catalog changed since its last complete
//! pass ([`CoreRequest::ArchiveScan`]); writes the session records that changed
//! (newer revision wins) and the events through the adapter (idempotent), puts the
//! events in the read cache, then proposes `ack_archived(upto)` through Raft so
//! every replica evicts them. Only what the adapter confirmed is acknowledged. A failing backend backs the archiver off (1 s doubling to 30 s);
//! appends are never touched — the hot tier grows until its bound (429).
//! Restarts and leader changes resume exactly where `archived_seq` says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starcite_shards::shard::{ArchiveWork, Proposal};
use starcite_shards::state::machine::Outcome;

use super::adapter::{Adapter, ArchiveConfig, ArchiveError};
use super::cache::ChunkCache;
use super::event::SessionRecord;
use super::stats::ArchiveStats;
use crate::node::messages::{CommandResult, CoreRequest};

/// Events per session per write (§12.3).
pub const BATCH_PER_SESSION: usize = 5_000;
/// Frames one scan may carry (memory bound of a tick's working set).
const SCAN_BUDGET_BYTES: usize = 32 << 20;
/// Waiting for a core's scan or for an ack to commit.
const CORE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Session records remembered as written, with their catalog state (cleared when
/// full; rewrites are harmless: the adapter keeps the newer revision).
const KNOWN_SESSIONS: usize = 100_000;

pub struct Archiver {
    pub config: ArchiveConfig,
    pub cores: Arc<Vec<flume::Sender<CoreRequest>>>,
    pub cache: Arc<ChunkCache>,
    pub stats: Arc<ArchiveStats>,
    pub stop: Arc<AtomicBool>,
}

/// Why a tick ended early.
enum TickError {
    Backend(ArchiveError),
    Core,
    Stopped,
}

impl Archiver {
    /// Starts the archiver thread.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("archiver".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut state = State {
            adapter: None,
            known: HashMap::new(),
            catalog_after: 0,
        };
        let mut backoff = Duration::ZERO;
        loop {
            if self.sleep(interval.max(backoff)) {
                return;
            }
            // Catalog changes stamped up to here are all seen by this tick's scans
            // (they run after this on the cores); later ones are above it.
            let started_gen = starcite_shards::state::session::catalog_gen();
            match self.tick(&mut state) {
                Ok(()) => {
                    backoff = Duration::ZERO;
                    state.catalog_after = started_gen;
                    ArchiveStats::add(&self.stats.flushes, 1);
                }
                Err(TickError::Stopped) => return,
                Err(TickError::Core) => {}
                Err(TickError::Backend(e)) => {
                    ArchiveStats::add(&self.stats.write_errors, 1);
                    state.adapter = None;
                    backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    tracing::warn!(adapter = self.config.adapter_name(), error = %e, retry_in = ?backoff, "archive write failed");
                }
            }
        }
    }

    /// Sleeps `d` unless stopped; true when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        self.stop.load(Ordering::Relaxed)
    }

    /// One pass over every core.
    fn tick(&self, state: &mut State) -> Result<(), TickError> {
        let mut lag = 0u64;
        let mut result = Ok(());
        for core in 0..self.cores.len() {
            let mut after: Option<String> = None;
            loop {
                let Some((work, more)) = self.scan(core, after.clone(), state.catalog_after) else {
                    result = Err(TickError::Core);
                    break;
                };
                lag += work
                    .iter()
                    .map(|w| w.session.last_seq - w.archived_seq)
                    .sum::<u64>();
                after = work.last().map(|w| w.session.id.clone());
                match self.flush(core, state, work) {
                    Ok(acked) => lag = lag.saturating_sub(acked),
                    Err(e) => {
                        self.stats.lag_events.store(lag, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                if !more {
                    break;
                }
            }
        }
        self.stats.lag_events.store(lag, Ordering::Relaxed);
        result
    }

    fn scan(
        &self,
        core: usize,
        after: Option<String>,
        catalog_after: u64,
    ) -> Option<(Vec<ArchiveWork>, bool)> {
        let (reply, answer) = flume::bounded(1);
        let req = CoreRequest::ArchiveScan {
            after,
            per_session: BATCH_PER_SESSION,
            budget_bytes: SCAN_BUDGET_BYTES,
            empty_since_us: catalog_after,
            reply,
        };
        self.cores[core].send_timeout(req, CORE_TIMEOUT).ok()?;
        answer.recv_timeout(CORE_TIMEOUT).ok()
    }

    /// Writes one scan's work, then acknowledges what was written. Returns how
    /// many events the acks covered.
    fn flush(
        &self,
        core: usize,
        state: &mut State,
        work: Vec<ArchiveWork>,
    ) -> Result<u64, TickError> {
        let mut acks = Vec::new();
        for w in work {
            if self.stop.load(Ordering::Relaxed) {
                return Err(TickError::Stopped);
            }
            let record = session_record(&w);
            // Written when this archiver has not written this catalog state yet
            // (a new session, a PATCH, an archive/unarchive, or a first look
            // since start); the adapter keeps whichever revision is newer.
            let catalog = (record.version, record.archived);
            if state.known.get(&record.id) != Some(&catalog) {
                let stored = state
                    .adapter(&self.config)?
                    .write_sessions(std::slice::from_ref(&record))
                    .map_err(TickError::Backend)?;
                ArchiveStats::add(&self.stats.sessions_written, stored as u64);
                if state.known.len() >= KNOWN_SESSIONS {
                    state.known.clear();
                }
                state.known.insert(record.id.clone(), catalog);
            }
            let Some(upto) = contiguous_end(w.archived_seq, &w.events) else {
                continue;
            };
            let frames = &w.events[..(upto - w.archived_seq) as usize];
            let added = match state.adapter(&self.config)?.write_frames(&record, frames) {
                Ok(n) => n,
                Err(ArchiveError::Unreadable(e)) => {
                    // A frame we rendered, or a chunk already stored, cannot be
                    // read: never acknowledge what we could not write; say so
                    // loudly and go on with the other sessions.
                    tracing::error!(session = %record.id, error = %e, "cannot archive these events");
                    continue;
                }
                Err(e) => return Err(TickError::Backend(e)),
            };
            ArchiveStats::add(&self.stats.events_written, added as u64);
            self.cache.put(&record.id, frames);
            acks.push((record.id, w.archived_seq, upto));
        }
        Ok(self.acknowledge(core, acks))
    }

    /// Proposes every ack at once, then waits for them (they commit together).
    /// Returns how many events the committed acks covered.
    fn acknowledge(&self, core: usize, acks: Vec<(String, u64, u64)>) -> u64 {
        let mut waiting = Vec::with_capacity(acks.len());
        for (session, from, upto) in acks {
            let (reply, answer) = flume::bounded::<CommandResult>(1);
            let proposal = Proposal::AckArchived { session, upto };
            let sent = self.cores[core]
                .send_timeout(
                    CoreRequest::Propose {
                        proposal,
                        reply,
                        since: std::time::Instant::now(),
                        origin: None,
                    },
                    CORE_TIMEOUT,
                )
                .is_ok();
            if sent {
                waiting.push((answer, upto - from));
            } else {
                ArchiveStats::add(&self.stats.ack_errors, 1);
            }
        }
        let deadline = Instant::now() + CORE_TIMEOUT;
        let mut acked = 0;
        for (answer, n) in waiting {
            match answer.recv_deadline(deadline) {
                Ok(Ok(Outcome::Acked { .. })) => {
                    acked += n;
                    ArchiveStats::add(&self.stats.events_acked, n);
                }
                // Not acknowledged (leadership moved, timeout): the events stay hot
                // and the next tick (here or on the new leader) writes them again,
                // which the adapter ignores.
                _ => ArchiveStats::add(&self.stats.ack_errors, 1),
            }
        }
        acked
    }
}

struct State {
    adapter: Option<Box<dyn Adapter>>,
    /// Session id → the `(version, archived)` whose record this archiver wrote.
    known: HashMap<String, (u64, bool)>,
    /// The catalog stamp the last complete tick started at: sessions stamped
    /// above it (or in groups led since) are scanned for their records.
    catalog_after: u64,
}

impl State {
    /// The open adapter, opening it when needed.
    fn adapter(&mut self, config: &ArchiveConfig) -> Result<&mut dyn Adapter, TickError> {
        if self.adapter.is_none() {
            self.adapter = Some(config.open().map_err(TickError::Backend)?);
        }
        match self.adapter.as_mut() {
            Some(a) => Ok(a.as_mut()),
            None => Err(TickError::Core),
        }
    }
}

/// The last seq of the run `archived_seq + 1, +2, …` at the start of `events`.
fn contiguous_end(archived_seq: u64, events: &[(u64, Bytes)]) -> Option<u64> {
    let n = events
        .iter()
        .enumerate()
        .take_while(|(i, (seq, _))| *seq == archived_seq + 1 + *i as u64)
        .count();
    (n > 0).then(|| archived_seq + n as u64)
}

fn session_record(w: &ArchiveWork) -> SessionRecord {
    let s = &w.session;
    SessionRecord {
        id: s.id.clone(),
        title: s.title.clone(),
        tenant_id: s.tenant_id.clone(),
        principal_id: s.principal_id.clone(),
        principal_type: s.principal_type.clone(),
        metadata: s.metadata.clone(),
        created_at_us: s.created_at_us,
        updated_at_us: s.updated_at_us,
        version: s.version,
        archived: s.archived,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledges_only_the_initial_contiguous_run() {
        let ev = |s: u64| (s, Bytes::from_static(b"{}"));
        assert_eq!(contiguous_end(4, &[ev(5), ev(6), ev(8)]), Some(6));
        assert_eq!(contiguous_end(4, &[ev(6)]), None);
        assert_eq!(contiguous_end(0, &[]), None);
    }
}
