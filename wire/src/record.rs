//! Records stored in the per-core Raft log and replicated as Raft entry data.
//!
//! Every type here is archived with rkyv: the log framing (`crate::log`) carries
//! the archived bytes of one [`LogRecord`] per frame, and a Raft entry's data is
//! the archived bytes of one [`Command`]. Readers validate (`rkyv::access`) before
//! touching a record; the frame CRC guards the content.

use rkyv::{Archive, Deserialize, Serialize};

/// One frame of a per-core log segment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// Raft entries appended to one group's log (may overwrite a suffix).
    Entries {
        group: u32,
        entries: Vec<EntryRecord>,
    },
    /// A group's Raft hard state.
    HardState {
        group: u32,
        term: u64,
        vote: u64,
        commit: u64,
    },
    /// A group's state-machine snapshot at `index`; every entry at or below it is obsolete.
    Snapshot {
        group: u32,
        index: u64,
        term: u64,
        voters: Vec<u64>,
        state: Vec<u8>,
    },
    /// Bytes `offset..offset + data.len()` of a group's state-machine snapshot
    /// at `index`, too large for one frame. The parts of one snapshot are
    /// written in order, back to back, and end with its [`LogRecord::ChunkedSnapshot`].
    /// (Variants are only ever added at the end, and none may be larger than
    /// `Snapshot`, so logs written by older builds keep their meaning.)
    SnapshotPart {
        group: u32,
        index: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// The end of a snapshot written as parts: the state is the concatenation of
    /// the `SnapshotPart`s of this group and `index` just before it, `len` bytes.
    ChunkedSnapshot {
        group: u32,
        index: u64,
        term: u64,
        voters: Vec<u64>,
        len: u64,
    },
    /// A group's full Raft membership as of `index`: the protobuf encoding of
    /// raft's `ConfState` (voters, learners, joint state). Written right after
    /// every snapshot (whose `voters` alone cannot express learners or a joint
    /// configuration); changes after the snapshot are conf-change entries in
    /// the log and are re-applied on recovery.
    Membership {
        group: u32,
        index: u64,
        conf_state: Vec<u8>,
    },
}

/// A Raft entry as stored in the log.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    pub term: u64,
    pub index: u64,
    /// 0 = normal, 1 = conf change, 2 = conf change v2 (raft's `EntryType`).
    pub kind: u8,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

/// Who is waiting for a command's result: the shard incarnation that proposed it
/// and its token. Only that incarnation answers; every replica applies.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub incarnation: u64,
    pub token: u64,
}

/// A replicated state-machine command (the data of a normal Raft entry).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create(CreateCommand),
    Append(AppendCommand),
    /// Everything up to `upto` is durable in the archive; replicas may evict it.
    AckArchived {
        origin: Origin,
        session: String,
        upto: u64,
    },
    // Variants below were added after the first release: old records keep
    // their tags, and boxing keeps the archived enum's size (and so the root
    // position of every old record) unchanged.
    /// Changes a session's title and/or metadata (PATCH).
    Patch(Box<PatchCommand>),
    /// Sets a session's `archived` flag (archive / unarchive).
    SetArchived(Box<SetArchivedCommand>),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PatchCommand {
    pub origin: Origin,
    pub session: String,
    /// Whether `title` replaces the current title (`None` clears it).
    pub set_title: bool,
    pub title: Option<String>,
    /// A JSON object merged one level into the metadata, if any.
    pub metadata_json: Option<String>,
    /// Refused with a conflict unless the session's version equals it.
    pub expected_version: Option<u64>,
    /// Chosen once by the proposer and replicated.
    pub updated_at_us: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SetArchivedCommand {
    pub origin: Origin,
    pub session: String,
    pub archived: bool,
    /// Chosen once by the proposer and replicated.
    pub updated_at_us: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CreateCommand {
    pub origin: Origin,
    pub id: String,
    pub tenant_id: String,
    pub title: Option<String>,
    /// The session metadata object, as JSON text.
    pub metadata_json: String,
    pub principal_id: String,
    /// Canonical principal type: `user`, `agent` or `service`.
    pub principal_type: String,
    /// Chosen once by the proposer and replicated (decision 4).
    pub created_at_us: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AppendCommand {
    pub origin: Origin,
    pub session: String,
    pub producer_id: String,
    pub producer_seq: u64,
    /// Structural fingerprint of the event content (dedupe vs replay conflict).
    pub fingerprint: [u8; 16],
    pub expected_seq: Option<u64>,
    /// The event's JSON members without braces, `seq` and `inserted_at`.
    pub body: String,
    pub inserted_at_us: i64,
}

/// A group's whole replicated state, carried in snapshots (decision 7: unarchived
/// events are part of it). Encoded with [`encode_snapshot`]: the archived
/// bytes followed by [`SNAPSHOT_V2_TRAILER`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSnapshot {
    pub sessions: Vec<SessionSnapshot>,
    /// The catalog fields added after the first release, one per session, in
    /// the order of `sessions`.
    pub catalog: Vec<CatalogSnapshot>,
}

/// A session's catalog fields added after the first release.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogSnapshot {
    pub version: u64,
    pub archived: bool,
}

impl Default for CatalogSnapshot {
    /// What a session of the first release has: version 1, not archived.
    fn default() -> Self {
        CatalogSnapshot {
            version: 1,
            archived: false,
        }
    }
}

/// The snapshot layout of the first release (sessions only, no trailer).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSnapshotV1 {
    pub sessions: Vec<SessionSnapshot>,
}

/// Ends every snapshot written since catalog fields exist. A first-release
/// snapshot ends with its root (a relative pointer and a length): read as
/// that, these bytes would be a length of 2^32 - 1 sessions, which no
/// snapshot has, so the two layouts cannot be confused.
pub const SNAPSHOT_V2_TRAILER: [u8; 8] = *b"SCv2\xff\xff\xff\xff";

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub id: String,
    pub tenant_id: String,
    pub title: Option<String>,
    pub metadata_json: String,
    pub principal_id: String,
    pub principal_type: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub last_seq: u64,
    pub archived_seq: u64,
    pub producers: Vec<ProducerSnapshot>,
    /// Unarchived events, ascending by seq: (seq, rendered JSON frame).
    pub hot: Vec<HotEvent>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HotEvent {
    pub seq: u64,
    pub frame: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProducerSnapshot {
    pub id: String,
    /// Recent accepted appends, ascending by producer_seq.
    pub window: Vec<ProducerEntry>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerEntry {
    pub producer_seq: u64,
    pub seq: u64,
    pub fingerprint: [u8; 16],
}

/// Archives a value into aligned bytes.
pub fn encode<T>(value: &T) -> rkyv::util::AlignedVec
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    // Serialising plain owned data into a growable buffer cannot fail.
    rkyv::to_bytes::<rkyv::rancor::Error>(value).expect("rkyv serialisation into memory")
}

/// Validates and deserialises a command from (possibly unaligned) entry data.
/// Data that is already 16-byte aligned (entries the allocator placed, most
/// of them) is read in place; the rest is copied to an aligned buffer first.
pub fn decode_command(data: &[u8]) -> Result<Command, rkyv::rancor::Error> {
    if (data.as_ptr() as usize).is_multiple_of(16) {
        return rkyv::from_bytes::<Command, rkyv::rancor::Error>(data);
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    rkyv::from_bytes::<Command, rkyv::rancor::Error>(&aligned)
}

/// Encodes a group snapshot in the current layout (archived bytes + trailer).
pub fn encode_snapshot(snap: &GroupSnapshot) -> Vec<u8> {
    let mut out = encode(snap).to_vec();
    out.extend_from_slice(&SNAPSHOT_V2_TRAILER);
    out
}

/// Validates and deserialises a group snapshot of either layout; a
/// first-release snapshot gets the default catalog fields.
pub fn decode_snapshot(data: &[u8]) -> Result<GroupSnapshot, rkyv::rancor::Error> {
    if let Some(body) = data.strip_suffix(&SNAPSHOT_V2_TRAILER) {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        let snap = rkyv::from_bytes::<GroupSnapshot, rkyv::rancor::Error>(&aligned)?;
        if snap.catalog.len() != snap.sessions.len() {
            return Err(<rkyv::rancor::Error as rkyv::rancor::Source>::new(
                SnapshotShape,
            ));
        }
        return Ok(snap);
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    let v1 = rkyv::from_bytes::<GroupSnapshotV1, rkyv::rancor::Error>(&aligned)?;
    Ok(GroupSnapshot {
        catalog: vec![CatalogSnapshot::default(); v1.sessions.len()],
        sessions: v1.sessions,
    })
}

/// A snapshot whose catalog list does not match its sessions.
#[derive(Debug)]
struct SnapshotShape;

impl std::fmt::Display for SnapshotShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("snapshot catalog does not match its sessions")
    }
}

impl std::error::Error for SnapshotShape {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip() {
        let cmd = Command::Append(AppendCommand {
            origin: Origin {
                incarnation: 7,
                token: 9,
            },
            session: "s".into(),
            producer_id: "p".into(),
            producer_seq: 3,
            fingerprint: [1; 16],
            expected_seq: Some(2),
            body: "\"type\":\"x\"".into(),
            inserted_at_us: 123,
        });
        let bytes = encode(&cmd);
        // Entry data arrives at any alignment: decode it in place (aligned)
        // and from every other offset within 16 bytes (copied).
        for offset in 0..16 {
            let mut buf = rkyv::util::AlignedVec::<16>::new();
            buf.extend_from_slice(&vec![0u8; offset]);
            buf.extend_from_slice(&bytes);
            let data = &buf[offset..];
            assert_eq!(
                (data.as_ptr() as usize).is_multiple_of(16),
                offset == 0,
                "offset {offset}"
            );
            assert_eq!(decode_command(data).unwrap(), cmd, "offset {offset}");
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Bytes written by the first release (main before catalog commands,
    /// encoded by its `encode`): they must keep decoding to the same values.
    const OLD_CREATE: &str = "73657373696f6e2d776974682d612d6c6f6e672d69647b226b223a2276227d0000000000000000000700000000000000090000000000000096000000c8ffffff61636d65ffffffff0100000041207469746c65ff89000000c2ffffff752d3432ffffffff75736572ffffffff0000000000401e18240a06000000000000000000";
    const OLD_APPEND: &str = "73657373696f6e2d776974682d612d6c6f6e672d69642274797065223a2278222c227061796c6f6164223a7b7d00000001000000000000000700000000000000090000000000000096000000b8ffffff7772697465722d31030000000000000005050505050505050505050505050505010000000000000002000000000000009700000096ffffff7b401e18240a0600";
    const OLD_ACK: &str = "02000000000000000700000000000000090000000000000073ffffffffffffff2a000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
    const OLD_SNAPSHOT: &str = "73657373696f6e2d776974682d612d6c6f6e672d696400000100000000000000010000000000000001010101010101010101010101010101020000000000000002000000000000000202020202020202020202020202020270ffffffffffffffb8ffffff020000007b22736571223a327d000000000000000200000000000000e8ffffff090000009600000078ffffff61636d65ffffffff0000000000000000000000007b226b223a317dff737663ffffffffff73657276696365ff000000000a0000000000000014000000000000000200000000000000010000000000000078ffffff0100000090ffffff0100000098ffffff01000000";
    const OLD_EMPTY_SNAPSHOT: &str = "0000000000000000";

    #[test]
    fn first_release_commands_still_decode() {
        let o = Origin {
            incarnation: 7,
            token: 9,
        };
        let create = Command::Create(CreateCommand {
            origin: o,
            id: "session-with-a-long-id".into(),
            tenant_id: "acme".into(),
            title: Some("A title".into()),
            metadata_json: "{\"k\":\"v\"}".into(),
            principal_id: "u-42".into(),
            principal_type: "user".into(),
            created_at_us: 1_700_000_000_000_000,
        });
        let append = Command::Append(AppendCommand {
            origin: o,
            session: "session-with-a-long-id".into(),
            producer_id: "writer-1".into(),
            producer_seq: 3,
            fingerprint: [5; 16],
            expected_seq: Some(2),
            body: "\"type\":\"x\",\"payload\":{}".into(),
            inserted_at_us: 1_700_000_000_000_123,
        });
        let ack = Command::AckArchived {
            origin: o,
            session: "s".into(),
            upto: 42,
        };
        for (hex, want) in [(OLD_CREATE, create), (OLD_APPEND, append), (OLD_ACK, ack)] {
            let old = unhex(hex);
            assert_eq!(decode_command(&old).unwrap(), want);
            // Old variants still encode to the very same bytes.
            assert_eq!(encode(&want).to_vec(), old);
        }
    }

    /// A `Snapshot` record archived by the build before `SnapshotPart` and
    /// `ChunkedSnapshot` were added: old data dirs must still read the same.
    const OLD_SNAPSHOT_RECORD: &str = "0100000000000000020000000000000003000000000000007374617465206279746573000000000002000000070000002a000000000000000300000000000000c0ffffff03000000d0ffffff0b000000";

    #[test]
    fn records_of_older_builds_still_decode() {
        let bytes: Vec<u8> = (0..OLD_SNAPSHOT_RECORD.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&OLD_SNAPSHOT_RECORD[i..i + 2], 16).unwrap())
            .collect();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let record = rkyv::from_bytes::<LogRecord, rkyv::rancor::Error>(&aligned).unwrap();
        assert_eq!(record, old_snapshot());
        // and the new build writes the same bytes for it
        assert_eq!(&encode(&old_snapshot())[..], &bytes[..]);
    }

    fn old_snapshot() -> LogRecord {
        LogRecord::Snapshot {
            group: 7,
            index: 42,
            term: 3,
            voters: vec![1, 2, 3],
            state: b"state bytes".to_vec(),
        }
    }

    #[test]
    fn first_release_snapshots_decode_with_default_catalog() {
        let snap = decode_snapshot(&unhex(OLD_SNAPSHOT)).unwrap();
        assert_eq!(snap.sessions.len(), 1);
        let s = &snap.sessions[0];
        assert_eq!(s.id, "session-with-a-long-id");
        assert_eq!((s.last_seq, s.archived_seq, s.updated_at_us), (2, 1, 20));
        assert_eq!(s.producers[0].window.len(), 2);
        assert_eq!(s.hot[0].frame, b"{\"seq\":2}".to_vec());
        assert_eq!(
            snap.catalog,
            vec![CatalogSnapshot {
                version: 1,
                archived: false
            }]
        );
        let empty = decode_snapshot(&unhex(OLD_EMPTY_SNAPSHOT)).unwrap();
        assert_eq!(empty, GroupSnapshot::default());
    }

    #[test]
    fn snapshots_round_trip_with_catalog_fields() {
        let mut snap = decode_snapshot(&unhex(OLD_SNAPSHOT)).unwrap();
        snap.catalog[0] = CatalogSnapshot {
            version: 7,
            archived: true,
        };
        let bytes = encode_snapshot(&snap);
        assert!(bytes.ends_with(&SNAPSHOT_V2_TRAILER));
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode_snapshot(&shifted[1..]).unwrap(), snap);
        // A catalog that does not match the sessions is refused.
        let mut bad = snap.clone();
        bad.catalog.clear();
        assert!(decode_snapshot(&encode_snapshot(&bad)).is_err());
        // Truncated or garbage input is an error, not a panic.
        assert!(decode_snapshot(&bytes[..bytes.len() - 9]).is_err());
        assert!(decode_snapshot(&SNAPSHOT_V2_TRAILER).is_err());
    }

    #[test]
    fn catalog_commands_round_trip() {
        let o = Origin {
            incarnation: 1,
            token: 2,
        };
        for cmd in [
            Command::Patch(Box::new(PatchCommand {
                origin: o,
                session: "s".into(),
                set_title: true,
                title: None,
                metadata_json: Some("{\"a\":1}".into()),
                expected_version: Some(3),
                updated_at_us: 5,
            })),
            Command::SetArchived(Box::new(SetArchivedCommand {
                origin: o,
                session: "s".into(),
                archived: true,
                updated_at_us: 6,
            })),
        ] {
            let bytes = encode(&cmd);
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(&bytes);
            assert_eq!(decode_command(&shifted[1..]).unwrap(), cmd);
        }
    }

    #[test]
    fn new_variants_are_no_larger_than_old_ones() {
        assert_eq!(
            std::mem::size_of::<ArchivedLogRecord>(),
            OLD_ARCHIVED_LOG_RECORD_SIZE
        );
    }

    const OLD_ARCHIVED_LOG_RECORD_SIZE: usize = 40;

    #[test]
    fn garbage_command_is_an_error_not_a_panic() {
        assert!(decode_command(&[0xff; 7]).is_err());
        assert!(decode_command(&[]).is_err());
    }
}
