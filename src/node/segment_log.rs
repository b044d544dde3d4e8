//! The driver side of a core's Raft log: segment files on disk.
//!
//! Files are `<data>/log/raft-<core>-<seq>.log`. Appends go to the last segment
//! through io_uring (`write_all_at` + `sync_data`, one of each per group-commit
//! batch). The shard says when to start the next segment and which old ones no
//! group needs any more.
//! Boot-time reading uses plain blocking I/O: nothing else runs yet.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use starcite_shards::recovery::{recover, Recovered, SegmentInput};
use starcite_wire::log::{encode_segment_header, parse_segment_file_name, segment_file_name};

pub struct SegmentLog {
    dir: PathBuf,
    core: u32,
    seq: u64,
    file: monoio::fs::File,
    len: u64,
    /// Lowest segment number that may still exist on disk.
    oldest: u64,
    /// Bytes were appended without a sync since the last one.
    unsynced: bool,
}

impl SegmentLog {
    /// Recovers this core's groups from its segments and opens the last one for
    /// appending (creating the first segment on a fresh data dir).
    pub fn open(
        dir: &Path,
        core: u32,
        owns: impl Fn(u32) -> bool,
    ) -> Result<(SegmentLog, Recovered), String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let inputs = read_segments(dir, core)?;
        let recovered =
            recover(&inputs, core, owns).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some((name, valid_len)) = &recovered.truncate {
            tracing::warn!(core, file = %name, valid_len, "torn tail after a crash: truncating the last segment");
            truncate(&dir.join(name), *valid_len, core)?;
        }
        let seq = recovered.last_segment.unwrap_or(1);
        let path = dir.join(segment_file_name(core, seq));
        if recovered.last_segment.is_none() {
            create_segment(&path, core, &[])?;
            sync_dir(dir)?;
        }
        let std_file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let len = std_file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        assert_eq!(len % 16, 0, "segment length keeps frames aligned");
        let file =
            monoio::fs::File::from_std(std_file).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(core, segment = %path.display(), records = recovered.records, "log recovered");
        let oldest = recovered.segments.first().map_or(seq, |s| s.0);
        Ok((
            SegmentLog {
                dir: dir.to_owned(),
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
        let (res, buf) = self.file.write_all_at(buf, self.len).await;
        res?;
        if sync {
            self.file.sync_data().await?;
        }
        self.unsynced = !sync;
        self.len += n;
        Ok(buf)
    }

    /// Starts the next segment (header only, durable) and appends there from
    /// now on. Returns its number.
    pub async fn start_segment(&mut self) -> io::Result<u64> {
        // Recovery accepts a torn tail only in the last segment: make this one
        // whole before another follows it.
        if self.unsynced {
            self.file.sync_data().await?;
            self.unsynced = false;
        }
        let next = self.seq + 1;
        let path = self.dir.join(segment_file_name(self.core, next));
        let mut header = Vec::with_capacity(16);
        encode_segment_header(self.core, &mut header);
        let std_file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let file = monoio::fs::File::from_std(std_file)?;
        let len = header.len() as u64;
        let (res, _) = file.write_all_at(header, 0).await;
        res?;
        file.sync_all().await?;
        sync_dir(&self.dir).map_err(io::Error::other)?;
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
        for seq in segment_seqs(&self.dir, self.core).map_err(io::Error::other)? {
            if seq < before && seq < self.seq {
                fs::remove_file(self.dir.join(segment_file_name(self.core, seq)))?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir).map_err(io::Error::other)?;
            tracing::debug!(
                core = self.core,
                deleted,
                before,
                "obsolete log segments removed"
            );
        }
        Ok(deleted)
    }
}

fn segment_seqs(dir: &Path, core: u32) -> Result<Vec<u64>, String> {
    let mut seqs = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name();
        if let Some((c, seq)) = name.to_str().and_then(parse_segment_file_name) {
            if c == core {
                seqs.push(seq);
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn read_segments(dir: &Path, core: u32) -> Result<Vec<SegmentInput>, String> {
    segment_seqs(dir, core)?
        .into_iter()
        .map(|seq| {
            let name = segment_file_name(core, seq);
            let raw = fs::read(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
            let mut bytes = AlignedVec::<16>::with_capacity(raw.len());
            bytes.extend_from_slice(&raw);
            Ok(SegmentInput { name, seq, bytes })
        })
        .collect()
}

fn truncate(path: &Path, valid_len: u64, core: u32) -> Result<(), String> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if valid_len < 16 {
        // Even the header was torn: rewrite it.
        drop(f);
        return create_segment_overwrite(path, core);
    }
    f.set_len(valid_len)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

fn create_segment(path: &Path, core: u32, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut bytes = Vec::new();
    encode_segment_header(core, &mut bytes);
    bytes.extend_from_slice(contents);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn create_segment_overwrite(path: &Path, core: u32) -> Result<(), String> {
    fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    create_segment(path, core, &[])
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}
