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
/// events are part of it).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSnapshot {
    pub sessions: Vec<SessionSnapshot>,
}

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
pub fn decode_command(data: &[u8]) -> Result<Command, rkyv::rancor::Error> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    rkyv::from_bytes::<Command, rkyv::rancor::Error>(&aligned)
}

/// Validates and deserialises a group snapshot.
pub fn decode_snapshot(data: &[u8]) -> Result<GroupSnapshot, rkyv::rancor::Error> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    rkyv::from_bytes::<GroupSnapshot, rkyv::rancor::Error>(&aligned)
}

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
        // Entry data arrives unaligned: decode from an offset copy.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode_command(&shifted[1..]).unwrap(), cmd);
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
