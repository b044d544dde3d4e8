//! The S3 layout in a local directory (`STARCITE_ARCHIVE_FS_DIR`): the embedded
//! default of `starcite dev`, and a backend for single-host deployments.
//!
//! Objects are files named by their S3 key under the directory. A chunk write is
//! read–merge–write under an exclusive `flock` on a sidecar lock file, and the new
//! body replaces the old one by `rename` of a fsynced temporary file, so readers see
//! either the old or the new chunk and two archivers (a leader change) never lose
//! each other's lines. A session file is rewritten the same way (under its own
//! lock, by rename) when the incoming record is newer than the stored one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::adapter::{Adapter, ArchiveError};
use super::event::{ArchiveEvent, SessionRecord};
use super::layout::{self, event_key, merge_chunk, session_key, session_update, ChunkStore};

/// Key prefix inside the directory (the S3 prefix's default).
const PREFIX: &str = "starcite";

pub struct FsAdapter {
    root: PathBuf,
}

fn unavailable(what: &str, path: &Path, e: std::io::Error) -> ArchiveError {
    ArchiveError::Unavailable(format!("{what} {}: {e}", path.display()))
}

impl FsAdapter {
    pub fn open(dir: &Path) -> Result<Self, ArchiveError> {
        fs::create_dir_all(dir).map_err(|e| unavailable("create", dir, e))?;
        Ok(FsAdapter {
            root: dir.to_owned(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn read_opt(&self, path: &Path) -> Result<Option<String>, ArchiveError> {
        match fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read", path, e)),
        }
    }
}

impl ChunkStore for FsAdapter {
    fn prefix(&self) -> &str {
        PREFIX
    }

    fn get_chunk(&mut self, key: &str) -> Result<Option<String>, ArchiveError> {
        self.read_opt(&self.path(key))
    }

    fn write_chunk(
        &mut self,
        session: &SessionRecord,
        chunk: u64,
        lines: &[(u64, String)],
    ) -> Result<usize, ArchiveError> {
        let path = self.path(&event_key(PREFIX, &session.id, chunk));
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(|e| unavailable("create", &dir, e))?;
        let _lock = Lock::take(&path.with_extension("lock"))?;
        let existing = self.read_opt(&path)?;
        let (body, added) = merge_chunk(existing.as_deref(), lines)?;
        if added == 0 {
            return Ok(0);
        }
        replace(&path, body.as_bytes())?;
        Ok(added)
    }
}

impl Adapter for FsAdapter {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn write_sessions(&mut self, sessions: &[SessionRecord]) -> Result<usize, ArchiveError> {
        let mut stored = 0;
        for s in sessions {
            let key = session_key(PREFIX, &s.id);
            let path = self.path(&key);
            let dir = path.parent().unwrap_or(&self.root).to_owned();
            fs::create_dir_all(&dir).map_err(|e| unavailable("create", &dir, e))?;
            // Read, decide and replace under the lock: two archivers (a leader
            // change) cannot interleave, and readers see the old or the new blob.
            let _lock = Lock::take(&path.with_extension("lock"))?;
            let existing = self.read_opt(&path)?;
            if let Some(blob) = session_update(&key, existing.as_deref(), s) {
                replace(&path, blob.as_bytes())?;
                stored += 1;
            }
        }
        Ok(stored)
    }

    fn read_session(&mut self, session: &str) -> Result<Option<SessionRecord>, ArchiveError> {
        let path = self.path(&session_key(PREFIX, session));
        match self.read_opt(&path)? {
            None => Ok(None),
            Some(body) => SessionRecord::from_blob(&body)
                .map(Some)
                .map_err(|e| ArchiveError::Unreadable(format!("{}: {e}", path.display()))),
        }
    }

    fn write_events(
        &mut self,
        session: &SessionRecord,
        events: &[ArchiveEvent],
    ) -> Result<usize, ArchiveError> {
        layout::write_events(self, session, events)
    }

    fn write_frames(
        &mut self,
        session: &SessionRecord,
        frames: &[(u64, bytes::Bytes)],
    ) -> Result<usize, ArchiveError> {
        layout::write_frames(self, session, frames)
    }

    fn read_events(
        &mut self,
        session: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<ArchiveEvent>, ArchiveError> {
        layout::read_events(self, session, from, to)
    }

    fn read_frames(
        &mut self,
        session: &str,
        tenant_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, bytes::Bytes)>, ArchiveError> {
        layout::read_frames(self, session, tenant_id, from, to)
    }
}

/// An exclusive advisory lock held until drop.
struct Lock(File);

impl Lock {
    fn take(path: &Path) -> Result<Lock, ArchiveError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| unavailable("open", path, e))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(unavailable("lock", path, std::io::Error::last_os_error()));
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let n: u64 = rand::random();
    path.with_extension(format!("tmp{n:016x}"))
}

fn write_synced(path: &Path, body: &[u8]) -> Result<(), ArchiveError> {
    let mut f = File::create(path).map_err(|e| unavailable("create", path, e))?;
    f.write_all(body)
        .and_then(|()| f.sync_data())
        .map_err(|e| unavailable("write", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| unavailable("sync", dir, e))
}

/// Atomically replaces `path` with `body`, durably.
fn replace(path: &Path, body: &[u8]) -> Result<(), ArchiveError> {
    let tmp = temp_path(path);
    write_synced(&tmp, body)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(unavailable("rename", path, e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionRecord {
        SessionRecord::created(
            "ses-1",
            Some("t".into()),
            "acme",
            ("svc", "service"),
            Default::default(),
            5,
        )
    }

    fn ev(seq: u64) -> ArchiveEvent {
        ArchiveEvent {
            seq,
            event_type: "t".into(),
            payload: serde_json::json!({"n": seq}),
            actor: "service:svc".into(),
            producer_id: "p".into(),
            producer_seq: seq,
            source: Some("s".into()),
            metadata: Default::default(),
            refs: Default::default(),
            idempotency_key: None,
            inserted_at_us: 1_000_000 + seq as i64,
        }
    }

    #[test]
    fn writes_are_idempotent_and_reads_filter_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FsAdapter::open(dir.path()).unwrap();
        let s = session();
        assert_eq!(a.write_sessions(std::slice::from_ref(&s)).unwrap(), 1);
        assert_eq!(a.write_sessions(std::slice::from_ref(&s)).unwrap(), 0);
        let evs: Vec<_> = (1..=300).map(ev).collect();
        assert_eq!(a.write_events(&s, &evs[..100]).unwrap(), 100);
        assert_eq!(a.write_events(&s, &evs).unwrap(), 200);
        assert_eq!(a.write_events(&s, &evs).unwrap(), 0);
        let got = a.read_events("ses-1", 250, 260).unwrap();
        assert_eq!(got, evs[249..260].to_vec());
        assert!(a.read_events("other", 1, 10).unwrap().is_empty());
        let chunk = dir.path().join("starcite/events/v1/c2VzLTE/257.ndjson");
        let body = fs::read_to_string(chunk).unwrap();
        assert_eq!(body.lines().count(), 44);
        let blob = dir.path().join("starcite/sessions/v1/c2VzLTE.json");
        assert_eq!(fs::read_to_string(blob).unwrap(), s.to_blob());
    }

    /// Catalog changes replace the blob; an older revision never does; a blob
    /// of an earlier version (six keys) reads and is replaced by a change.
    #[test]
    fn session_blobs_keep_the_newest_revision() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FsAdapter::open(dir.path()).unwrap();
        let blob = dir.path().join("starcite/sessions/v1/c2VzLTE.json");
        let v1 = session();
        let mut archived = v1.clone();
        archived.archived = true;
        archived.updated_at_us = 10;
        let mut v2 = archived.clone();
        v2.version = 2;
        v2.title = Some("renamed".into());
        v2.metadata.insert("k".into(), "v".into());
        v2.updated_at_us = 20;

        assert_eq!(a.write_sessions(std::slice::from_ref(&v1)).unwrap(), 1);
        assert_eq!(
            a.write_sessions(std::slice::from_ref(&archived)).unwrap(),
            1
        );
        assert_eq!(a.read_session("ses-1").unwrap(), Some(archived.clone()));
        assert_eq!(a.write_sessions(&[v2.clone()]).unwrap(), 1);
        assert_eq!(fs::read_to_string(&blob).unwrap(), v2.to_blob());
        // Late writers of older states (a previous leader's archiver).
        assert_eq!(a.write_sessions(&[archived, v1.clone()]).unwrap(), 0);
        assert_eq!(a.read_session("ses-1").unwrap(), Some(v2.clone()));
        assert_eq!(a.read_session("other").unwrap(), None);

        // A six-key blob (an earlier version wrote it) reads with defaults...
        let six = v1.to_blob();
        let six = format!("{}}}", &six[..six.find(",\"updated_at\"").unwrap()]);
        fs::write(&blob, &six).unwrap();
        assert_eq!(a.read_session("ses-1").unwrap(), Some(v1.clone()));
        assert_eq!(a.write_sessions(&[v1]).unwrap(), 0, "same revision: kept");
        assert_eq!(fs::read_to_string(&blob).unwrap(), six);
        // ...and is replaced by the session's current state.
        assert_eq!(a.write_sessions(&[v2.clone()]).unwrap(), 1);
        assert_eq!(a.read_session("ses-1").unwrap(), Some(v2.clone()));
        // An unreadable blob is reported by reads and replaced by writes.
        fs::write(&blob, "{not json").unwrap();
        assert!(matches!(
            a.read_session("ses-1"),
            Err(ArchiveError::Unreadable(_))
        ));
        assert_eq!(a.write_sessions(&[v2.clone()]).unwrap(), 1);
        assert_eq!(a.read_session("ses-1").unwrap(), Some(v2));
        let stray: Vec<_> = fs::read_dir(blob.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(stray.is_empty(), "no temporary files left: {stray:?}");
    }

    #[test]
    fn an_unreadable_chunk_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FsAdapter::open(dir.path()).unwrap();
        let path = dir.path().join("starcite/events/v1/c2VzLTE/1.ndjson");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "{\"seq\":1}").unwrap();
        assert!(matches!(
            a.read_events("ses-1", 1, 5),
            Err(ArchiveError::Unreadable(_))
        ));
    }
}
