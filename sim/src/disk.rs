//! A simulated disk for one core's log: what was synced survives a crash; what
//! was written but not synced is lost, kept, or torn at a random byte.

use rkyv::util::AlignedVec;
use starcite_shards::recovery::SegmentInput;
use starcite_wire::log::{encode_segment_header, segment_file_name};

use crate::rng::Rng;

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    durable: Vec<u8>,
    pending: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct SimDisk {
    core: u32,
    segments: Vec<Segment>,
}

/// What a crash did to unsynced bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashLoss {
    Nothing,
    Lost,
    Torn,
    Kept,
}

impl SimDisk {
    pub fn new(core: u32) -> Self {
        let mut header = Vec::new();
        encode_segment_header(core, &mut header);
        Self {
            core,
            segments: vec![Segment {
                seq: 1,
                durable: header,
                pending: Vec::new(),
            }],
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.segments
            .last_mut()
            .expect("a segment")
            .pending
            .extend_from_slice(bytes);
    }

    pub fn sync(&mut self) {
        for s in &mut self.segments {
            let pending = std::mem::take(&mut s.pending);
            s.durable.extend_from_slice(&pending);
        }
    }

    /// Starts the next segment (its header durable at once, as the driver syncs it).
    pub fn start_segment(&mut self) -> u64 {
        // The driver syncs the old segment first: only the last segment may
        // ever end torn.
        self.sync();
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let mut durable = Vec::new();
        encode_segment_header(self.core, &mut durable);
        self.segments.push(Segment {
            seq,
            durable,
            pending: Vec::new(),
        });
        seq
    }

    /// Deletes segments numbered below `before` (never the current one).
    pub fn delete_before(&mut self, before: u64) {
        let last = self.segments.last().map_or(0, |s| s.seq);
        self.segments.retain(|s| s.seq >= before || s.seq == last);
    }

    pub fn crash(&mut self, rng: &mut Rng) -> CrashLoss {
        let mut loss = CrashLoss::Nothing;
        for s in &mut self.segments {
            if s.pending.is_empty() {
                continue;
            }
            let pending = std::mem::take(&mut s.pending);
            loss = match rng.range(0, 2) {
                0 => CrashLoss::Lost,
                1 => {
                    let cut = rng.range(0, pending.len() as u64) as usize;
                    s.durable.extend_from_slice(&pending[..cut]);
                    CrashLoss::Torn
                }
                _ => {
                    s.durable.extend_from_slice(&pending);
                    CrashLoss::Kept
                }
            };
        }
        loss
    }

    /// Applies recovery's truncation of a torn tail.
    pub fn truncate(&mut self, name: &str, len: u64) {
        for s in &mut self.segments {
            if segment_file_name(self.core, s.seq) == name {
                if len < 16 {
                    s.durable.clear();
                    encode_segment_header(self.core, &mut s.durable);
                } else {
                    s.durable.truncate(len as usize);
                }
            }
        }
    }

    pub fn inputs(&self) -> Vec<SegmentInput> {
        self.segments
            .iter()
            .map(|s| {
                let mut bytes = AlignedVec::<16>::with_capacity(s.durable.len());
                bytes.extend_from_slice(&s.durable);
                SegmentInput {
                    name: segment_file_name(self.core, s.seq),
                    seq: s.seq,
                    bytes,
                }
            })
            .collect()
    }

    pub fn oldest(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.seq)
    }

    pub fn bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.durable.len() + s.pending.len())
            .sum()
    }
}
