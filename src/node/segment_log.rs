//! The driver side of a core's Raft log: segment files on a [`LogDisk`].
//!
//! Files are `<data>/log/raft-<core>-<seq>.log`. Appends go to the last segment
//! (one `append` per group-commit batch, durable when the batch needs a sync).
//! The shard says when to start the next segment and which old ones no group
//! needs any more.
//!
//! The file operations sit behind [`LogDisk`] so the same code runs over the
//! production disk ([`UringDisk`]: io_uring writes and `fdatasync`, blocking
//! std I/O at boot) and over the simulator's disk (`sim/src/disk.rs`, which
//! loses unsynced writes on a crash and injects EIO/ENOSPC). Production code is
//! monomorphized over it: no dynamic dispatch on the append path.

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::direct_io::{preallocate, DirectFile, Prepared, PREALLOC_SLACK};
use starcite_shards::recovery::{recover, Recovered, SegmentInput};
use starcite_wire::log::{encode_segment_header, parse_segment_file_name, segment_file_name};

/// The file operations of one core's log directory.
///
/// Durability contract (what [`SegmentLog`] relies on):
/// - `append(.., sync = true)` returns only once every byte appended to that
///   file so far is on stable storage (`fdatasync`, or `RWF_DSYNC`/FUA writes);
/// - `create` returns once the new file, its contents and its directory entry
///   are durable;
/// - boot-time methods (`list`, `read`, `truncate`, `remove`, `sync_dir`,
///   `open_append`) may block: nothing else runs on the core yet, or they are
///   rare (segment deletion).
///
/// Everything a batch wrote is lost or torn on a crash unless a sync followed.
pub trait LogDisk {
    /// An open segment being appended to.
    type File;

    /// Names of the files in the log directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole contents of a file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Removes a file (made durable by a later `sync_dir`).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations and removals in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Opens an existing file for appending; returns it with its length. Every
    /// byte in the file is durable when it returns: recovery read bytes that an
    /// earlier run may have written without a completed sync (a failed write's
    /// prefix, a failed fsync, a kill between write and sync, a device's
    /// volatile cache), and the node is about to report them as persisted.
    fn open_append(&self, name: &str) -> io::Result<(Self::File, u64)>;
    /// Creates a new file holding `contents`, durably (file and directory entry).
    fn create(&self, name: &str, contents: Vec<u8>)
        -> impl Future<Output = io::Result<Self::File>>;
    /// Writes `buf` at `offset` of `file`; with `sync`, returns once everything
    /// written to the file is durable. Gives the buffer back for reuse.
    fn append(
        &self,
        file: &mut Self::File,
        offset: u64,
        buf: Vec<u8>,
        sync: bool,
    ) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;
    /// Makes everything written to `file` durable.
    fn sync(&self, file: &mut Self::File) -> impl Future<Output = io::Result<()>>;
}

/// The production disk: a directory, io_uring appends through monoio, blocking
/// std I/O for the rare operations. With direct I/O (the default), segments are
/// preallocated with zeroes and appended `O_DIRECT|O_DSYNC` in whole blocks
/// ([`super::direct_io`]); the next segment is zero-filled on a helper thread
/// while the current one fills. Where the file system refuses `O_DIRECT`, or
/// with `STARCITE_LOG_DIRECT_IO=false`, appends are buffered writes followed by
/// `fdatasync`.
pub struct UringDisk {
    dir: PathBuf,
    core: u32,
    direct: std::cell::Cell<bool>,
    /// Size segments are preallocated to (direct I/O only).
    prealloc_bytes: u64,
    next: std::cell::RefCell<Option<Prepared>>,
}

/// An open segment of [`UringDisk`].
pub enum UringFile {
    Buffered(monoio::fs::File),
    Direct { file: DirectFile, path: PathBuf },
}

impl UringDisk {
    pub fn open(dir: &Path, core: u32, direct: bool, segment_bytes: u64) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let disk = UringDisk {
            dir: dir.to_owned(),
            core,
            // The test fault that skips syncs needs the buffered path: a
            // direct write is synchronous by itself.
            direct: std::cell::Cell::new(direct && !skip_fdatasync()),
            prealloc_bytes: segment_bytes + PREALLOC_SLACK,
            next: std::cell::RefCell::new(None),
        };
        // A zero-filled spare left by an earlier run is simply rebuilt.
        let _ = fs::remove_file(disk.spare_path());
        Ok(disk)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where the next segment is zero-filled ahead of time (not a segment name:
    /// recovery ignores it).
    fn spare_path(&self) -> PathBuf {
        self.dir.join(format!("raft-{}.spare", self.core))
    }

    fn prepare_next(&self) {
        if self.direct.get() && self.next.borrow().is_none() {
            *self.next.borrow_mut() = Some(Prepared::start(self.spare_path(), self.prealloc_bytes));
        }
    }

    /// Opens `path` for appending: direct when possible, else buffered.
    fn open_file(&self, path: &Path) -> io::Result<UringFile> {
        if self.direct.get() {
            match DirectFile::open(path)? {
                Some(file) => {
                    return Ok(UringFile::Direct {
                        file,
                        path: path.to_owned(),
                    })
                }
                None => {
                    tracing::warn!(core = self.core, dir = %self.dir.display(), "the file system refuses O_DIRECT: buffered log writes + fdatasync");
                    self.direct.set(false);
                }
            }
        }
        let std_file = fs::OpenOptions::new().write(true).open(path)?;
        Ok(UringFile::Buffered(monoio::fs::File::from_std(std_file)?))
    }
}

impl LogDisk for UringDisk {
    type File = UringFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let f = fs::OpenOptions::new().write(true).open(self.path(name))?;
        if f.metadata()?.len() == len {
            return Ok(());
        }
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        fs::File::open(&self.dir)?.sync_all()
    }

    fn open_append(&self, name: &str) -> io::Result<(Self::File, u64)> {
        let path = self.path(name);
        let len = fs::metadata(&path)?.len();
        // What recovery read must be on stable storage before the engine acts
        // on it (storage.md, "Opening the last segment").
        fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .sync_data()
            .map_err(|e| io::Error::new(e.kind(), format!("fdatasync at open: {e}")))?;
        if self.direct.get() {
            // Boot: make the rest of the segment written zeroes (pure overwrites).
            preallocate(&path, self.prealloc_bytes)?;
        }
        let file = self.open_file(&path)?;
        Ok((file, len))
    }

    async fn create(&self, name: &str, contents: Vec<u8>) -> io::Result<Self::File> {
        let path = self.path(name);
        let spare = self.next.borrow_mut().take().and_then(Prepared::finish);
        let mut file = match spare {
            Some(spare) => {
                // A zero-filled, synced file: give it its name, then the contents.
                fs::rename(&spare, &path)?;
                self.open_file(&path)?
            }
            None => {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                if self.direct.get() {
                    preallocate(&path, self.prealloc_bytes)?;
                }
                self.open_file(&path)?
            }
        };
        self.append(&mut file, 0, contents, true).await.0?;
        if let UringFile::Buffered(f) = &file {
            f.sync_all().await?;
        }
        self.sync_dir()?;
        Ok(file)
    }

    async fn append(
        &self,
        file: &mut Self::File,
        offset: u64,
        buf: Vec<u8>,
        sync: bool,
    ) -> (io::Result<()>, Vec<u8>) {
        match file {
            UringFile::Buffered(file) => {
                let (res, buf) = file.write_all_at(buf, offset).await;
                if res.is_err() || !sync || skip_fdatasync() {
                    return (res, buf);
                }
                // Name the failing call: a write that went through but a sync
                // that failed is a device error (EIO, or ENOSPC from thin storage).
                let synced = file.sync_data().await;
                (
                    synced.map_err(|e| io::Error::new(e.kind(), format!("fdatasync: {e}"))),
                    buf,
                )
            }
            UringFile::Direct { file, path } => {
                // Half way through a segment, zero-fill the next one off-core.
                if offset > self.prealloc_bytes / 2 {
                    self.prepare_next();
                }
                let res = file.append(path, offset, &buf, sync).await;
                (
                    res.map_err(|e| io::Error::new(e.kind(), format!("O_DSYNC write: {e}"))),
                    buf,
                )
            }
        }
    }

    async fn sync(&self, file: &mut Self::File) -> io::Result<()> {
        match file {
            UringFile::Buffered(file) => file.sync_data().await,
            UringFile::Direct { file, .. } => file.sync().await,
        }
    }
}

/// One core's Raft log over a [`LogDisk`].
pub struct SegmentLog<D: LogDisk> {
    disk: D,
    core: u32,
    seq: u64,
    file: D::File,
    len: u64,
    /// Lowest segment number that may still exist on disk.
    oldest: u64,
    /// Bytes were appended without a sync since the last one.
    unsynced: bool,
}

impl<D: LogDisk> SegmentLog<D> {
    /// Recovers this core's groups from its segments and opens the last one for
    /// appending (creating the first segment on a fresh log directory).
    pub async fn open(
        disk: D,
        core: u32,
        owns: impl Fn(u32) -> bool,
    ) -> Result<(SegmentLog<D>, Recovered), String> {
        let inputs = read_segments(&disk, core)?;
        let recovered = recover(&inputs, core, owns).map_err(|e| format!("log: {e}"))?;
        // The logical end of the last segment when recovery stopped before the
        // file's end: zeroes after the last frame are preallocated space (kept),
        // anything else is a torn tail (cut off).
        let mut logical_end = None;
        if let Some((name, valid_len)) = &recovered.truncate {
            let zero_tail = *valid_len >= 16
                && inputs.iter().find(|i| i.name == *name).is_some_and(|i| {
                    i.bytes
                        .get(*valid_len as usize..)
                        .is_some_and(|rest| rest.iter().all(|b| *b == 0))
                });
            if zero_tail {
                logical_end = Some(*valid_len);
            } else {
                tracing::warn!(core, file = %name, valid_len, "torn tail after a crash: truncating the last segment");
                truncate(&disk, name, *valid_len, core).await?;
                logical_end = Some((*valid_len).max(16));
            }
        }
        let seq = recovered.last_segment.unwrap_or(1);
        let name = segment_file_name(core, seq);
        let (file, len) = if recovered.last_segment.is_none() {
            let file = disk
                .create(&name, header(core))
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            (file, 16)
        } else {
            let (file, len) = disk
                .open_append(&name)
                .map_err(|e| format!("{name}: {e}"))?;
            (file, logical_end.unwrap_or(len))
        };
        assert_eq!(len % 16, 0, "segment length keeps frames aligned");
        tracing::info!(core, segment = %name, records = recovered.records, "log recovered");
        let oldest = recovered.segments.first().map_or(seq, |s| s.0);
        Ok((
            SegmentLog {
                disk,
                core,
                seq,
                file,
                len,
                oldest,
                unsynced: false,
            },
            recovered,
        ))
    }

    /// Appends `buf`, and makes it durable when `sync`. Returns the buffer for reuse.
    pub async fn append(&mut self, buf: Vec<u8>, sync: bool) -> io::Result<Vec<u8>> {
        let n = buf.len() as u64;
        let (res, buf) = self.disk.append(&mut self.file, self.len, buf, sync).await;
        res?;
        self.unsynced = !sync;
        self.len += n;
        Ok(buf)
    }

    /// Makes everything appended so far durable.
    pub async fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.disk.sync(&mut self.file).await?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Starts the next segment (header only, durable) and appends there from
    /// now on. Returns its number.
    pub async fn start_segment(&mut self) -> io::Result<u64> {
        // Recovery accepts a torn tail only in the last segment: make this one
        // whole before another follows it.
        if self.unsynced {
            self.disk.sync(&mut self.file).await?;
            self.unsynced = false;
        }
        // Cut the preallocated zeroes after the last frame (direct I/O): only
        // the last segment may end in them. Synced before the next segment
        // exists, so a crash in between leaves this one last.
        self.disk
            .truncate(&segment_file_name(self.core, self.seq), self.len)?;
        let next = self.seq + 1;
        let header = header(self.core);
        let len = header.len() as u64;
        let file = self
            .disk
            .create(&segment_file_name(self.core, next), header)
            .await?;
        self.file = file;
        self.seq = next;
        self.len = len;
        Ok(next)
    }

    /// Deletes every segment numbered below `before` (nothing in them is needed).
    pub fn delete_before(&mut self, before: u64) -> io::Result<usize> {
        let before = before.min(self.seq);
        if before <= self.oldest {
            return Ok(0);
        }
        self.oldest = before;
        let mut deleted = 0;
        for seq in segment_seqs(&self.disk, self.core)? {
            if seq < before && seq < self.seq {
                self.disk.remove(&segment_file_name(self.core, seq))?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.disk.sync_dir()?;
            tracing::debug!(
                core = self.core,
                deleted,
                before,
                "obsolete log segments removed"
            );
        }
        Ok(deleted)
    }

    /// The disk under this log (the simulator inspects its own).
    pub fn disk(&self) -> &D {
        &self.disk
    }
}

fn header(core: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(16);
    encode_segment_header(core, &mut header);
    header
}

fn segment_seqs<D: LogDisk>(disk: &D, core: u32) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = disk
        .list()?
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .filter(|(c, _)| *c == core)
        .map(|(_, seq)| seq)
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

fn read_segments<D: LogDisk>(disk: &D, core: u32) -> Result<Vec<SegmentInput>, String> {
    segment_seqs(disk, core)
        .map_err(|e| format!("log directory: {e}"))?
        .into_iter()
        .map(|seq| {
            let name = segment_file_name(core, seq);
            let raw = disk.read(&name).map_err(|e| format!("{name}: {e}"))?;
            let mut bytes = AlignedVec::<16>::with_capacity(raw.len());
            bytes.extend_from_slice(&raw);
            Ok(SegmentInput { name, seq, bytes })
        })
        .collect()
}

async fn truncate<D: LogDisk>(
    disk: &D,
    name: &str,
    valid_len: u64,
    core: u32,
) -> Result<(), String> {
    if valid_len < 16 {
        // Even the header was torn: rewrite it.
        disk.remove(name).map_err(|e| format!("{name}: {e}"))?;
        disk.create(name, header(core))
            .await
            .map(drop)
            .map_err(|e| format!("{name}: {e}"))
    } else {
        disk.truncate(name, valid_len)
            .map_err(|e| format!("{name}: {e}"))
    }
}

/// Test-only (debug builds): `STARCITE_TEST_FAULT=skip_fdatasync` acknowledges
/// without syncing, so the power-cut test can show that it catches exactly that.
fn skip_fdatasync() -> bool {
    super::engine_loop::test_fault::get() == Some("skip_fdatasync")
}
