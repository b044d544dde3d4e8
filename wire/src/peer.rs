//! Frames exchanged between cluster nodes over TCP.
//!
//! Every message is one [`PeerFrame`], archived with rkyv and framed on the stream
//! exactly like a log frame ([`crate::log::encode_frame`]): a 16-byte header (payload
//! length, CRC32C of the payload, [`FRAME_MAGIC`], CRC32C of the header), then the
//! payload padded with zeros to a multiple of 16 bytes. Frames simply follow one
//! another on the stream, so every header starts at a multiple of 16 from the start
//! of the connection.
//!
//! [`encode_peer_frame`] appends one frame to an output buffer. [`PeerDecoder`] takes
//! bytes as they arrive from the socket, in pieces of any size, and yields whole
//! frames. It copies each payload into an `AlignedVec<16>` and deserialises it with
//! validation, so nothing it is fed can make it read out of bounds or panic. The
//! first error (bad magic, checksum mismatch, length above the decoder's limit,
//! payload that is not a valid archived [`PeerFrame`]) is sticky: the stream is out
//! of sync, and the caller closes the connection.
//!
//! The decoder rejects a frame's length as soon as its header has arrived, before
//! buffering its payload, so a peer cannot make it hold more than about one frame of
//! at most [`PeerDecoder::max_frame`] bytes (plus what the caller pushes at once).

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use thiserror::Error;

use crate::log::{encode_frame, FRAME_ALIGN, FRAME_HEADER_LEN, FRAME_MAGIC};

/// Largest payload of one peer frame (16 MiB). A Raft batch or a request body that
/// would not fit must be split (or chunked) by the sender.
pub const MAX_PEER_FRAME: usize = crate::limits::PEER_FRAME;

/// Version of the inter-node protocol, sent in [`PeerFrame::Hello`]. A node refuses
/// a peer that speaks another version.
pub const CLUSTER_VERSION: u32 = 1;

// Byte offsets of the fields inside a frame header (see `crate::log`).
const LEN_OFFSET: usize = 0;
const PAYLOAD_CRC_OFFSET: usize = 4;
const MAGIC_OFFSET: usize = 8;
const HEADER_CRC_OFFSET: usize = 12;

/// One message between two nodes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PeerFrame {
    /// First frame from the connecting side.
    Hello {
        cluster_version: u32,
        node: String,
        http_port: u16,
        nonce: [u8; 32],
    },
    /// Answer: proves the acceptor knows the secret.
    Challenge {
        node: String,
        http_port: u16,
        nonce: [u8; 32],
        mac: [u8; 32],
    },
    /// Proves the connector knows the secret.
    Auth {
        mac: [u8; 32],
    },
    /// Raft messages of many groups, batched per peer per flush.
    Raft {
        messages: Vec<RaftEnvelope>,
    },
    /// A request; answered by a [`PeerFrame::Response`] with the same id on the same
    /// connection. The body is opaque here.
    Request {
        id: u64,
        body: Vec<u8>,
    },
    /// The answer to the request with this id.
    Response {
        id: u64,
        body: Vec<u8>,
    },
    /// One-way control message (node status, drain marks: opaque here).
    Control {
        body: Vec<u8>,
    },
    /// Liveness probe; answered with a [`PeerFrame::Pong`] carrying the same `at`.
    Ping {
        at: u64,
    },
    Pong {
        at: u64,
    },
    /// Bytes `offset..offset + data.len()` of one Raft message of `total` bytes
    /// that is too large for one frame (a snapshot for a follower). The chunks
    /// of one message follow each other in order on one connection; `id` tells
    /// messages apart. The receiver hands the message on once it is complete.
    RaftChunk {
        group: u32,
        id: u64,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    },
}

/// One Raft message for one group. `data` is a protobuf-encoded `raft` `Message`,
/// opaque here.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RaftEnvelope {
    pub group: u32,
    pub data: Vec<u8>,
}

impl PeerFrame {
    /// Short name of the frame kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerFrame::Hello { .. } => "hello",
            PeerFrame::Challenge { .. } => "challenge",
            PeerFrame::Auth { .. } => "auth",
            PeerFrame::Raft { .. } => "raft",
            PeerFrame::Request { .. } => "request",
            PeerFrame::Response { .. } => "response",
            PeerFrame::Control { .. } => "control",
            PeerFrame::Ping { .. } => "ping",
            PeerFrame::Pong { .. } => "pong",
            PeerFrame::RaftChunk { .. } => "raft_chunk",
        }
    }
}

/// Errors from encoding or decoding peer frames. Every decoding error means the
/// stream can no longer be trusted: close the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The payload is longer than the limit (on encode: [`MAX_PEER_FRAME`]; on decode:
    /// the decoder's [`PeerDecoder::max_frame`]).
    #[error("peer frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The header does not carry the frame magic: not a Starcite peer stream, or out of sync.
    #[error("bad peer frame magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("peer frame header checksum mismatch")]
    HeaderChecksum,
    #[error("peer frame payload checksum mismatch")]
    PayloadChecksum,
    /// The payload passed its checksum but is not a valid archived [`PeerFrame`].
    #[error("invalid peer frame payload: {reason}")]
    Invalid { reason: String },
}

/// Number of bytes [`encode_peer_frame`] appends for a payload of `payload_len` bytes.
pub fn encoded_peer_frame_len(payload_len: usize) -> usize {
    crate::log::encoded_frame_len(payload_len)
}

/// Archives `frame` and appends it, framed, to `out`. Returns the payload length.
///
/// `out.len()` must be a multiple of 16 (frames are appended back to back into a
/// buffer that starts empty); [`encode_frame`] panics otherwise. On error `out` is
/// unchanged.
pub fn encode_peer_frame(frame: &PeerFrame, out: &mut Vec<u8>) -> Result<usize, PeerError> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(frame).map_err(|e| PeerError::Invalid {
        reason: e.to_string(),
    })?;
    if payload.len() > MAX_PEER_FRAME {
        return Err(PeerError::TooLarge {
            len: payload.len(),
            max: MAX_PEER_FRAME,
        });
    }
    encode_frame(&payload, out).map_err(|_| PeerError::TooLarge {
        len: payload.len(),
        max: MAX_PEER_FRAME,
    })?;
    Ok(payload.len())
}

/// Streaming decoder of peer frames: [`push`](Self::push) bytes as they arrive, then
/// call [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
#[derive(Debug)]
pub struct PeerDecoder {
    /// `buf[start..]` is received but not yet decoded.
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
    failed: Option<PeerError>,
}

impl Default for PeerDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerDecoder {
    /// A decoder that accepts payloads up to [`MAX_PEER_FRAME`].
    pub fn new() -> Self {
        Self::with_max_frame(MAX_PEER_FRAME)
    }

    /// A decoder that accepts payloads up to `max_frame` bytes (at most
    /// [`MAX_PEER_FRAME`]), e.g. a small limit while a connection is not yet
    /// authenticated.
    pub fn with_max_frame(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame: max_frame.min(MAX_PEER_FRAME),
            failed: None,
        }
    }

    /// The current payload limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the payload limit (capped at [`MAX_PEER_FRAME`]) for the frames not yet decoded.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(MAX_PEER_FRAME);
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Whether a decoding error happened (every later call fails).
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Appends bytes received from the stream. Ignored once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || bytes.is_empty() {
            return;
        }
        if self.start > 0 {
            // Only a partial frame is left here: move it to the front.
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the (sticky)
    /// error that makes the stream unusable.
    pub fn next_frame(&mut self) -> Result<Option<PeerFrame>, PeerError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.decode_one();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
            self.buf = Vec::new();
            self.start = 0;
        }
        result
    }

    fn decode_one(&mut self) -> Result<Option<PeerFrame>, PeerError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let Some(header) = pending.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let field = |offset: usize| {
            let bytes: [u8; 4] = header
                .get(offset..offset + 4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or_default();
            u32::from_le_bytes(bytes)
        };
        let magic = field(MAGIC_OFFSET);
        if magic != FRAME_MAGIC {
            return Err(PeerError::BadMagic { found: magic });
        }
        if field(HEADER_CRC_OFFSET)
            != crc32c::crc32c(header.get(..HEADER_CRC_OFFSET).unwrap_or_default())
        {
            return Err(PeerError::HeaderChecksum);
        }
        let len = usize::try_from(field(LEN_OFFSET)).unwrap_or(usize::MAX);
        if len > self.max_frame {
            return Err(PeerError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        // len <= MAX_PEER_FRAME, so none of this can overflow.
        let total = FRAME_HEADER_LEN + len.next_multiple_of(FRAME_ALIGN);
        let Some(payload) = pending.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        if pending.len() < total {
            return Ok(None);
        }
        if field(PAYLOAD_CRC_OFFSET) != crc32c::crc32c(payload) {
            return Err(PeerError::PayloadChecksum);
        }
        let mut aligned = AlignedVec::<16>::with_capacity(len);
        aligned.extend_from_slice(payload);
        self.start += total;
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        rkyv::from_bytes::<PeerFrame, rkyv::rancor::Error>(&aligned)
            .map(Some)
            .map_err(|e| PeerError::Invalid {
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic PRNG (xorshift64*), so the tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn every_kind() -> Vec<PeerFrame> {
        vec![
            PeerFrame::Hello {
                cluster_version: CLUSTER_VERSION,
                node: "node-a".into(),
                http_port: 4000,
                nonce: [7; 32],
            },
            PeerFrame::Challenge {
                node: "nöde-b".into(),
                http_port: 4001,
                nonce: [1; 32],
                mac: [2; 32],
            },
            PeerFrame::Auth { mac: [3; 32] },
            PeerFrame::Raft { messages: vec![] },
            PeerFrame::Raft {
                messages: vec![
                    RaftEnvelope {
                        group: 0,
                        data: vec![],
                    },
                    RaftEnvelope {
                        group: 17,
                        data: vec![1, 2, 3],
                    },
                    RaftEnvelope {
                        group: u32::MAX,
                        data: vec![0xab; 5000],
                    },
                ],
            },
            PeerFrame::Request {
                id: 1,
                body: b"hello".to_vec(),
            },
            PeerFrame::Request {
                id: u64::MAX,
                body: vec![],
            },
            PeerFrame::Response {
                id: 42,
                body: vec![9; 70_000],
            },
            PeerFrame::Control {
                body: b"drain".to_vec(),
            },
            PeerFrame::Ping { at: 123_456 },
            PeerFrame::Pong { at: u64::MAX },
        ]
    }

    fn encode_all(frames: &[PeerFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            encode_peer_frame(f, &mut out).unwrap();
            assert_eq!(out.len() % FRAME_ALIGN, 0);
        }
        out
    }

    /// Feeds `bytes` in pieces whose sizes come from `piece`, draining frames after
    /// every push.
    fn decode_in_pieces(
        bytes: &[u8],
        mut piece: impl FnMut() -> usize,
    ) -> Result<Vec<PeerFrame>, PeerError> {
        let mut dec = PeerDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let n = piece().clamp(1, bytes.len() - pos);
            dec.push(&bytes[pos..pos + n]);
            pos += n;
            while let Some(f) = dec.next_frame()? {
                out.push(f);
            }
        }
        assert_eq!(dec.buffered(), 0, "no partial frame may remain");
        Ok(out)
    }

    #[test]
    fn round_trip_every_kind_whole() {
        let frames = every_kind();
        let bytes = encode_all(&frames);
        assert_eq!(decode_in_pieces(&bytes, || usize::MAX).unwrap(), frames);
    }

    #[test]
    fn round_trip_one_byte_at_a_time() {
        let frames = every_kind();
        let bytes = encode_all(&frames);
        assert_eq!(decode_in_pieces(&bytes, || 1).unwrap(), frames);
    }

    #[test]
    fn round_trip_random_pieces() {
        let frames = every_kind();
        let bytes = encode_all(&frames);
        for seed in 1..50u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let max = [2, 17, 100, 4096, 100_000][seed as usize % 5];
            let got = decode_in_pieces(&bytes, || 1 + rng.below(max)).unwrap();
            assert_eq!(got, frames, "seed {seed}");
        }
    }

    #[test]
    fn payload_is_padded_and_length_is_reported() {
        let mut out = Vec::new();
        let len = encode_peer_frame(&PeerFrame::Ping { at: 1 }, &mut out).unwrap();
        assert_eq!(out.len(), encoded_peer_frame_len(len));
        assert_eq!(out.len() % 16, 0);
    }

    #[test]
    fn every_corrupted_byte_is_an_error() {
        // Flipping any byte of the header or payload must be detected (padding is not
        // covered by a checksum, so it may go unnoticed).
        let frame = PeerFrame::Request {
            id: 5,
            body: b"some request body".to_vec(),
        };
        let mut bytes = Vec::new();
        let payload_len = encode_peer_frame(&frame, &mut bytes).unwrap();
        for i in 0..FRAME_HEADER_LEN + payload_len {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let mut dec = PeerDecoder::new();
            dec.push(&bad);
            // The header checksum covers the length and the magic, the payload
            // checksum the payload: every flip is detected at once.
            assert!(
                dec.next_frame().is_err(),
                "byte {i}: corruption went unnoticed"
            );
            assert!(dec.is_failed());
        }
    }

    #[test]
    fn wrong_magic_header_crc_and_payload_crc() {
        let mut bytes = Vec::new();
        encode_peer_frame(&PeerFrame::Ping { at: 9 }, &mut bytes).unwrap();

        let mut bad = bytes.clone();
        bad[MAGIC_OFFSET] ^= 1;
        let mut dec = PeerDecoder::new();
        dec.push(&bad);
        assert!(matches!(dec.next_frame(), Err(PeerError::BadMagic { .. })));
        // Sticky: the stream is out of sync for good.
        dec.push(&bytes);
        assert!(dec.next_frame().is_err());

        let mut bad = bytes.clone();
        bad[HEADER_CRC_OFFSET] ^= 1;
        let mut dec = PeerDecoder::new();
        dec.push(&bad);
        assert_eq!(dec.next_frame(), Err(PeerError::HeaderChecksum));

        let mut bad = bytes.clone();
        bad[FRAME_HEADER_LEN] ^= 1;
        let mut dec = PeerDecoder::new();
        dec.push(&bad);
        assert_eq!(dec.next_frame(), Err(PeerError::PayloadChecksum));
    }

    /// A header with a valid magic and checksum that declares `len` bytes.
    fn header_with_len(len: u32) -> Vec<u8> {
        let mut h = vec![0u8; FRAME_HEADER_LEN];
        h[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
        h[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        let crc = crc32c::crc32c(&h[..HEADER_CRC_OFFSET]);
        h[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut dec = PeerDecoder::new();
        dec.push(&header_with_len(MAX_PEER_FRAME as u32 + 1));
        assert_eq!(
            dec.next_frame(),
            Err(PeerError::TooLarge {
                len: MAX_PEER_FRAME + 1,
                max: MAX_PEER_FRAME
            })
        );
        let mut dec = PeerDecoder::new();
        dec.push(&header_with_len(u32::MAX));
        assert!(matches!(dec.next_frame(), Err(PeerError::TooLarge { .. })));

        // A smaller limit (e.g. before authentication) applies the same way.
        let mut dec = PeerDecoder::with_max_frame(1024);
        dec.push(&header_with_len(1025));
        assert!(matches!(
            dec.next_frame(),
            Err(PeerError::TooLarge {
                len: 1025,
                max: 1024
            })
        ));
        // Exactly at the limit: waits for the payload.
        let mut dec = PeerDecoder::with_max_frame(1024);
        dec.push(&header_with_len(1024));
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn encoder_refuses_oversized_payloads() {
        let mut out = Vec::new();
        let frame = PeerFrame::Control {
            body: vec![0; MAX_PEER_FRAME],
        };
        assert!(matches!(
            encode_peer_frame(&frame, &mut out),
            Err(PeerError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn checksummed_garbage_payload_is_invalid_not_a_panic() {
        for payload in [vec![], vec![0xff; 7], vec![0xff; 64], vec![0; 33]] {
            let mut bytes = Vec::new();
            encode_frame(&payload, &mut bytes).unwrap();
            let mut dec = PeerDecoder::new();
            dec.push(&bytes);
            assert!(
                matches!(dec.next_frame(), Err(PeerError::Invalid { .. })),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..2000 {
            let mut dec = PeerDecoder::with_max_frame(64 * 1024);
            let n = rng.below(600);
            let mut bytes = rng.bytes(n);
            if round % 3 == 0 {
                // Start with a plausible header so the payload paths get exercised.
                let mut h = header_with_len(rng.below(256) as u32);
                h.extend_from_slice(&bytes);
                bytes = h;
            }
            if round % 5 == 0 {
                // A valid frame with random bytes flipped.
                let frames = every_kind();
                let mut valid = encode_all(&frames[rng.below(frames.len())..][..1]);
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(valid.len());
                    valid[i] = rng.next() as u8;
                }
                bytes = valid;
            }
            let mut pos = 0;
            while pos < bytes.len() {
                let n = (1 + rng.below(64)).min(bytes.len() - pos);
                dec.push(&bytes[pos..pos + n]);
                pos += n;
                while let Ok(Some(_)) = dec.next_frame() {}
            }
        }
    }

    #[test]
    fn valid_checksums_around_random_archives_never_panic() {
        // Random payloads with correct framing reach rkyv validation every time.
        let mut rng = Rng(42);
        for _ in 0..3000 {
            let n = rng.below(200);
            let payload = rng.bytes(n);
            let mut bytes = Vec::new();
            encode_frame(&payload, &mut bytes).unwrap();
            let mut dec = PeerDecoder::new();
            dec.push(&bytes);
            let _ = dec.next_frame();
        }
    }
}
