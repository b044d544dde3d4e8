//! The archive read cache (§9.3): rendered frames of archived events in chunks of
//! 256 seqs keyed by `(session, chunk_start)`, least-recently used first out, within
//! a byte bound. Filled by cold reads and by the archiver after each write.
//! Archived events never change, so entries are never invalidated, only evicted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use super::layout::chunk_start;

/// A run of consecutive events starting at a chunk's first seq.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// Frames of seqs `chunk_start ..`, contiguous.
    frames: Vec<Bytes>,
    bytes: usize,
    touched: u64,
}

const ENTRY_OVERHEAD: usize = 96;

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, u64), Entry>,
    /// touched → key, for eviction in LRU order.
    order: BTreeMap<u64, (String, u64)>,
    clock: u64,
    bytes: usize,
}

pub struct ChunkCache {
    inner: Mutex<Inner>,
    limit: usize,
}

impl ChunkCache {
    pub fn new(limit_bytes: u64) -> Self {
        ChunkCache {
            inner: Mutex::new(Inner::default()),
            limit: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a cache that is still consistent
        // enough to read (worst case: an entry is missing).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frames of `from ..= to` when the cache holds all of them.
    pub fn get(&self, session: &str, from: u64, to: u64) -> Option<Vec<(u64, Bytes)>> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity((to + 1).saturating_sub(from) as usize);
        let mut seq = from;
        while seq <= to {
            let chunk = chunk_start(seq);
            inner.clock += 1;
            let now = inner.clock;
            let key = (session.to_owned(), chunk);
            let entry = inner.entries.get_mut(&key)?;
            let old = std::mem::replace(&mut entry.touched, now);
            let start = (seq - chunk) as usize;
            let end = ((to - chunk) as usize).min(255);
            if end >= entry.frames.len() {
                return None;
            }
            for (i, f) in entry.frames[start..=end].iter().enumerate() {
                out.push((seq + i as u64, f.clone()));
            }
            inner.order.remove(&old);
            inner.order.insert(now, key);
            seq = chunk + 256;
        }
        Some(out)
    }

    /// Remembers consecutive events (ascending, any range). Runs that do not start
    /// at a chunk's first seq extend an entry only if they continue it.
    pub fn put(&self, session: &str, events: &[(u64, Bytes)]) {
        if self.limit == 0 || events.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let mut rest = events;
        while let Some((first, _)) = rest.first() {
            let chunk = chunk_start(*first);
            let n = rest
                .iter()
                .take_while(|(s, _)| chunk_start(*s) == chunk)
                .count();
            let (run, tail) = rest.split_at(n);
            rest = tail;
            let key = (session.to_owned(), chunk);
            inner.clock += 1;
            let now = inner.clock;
            let entry = inner.entries.entry(key.clone()).or_default();
            let mut added = 0;
            for (seq, frame) in run {
                if (*seq - chunk) as usize != entry.frames.len() {
                    continue; // already held, or would leave a hole
                }
                added += frame.len()
                    + if entry.frames.is_empty() {
                        ENTRY_OVERHEAD
                    } else {
                        8
                    };
                entry.frames.push(frame.clone());
            }
            entry.bytes += added;
            let empty = entry.frames.is_empty();
            let old = std::mem::replace(&mut entry.touched, now);
            inner.order.remove(&old);
            if empty {
                inner.entries.remove(&key);
            } else {
                inner.order.insert(now, key);
            }
            inner.bytes += added;
        }
        while inner.bytes > self.limit {
            let Some((_, key)) = inner.order.pop_first() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&key) {
                inner.bytes -= e.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evs(from: u64, to: u64) -> Vec<(u64, Bytes)> {
        (from..=to)
            .map(|s| (s, Bytes::from(format!("e{s}"))))
            .collect()
    }

    #[test]
    fn hits_only_when_every_seq_is_held() {
        let c = ChunkCache::new(1 << 20);
        c.put("s", &evs(1, 300));
        assert_eq!(c.get("s", 250, 300).unwrap(), evs(250, 300));
        assert!(c.get("s", 250, 301).is_none());
        assert!(c.get("t", 1, 1).is_none());
        // A run that does not continue an entry is not cached (no holes).
        c.put("s", &evs(310, 320));
        assert!(c.get("s", 310, 310).is_none());
        c.put("s", &evs(290, 320));
        assert_eq!(c.get("s", 1, 320).unwrap(), evs(1, 320));
    }

    #[test]
    fn evicts_least_recently_used_within_the_bound() {
        let c = ChunkCache::new(3_000);
        c.put("a", &evs(1, 100));
        c.put("b", &evs(1, 100));
        assert!(c.get("a", 1, 10).is_some());
        c.put("c", &evs(1, 100));
        assert!(c.bytes() <= 3_000);
        assert!(c.get("b", 1, 1).is_none(), "b was least recently used");
        assert!(c.get("c", 1, 100).is_some());
    }
}
