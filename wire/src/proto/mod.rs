//! The Starcite binary client protocol ("wire protocol"), spoken on
//! `STARCITE_WIRE_PORT` by producers and tail consumers that want neither HTTP
//! nor JSON envelopes. The byte-level specification is `docs/wire-protocol.md`;
//! this module is its reference implementation, shared by the server and the
//! client library.
//!
//! A connection starts with an 8-byte [preface](Preface) from each side
//! (magic, lowest and highest protocol version spoken). Then both sides send
//! frames: an 8-byte header (payload length, CRC32C of the payload, both u32
//! little-endian) and the payload, one rkyv-archived [`ClientMsg`] (client to
//! server) or [`ServerMsg`] (server to client), validated on receipt.
//!
//! Everything here is sans-IO: [`encode`] appends a frame to a buffer, and
//! [`Decoder`] is fed bytes as they arrive and yields whole, validated
//! messages. A decoder error is sticky: the stream is out of sync and the
//! connection must be closed.

mod codec;
mod msg;

pub use codec::{checksum, encode, encoded_len, Decoder, FrameError, Message, FRAME_HEADER_LEN};
pub use msg::*;

/// First four bytes of each side's preface.
pub const MAGIC: [u8; 4] = *b"STCW";
/// Length of a preface.
pub const PREFACE_LEN: usize = 8;
/// Versions this implementation speaks.
pub const VERSION_MIN: u16 = 1;
pub const VERSION_MAX: u16 = 1;
/// Default and absolute cap on one frame's payload (16 MiB). The server
/// announces its own limit in [`ServerMsg::HelloOk`].
pub const MAX_FRAME: usize = crate::limits::WIRE_FRAME;
/// Payload cap before `Hello` is accepted: an unauthenticated peer cannot make
/// the server buffer more than this.
pub const MAX_PREAUTH_FRAME: usize = crate::limits::WIRE_PREAUTH_FRAME;

/// One side's connection preface: `MAGIC`, then the lowest and highest
/// protocol versions it speaks (u16 little-endian each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preface {
    pub min: u16,
    pub max: u16,
}

/// Why a preface was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefaceError {
    #[error("not a Starcite wire stream (bad magic)")]
    BadMagic,
    #[error("no common protocol version (ours {ours_min}..={ours_max}, theirs {theirs_min}..={theirs_max})")]
    NoCommonVersion {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
}

impl Preface {
    /// This implementation's preface.
    pub const OURS: Preface = Preface {
        min: VERSION_MIN,
        max: VERSION_MAX,
    };

    pub fn to_bytes(self) -> [u8; PREFACE_LEN] {
        let mut b = [0u8; PREFACE_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.min.to_le_bytes());
        b[6..8].copy_from_slice(&self.max.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8; PREFACE_LEN]) -> Result<Preface, PrefaceError> {
        if b[..4] != MAGIC {
            return Err(PrefaceError::BadMagic);
        }
        Ok(Preface {
            min: u16::from_le_bytes([b[4], b[5]]),
            max: u16::from_le_bytes([b[6], b[7]]),
        })
    }

    /// The version both sides use: the highest one both speak. Both sides
    /// compute it from the two prefaces, so it is never sent separately.
    pub fn negotiate(self, theirs: Preface) -> Result<u16, PrefaceError> {
        let hi = self.max.min(theirs.max);
        let lo = self.min.max(theirs.min);
        if hi >= lo && hi >= 1 {
            Ok(hi)
        } else {
            Err(PrefaceError::NoCommonVersion {
                ours_min: self.min,
                ours_max: self.max,
                theirs_min: theirs.min,
                theirs_max: theirs.max,
            })
        }
    }
}

#[cfg(test)]
mod tests;
