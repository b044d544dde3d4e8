//! Owned-buffer I/O helpers over monoio's completion-based streams.
//!
//! With io_uring the kernel reads from / writes into our buffers while an operation is
//! in flight, so every buffer handed to an operation is *owned* by it. When a future
//! is dropped early (a timeout, a `select!` losing branch) monoio cancels the
//! operation and keeps the buffer alive until the kernel is done with it — but the
//! bytes it may have read are lost to us. Every place here that lets an I/O future be
//! dropped therefore closes the connection afterwards.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes};
use monoio::buf::{IoBufMut, IoVecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::time::Instant;

/// Initial capacity of a connection's read buffer.
pub(crate) const INITIAL_READ_BUF: usize = 4 * 1024;
/// Upper bound on a single read into a connection's buffer.
pub(crate) const MAX_READ_CHUNK: usize = 64 * 1024;
/// Bodies up to this size are copied behind the head so a response is one `send`;
/// larger ones go out with one `writev` of two owned buffers.
pub(crate) const COALESCE_MAX: usize = 16 * 1024;
/// Stand-in for "never" when a configured duration would overflow `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + d`, saturating to a far-future instant instead of panicking on overflow.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + FAR_FUTURE)
}

/// A connection's input buffer: `data[start..]` is received but not yet consumed.
///
/// Consuming only moves `start`; the consumed prefix is dropped (one `memmove` of the
/// unconsumed tail) right before the next read, so pipelined bytes stay buffered.
pub(crate) struct InBuf {
    data: Vec<u8>,
    start: usize,
}

impl InBuf {
    pub(crate) fn new() -> Self {
        Self {
            data: Vec::with_capacity(INITIAL_READ_BUF),
            start: 0,
        }
    }

    pub(crate) fn pending(&self) -> &[u8] {
        self.data.get(self.start..).unwrap_or_default()
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Moves the unconsumed bytes out (e.g. into a WebSocket after the upgrade).
    pub(crate) fn take_pending(&mut self) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.data);
        data.drain(..self.start.min(data.len()));
        self.start = 0;
        data
    }

    /// Gives memory back after a large request once nothing is pending, so idle
    /// keep-alive connections stay small.
    pub(crate) fn shrink_when_empty(&mut self) {
        if self.pending().is_empty() && self.data.capacity() > 4 * INITIAL_READ_BUF {
            self.data = Vec::with_capacity(INITIAL_READ_BUF);
            self.start = 0;
        }
    }

    /// Reads once, appending to the buffer, so that at most `max_pending` bytes are
    /// pending afterwards. Returns the number of bytes read (0 = EOF).
    ///
    /// If this future is dropped before completion the buffer's contents are lost: the
    /// caller must close the connection then.
    pub(crate) async fn fill<R: AsyncReadRent>(
        &mut self,
        rd: &mut R,
        max_pending: usize,
    ) -> io::Result<usize> {
        let mut data = self.take_pending();
        let len = data.len();
        let room = max_pending.saturating_sub(len).min(MAX_READ_CHUNK);
        if room == 0 {
            self.data = data;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "input buffer full",
            ));
        }
        data.reserve(room);
        let (res, slice) = rd.read(data.slice_mut(len..len + room)).await;
        self.data = slice.into_inner();
        res
    }
}

/// Reads until `body` holds `len` bytes, growing it as data arrives (so a large
/// declared length does not reserve memory the client never sends).
pub(crate) async fn read_exact_into<R: AsyncReadRent>(
    rd: &mut R,
    mut body: Vec<u8>,
    len: usize,
) -> io::Result<Vec<u8>> {
    while body.len() < len {
        if body.capacity() == body.len() {
            let grow = body.len().max(INITIAL_READ_BUF).min(len - body.len());
            body.reserve_exact(grow);
        }
        let start = body.len();
        let end = body.capacity().min(len);
        let (res, slice) = rd.read(body.slice_mut(start..end)).await;
        body = slice.into_inner();
        if res? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(body)
}

/// Owned scatter list for `writev`: the iovec array lives on the heap and points into
/// `Bytes` that the operation owns, so nothing moves or is freed while the kernel
/// reads it, even if the write future is dropped.
struct IoParts {
    iovecs: Vec<libc::iovec>,
    parts: Vec<Bytes>,
}

impl IoParts {
    fn new(parts: Vec<Bytes>) -> Self {
        let iovecs = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        Self { iovecs, parts }
    }
}

// SAFETY: the iovecs point into the `Bytes` in `parts`, whose heap storage neither
// moves nor is freed while `IoParts` is alive; the iovec array is itself on the heap.
unsafe impl IoVecBuf for IoParts {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

/// Writes all `parts` back to back, with one `writev` per attempt (one syscall in the
/// common case), handling short writes.
pub(crate) async fn write_parts<W: AsyncWriteRent>(
    wr: &mut W,
    mut parts: Vec<Bytes>,
) -> io::Result<()> {
    parts.retain(|p| !p.is_empty());
    while !parts.is_empty() {
        let written = if parts.len() == 1 {
            let (res, part) = wr.write(parts.swap_remove(0)).await;
            parts.push(part);
            res?
        } else {
            let (res, io) = wr.writev(IoParts::new(parts)).await;
            parts = io.parts;
            res?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        advance(&mut parts, written);
    }
    Ok(())
}

/// Drops the first `n` bytes from the front of `parts`.
fn advance(parts: &mut Vec<Bytes>, mut n: usize) {
    while n > 0 && !parts.is_empty() {
        let first = &mut parts[0];
        if n < first.len() {
            first.advance(n);
            return;
        }
        n -= first.len();
        parts.remove(0);
    }
}

/// [`write_parts`] bounded by `limit`; a timeout is an error of kind `TimedOut` (and
/// leaves the stream in an unknown state, so the caller must stop using it).
pub(crate) async fn write_parts_timeout<W: AsyncWriteRent>(
    wr: &mut W,
    parts: Vec<Bytes>,
    limit: Duration,
) -> io::Result<()> {
    match monoio::time::timeout(limit, write_parts(wr, parts)).await {
        Ok(res) => res,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// Builds the parts of one message: `head` followed by `body`, coalesced into one
/// buffer when the body is small.
pub(crate) fn head_and_body(mut head: Vec<u8>, body: Bytes) -> Vec<Bytes> {
    if body.len() <= COALESCE_MAX {
        head.extend_from_slice(&body);
        vec![Bytes::from(head)]
    } else {
        vec![Bytes::from(head), body]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_across_parts() {
        let mut parts = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")];
        advance(&mut parts, 4);
        assert_eq!(parts, vec![Bytes::from_static(b"efg")]);
        advance(&mut parts, 3);
        assert!(parts.is_empty());
    }

    #[test]
    fn coalesces_small_bodies_only() {
        assert_eq!(
            head_and_body(b"H".to_vec(), Bytes::from_static(b"B")).len(),
            1
        );
        assert_eq!(
            head_and_body(b"H".to_vec(), Bytes::from(vec![0; COALESCE_MAX + 1])).len(),
            2
        );
    }
}
