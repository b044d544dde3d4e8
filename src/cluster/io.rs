//! Reading and writing peer frames on a monoio stream (owned buffers).
//!
//! With io_uring an in-flight read owns its buffer; if the read future is dropped
//! (a timeout, a losing `select!` branch) the bytes it may have read are lost to us.
//! Every caller that lets a [`FrameReader::next`] or [`write_all_timeout`] future be
//! dropped therefore closes the connection afterwards.

use std::fmt;
use std::io;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use starcite_wire::peer::{encode_peer_frame, PeerDecoder, PeerError, PeerFrame};

/// Size of one read from a peer connection.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// A write buffer that grew beyond this is given back after the write.
pub(crate) const KEEP_WRITE_BUF: usize = 1024 * 1024;

/// Why a connection's input ended.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Eof,
    Decode(PeerError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Eof => f.write_str("connection closed by the peer"),
            ReadError::Decode(e) => write!(f, "{e}"),
        }
    }
}

/// The read side of a peer connection: a stream plus a [`PeerDecoder`].
pub(crate) struct FrameReader<R> {
    rd: R,
    dec: PeerDecoder,
    buf: Vec<u8>,
    /// Bytes read from the socket so far.
    pub(crate) bytes_read: u64,
}

impl<R: AsyncReadRent> FrameReader<R> {
    pub(crate) fn new(rd: R, max_frame: usize) -> Self {
        Self {
            rd,
            dec: PeerDecoder::with_max_frame(max_frame),
            buf: Vec::new(),
            bytes_read: 0,
        }
    }

    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.dec.set_max_frame(max_frame);
    }

    /// The next frame. Not cancel-safe: if dropped before it resolves, close the connection.
    pub(crate) async fn next(&mut self) -> Result<PeerFrame, ReadError> {
        loop {
            if let Some(frame) = self.dec.next_frame().map_err(ReadError::Decode)? {
                return Ok(frame);
            }
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            buf.reserve(READ_CHUNK);
            let (res, buf) = self.rd.read(buf).await;
            let n = res.map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            self.bytes_read += n as u64;
            self.dec.push(buf.get(..n).unwrap_or_default());
            self.buf = buf;
        }
    }
}

/// Writes all of `buf` within `limit`. Returns the buffer (cleared, for reuse) on
/// success. On error or timeout the stream is in an unknown state: close it.
pub(crate) async fn write_all_timeout<W: AsyncWriteRent>(
    wr: &mut W,
    buf: Vec<u8>,
    limit: Duration,
) -> io::Result<Vec<u8>> {
    match monoio::time::timeout(limit, wr.write_all(buf)).await {
        Ok((Ok(_), mut buf)) => {
            buf.clear();
            if buf.capacity() > KEEP_WRITE_BUF {
                buf = Vec::new();
            }
            Ok(buf)
        }
        Ok((Err(e), _)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// Encodes one frame and writes it (handshake frames).
pub(crate) async fn write_frame<W: AsyncWriteRent>(
    wr: &mut W,
    frame: &PeerFrame,
    limit: Duration,
) -> io::Result<()> {
    let mut out = Vec::new();
    encode_peer_frame(frame, &mut out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    write_all_timeout(wr, out, limit).await.map(drop)
}
