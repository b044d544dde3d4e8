//! Per-session producer bookkeeping: a bounded dedupe window per producer
//! (decision 2) and an LRU cap on the number of producers (contract §6.2).

use std::collections::{BTreeMap, HashMap, VecDeque};

use starcite_wire::record::{ProducerEntry, ProducerSnapshot};

/// What the producer rules say about an incoming `(producer_id, producer_seq, fp)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProducerCheck {
    /// The next expected value: append it.
    Fresh,
    /// A retry inside the window with the same content: answer with the original seq.
    Duplicate { seq: u64 },
    /// A retry inside the window with different content.
    ReplayConflict,
    /// A gap, or older than the window.
    SeqConflict { expected: u64, got: u64 },
}

#[derive(Debug, Default, Clone)]
struct Producer {
    /// Accepted appends, ascending and contiguous in producer_seq.
    window: VecDeque<ProducerEntry>,
}

impl Producer {
    fn last(&self) -> Option<&ProducerEntry> {
        self.window.back()
    }
}

#[derive(Debug, Clone)]
pub struct Producers {
    by_id: HashMap<String, Producer>,
    /// Session seq of each producer's latest accepted append → producer id (LRU order).
    recency: BTreeMap<u64, String>,
    window: usize,
    cap: usize,
}

impl Producers {
    pub fn new(window: usize, cap: usize) -> Self {
        assert!(window >= 1 && cap >= 1);
        Self {
            by_id: HashMap::new(),
            recency: BTreeMap::new(),
            window,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn check(&self, producer_id: &str, producer_seq: u64, fp: &[u8; 16]) -> ProducerCheck {
        let Some(last) = self.by_id.get(producer_id).and_then(Producer::last) else {
            return if producer_seq == 1 {
                ProducerCheck::Fresh
            } else {
                ProducerCheck::SeqConflict {
                    expected: 1,
                    got: producer_seq,
                }
            };
        };
        let expected = last.producer_seq + 1;
        if producer_seq == expected {
            return ProducerCheck::Fresh;
        }
        match self.find(producer_id, producer_seq) {
            Some(entry) if &entry.fingerprint == fp => ProducerCheck::Duplicate { seq: entry.seq },
            Some(_) => ProducerCheck::ReplayConflict,
            None => ProducerCheck::SeqConflict {
                expected,
                got: producer_seq,
            },
        }
    }

    fn find(&self, producer_id: &str, producer_seq: u64) -> Option<&ProducerEntry> {
        let window = &self.by_id.get(producer_id)?.window;
        let first = window.front()?.producer_seq;
        let offset = producer_seq.checked_sub(first)?;
        let entry = window.get(usize::try_from(offset).ok()?)?;
        debug_assert_eq!(entry.producer_seq, producer_seq);
        Some(entry)
    }

    /// Records an accepted (fresh) append.
    pub fn record(&mut self, producer_id: &str, entry: ProducerEntry) {
        let producer = self.by_id.entry(producer_id.to_owned()).or_default();
        if let Some(prev) = producer.last() {
            debug_assert_eq!(prev.producer_seq + 1, entry.producer_seq);
            self.recency.remove(&prev.seq);
        }
        producer.window.push_back(entry);
        while producer.window.len() > self.window {
            producer.window.pop_front();
        }
        self.recency.insert(entry.seq, producer_id.to_owned());
        self.evict_over_cap();
    }

    fn evict_over_cap(&mut self) {
        while self.by_id.len() > self.cap {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.by_id.remove(&oldest);
        }
    }

    pub fn snapshot(&self) -> Vec<ProducerSnapshot> {
        // Ordered by recency so a restore rebuilds the same LRU order.
        self.recency
            .values()
            .filter_map(|id| {
                let p = self.by_id.get(id)?;
                Some(ProducerSnapshot {
                    id: id.clone(),
                    window: p.window.iter().copied().collect(),
                })
            })
            .collect()
    }

    pub fn restore(snaps: Vec<ProducerSnapshot>, window: usize, cap: usize) -> Self {
        let mut producers = Self::new(window, cap);
        for snap in snaps {
            let Some(last) = snap.window.last().copied() else {
                continue;
            };
            let mut deque: VecDeque<ProducerEntry> = snap.window.into_iter().collect();
            while deque.len() > window {
                deque.pop_front();
            }
            producers.recency.insert(last.seq, snap.id.clone());
            producers.by_id.insert(snap.id, Producer { window: deque });
        }
        producers.evict_over_cap();
        producers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(producer_seq: u64, seq: u64, fp: u8) -> ProducerEntry {
        ProducerEntry {
            producer_seq,
            seq,
            fingerprint: [fp; 16],
        }
    }

    #[test]
    fn unknown_producer_must_start_at_one() {
        let p = Producers::new(4, 10);
        assert_eq!(p.check("a", 1, &[0; 16]), ProducerCheck::Fresh);
        assert_eq!(
            p.check("a", 2, &[0; 16]),
            ProducerCheck::SeqConflict {
                expected: 1,
                got: 2
            }
        );
    }

    #[test]
    fn window_dedupes_recent_and_rejects_old_or_gaps() {
        let mut p = Producers::new(3, 10);
        for i in 1..=5 {
            p.record("a", entry(i, i * 10, i as u8));
        }
        assert_eq!(p.check("a", 6, &[0; 16]), ProducerCheck::Fresh);
        assert_eq!(
            p.check("a", 5, &[5; 16]),
            ProducerCheck::Duplicate { seq: 50 }
        );
        assert_eq!(
            p.check("a", 3, &[3; 16]),
            ProducerCheck::Duplicate { seq: 30 }
        );
        assert_eq!(p.check("a", 3, &[9; 16]), ProducerCheck::ReplayConflict);
        // Seq 2 fell out of the 3-entry window.
        assert_eq!(
            p.check("a", 2, &[2; 16]),
            ProducerCheck::SeqConflict {
                expected: 6,
                got: 2
            }
        );
        assert_eq!(
            p.check("a", 8, &[0; 16]),
            ProducerCheck::SeqConflict {
                expected: 6,
                got: 8
            }
        );
        assert_eq!(
            p.check("a", 0, &[0; 16]),
            ProducerCheck::SeqConflict {
                expected: 6,
                got: 0
            }
        );
    }

    #[test]
    fn least_recently_appending_producer_is_dropped_at_cap() {
        let mut p = Producers::new(2, 2);
        p.record("a", entry(1, 1, 0));
        p.record("b", entry(1, 2, 0));
        p.record("a", entry(2, 3, 0));
        p.record("c", entry(1, 4, 0)); // evicts b (latest append at seq 2)
        assert_eq!(p.len(), 2);
        assert_eq!(
            p.check("b", 2, &[0; 16]),
            ProducerCheck::SeqConflict {
                expected: 1,
                got: 2
            }
        );
        assert_eq!(p.check("a", 3, &[0; 16]), ProducerCheck::Fresh);
    }

    #[test]
    fn snapshot_round_trip_keeps_windows_and_order() {
        let mut p = Producers::new(2, 2);
        p.record("a", entry(1, 1, 1));
        p.record("b", entry(1, 2, 2));
        p.record("a", entry(2, 3, 3));
        let mut r = Producers::restore(p.snapshot(), 2, 2);
        assert_eq!(
            r.check("a", 1, &[1; 16]),
            ProducerCheck::Duplicate { seq: 1 }
        );
        r.record("c", entry(1, 4, 0));
        assert_eq!(
            r.check("b", 1, &[2; 16]),
            ProducerCheck::Fresh,
            "b was least recent"
        );
    }
}
