//! Framing of the per-core Raft log segment files.
//!
//! Each core of a node appends to its own log, stored as a sequence of
//! segment files named by [`segment_file_name`]. This module is pure: it
//! encodes frames into a `Vec<u8>` and decodes the bytes of a whole segment.
//! The file I/O (io_uring, fsync, truncation) belongs to the engine.
//!
//! Frame payloads are opaque here. The engine stores rkyv-archived records in
//! them and reads them zero-copy with `rkyv::access`, so every payload starts
//! at a 16-byte-aligned offset within the segment.
//!
//! # On-disk format
//!
//! All integers are little-endian. Offsets are counted from the start of the
//! segment file.
//!
//! Segment header ([`SEGMENT_HEADER_LEN`] = 16 bytes, at offset 0):
//!
//! | bytes  | field                                   |
//! |--------|-----------------------------------------|
//! | 0..8   | magic `b"STCRLOG1"` ([`SEGMENT_MAGIC`]) |
//! | 8..12  | format version, u32 ([`FORMAT_VERSION`]) |
//! | 12..16 | core id, u32                            |
//!
//! The frames follow, starting at offset 16. Each frame is a 16-byte header
//! ([`FRAME_HEADER_LEN`]), then the payload, then zero padding up to the next
//! multiple of 16 ([`FRAME_ALIGN`]):
//!
//! | bytes  | field                                                      |
//! |--------|------------------------------------------------------------|
//! | 0..4   | payload length `len`, u32 (at most [`MAX_FRAME_PAYLOAD`])  |
//! | 4..8   | CRC32C of the payload, u32                                 |
//! | 8..12  | frame magic, u32 ([`FRAME_MAGIC`])                         |
//! | 12..16 | CRC32C of header bytes 0..12, u32                          |
//! | 16..   | payload (`len` bytes), then zero padding to a multiple of 16 |
//!
//! Because the segment header and every frame are a multiple of 16 bytes
//! long, every frame header and every payload starts at a 16-byte-aligned
//! offset. The padding is not covered by a checksum, and its contents are not
//! checked when decoding.
//!
//! The header checksum authenticates the length field. Without it, a flipped
//! bit in the length of a frame in the middle of a file could make that frame
//! seem to run past end-of-file. That would look like a torn tail, and the
//! decoder would silently drop every frame after it. With it, a frame
//! that runs past end-of-file really is an interrupted append.
//!
//! # Recovery rules ([`decode_segment`])
//!
//! Segment header:
//! - A file shorter than 16 bytes (including an empty file) is a torn
//!   segment. It is not an error, so a crash right after the file was created
//!   does not stop start-up. The result has no frames, `core` 0 (unknown: use the
//!   core from the file name), `valid_len` 0, and `torn` set. `valid_len` 0
//!   means the caller must truncate the file and write the header again.
//! - A file that is entirely zero bytes, of any length, is treated the same
//!   way. It holds no data, and it is what a preallocated file looks like
//!   when a crash happened before the header reached the disk.
//! - Otherwise, a wrong magic is [`LogError::BadHeader`], and a version other
//!   than [`FORMAT_VERSION`] is [`LogError::UnsupportedVersion`].
//!
//! Frames are then read in order. Each one is classified as:
//! - *valid*: the whole header is present, the magic and header checksum are
//!   correct, the length is at most [`MAX_FRAME_PAYLOAD`], the frame with its
//!   padding lies within the file, and the payload checksum is correct;
//! - *incomplete*: fewer than 16 bytes remain for the header, or an
//!   authenticated header (correct magic and header checksum) declares an end
//!   (header + payload + padding) beyond end-of-file;
//! - *invalid*: wrong frame magic, wrong header checksum, length above the
//!   maximum, or wrong payload checksum.
//!
//! The first frame that is not valid ends the scan:
//! - An incomplete frame is a **torn tail**.
//! - An invalid frame is **corruption**, [`LogError::Corrupt`] at its offset,
//!   if a valid frame follows it. "A valid frame follows" means that scanning
//!   forward on 16-byte boundaries finds a position where a frame is valid in
//!   the sense above (correct magic, both checksums, entirely within the
//!   file). The scan starts right after the invalid frame's header. If that
//!   header was authenticated (only the payload checksum failed), its length
//!   can be trusted, and the scan starts at the frame's declared end, so a
//!   payload that happens to contain encoded frames does not cause a false
//!   alarm. If the header itself is damaged, such a payload can still be
//!   reported as corruption, which errs on the safe side.
//! - An invalid frame with no valid frame after it is a **torn tail** only if
//!   it looks like bytes that were never written: its header is all zeros,
//!   or (only its payload checksum failed) its payload ends in at least
//!   [`TORN_ZERO_RUN`] zero bytes or holds a [`TORN_SECTOR`]-aligned block of
//!   zeros. Any other damage to the last frame — a flipped bit in a frame
//!   that was written completely, and so may have been acknowledged — is
//!   **corruption**: truncating it would lose an acknowledged record
//!   silently.
//!
//! For a torn tail, `valid_len` and `torn.offset` are the offset of the
//! frame where decoding stopped. The caller truncates the file to
//! `valid_len`. This rule also covers zero bytes after the last frame
//! (preallocated, or partially written): zeros have the wrong frame magic,
//! an all-zero header, and no valid frame follows them.
//!
//! Corruption in the middle of a file must stop start-up instead of being
//! truncated away: the frames after it were acknowledged as durable.
//!
//! The scan assumes segment files are created fresh, or zeroed, and never
//! reused with old contents. Old frames after a torn tail would otherwise be
//! reported as corruption.
//!
//! The decoder never panics, whatever the input: it uses only checked
//! arithmetic and bounds-checked slicing. It is meant to be fuzzed.

use thiserror::Error;

/// Length of the segment header at the start of every segment file.
pub const SEGMENT_HEADER_LEN: usize = 16;
/// Length of the header in front of every frame payload.
pub const FRAME_HEADER_LEN: usize = 16;
/// Version of the segment format, stored in the segment header.
pub const FORMAT_VERSION: u32 = 1;
/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STCRLOG1";
/// Magic value in every frame header ("STFR" read as a big-endian u32). It
/// separates real frame headers from zeros and from the contents of payloads.
pub const FRAME_MAGIC: u32 = 0x5354_4652;
/// Alignment of every frame header and payload within a segment, in bytes.
/// It matches the `rkyv::util::AlignedVec<16>` the engine reads segments into.
pub const FRAME_ALIGN: usize = 16;
/// Largest payload one frame may carry (64 MiB). It bounds the memory that one
/// record can use, and it keeps a corrupt length from looking plausible.
pub const MAX_FRAME_PAYLOAD: usize = crate::limits::LOG_FRAME;

// Byte ranges of the fields inside the segment header.
const SEG_MAGIC_RANGE: std::ops::Range<usize> = 0..8;
const SEG_VERSION_OFFSET: usize = 8;
const SEG_CORE_OFFSET: usize = 12;

// Byte offsets of the fields inside a frame header.
const FRAME_LEN_OFFSET: usize = 0;
const FRAME_PAYLOAD_CRC_OFFSET: usize = 4;
const FRAME_MAGIC_OFFSET: usize = 8;
const FRAME_HEADER_CRC_OFFSET: usize = 12;

/// Errors from encoding or decoding a segment.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The segment header is complete but is not a Starcite log header.
    #[error("bad segment header: {reason}")]
    BadHeader { reason: String },
    /// The segment was written in a format version this build cannot read.
    #[error("unsupported log format version {found} (supported: {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    /// A frame is damaged and valid frames follow it, so this is not a torn tail.
    #[error("corrupt frame at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    /// A payload longer than [`MAX_FRAME_PAYLOAD`] was given to [`encode_frame`].
    #[error("frame payload of {len} bytes exceeds the maximum of {MAX_FRAME_PAYLOAD} bytes")]
    FrameTooLarge { len: usize },
}

/// The decoded contents of one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment<'a> {
    /// Core id from the segment header. It is 0 when the header is torn (see
    /// the module docs); use the core from the file name in that case.
    pub core: u32,
    /// (offset of the frame header within the segment, payload slice) in file order.
    pub frames: Vec<(u64, &'a [u8])>,
    /// Length of the valid prefix; the file should be truncated to this if `torn` is Some.
    /// 0 means even the segment header is missing: the header must be written again.
    pub valid_len: u64,
    /// Set when the segment ends in an interrupted write, which is not an error.
    pub torn: Option<TornTail>,
}

/// Where and why a segment's valid prefix ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first byte that is not part of the valid prefix.
    pub offset: u64,
    /// Human-readable cause, for the start-up log.
    pub reason: String,
}

/// Appends the 16-byte segment header for `core` to `out`. It must be the
/// first thing written to a segment file.
pub fn encode_segment_header(core: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&core.to_le_bytes());
}

/// Number of bytes [`encode_frame`] appends for a payload of `payload_len`
/// bytes: header + payload + padding.
pub fn encoded_frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + padded_len(payload_len)
}

/// Appends one framed payload (header + payload + padding). `out.len()` must be a multiple of 16 on entry (assert it).
///
/// Panics if `out.len()` is not a multiple of [`FRAME_ALIGN`]. That is a
/// caller bug, and it would break the alignment of every payload after it.
/// When it returns an error, `out` is unchanged.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), LogError> {
    assert!(
        out.len().is_multiple_of(FRAME_ALIGN),
        "encode_frame: buffer length {} is not a multiple of {FRAME_ALIGN}",
        out.len()
    );
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(LogError::FrameTooLarge { len: payload.len() });
    }
    // Cannot fail: MAX_FRAME_PAYLOAD fits in a u32.
    let len =
        u32::try_from(payload.len()).map_err(|_| LogError::FrameTooLarge { len: payload.len() })?;

    let mut header = [0u8; FRAME_HEADER_LEN];
    put_u32(&mut header, FRAME_LEN_OFFSET, len);
    put_u32(
        &mut header,
        FRAME_PAYLOAD_CRC_OFFSET,
        crc32c::crc32c(payload),
    );
    put_u32(&mut header, FRAME_MAGIC_OFFSET, FRAME_MAGIC);
    let header_crc = crc32c::crc32c(&header[..FRAME_HEADER_CRC_OFFSET]);
    put_u32(&mut header, FRAME_HEADER_CRC_OFFSET, header_crc);

    out.reserve(encoded_frame_len(payload.len()));
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    let padding = padded_len(payload.len()) - payload.len();
    out.resize(out.len() + padding, 0);
    Ok(())
}

/// Decodes a whole segment, following the recovery rules in the module docs.
///
/// `bytes` must start at a 16-byte-aligned address, so the caller should pass
/// an `rkyv::util::AlignedVec<16>`. The payload slices are then 16-byte
/// aligned too and can be given to `rkyv::access`. The decoder does not check
/// the alignment itself: decoding works at any address, and only zero-copy
/// access to the payloads needs it.
pub fn decode_segment<'a>(bytes: &'a [u8]) -> Result<DecodedSegment<'a>, LogError> {
    let core = match read_segment_header(bytes)? {
        SegmentHeader::Valid { core } => core,
        SegmentHeader::Torn { reason } => {
            return Ok(DecodedSegment {
                core: 0,
                frames: Vec::new(),
                valid_len: 0,
                torn: Some(TornTail { offset: 0, reason }),
            });
        }
    };

    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < bytes.len() {
        let reason = match check_frame(bytes, pos) {
            FrameCheck::Valid { payload, end } => {
                frames.push((to_u64(pos), payload));
                pos = end;
                continue;
            }
            FrameCheck::Incomplete { reason } => reason,
            FrameCheck::Invalid {
                reason,
                resume_at,
                payload,
            } => {
                if let Some(next) = find_valid_frame(bytes, resume_at) {
                    return Err(LogError::Corrupt {
                        offset: to_u64(pos),
                        reason: format!("{reason}; a valid frame follows at offset {next}"),
                    });
                }
                if !looks_unwritten(bytes, pos, payload) {
                    return Err(LogError::Corrupt {
                        offset: to_u64(pos),
                        reason: format!(
                            "{reason}; the last frame is complete and not zero-filled, so it is damage, not an interrupted write"
                        ),
                    });
                }
                reason
            }
        };
        return Ok(DecodedSegment {
            core,
            frames,
            valid_len: to_u64(pos),
            torn: Some(TornTail {
                offset: to_u64(pos),
                reason,
            }),
        });
    }

    Ok(DecodedSegment {
        core,
        frames,
        valid_len: to_u64(bytes.len()),
        torn: None,
    })
}

/// Segment file name for (core, segment number): format!("raft-{core}-{seq:020}.log"), and its parser.
///
/// The sequence number is zero-padded to 20 digits, enough for any u64, so
/// sorting the names as strings sorts one core's segments in order.
pub fn segment_file_name(core: u32, seq: u64) -> String {
    format!("raft-{core}-{seq:020}.log")
}

/// Parses a name produced by [`segment_file_name`]. It accepts only the exact
/// canonical form (no sign or leading zeros in the core, exactly 20 sequence
/// digits), so that each segment has only one valid name.
pub fn parse_segment_file_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("raft-")?.strip_suffix(".log")?;
    let (core, seq) = rest.split_once('-')?;
    let core: u32 = core.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    (segment_file_name(core, seq) == name).then_some((core, seq))
}

/// Outcome of reading the segment header.
enum SegmentHeader {
    Valid {
        core: u32,
    },
    /// The file was cut off (or never written) before its header was complete.
    Torn {
        reason: String,
    },
}

fn read_segment_header(bytes: &[u8]) -> Result<SegmentHeader, LogError> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Ok(SegmentHeader::Torn {
            reason: format!(
                "segment header incomplete: {} of {SEGMENT_HEADER_LEN} bytes",
                bytes.len()
            ),
        });
    };
    if header[SEG_MAGIC_RANGE] != SEGMENT_MAGIC {
        if bytes.iter().all(|&b| b == 0) {
            return Ok(SegmentHeader::Torn {
                reason: "segment is all zeros: header never written".to_string(),
            });
        }
        return Err(LogError::BadHeader {
            reason: format!("wrong magic {:02x?}", &header[SEG_MAGIC_RANGE]),
        });
    }
    let version = get_u32(header, SEG_VERSION_OFFSET).unwrap_or_default();
    if version != FORMAT_VERSION {
        return Err(LogError::UnsupportedVersion { found: version });
    }
    let core = get_u32(header, SEG_CORE_OFFSET).unwrap_or_default();
    Ok(SegmentHeader::Valid { core })
}

/// Classification of the bytes at one frame position (see the module docs).
enum FrameCheck<'a> {
    /// A complete, checksummed frame. `end` is the offset of the next frame.
    Valid { payload: &'a [u8], end: usize },
    /// The frame was cut off by end-of-file.
    Incomplete { reason: String },
    /// The frame is damaged. `resume_at` is where the search for later valid
    /// frames starts. `payload` is the payload's byte range when the header is
    /// authenticated and the frame lies within the file (only the payload
    /// checksum failed).
    Invalid {
        reason: String,
        resume_at: usize,
        payload: Option<(usize, usize)>,
    },
}

/// Zero bytes a complete last frame's payload must end in to count as an
/// interrupted write. A record never ends in this many zeros (an archived
/// record ends with its root, whose last 40 bytes hold non-zero lengths,
/// offsets or a tag), so a flipped bit cannot pass for a tear by chance.
pub const TORN_ZERO_RUN: usize = 64;
/// Disk sector size assumed for a write torn in the middle: a sector-aligned
/// block of zeros inside the last frame is a sector that never reached the disk.
pub const TORN_SECTOR: usize = 512;

/// Whether a damaged last frame (nothing valid after it) looks like a write
/// that never completed rather than damage to a written frame:
/// - a frame header that is all zeros (the zeroed tail of a file, or a
///   preallocated region);
/// - a complete frame whose payload checksum fails and whose payload ends in at
///   least [`TORN_ZERO_RUN`] zero bytes or holds a [`TORN_SECTOR`]-aligned block
///   of zeros (sectors that were never written).
///
/// Anything else — a flipped bit in a frame that was written completely — is
/// corruption: that frame was acknowledged, and truncating it would lose it
/// silently.
fn looks_unwritten(bytes: &[u8], pos: usize, payload: Option<(usize, usize)>) -> bool {
    let Some((start, end)) = payload else {
        let header = pos
            .checked_add(FRAME_HEADER_LEN)
            .and_then(|end| bytes.get(pos..end));
        return header.is_some_and(|h| h.iter().all(|&b| b == 0));
    };
    let Some(payload) = bytes.get(start..end) else {
        return true;
    };
    let trailing_zeros = payload.iter().rev().take_while(|&&b| b == 0).count();
    if trailing_zeros >= TORN_ZERO_RUN.min(payload.len()) && trailing_zeros > 0 {
        return true;
    }
    let first_sector = start.next_multiple_of(TORN_SECTOR);
    (first_sector..end)
        .step_by(TORN_SECTOR)
        .filter_map(|s| bytes.get(s..s.checked_add(TORN_SECTOR)?.min(end)))
        .any(|block| block.len() == TORN_SECTOR && block.iter().all(|&b| b == 0))
}

/// Checks the frame whose header starts at `pos`. It never panics, for any
/// `pos`.
fn check_frame(bytes: &[u8], pos: usize) -> FrameCheck<'_> {
    let available = bytes.len().saturating_sub(pos);
    let header_end = pos.checked_add(FRAME_HEADER_LEN);
    let Some(header) = header_end.and_then(|end| bytes.get(pos..end)) else {
        return FrameCheck::Incomplete {
            reason: format!("frame header incomplete: {available} of {FRAME_HEADER_LEN} bytes"),
        };
    };
    // After the header bytes; cannot overflow because `header` was in range.
    let payload_start = pos + FRAME_HEADER_LEN;
    let field = |offset| get_u32(header, offset).unwrap_or_default();
    let invalid = |reason: String| FrameCheck::Invalid {
        reason,
        resume_at: payload_start,
        payload: None,
    };

    let magic = field(FRAME_MAGIC_OFFSET);
    if magic != FRAME_MAGIC {
        return invalid(format!("wrong frame magic {magic:#010x}"));
    }
    if field(FRAME_HEADER_CRC_OFFSET) != crc32c::crc32c(&header[..FRAME_HEADER_CRC_OFFSET]) {
        return invalid("frame header checksum mismatch".to_string());
    }
    let len = field(FRAME_LEN_OFFSET);
    let len = match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME_PAYLOAD => len,
        _ => return invalid(format!("frame length {len} exceeds {MAX_FRAME_PAYLOAD}")),
    };

    // The header is authenticated from here on, so its length can be trusted.
    let payload_end = payload_start.checked_add(len);
    let frame_end = payload_start.checked_add(padded_len(len));
    let (Some(payload_end), Some(end)) = (payload_end, frame_end) else {
        return FrameCheck::Incomplete {
            reason: "frame length overflows".to_string(),
        };
    };
    let Some(payload) = bytes
        .get(payload_start..payload_end)
        .filter(|_| end <= bytes.len())
    else {
        return FrameCheck::Incomplete {
            reason: format!(
                "frame of {} bytes extends beyond end of file ({available} bytes left)",
                encoded_frame_len(len)
            ),
        };
    };
    if field(FRAME_PAYLOAD_CRC_OFFSET) != crc32c::crc32c(payload) {
        return FrameCheck::Invalid {
            reason: "frame payload checksum mismatch".to_string(),
            resume_at: end,
            payload: Some((payload_start, payload_end)),
        };
    }
    FrameCheck::Valid { payload, end }
}

/// Offset of the first valid frame at or after `from`, found by trying every
/// [`FRAME_ALIGN`]-byte boundary. Returns `None` if there is none.
fn find_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let start = from.checked_next_multiple_of(FRAME_ALIGN)?;
    (start..bytes.len())
        .step_by(FRAME_ALIGN)
        .find(|&pos| matches!(check_frame(bytes, pos), FrameCheck::Valid { .. }))
}

/// `len` rounded up to a multiple of [`FRAME_ALIGN`]. Callers only pass lengths
/// up to [`MAX_FRAME_PAYLOAD`], so it cannot overflow.
fn padded_len(len: usize) -> usize {
    len.next_multiple_of(FRAME_ALIGN)
}

fn to_u64(n: usize) -> u64 {
    // usize is at most 64 bits on every supported platform.
    n as u64
}

fn get_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let field: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_le_bytes(field))
}

fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::util::AlignedVec;

    const CORE: u32 = 7;
    const SIZES: &[usize] = &[0, 1, 15, 16, 17, 31, 32, 33, 100, 4095, 4096, 4097, 65_536];

    /// Deterministic payload for frame `index`, so that contents can be checked.
    fn payload(index: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(31) ^ index.wrapping_mul(7)) as u8)
            .collect()
    }

    /// Encodes a segment with one frame per entry of `sizes`. It returns the
    /// bytes and the offset of each frame.
    fn build_segment(sizes: &[usize]) -> (Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        encode_segment_header(CORE, &mut out);
        let mut offsets = Vec::new();
        for (index, &len) in sizes.iter().enumerate() {
            offsets.push(out.len() as u64);
            encode_frame(&payload(index, len), &mut out).unwrap();
        }
        (out, offsets)
    }

    fn aligned(bytes: &[u8]) -> AlignedVec<16> {
        let mut vec = AlignedVec::<16>::with_capacity(bytes.len());
        vec.extend_from_slice(bytes);
        vec
    }

    /// Checks that `decoded` holds exactly the first `count` frames of a segment
    /// built by `build_segment(sizes)`.
    fn assert_prefix(decoded: &DecodedSegment<'_>, sizes: &[usize], offsets: &[u64], count: usize) {
        assert_eq!(decoded.frames.len(), count);
        for (index, (offset, data)) in decoded.frames.iter().enumerate() {
            assert_eq!(*offset, offsets[index]);
            assert_eq!(*data, payload(index, sizes[index]).as_slice());
        }
    }

    fn assert_torn_at(decoded: &DecodedSegment<'_>, offset: u64) {
        assert_eq!(decoded.valid_len, offset);
        let torn = decoded.torn.as_ref().expect("expected a torn tail");
        assert_eq!(torn.offset, offset);
        assert!(!torn.reason.is_empty());
    }

    #[test]
    fn round_trip_varied_sizes_with_aligned_payloads() {
        let (bytes, offsets) = build_segment(SIZES);
        let buf = aligned(&bytes);
        let decoded = decode_segment(&buf).unwrap();
        assert_eq!(decoded.core, CORE);
        assert_eq!(decoded.torn, None);
        assert_eq!(decoded.valid_len, bytes.len() as u64);
        assert_prefix(&decoded, SIZES, &offsets, SIZES.len());
        for (offset, data) in &decoded.frames {
            assert_eq!(offset % FRAME_ALIGN as u64, 0);
            assert_eq!(
                data.as_ptr() as usize % FRAME_ALIGN,
                0,
                "payload at {offset} misaligned"
            );
        }
    }

    #[test]
    fn encoded_sizes_are_header_plus_padded_payload() {
        for &len in SIZES {
            let mut out = Vec::new();
            encode_frame(&payload(0, len), &mut out).unwrap();
            assert_eq!(out.len(), encoded_frame_len(len));
            assert_eq!(out.len() % FRAME_ALIGN, 0);
            assert!(
                out[FRAME_HEADER_LEN + len..].iter().all(|&b| b == 0),
                "padding not zero"
            );
        }
        let mut header = Vec::new();
        encode_segment_header(CORE, &mut header);
        assert_eq!(header.len(), SEGMENT_HEADER_LEN);
    }

    #[test]
    fn payloads_can_be_accessed_zero_copy_with_rkyv() {
        let records: Vec<Vec<u64>> = vec![vec![], vec![1], vec![2, 3, 4], (0..1000).collect()];
        let mut out = Vec::new();
        encode_segment_header(CORE, &mut out);
        for record in &records {
            let archived = rkyv::to_bytes::<rkyv::rancor::Error>(record).unwrap();
            encode_frame(&archived, &mut out).unwrap();
        }
        let buf = aligned(&out);
        let decoded = decode_segment(&buf).unwrap();
        assert_eq!(decoded.frames.len(), records.len());
        for ((_, data), record) in decoded.frames.iter().zip(&records) {
            let archived = rkyv::access::<
                rkyv::vec::ArchivedVec<rkyv::Archived<u64>>,
                rkyv::rancor::Error,
            >(data)
            .unwrap();
            let values: Vec<u64> = archived.iter().map(|v| v.to_native()).collect();
            assert_eq!(&values, record);
        }
    }

    #[test]
    fn every_cut_of_the_last_frame_is_a_torn_tail() {
        let sizes = [3, 40, 17];
        let (bytes, offsets) = build_segment(&sizes);
        let last = offsets[2] as usize;
        for cut in last + 1..bytes.len() {
            let buf = aligned(&bytes[..cut]);
            let decoded = decode_segment(&buf).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            assert_eq!(decoded.core, CORE);
            assert_prefix(&decoded, &sizes, &offsets, 2);
            assert_torn_at(&decoded, last as u64);
        }
        // Cutting exactly at a frame boundary leaves a clean segment.
        let decoded = decode_segment(&bytes[..last]).unwrap();
        assert_prefix(&decoded, &sizes, &offsets, 2);
        assert_eq!(decoded.torn, None);
        assert_eq!(decoded.valid_len, last as u64);
    }

    #[test]
    fn every_cut_of_a_segment_decodes_to_a_prefix() {
        let sizes = [0, 1, 16, 33, 0, 100];
        let (bytes, offsets) = build_segment(&sizes);
        for cut in 0..=bytes.len() {
            let buf = aligned(&bytes[..cut]);
            let decoded = decode_segment(&buf).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let complete = offsets
                .iter()
                .zip(&sizes)
                .filter(|(&offset, &len)| offset as usize + encoded_frame_len(len) <= cut)
                .count();
            assert_prefix(&decoded, &sizes, &offsets, complete);
            let boundary =
                cut == SEGMENT_HEADER_LEN || cut == bytes.len() || offsets.contains(&(cut as u64));
            if boundary {
                assert_eq!(decoded.torn, None, "cut {cut}");
                assert_eq!(decoded.valid_len, cut as u64);
            } else if cut < SEGMENT_HEADER_LEN {
                assert_torn_at(&decoded, 0);
            } else {
                assert_torn_at(&decoded, offsets[complete]);
            }
        }
    }

    #[test]
    fn trailing_zeros_are_a_torn_tail() {
        let (bytes, offsets) = build_segment(SIZES);
        for zeros in [1, 4, 15, 16, 17, 32, 4096, 1 << 20] {
            let mut padded = bytes.clone();
            padded.resize(bytes.len() + zeros, 0);
            let decoded = decode_segment(&padded).unwrap();
            assert_prefix(&decoded, SIZES, &offsets, SIZES.len());
            assert_torn_at(&decoded, bytes.len() as u64);
        }
    }

    #[test]
    fn partially_written_zeros_in_the_last_frame_are_a_torn_tail() {
        let sizes = [10, 200];
        let (mut bytes, offsets) = build_segment(&sizes);
        let last = offsets[1] as usize;
        // The header made it to disk but the end of the payload is still zeros.
        bytes[last + FRAME_HEADER_LEN + 100..].fill(0);
        let decoded = decode_segment(&bytes).unwrap();
        assert_prefix(&decoded, &sizes, &offsets, 1);
        assert_torn_at(&decoded, last as u64);
    }

    #[test]
    fn flipped_bit_in_a_middle_frame_is_corruption() {
        let sizes = [5, 64, 17, 9];
        let (bytes, offsets) = build_segment(&sizes);
        let middle = offsets[1] as usize;
        // Every bit of the header and of the payload (padding is not checked).
        for byte in middle..middle + FRAME_HEADER_LEN + sizes[1] {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                match decode_segment(&damaged) {
                    Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, middle as u64),
                    other => panic!("byte {byte} bit {bit}: expected Corrupt, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn flipped_bit_in_the_last_frame_is_corruption() {
        // The last frame was written completely (and so may have been
        // acknowledged): damage to it must never be truncated as a torn tail.
        let sizes = [5, 64, 17];
        let (bytes, offsets) = build_segment(&sizes);
        let last = offsets[2] as usize;
        for byte in last..last + FRAME_HEADER_LEN + sizes[2] {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                match decode_segment(&damaged) {
                    Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, last as u64),
                    other => panic!("byte {byte} bit {bit}: expected Corrupt, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn unwritten_sector_inside_the_last_frame_is_a_torn_tail() {
        // A large last frame whose header and end reached the disk but one
        // sector in the middle did not (written back out of order).
        let sizes = [10, 3000];
        let (mut bytes, offsets) = build_segment(&sizes);
        let last = offsets[1] as usize;
        let sector = (last + FRAME_HEADER_LEN).next_multiple_of(TORN_SECTOR);
        bytes[sector..sector + TORN_SECTOR].fill(0);
        let decoded = decode_segment(&bytes).unwrap();
        assert_prefix(&decoded, &sizes, &offsets, 1);
        assert_torn_at(&decoded, last as u64);
        // Zeros that do not fill a sector nor end the payload are damage.
        let (mut bytes, _) = build_segment(&sizes);
        bytes[sector + 1..sector + TORN_SECTOR].fill(0);
        assert!(matches!(
            decode_segment(&bytes),
            Err(LogError::Corrupt { offset, .. }) if offset == last as u64
        ));
    }

    #[test]
    fn a_short_zero_run_at_the_end_is_not_a_tear() {
        let sizes = [10, 200];
        let (mut bytes, offsets) = build_segment(&sizes);
        let last = offsets[1] as usize;
        let end = last + FRAME_HEADER_LEN + 200;
        bytes[end - (TORN_ZERO_RUN - 1)..end].fill(0);
        assert!(matches!(
            decode_segment(&bytes),
            Err(LogError::Corrupt { offset, .. }) if offset == last as u64
        ));
    }

    #[test]
    fn garbage_header_at_the_end_is_corruption_zeros_are_not() {
        let (bytes, _) = build_segment(&[10, 20]);
        let end = bytes.len();
        let mut garbage = bytes.clone();
        garbage.extend_from_slice(&[0xAB; FRAME_HEADER_LEN]);
        assert!(matches!(
            decode_segment(&garbage),
            Err(LogError::Corrupt { offset, .. }) if offset == end as u64
        ));
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        assert_torn_at(&decode_segment(&zeros).unwrap(), end as u64);
    }

    #[test]
    fn damaged_frame_whose_payload_holds_frames_is_judged_by_its_own_extent() {
        // The last frame's payload is itself an encoded frame. When only its
        // payload checksum fails, the scan must skip its (trusted) extent: the
        // error is about the outer frame, not "a valid frame follows".
        let mut inner = Vec::new();
        encode_frame(b"inner record", &mut inner).unwrap();
        let mut bytes = Vec::new();
        encode_segment_header(CORE, &mut bytes);
        encode_frame(b"first", &mut bytes).unwrap();
        let last = bytes.len();
        encode_frame(&inner, &mut bytes).unwrap();
        // Flip a byte of the inner frame's padding: the inner frame stays
        // valid, and only the outer frame's payload checksum fails.
        let inner_padding = last + FRAME_HEADER_LEN + inner.len() - 1;
        bytes[inner_padding] ^= 0x01;
        match decode_segment(&bytes) {
            Err(LogError::Corrupt { offset, reason }) => {
                assert_eq!(offset, last as u64);
                assert!(!reason.contains("valid frame follows"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn short_or_empty_segment_is_torn_at_zero() {
        let (bytes, _) = build_segment(&[]);
        for cut in 0..SEGMENT_HEADER_LEN {
            let decoded = decode_segment(&bytes[..cut]).unwrap();
            assert!(decoded.frames.is_empty());
            assert_torn_at(&decoded, 0);
        }
        let decoded = decode_segment(&bytes).unwrap();
        assert_eq!(
            (decoded.core, decoded.torn, decoded.valid_len),
            (CORE, None, 16)
        );
    }

    #[test]
    fn all_zero_segment_is_torn_at_zero() {
        for len in [16, 17, 64, 4096] {
            let zeros = vec![0u8; len];
            let decoded = decode_segment(&zeros).unwrap();
            assert!(decoded.frames.is_empty());
            assert_torn_at(&decoded, 0);
        }
    }

    #[test]
    fn bad_magic_is_an_error() {
        let (mut bytes, _) = build_segment(&[1, 2]);
        bytes[0] = b'X';
        assert!(matches!(
            decode_segment(&bytes),
            Err(LogError::BadHeader { .. })
        ));
        // A zeroed magic in front of real frames is not an empty preallocated file.
        bytes[..8].fill(0);
        assert!(matches!(
            decode_segment(&bytes),
            Err(LogError::BadHeader { .. })
        ));
    }

    #[test]
    fn unknown_version_is_an_error() {
        let (mut bytes, _) = build_segment(&[1]);
        bytes[SEG_VERSION_OFFSET..SEG_VERSION_OFFSET + 4].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            decode_segment(&bytes).unwrap_err(),
            LogError::UnsupportedVersion { found: 2 }
        );
    }

    #[test]
    fn oversized_payload_is_rejected_without_writing() {
        let mut out = Vec::new();
        encode_segment_header(CORE, &mut out);
        let big = vec![0u8; MAX_FRAME_PAYLOAD + 1];
        let err = encode_frame(&big, &mut out).unwrap_err();
        assert_eq!(
            err,
            LogError::FrameTooLarge {
                len: MAX_FRAME_PAYLOAD + 1
            }
        );
        assert_eq!(out.len(), SEGMENT_HEADER_LEN);
    }

    #[test]
    #[should_panic(expected = "not a multiple of 16")]
    fn encoding_into_a_misaligned_buffer_panics() {
        let mut out = vec![0u8; 3];
        let _ = encode_frame(b"x", &mut out);
    }

    #[test]
    fn segment_file_names_round_trip() {
        for (core, seq) in [(0, 0), (3, 42), (u32::MAX, u64::MAX)] {
            let name = segment_file_name(core, seq);
            assert_eq!(parse_segment_file_name(&name), Some((core, seq)));
        }
        assert_eq!(segment_file_name(3, 42), "raft-3-00000000000000000042.log");
        for bad in [
            "",
            "raft-3-42.log",
            "raft-03-00000000000000000042.log",
            "raft-+3-00000000000000000042.log",
            "raft-3-+0000000000000000042.log",
            "raft-3-00000000000000000042.log.tmp",
            "raft--00000000000000000042.log",
            "raft-3-000000000000000000042.log",
            "raft-4294967296-00000000000000000042.log",
            "raft-3-99999999999999999999.log",
            "log-3-00000000000000000042.log",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad:?}");
        }
    }

    /// Minimal xorshift64 generator, so the garbage test needs no extra crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let (valid, _) = build_segment(&[0, 1, 17, 64, 5]);
        for round in 0..5000 {
            let mut bytes: Vec<u8> = match round % 3 {
                // Pure noise.
                0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                // A valid segment header followed by noise.
                1 => {
                    let mut out = Vec::new();
                    encode_segment_header(CORE, &mut out);
                    out.extend((0..rng.below(300)).map(|_| rng.next() as u8));
                    out
                }
                // A valid segment, truncated, with a few bytes overwritten.
                _ => {
                    let mut out = valid[..rng.below(valid.len() + 1)].to_vec();
                    for _ in 0..rng.below(4) {
                        if !out.is_empty() {
                            let at = rng.below(out.len());
                            out[at] = rng.next() as u8;
                        }
                    }
                    out
                }
            };
            // Also try noise that carries correct frame magic values.
            if round % 7 == 0 && bytes.len() >= 32 {
                let at = SEGMENT_HEADER_LEN + FRAME_MAGIC_OFFSET;
                bytes[at..at + 4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
            }
            let buf = aligned(&bytes);
            if let Ok(decoded) = decode_segment(&buf) {
                assert!(decoded.valid_len <= bytes.len() as u64);
                if decoded.torn.is_none() {
                    assert_eq!(decoded.valid_len, bytes.len() as u64);
                }
            }
            // Unaligned input must not panic either.
            let _ = decode_segment(bytes.get(1..).unwrap_or_default());
        }
    }
}
