//! Invariants checked during and after a run.

use std::collections::BTreeMap;

/// Violations are strings naming what broke; a clean run has none.
#[derive(Debug, Default)]
pub struct Checker {
    /// (session, seq) → (producer id, producer seq): every acknowledged append.
    acks: BTreeMap<(String, u64), (String, u64)>,
    /// (session, producer id, producer seq) → the seq it was acknowledged at.
    by_producer: BTreeMap<(String, String, u64), u64>,
    pub violations: Vec<String>,
}

impl Checker {
    pub fn acked(&self) -> usize {
        self.by_producer.len()
    }

    /// Records an acknowledgement; two answers for one append, or two appends
    /// at one seq, are violations at once.
    pub fn record_ack(
        &mut self,
        session: &str,
        seq: u64,
        producer: &str,
        pseq: u64,
        deduped: bool,
    ) {
        let key = (session.to_owned(), seq);
        let val = (producer.to_owned(), pseq);
        if let Some(prev) = self.acks.get(&key) {
            if *prev != val {
                self.violations.push(format!(
                    "two different appends acknowledged at {session}#{seq}: {prev:?} and {val:?}"
                ));
            }
        }
        self.acks.insert(key, val);
        let pkey = (session.to_owned(), producer.to_owned(), pseq);
        if let Some(prev) = self.by_producer.get(&pkey) {
            if *prev != seq {
                self.violations.push(format!(
                    "{session}: producer {producer} seq {pseq} acknowledged at {prev} and again at {seq} (deduped={deduped})"
                ));
            }
        }
        self.by_producer.insert(pkey, seq);
    }

    /// Checks one replica's full history of a session (frames in seq order).
    pub fn check_history(&mut self, replica: &str, session: &str, events: &[(u64, bytes::Bytes)]) {
        for (i, (seq, _)) in events.iter().enumerate() {
            if *seq != i as u64 + 1 {
                self.violations.push(format!(
                    "{replica}: {session} history has a gap or disorder at position {i}: seq {seq}"
                ));
                return;
            }
        }
        let mut seen = BTreeMap::new();
        for (seq, frame) in events {
            let Some((producer, pseq)) = producer_of(frame) else {
                self.violations
                    .push(format!("{replica}: {session}#{seq} frame does not parse"));
                continue;
            };
            if let Some(prev) = seen.insert((producer.clone(), pseq), *seq) {
                self.violations.push(format!(
                    "{replica}: {session} has {producer}/{pseq} twice (seqs {prev} and {seq})"
                ));
            }
        }
        for ((s, seq), (producer, pseq)) in self
            .acks
            .range((session.to_owned(), 0)..=(session.to_owned(), u64::MAX))
        {
            debug_assert_eq!(s, session);
            match events.get((*seq as usize).wrapping_sub(1)) {
                None => self.violations.push(format!(
                    "{replica}: acknowledged {session}#{seq} ({producer}/{pseq}) is missing"
                )),
                Some((_, frame)) => {
                    if producer_of(frame) != Some((producer.clone(), *pseq)) {
                        self.violations.push(format!(
                            "{replica}: {session}#{seq} holds a different event than acknowledged"
                        ));
                    }
                }
            }
        }
    }
}

/// Extracts `(producer_id, producer_seq)` from a rendered frame.
pub fn producer_of(frame: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(frame).ok()?;
    Some((
        v.get("producer_id")?.as_str()?.to_owned(),
        v.get("producer_seq")?.as_u64()?,
    ))
}
