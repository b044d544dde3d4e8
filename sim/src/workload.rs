//! Simulated clients: create sessions, then producers append one event at a
//! time (retrying after timeouts with identical content), sometimes with
//! `expected_seq`; tails follow sessions by reading from replicas.

use std::collections::BTreeMap;

use starcite_shards::shard::Proposal;

/// One client operation; it may take several attempts.
#[derive(Debug, Clone)]
pub struct Op {
    pub session: String,
    pub group: u32,
    pub kind: OpKind,
    pub done: bool,
    pub attempts: u32,
    /// Set once any attempt started, for the liveness check.
    pub started_us: u64,
    /// The engine's routing decision for this op (node indexes).
    pub route: Option<starcite_shards::routing::Route<usize>>,
}

#[derive(Debug, Clone)]
pub enum OpKind {
    Create,
    Append {
        producer: usize,
        producer_id: String,
        pseq: u64,
        fp: [u8; 16],
        body: String,
    },
}

impl Op {
    pub fn proposal(&self, expected_seq: Option<u64>) -> Proposal {
        match &self.kind {
            OpKind::Create => Proposal::Create {
                id: self.session.clone(),
                tenant_id: "sim".into(),
                title: None,
                metadata_json: "{}".into(),
                principal_id: "sim".into(),
                principal_type: "service".into(),
            },
            OpKind::Append {
                producer_id,
                pseq,
                fp,
                body,
                ..
            } => Proposal::Append {
                session: self.session.clone(),
                producer_id: producer_id.clone(),
                producer_seq: *pseq,
                fingerprint: *fp,
                expected_seq,
                body: body.clone(),
            },
        }
    }
}

/// An attempt in flight: which op, and whether it carried `expected_seq`.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub op: usize,
    pub expected_seq: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Producer {
    pub session: usize,
    pub id: String,
    /// The producer_seq the next new append gets.
    pub next_pseq: u64,
    /// Appends not yet started.
    pub remaining: u64,
    /// Pipelining depth: appends in flight at once.
    pub depth: usize,
    pub inflight: usize,
}

/// A tail reader: what it has been sent so far, from its cursor.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    pub session: usize,
    pub cursor: u64,
    pub seen: Vec<(u64, bytes::Bytes)>,
}

#[derive(Debug, Default)]
pub struct Workload {
    pub ops: Vec<Op>,
    pub attempts: BTreeMap<u64, Attempt>,
    pub next_attempt: u64,
    pub producers: Vec<Producer>,
    pub sessions: Vec<String>,
    /// Highest seq any client has seen acknowledged per session (for expected_seq).
    pub known_last: Vec<u64>,
    pub tails: Vec<Tail>,
}

impl Workload {
    pub fn pending(&self) -> usize {
        self.ops.iter().filter(|o| !o.done).count()
    }

    pub fn new_attempt(&mut self, op: usize, expected_seq: Option<u64>) -> u64 {
        let id = self.next_attempt;
        self.next_attempt += 1;
        self.attempts.insert(id, Attempt { op, expected_seq });
        self.ops[op].attempts += 1;
        id
    }

    /// Event content for a producer's append: deterministic per (producer, pseq).
    pub fn append_op(&self, producer: usize, group: u32) -> Op {
        let p = &self.producers[producer];
        let pseq = p.next_pseq;
        let body = format!(
            "\"type\":\"sim\",\"payload\":{{\"p\":{producer},\"n\":{pseq}}},\"producer_id\":\"{}\",\"producer_seq\":{pseq},\"tenant_id\":\"sim\"",
            p.id
        );
        let h = xxh(&body);
        let mut fp = [0u8; 16];
        fp[..8].copy_from_slice(&h.to_le_bytes());
        fp[8..].copy_from_slice(&pseq.to_le_bytes());
        Op {
            session: self.sessions[p.session].clone(),
            group,
            kind: OpKind::Append {
                producer,
                producer_id: p.id.clone(),
                pseq,
                fp,
                body,
            },
            done: false,
            attempts: 0,
            started_us: 0,
            route: None,
        }
    }
}

/// FNV-1a: a deterministic content hash for fingerprints (no dependency needed).
fn xxh(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
