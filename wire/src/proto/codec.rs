//! Frames: `len: u32 LE | crc32c(payload): u32 LE | payload (len bytes)`.

use rkyv::util::AlignedVec;

use super::{ClientMsg, ServerMsg, MAX_FRAME};

/// Bytes before each payload.
pub const FRAME_HEADER_LEN: usize = 8;

/// Why a stream of frames cannot be decoded. Sticky: close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// A message type that travels in frames (sealed to the two protocol enums).
pub trait Message: Sized + private::Sealed {
    #[doc(hidden)]
    fn archive(&self) -> Result<AlignedVec, String>;
    #[doc(hidden)]
    fn unarchive(bytes: &[u8]) -> Result<Self, String>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::ClientMsg {}
    impl Sealed for super::ServerMsg {}
}

macro_rules! message {
    ($t:ty) => {
        impl Message for $t {
            fn archive(&self) -> Result<AlignedVec, String> {
                rkyv::to_bytes::<rkyv::rancor::Error>(self).map_err(|e| e.to_string())
            }
            fn unarchive(bytes: &[u8]) -> Result<Self, String> {
                rkyv::from_bytes::<$t, rkyv::rancor::Error>(bytes).map_err(|e| e.to_string())
            }
        }
    };
}
message!(ClientMsg);
message!(ServerMsg);

/// Archives `msg` and appends it, framed, to `out`. Fails (leaving `out`
/// unchanged) when the payload would exceed `max` bytes.
pub fn encode<M: Message>(msg: &M, max: usize, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let payload = msg.archive().map_err(FrameError::Invalid)?;
    let max = max.min(MAX_FRAME);
    if payload.len() > max {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(FRAME_HEADER_LEN + payload.len())
}

/// The frame checksum: CRC32C (Castagnoli) of the payload.
pub fn checksum(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// Length of the frame [`encode`] would append for `msg`.
pub fn encoded_len<M: Message>(msg: &M) -> usize {
    msg.archive().map_or(0, |p| FRAME_HEADER_LEN + p.len())
}

/// Streaming decoder: [`push`](Self::push) bytes as they arrive, then call
/// [`next`](Self::next) until it returns `Ok(None)`. It never holds more than
/// one frame of at most `max_frame` bytes beyond what was pushed at once: a
/// frame's length is checked as soon as its header has arrived.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            max_frame: max_frame.min(MAX_FRAME),
            failed: None,
        }
    }

    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(MAX_FRAME);
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes received and not yet decoded (a partial frame).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || bytes.is_empty() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed, or the
    /// (sticky) error that makes the stream unusable.
    #[allow(clippy::should_implement_trait)] // generic over the message type, not an Iterator
    pub fn next<M: Message>(&mut self) -> Result<Option<M>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.decode_one();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
        }
        r
    }

    fn decode_one<M: Message>(&mut self) -> Result<Option<M>, FrameError> {
        let pending = &self.buf[self.start..];
        if pending.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        let crc = u32::from_le_bytes([pending[4], pending[5], pending[6], pending[7]]);
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let Some(payload) = pending.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        if crc32c::crc32c(payload) != crc {
            return Err(FrameError::Checksum);
        }
        let mut aligned = AlignedVec::<16>::with_capacity(len);
        aligned.extend_from_slice(payload);
        self.start += FRAME_HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > 1 << 20 {
                self.buf = Vec::new();
            }
        }
        M::unarchive(&aligned)
            .map(Some)
            .map_err(FrameError::Invalid)
    }
}
