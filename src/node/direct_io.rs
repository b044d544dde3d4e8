//! Direct, synchronous log appends: segments opened `O_DIRECT|O_DSYNC`,
//! preallocated with written zeroes, appended in whole 4 KiB blocks.
//!
//! Why: a buffered io_uring write plus `fdatasync` is punted to io_uring's
//! kernel worker threads (io-wq) on every group commit, which costs two thread
//! wake-ups and the CPU of the worker. A direct write that overwrites already
//! allocated, already written blocks needs no metadata, so the kernel issues it
//! from the submitting thread and completes it asynchronously; `O_DSYNC` makes
//! the completion wait for stable storage (a FUA write, or a write followed by a
//! cache flush where the device has no FUA). See docs/storage.md for the
//! durability argument and `starcite-bench fsync-probe` for the measurements.
//!
//! The log's logical end is rarely block aligned, so the last partial block is
//! kept in memory and rewritten, with the new bytes after it, by the next
//! append. The rewritten prefix is byte-for-byte what is already on disk.
//! Batches that need no sync (commit indexes only) are held in memory and go
//! out with the next synced write: losing them in a crash is what Raft allows.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Direct I/O granularity: offsets, lengths and buffer addresses are multiples
/// of it (the logical block size of every disk we run on divides it).
pub const BLOCK: usize = 4096;

/// Zeroes preallocated beyond a segment's target size, so a batch that crosses
/// the rotation point still overwrites written blocks.
pub const PREALLOC_SLACK: u64 = 4 << 20;

/// A growable, `BLOCK`-aligned byte buffer that io_uring can write from.
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer owns its allocation; nothing else aliases it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new() -> Self {
        AlignedBuf {
            ptr: std::ptr::null_mut(),
            cap: 0,
            len: 0,
        }
    }

    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, BLOCK).expect("valid layout")
    }

    /// Sets the contents to `head ++ tail`, zero-padded to a multiple of
    /// `BLOCK`.
    pub fn fill_padded(&mut self, head: &[u8], tail: &[u8]) {
        let len = head.len() + tail.len();
        let padded = len.div_ceil(BLOCK).max(1) * BLOCK;
        if padded > self.cap {
            self.release();
            let cap = padded.next_power_of_two();
            // SAFETY: non-zero size, valid alignment; checked for null.
            let ptr = unsafe { std::alloc::alloc(Self::layout(cap)) };
            if ptr.is_null() {
                std::alloc::handle_alloc_error(Self::layout(cap));
            }
            self.ptr = ptr;
            self.cap = cap;
        }
        // SAFETY: `padded <= cap`; the sources do not overlap our allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(head.as_ptr(), self.ptr, head.len());
            std::ptr::copy_nonoverlapping(tail.as_ptr(), self.ptr.add(head.len()), tail.len());
            std::ptr::write_bytes(self.ptr.add(len), 0, padded - len);
        }
        self.len = padded;
    }

    fn release(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated in `fill_padded` with this capacity.
            unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.cap)) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
            self.len = 0;
        }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.release();
    }
}

// SAFETY: `read_ptr` points at `bytes_init` initialised bytes that stay put
// while the kernel reads them (the buffer is moved into the operation).
unsafe impl monoio::buf::IoBuf for AlignedBuf {
    fn read_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

/// A segment being appended with direct synchronous writes.
pub struct DirectFile {
    file: monoio::fs::File,
    /// Start of the block that holds the logical end (multiple of `BLOCK`).
    block_start: u64,
    /// Bytes from `block_start` to the logical end: the partial last block
    /// (already on disk) plus any batch held back because it needed no sync.
    pending: Vec<u8>,
    /// `pending` was loaded from disk (set on the first append).
    loaded: bool,
    buf: AlignedBuf,
}

impl DirectFile {
    /// Opens `path` for direct synchronous writes; `Ok(None)` if the file
    /// system refuses `O_DIRECT` (tmpfs, some network file systems).
    pub fn open(path: &Path) -> io::Result<Option<DirectFile>> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path);
        let std_file = match opened {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(DirectFile {
            file: monoio::fs::File::from_std(std_file)?,
            block_start: 0,
            pending: Vec::new(),
            loaded: false,
            buf: AlignedBuf::new(),
        }))
    }

    /// Reads the partial block before `offset` (the logical end at open).
    fn load(&mut self, path_for_errors: &Path, offset: u64) -> io::Result<()> {
        let block_start = offset / BLOCK as u64 * BLOCK as u64;
        let partial = (offset - block_start) as usize;
        let mut bytes = vec![0u8; partial];
        if partial > 0 {
            // A plain descriptor: O_DIRECT reads would need aligned buffers.
            let f = std::fs::File::open(path_for_errors)?;
            f.read_exact_at(&mut bytes, block_start)?;
        }
        self.block_start = block_start;
        self.pending = bytes;
        self.loaded = true;
        Ok(())
    }

    /// Appends `data` at logical `offset`; with `sync`, writes every pending
    /// byte and returns once it is on stable storage.
    pub async fn append(
        &mut self,
        path_for_errors: &Path,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> io::Result<()> {
        if !self.loaded {
            self.load(path_for_errors, offset)?;
        }
        let end = self.block_start + self.pending.len() as u64;
        if end != offset {
            return Err(io::Error::other(format!(
                "direct log append at {offset}, but the log ends at {end}"
            )));
        }
        if !sync {
            self.pending.extend_from_slice(data);
            return Ok(());
        }
        self.write_out(data).await
    }

    /// Writes the held-back bytes (if any) durably.
    pub async fn sync(&mut self) -> io::Result<()> {
        if self.loaded && !self.pending.is_empty() {
            self.write_out(&[]).await
        } else {
            Ok(())
        }
    }

    async fn write_out(&mut self, data: &[u8]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.fill_padded(&self.pending, data);
        let (res, buf) = self.file.write_all_at(buf, self.block_start).await;
        self.buf = buf;
        res?;
        // Keep only the partial last block.
        let total = self.pending.len() + data.len();
        let full = total / BLOCK * BLOCK;
        if full >= self.pending.len() {
            let keep_from = full - self.pending.len();
            self.pending.clear();
            self.pending.extend_from_slice(&data[keep_from..]);
        } else {
            self.pending.drain(..full);
            self.pending.extend_from_slice(data);
        }
        self.block_start += full as u64;
        Ok(())
    }
}

/// Extends `path` with written zeroes up to `size` bytes and syncs it, so
/// direct appends below `size` are pure overwrites.
pub fn preallocate(path: &Path, size: u64) -> io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = f.metadata()?.len();
    if len >= size {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = len;
    while at < size {
        let n = ((size - at) as usize).min(zeros.len());
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    // SAFETY: a valid descriptor.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A zero-filled file prepared off the core thread for the next segment.
pub struct Prepared {
    pub path: PathBuf,
    handle: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Prepared {
    /// Starts writing `size` zero bytes to `path` (replacing any old file) on a
    /// short-lived thread.
    pub fn start(path: PathBuf, size: u64) -> Prepared {
        let p = path.clone();
        let handle = std::thread::Builder::new()
            .name("log-prealloc".into())
            .spawn(move || {
                let _ = std::fs::remove_file(&p);
                std::fs::File::create(&p)?;
                preallocate(&p, size)
            })
            .ok();
        Prepared { path, handle }
    }

    /// Waits for the file (normally long done) and reports whether it is usable.
    pub fn finish(mut self) -> Option<PathBuf> {
        let ok = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .is_some_and(|r| r.is_ok());
        ok.then_some(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    /// A scratch dir on the build's file system (ext4 or xfs on every machine
    /// we build on; /tmp may be a tmpfs, which refuses O_DIRECT).
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap()
    }

    fn open(path: &Path) -> DirectFile {
        DirectFile::open(path)
            .unwrap()
            .expect("the target dir's file system takes O_DIRECT")
    }

    #[test]
    fn appends_land_at_their_logical_offsets() {
        let dir = scratch();
        let path = dir.path().join("seg");
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        preallocate(&path, 64 * 1024).unwrap();
        let mut expect = b"0123456789abcdef".to_vec();
        rt().block_on(async {
            let mut f = open(&path);
            let mut off = 16u64;
            for (i, sync) in [
                (1usize, true),
                (5000, false),
                (3, false),
                (9000, true),
                (7, true),
            ] {
                let data = vec![b'a' + (i % 26) as u8; i];
                f.append(&path, off, &data, sync).await.unwrap();
                off += i as u64;
                expect.extend_from_slice(&data);
            }
        });
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..expect.len()], &expect[..]);
        assert!(on_disk[expect.len()..].iter().all(|b| *b == 0));
        assert_eq!(on_disk.len(), 64 * 1024, "pure overwrites: the size stays");
    }

    #[test]
    fn held_back_bytes_are_written_by_sync() {
        let dir = scratch();
        let path = dir.path().join("seg");
        std::fs::write(&path, [7u8; 16]).unwrap();
        preallocate(&path, 16 * 1024).unwrap();
        rt().block_on(async {
            let mut f = open(&path);
            f.append(&path, 16, b"not yet", false).await.unwrap();
            assert!(std::fs::read(&path).unwrap()[16..23]
                .iter()
                .all(|b| *b == 0));
            f.sync().await.unwrap();
        });
        assert_eq!(&std::fs::read(&path).unwrap()[16..23], b"not yet");
    }

    #[test]
    fn an_append_elsewhere_than_the_end_is_refused() {
        let dir = scratch();
        let path = dir.path().join("seg");
        std::fs::write(&path, [1u8; 32]).unwrap();
        rt().block_on(async {
            let mut f = open(&path);
            f.append(&path, 32, b"x", true).await.unwrap();
            assert!(f.append(&path, 40, b"y", true).await.is_err());
        });
    }
}
