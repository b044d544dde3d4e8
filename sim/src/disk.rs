//! The simulated disk under one core's production `SegmentLog`.
//!
//! Bytes appended become visible at once (the page cache) but durable only
//! when a sync completes. A crash loses, keeps, or tears at a random byte what
//! was not yet synced. While faults are on, an append or a sync can fail with
//! EIO or ENOSPC (a failed append may have written a prefix), and syncs take a
//! random time, sometimes a long spike; all of it in virtual time.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use starcite::node::segment_log::LogDisk;

use crate::exec::SimClock;
use crate::rng::Rng;

#[derive(Debug, Clone, Default)]
struct SimFile {
    data: Vec<u8>,
    /// Bytes `..synced` are on stable storage.
    synced: usize,
}

/// What the disk needs from the world: time, randomness, fault switches.
pub struct DiskEnv {
    pub clock: SimClock,
    pub rng: RefCell<Rng>,
    /// fsync latency bounds (µs) and the chance of a 20–80 ms spike.
    pub fsync_us: (u64, u64),
    pub fsync_spike: f64,
    /// Chance that an append or a sync fails (EIO or ENOSPC) while faults are on.
    pub error: f64,
    pub faults_on: Cell<bool>,
    pub errors: Cell<u64>,
    pub spikes: Cell<u64>,
    /// Segment files removed (checkpoints made them obsolete).
    pub removed: Cell<u64>,
}

impl DiskEnv {
    fn chance(&self, p: f64) -> bool {
        self.rng.borrow_mut().chance(p)
    }

    fn range(&self, lo: u64, hi: u64) -> u64 {
        self.rng.borrow_mut().range(lo, hi)
    }

    /// An injected failure, if one fires now.
    fn fault(&self) -> Option<io::Error> {
        if !self.faults_on.get() || !self.chance(self.error) {
            return None;
        }
        self.errors.set(self.errors.get() + 1);
        Some(if self.chance(0.5) {
            io::Error::from_raw_os_error(5) // EIO
        } else {
            io::Error::from_raw_os_error(28) // ENOSPC
        })
    }

    fn sync_latency(&self) -> u64 {
        let mut us = self.range(self.fsync_us.0, self.fsync_us.1);
        if self.chance(self.fsync_spike) {
            us += self.range(20_000, 80_000);
            self.spikes.set(self.spikes.get() + 1);
        }
        us
    }
}

/// What a crash did to unsynced bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashLoss {
    Lost,
    Torn,
    Kept,
}

/// One core's log directory; clones share it (it outlives the process that
/// had it open, like a real disk).
#[derive(Clone)]
pub struct SimDisk {
    files: Rc<RefCell<BTreeMap<String, SimFile>>>,
    env: Rc<DiskEnv>,
}

impl SimDisk {
    pub fn new(env: Rc<DiskEnv>) -> Self {
        SimDisk {
            files: Rc::default(),
            env,
        }
    }

    /// Power loss: every file keeps its synced bytes; what was not synced is
    /// lost, kept whole, or torn at a random byte.
    pub fn crash(&self, rng: &mut Rng) -> Vec<CrashLoss> {
        let mut losses = Vec::new();
        for f in self.files.borrow_mut().values_mut() {
            if f.data.len() == f.synced {
                continue;
            }
            let loss = match rng.range(0, 2) {
                0 => {
                    f.data.truncate(f.synced);
                    CrashLoss::Lost
                }
                1 => {
                    let cut = rng.range(f.synced as u64, f.data.len() as u64 - 1) as usize;
                    f.data.truncate(cut);
                    CrashLoss::Torn
                }
                _ => CrashLoss::Kept,
            };
            f.synced = f.data.len();
            losses.push(loss);
        }
        losses
    }

    /// A replaced drive: nothing on it.
    pub fn wipe(&self) {
        self.files.borrow_mut().clear();
    }

    /// Every segment's frames, one line each (debugging a failed seed:
    /// `SIM_DUMP_LOG=1`): file, offset, record, group, indexes, terms.
    pub fn dump(&self) -> String {
        use starcite_wire::record::ArchivedLogRecord as R;
        let mut out = String::new();
        for (name, f) in self.files.borrow().iter() {
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(&f.data);
            out += &format!("{name}: {} bytes, {} synced\n", f.data.len(), f.synced);
            let Ok(seg) = starcite_wire::log::decode_segment(&aligned) else {
                out += "  (undecodable)\n";
                continue;
            };
            for (offset, payload) in &seg.frames {
                let line = match rkyv::access::<R, rkyv::rancor::Error>(payload) {
                    Ok(R::Entries { group, entries }) => format!(
                        "entries g{} {}..={} terms {:?}",
                        group,
                        entries.first().map_or(0, |e| e.index.to_native()),
                        entries.last().map_or(0, |e| e.index.to_native()),
                        entries
                            .iter()
                            .map(|e| e.term.to_native())
                            .collect::<Vec<_>>()
                    ),
                    Ok(R::HardState {
                        group,
                        term,
                        commit,
                        ..
                    }) => {
                        format!("hard_state g{group} term {term} commit {commit}")
                    }
                    Ok(R::Snapshot {
                        group, index, term, ..
                    }) => {
                        format!("snapshot g{group} @{index} term {term}")
                    }
                    Ok(R::ChunkedSnapshot { group, index, .. }) => {
                        format!("chunked_snapshot g{group} @{index}")
                    }
                    Ok(R::SnapshotPart { group, index, .. }) => {
                        format!("snapshot_part g{group} @{index}")
                    }
                    Ok(R::Membership { group, .. }) => format!("membership g{group}"),
                    Err(_) => "(invalid)".to_owned(),
                };
                out += &format!("  {offset:>6} {line}\n");
            }
        }
        out
    }

    pub fn bytes(&self) -> usize {
        self.files.borrow().values().map(|f| f.data.len()).sum()
    }

    fn with_file<T>(&self, name: &str, f: impl FnOnce(&mut SimFile) -> T) -> io::Result<T> {
        let mut files = self.files.borrow_mut();
        let file = files
            .get_mut(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))?;
        Ok(f(file))
    }

    async fn sync_file(&self, name: &str) -> io::Result<()> {
        let target = self.with_file(name, |f| f.data.len())?;
        self.env.clock.sleep_us(self.env.sync_latency()).await;
        if let Some(e) = self.env.fault() {
            // As on Linux after a failed fsync: nothing is known to be durable.
            return Err(e);
        }
        self.with_file(name, |f| f.synced = f.synced.max(target.min(f.data.len())))
    }
}

impl LogDisk for SimDisk {
    type File = String;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.borrow().keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.with_file(name, |f| f.data.clone())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.with_file(name, |f| {
            f.data.truncate(len as usize);
            f.synced = f.data.len();
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.env.removed.set(self.env.removed.get() + 1);
        self.files
            .borrow_mut()
            .remove(name)
            .map(drop)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }

    fn open_append(&self, name: &str) -> io::Result<(String, u64)> {
        // The production disk syncs the file here (a blocking boot-time call).
        let len = self.with_file(name, |f| {
            f.synced = f.data.len();
            f.data.len()
        })?;
        Ok((name.to_owned(), len as u64))
    }

    async fn create(&self, name: &str, contents: Vec<u8>) -> io::Result<String> {
        if self.files.borrow().contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_owned(),
            ));
        }
        if let Some(e) = self.env.fault() {
            return Err(e);
        }
        self.files.borrow_mut().insert(
            name.to_owned(),
            SimFile {
                data: contents,
                synced: 0,
            },
        );
        self.sync_file(name).await?;
        Ok(name.to_owned())
    }

    async fn append(
        &self,
        file: &mut String,
        offset: u64,
        buf: Vec<u8>,
        sync: bool,
    ) -> (io::Result<()>, Vec<u8>) {
        let len = match self.with_file(file, |f| f.data.len()) {
            Ok(len) => len,
            Err(e) => return (Err(e), buf),
        };
        if offset != len as u64 {
            let e = io::Error::other(format!("append at {offset} to a file of {len} bytes"));
            return (Err(e), buf);
        }
        if let Some(e) = self.env.fault() {
            // A failed write may have put any prefix in the page cache.
            let cut = self.env.range(0, buf.len() as u64) as usize;
            let _ = self.with_file(file, |f| f.data.extend_from_slice(&buf[..cut]));
            return (Err(e), buf);
        }
        let _ = self.with_file(file, |f| f.data.extend_from_slice(&buf));
        if !sync {
            self.env.clock.sleep_us(self.env.range(5, 50)).await;
            return (Ok(()), buf);
        }
        (self.sync_file(file).await, buf)
    }

    async fn sync(&self, file: &mut String) -> io::Result<()> {
        self.sync_file(file).await
    }
}
