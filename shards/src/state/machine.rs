//! Apply of replicated commands to one group's sessions.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use starcite_wire::record::{
    AppendCommand, CatalogSnapshot, Command, CreateCommand, GroupSnapshot, HotEvent, Origin,
    PatchCommand, ProducerEntry, SessionSnapshot, SetArchivedCommand,
};

use super::producers::{ProducerCheck, Producers};
use super::session::{next_catalog_gen, render_frame, HotEntry, Session};
use crate::error::EngineError;
use crate::limits::HOT_EVENT_OVERHEAD;

/// The successful result of a command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    Created {
        created_at_us: i64,
    },
    Appended {
        seq: u64,
        last_seq: u64,
        deduped: bool,
    },
    Acked {
        archived_seq: u64,
    },
    /// A catalog change (PATCH, archive, unarchive): the session after it,
    /// and whether anything changed (archive of an archived session: no).
    Catalog {
        session: crate::shard::ListRow,
        changed: bool,
    },
}

/// A freshly appended event, for tail subscribers.
#[derive(Debug, Clone)]
pub struct Notification {
    pub session: String,
    pub seq: u64,
    pub frame: Bytes,
}

/// What applying one command produced.
#[derive(Debug)]
pub struct Applied {
    pub origin: Origin,
    pub result: Result<Outcome, EngineError>,
    pub notification: Option<Notification>,
    /// Change of hot-tier bytes.
    pub hot_delta: i64,
    /// A session created by this command (for the shard's session index).
    pub created: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GroupMachine {
    pub sessions: BTreeMap<String, Session>,
    dedupe_window: usize,
    producer_cap: usize,
}

impl GroupMachine {
    pub fn new(dedupe_window: usize, producer_cap: usize) -> Self {
        Self {
            sessions: BTreeMap::new(),
            dedupe_window,
            producer_cap,
        }
    }

    pub fn apply(&mut self, cmd: Command) -> Applied {
        match cmd {
            Command::Create(c) => self.apply_create(c),
            Command::Append(a) => self.apply_append(a),
            Command::AckArchived {
                origin,
                session,
                upto,
            } => self.apply_ack(origin, &session, upto),
            Command::Patch(p) => self.apply_patch(*p),
            Command::SetArchived(a) => self.apply_set_archived(*a),
        }
    }

    fn apply_patch(&mut self, p: PatchCommand) -> Applied {
        let origin = p.origin;
        let Some(s) = self.sessions.get_mut(&p.session) else {
            return failed(origin, EngineError::SessionNotFound);
        };
        if let Some(expected) = p.expected_version {
            if expected != s.version {
                return failed(
                    origin,
                    EngineError::ExpectedVersionConflict {
                        expected,
                        current: s.version,
                    },
                );
            }
        }
        if p.set_title {
            s.title = p.title;
        }
        if let Some(patch) = p.metadata_json {
            // The proposer validated an object; anything else changes nothing.
            if let Ok(serde_json::Value::Object(patch)) = serde_json::from_str(&patch) {
                for (k, v) in patch {
                    s.metadata.insert(k, v);
                }
                s.metadata_json = serde_json::Value::Object(s.metadata.clone()).to_string();
            }
        }
        s.version += 1;
        s.updated_at_us = catalog_time(s.updated_at_us, p.updated_at_us);
        s.catalog_gen = next_catalog_gen();
        catalog_changed(origin, s, true)
    }

    fn apply_set_archived(&mut self, a: SetArchivedCommand) -> Applied {
        let origin = a.origin;
        let Some(s) = self.sessions.get_mut(&a.session) else {
            return failed(origin, EngineError::SessionNotFound);
        };
        let changed = s.archived != a.archived;
        if changed {
            s.archived = a.archived;
            s.updated_at_us = catalog_time(s.updated_at_us, a.updated_at_us);
            s.catalog_gen = next_catalog_gen();
        }
        catalog_changed(origin, s, changed)
    }

    fn apply_create(&mut self, c: CreateCommand) -> Applied {
        let origin = c.origin;
        if self.sessions.contains_key(&c.id) {
            return failed(origin, EngineError::SessionExists);
        }
        let metadata = serde_json::from_str(&c.metadata_json).unwrap_or_default();
        let session = Session {
            id: c.id.clone(),
            tenant_id: c.tenant_id,
            title: c.title,
            metadata_json: c.metadata_json,
            metadata,
            principal_id: c.principal_id,
            principal_type: c.principal_type,
            created_at_us: c.created_at_us,
            updated_at_us: c.created_at_us,
            version: 1,
            archived: false,
            last_seq: 0,
            archived_seq: 0,
            producers: Producers::new(self.dedupe_window, self.producer_cap),
            hot: VecDeque::new(),
            catalog_gen: next_catalog_gen(),
        };
        self.sessions.insert(c.id.clone(), session);
        Applied {
            origin,
            result: Ok(Outcome::Created {
                created_at_us: c.created_at_us,
            }),
            notification: None,
            hot_delta: 0,
            created: Some(c.id),
        }
    }

    fn apply_append(&mut self, a: AppendCommand) -> Applied {
        let origin = a.origin;
        let Some(s) = self.sessions.get_mut(&a.session) else {
            return failed(origin, EngineError::SessionNotFound);
        };
        if let Some(expected) = a.expected_seq {
            if expected != s.last_seq {
                return failed(
                    origin,
                    EngineError::ExpectedSeqConflict {
                        expected,
                        current: s.last_seq,
                    },
                );
            }
        }
        match s
            .producers
            .check(&a.producer_id, a.producer_seq, &a.fingerprint)
        {
            ProducerCheck::Fresh => {}
            ProducerCheck::Duplicate { seq } => {
                let outcome = Outcome::Appended {
                    seq,
                    last_seq: s.last_seq,
                    deduped: true,
                };
                return Applied {
                    origin,
                    result: Ok(outcome),
                    notification: None,
                    hot_delta: 0,
                    created: None,
                };
            }
            ProducerCheck::ReplayConflict => {
                return failed(origin, EngineError::ProducerReplayConflict)
            }
            ProducerCheck::SeqConflict { expected, got } => {
                let producer_id = a.producer_id;
                return failed(
                    origin,
                    EngineError::ProducerSeqConflict {
                        producer_id,
                        expected,
                        got,
                    },
                );
            }
        }
        let seq = s.last_seq + 1;
        let frame = render_frame(seq, &a.body, a.inserted_at_us);
        let hot_delta = frame.len() as i64 + HOT_EVENT_OVERHEAD as i64;
        s.producers.record(
            &a.producer_id,
            ProducerEntry {
                producer_seq: a.producer_seq,
                seq,
                fingerprint: a.fingerprint,
            },
        );
        s.last_seq = seq;
        // Never backwards (a new leader's clock may be behind the old one's):
        // archive records are ordered by (version, updated_at).
        s.updated_at_us = s.updated_at_us.max(a.inserted_at_us);
        s.hot.push_back(HotEntry {
            seq,
            frame: frame.clone(),
        });
        Applied {
            origin,
            result: Ok(Outcome::Appended {
                seq,
                last_seq: seq,
                deduped: false,
            }),
            notification: Some(Notification {
                session: a.session,
                seq,
                frame,
            }),
            hot_delta,
            created: None,
        }
    }

    fn apply_ack(&mut self, origin: Origin, session: &str, upto: u64) -> Applied {
        let Some(s) = self.sessions.get_mut(session) else {
            return failed(origin, EngineError::SessionNotFound);
        };
        s.archived_seq = s.archived_seq.max(upto.min(s.last_seq));
        let mut freed = 0i64;
        while s.hot.front().is_some_and(|e| e.seq <= s.archived_seq) {
            if let Some(e) = s.hot.pop_front() {
                freed += e.frame.len() as i64 + HOT_EVENT_OVERHEAD as i64;
            }
        }
        let outcome = Outcome::Acked {
            archived_seq: s.archived_seq,
        };
        Applied {
            origin,
            result: Ok(outcome),
            notification: None,
            hot_delta: -freed,
            created: None,
        }
    }

    /// Bytes held by hot events of this group.
    pub fn hot_bytes(&self) -> u64 {
        self.sessions
            .values()
            .flat_map(|s| s.hot.iter())
            .map(|e| e.frame.len() as u64 + HOT_EVENT_OVERHEAD)
            .sum()
    }

    pub fn snapshot(&self) -> GroupSnapshot {
        let sessions = self.sessions.values().map(snapshot_session).collect();
        let catalog = self
            .sessions
            .values()
            .map(|s| CatalogSnapshot {
                version: s.version,
                archived: s.archived,
            })
            .collect();
        GroupSnapshot { sessions, catalog }
    }

    pub fn restore(snap: GroupSnapshot, dedupe_window: usize, producer_cap: usize) -> Self {
        let mut machine = Self::new(dedupe_window, producer_cap);
        let mut catalog = snap.catalog.into_iter();
        for s in snap.sessions {
            let extra = catalog.next().unwrap_or_default();
            let mut session = restore_session(s, dedupe_window, producer_cap);
            session.version = extra.version;
            session.archived = extra.archived;
            machine.sessions.insert(session.id.clone(), session);
        }
        machine
    }
}

/// `updated_at` after a catalog change stamped `now_us` by the leader: strictly
/// later than before, even if the leader's clock is behind the previous stamp,
/// so that `(version, updated_at)` orders every catalog state of a session
/// (the archive keeps the greatest; see docs/archive.md).
fn catalog_time(before_us: i64, now_us: i64) -> i64 {
    now_us.max(before_us.saturating_add(1))
}

fn failed(origin: Origin, err: EngineError) -> Applied {
    Applied {
        origin,
        result: Err(err),
        notification: None,
        hot_delta: 0,
        created: None,
    }
}

fn catalog_changed(origin: Origin, s: &Session, changed: bool) -> Applied {
    Applied {
        origin,
        result: Ok(Outcome::Catalog {
            session: crate::shard::list_row(s),
            changed,
        }),
        notification: None,
        hot_delta: 0,
        created: None,
    }
}

fn snapshot_session(s: &Session) -> SessionSnapshot {
    SessionSnapshot {
        id: s.id.clone(),
        tenant_id: s.tenant_id.clone(),
        title: s.title.clone(),
        metadata_json: s.metadata_json.clone(),
        principal_id: s.principal_id.clone(),
        principal_type: s.principal_type.clone(),
        created_at_us: s.created_at_us,
        updated_at_us: s.updated_at_us,
        last_seq: s.last_seq,
        archived_seq: s.archived_seq,
        producers: s.producers.snapshot(),
        hot: s
            .hot
            .iter()
            .map(|e| HotEvent {
                seq: e.seq,
                frame: e.frame.to_vec(),
            })
            .collect(),
    }
}

fn restore_session(s: SessionSnapshot, window: usize, cap: usize) -> Session {
    Session {
        metadata: serde_json::from_str(&s.metadata_json).unwrap_or_default(),
        id: s.id,
        tenant_id: s.tenant_id,
        title: s.title,
        metadata_json: s.metadata_json,
        principal_id: s.principal_id,
        principal_type: s.principal_type,
        created_at_us: s.created_at_us,
        updated_at_us: s.updated_at_us,
        version: 1,
        archived: false,
        last_seq: s.last_seq,
        archived_seq: s.archived_seq,
        producers: Producers::restore(s.producers, window, cap),
        hot: s
            .hot
            .into_iter()
            .map(|e| HotEntry {
                seq: e.seq,
                frame: Bytes::from(e.frame),
            })
            .collect(),
        catalog_gen: next_catalog_gen(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: Origin = Origin {
        incarnation: 1,
        token: 1,
    };

    fn create(id: &str) -> Command {
        Command::Create(CreateCommand {
            origin: O,
            id: id.into(),
            tenant_id: "t".into(),
            title: None,
            metadata_json: "{}".into(),
            principal_id: "p".into(),
            principal_type: "service".into(),
            created_at_us: 5,
        })
    }

    fn append(session: &str, producer: &str, pseq: u64, fp: u8, expected: Option<u64>) -> Command {
        Command::Append(AppendCommand {
            origin: O,
            session: session.into(),
            producer_id: producer.into(),
            producer_seq: pseq,
            fingerprint: [fp; 16],
            expected_seq: expected,
            body: "\"type\":\"t\"".into(),
            inserted_at_us: 10,
        })
    }

    fn ok(m: &mut GroupMachine, c: Command) -> Outcome {
        m.apply(c).result.expect("command succeeds")
    }

    fn err(m: &mut GroupMachine, c: Command) -> EngineError {
        m.apply(c).result.expect_err("command fails")
    }

    fn appended(seq: u64, last_seq: u64, deduped: bool) -> Outcome {
        Outcome::Appended {
            seq,
            last_seq,
            deduped,
        }
    }

    /// The worked example of contract §6.6, adjusted for decision 2 (row 8).
    #[test]
    fn worked_example() {
        let mut m = GroupMachine::new(128, 10_000);
        ok(&mut m, create("S"));
        assert_eq!(
            ok(&mut m, append("S", "a", 1, 1, None)),
            appended(1, 1, false)
        );
        assert_eq!(
            ok(&mut m, append("S", "a", 1, 1, None)),
            appended(1, 1, true)
        );
        assert_eq!(
            ok(&mut m, append("S", "b", 1, 2, None)),
            appended(2, 2, false)
        );
        assert_eq!(
            ok(&mut m, append("S", "a", 1, 1, None)),
            appended(1, 2, true)
        );
        assert_eq!(
            err(&mut m, append("S", "a", 3, 3, None)),
            EngineError::ProducerSeqConflict {
                producer_id: "a".into(),
                expected: 2,
                got: 3
            }
        );
        assert_eq!(
            err(&mut m, append("S", "a", 2, 4, Some(1))),
            EngineError::ExpectedSeqConflict {
                expected: 1,
                current: 2
            }
        );
        assert_eq!(
            ok(&mut m, append("S", "a", 2, 4, Some(2))),
            appended(3, 3, false)
        );
        assert_eq!(
            ok(&mut m, append("S", "a", 1, 1, None)),
            appended(1, 3, true)
        );
        assert_eq!(
            err(&mut m, append("S", "a", 2, 9, None)),
            EngineError::ProducerReplayConflict
        );
        assert_eq!(
            err(&mut m, append("S", "a", 2, 4, Some(2))),
            EngineError::ExpectedSeqConflict {
                expected: 2,
                current: 3
            }
        );
    }

    #[test]
    fn create_twice_and_unknown_session() {
        let mut m = GroupMachine::new(128, 10_000);
        ok(&mut m, create("S"));
        assert_eq!(err(&mut m, create("S")), EngineError::SessionExists);
        assert_eq!(
            err(&mut m, append("X", "a", 1, 1, None)),
            EngineError::SessionNotFound
        );
    }

    #[test]
    fn frames_and_ack_eviction() {
        let mut m = GroupMachine::new(128, 10_000);
        ok(&mut m, create("S"));
        let applied = m.apply(append("S", "a", 1, 1, None));
        let frame = applied.notification.expect("fresh append notifies").frame;
        assert_eq!(
            &frame[..],
            br#"{"seq":1,"type":"t","inserted_at":"1970-01-01T00:00:00.000010Z"}"#
        );
        ok(&mut m, append("S", "a", 2, 2, None));
        let before = m.hot_bytes();
        assert_eq!(
            ok(
                &mut m,
                Command::AckArchived {
                    origin: O,
                    session: "S".into(),
                    upto: 1
                }
            ),
            Outcome::Acked { archived_seq: 1 }
        );
        let s = &m.sessions["S"];
        assert_eq!(s.hot.len(), 1);
        assert_eq!(
            s.hot_after(0, 10).map(|e| e.seq).collect::<Vec<_>>(),
            vec![2]
        );
        assert!(m.hot_bytes() < before);
        // Acks never pass last_seq.
        ok(
            &mut m,
            Command::AckArchived {
                origin: O,
                session: "S".into(),
                upto: 99,
            },
        );
        assert_eq!(m.sessions["S"].archived_seq, 2);
    }

    #[test]
    fn snapshot_restore_is_identical() {
        let mut m = GroupMachine::new(4, 10);
        ok(&mut m, create("S"));
        for i in 1..=6 {
            ok(&mut m, append("S", "a", i, i as u8, None));
        }
        let snap = m.snapshot();
        let mut r = GroupMachine::restore(snap.clone(), 4, 10);
        assert_eq!(r.snapshot(), snap);
        assert_eq!(
            ok(&mut r, append("S", "a", 5, 5, None)),
            appended(5, 6, true)
        );
        assert_eq!(
            ok(&mut r, append("S", "a", 7, 7, None)),
            appended(7, 7, false)
        );
    }

    fn patch(title: Option<Option<&str>>, meta: Option<&str>, expected: Option<u64>) -> Command {
        Command::Patch(Box::new(PatchCommand {
            origin: O,
            session: "S".into(),
            set_title: title.is_some(),
            title: title.flatten().map(str::to_owned),
            metadata_json: meta.map(str::to_owned),
            expected_version: expected,
            updated_at_us: 50,
        }))
    }

    fn set_archived(archived: bool, at: i64) -> Command {
        Command::SetArchived(Box::new(SetArchivedCommand {
            origin: O,
            session: "S".into(),
            archived,
            updated_at_us: at,
        }))
    }

    fn catalog(o: Outcome) -> (crate::shard::ListRow, bool) {
        match o {
            Outcome::Catalog { session, changed } => (session, changed),
            other => panic!("not a catalog outcome: {other:?}"),
        }
    }

    #[test]
    fn patch_merges_one_level_and_checks_the_version() {
        let mut m = GroupMachine::new(128, 10);
        ok(
            &mut m,
            Command::Create(CreateCommand {
                metadata_json: r#"{"a":1,"n":{"x":1}}"#.into(),
                title: Some("t".into()),
                ..match create("S") {
                    Command::Create(c) => c,
                    _ => unreachable!(),
                }
            }),
        );
        let (row, changed) = catalog(ok(
            &mut m,
            patch(None, Some(r#"{"b":2,"n":{"y":2}}"#), None),
        ));
        assert!(changed);
        assert_eq!(row.version, 2);
        assert_eq!(row.title.as_deref(), Some("t"));
        assert_eq!(
            serde_json::Value::Object(row.metadata.clone()),
            serde_json::json!({"a":1,"n":{"y":2},"b":2})
        );
        assert_eq!(row.updated_at_us, 50);
        assert_eq!(
            err(&mut m, patch(Some(Some("u")), None, Some(1))),
            EngineError::ExpectedVersionConflict {
                expected: 1,
                current: 2
            }
        );
        let (row, _) = catalog(ok(&mut m, patch(Some(None), None, Some(2))));
        assert_eq!((row.version, row.title), (3, None));
        // The stored JSON text follows the merged map (list filters, snapshots).
        assert_eq!(
            m.sessions["S"].metadata_json,
            r#"{"a":1,"n":{"y":2},"b":2}"#
        );
        assert_eq!(
            err(
                &mut m,
                Command::Patch(Box::new(PatchCommand {
                    session: "X".into(),
                    ..match patch(None, Some("{}"), None) {
                        Command::Patch(p) => *p,
                        _ => unreachable!(),
                    }
                }))
            ),
            EngineError::SessionNotFound
        );
    }

    #[test]
    fn archive_is_idempotent_and_survives_snapshots() {
        let mut m = GroupMachine::new(128, 10);
        ok(&mut m, create("S"));
        let (row, changed) = catalog(ok(&mut m, set_archived(true, 60)));
        assert!(changed && row.archived);
        assert_eq!((row.version, row.updated_at_us), (1, 60));
        let (again, changed) = catalog(ok(&mut m, set_archived(true, 70)));
        assert!(!changed);
        assert_eq!(again, row, "a no-op archive changes nothing");
        ok(&mut m, patch(Some(Some("x")), None, None));
        let snap = m.snapshot();
        let r = GroupMachine::restore(snap.clone(), 128, 10);
        assert_eq!(r.snapshot(), snap);
        let s = &r.sessions["S"];
        assert_eq!((s.version, s.archived), (2, true));
        let (row, changed) = catalog(ok(&mut m, set_archived(false, 80)));
        assert!(changed && !row.archived);
    }

    #[test]
    fn hot_after_respects_cursor_and_limit() {
        let mut m = GroupMachine::new(128, 10);
        ok(&mut m, create("S"));
        for i in 1..=10 {
            ok(&mut m, append("S", "a", i, i as u8, None));
        }
        let s = &m.sessions["S"];
        let seqs = |after, limit| s.hot_after(after, limit).map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(0, 3), vec![1, 2, 3]);
        assert_eq!(seqs(8, 10), vec![9, 10]);
        assert!(seqs(10, 10).is_empty());
        assert!(seqs(50, 10).is_empty());
    }
}
