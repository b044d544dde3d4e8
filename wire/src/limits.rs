//! Every byte bound of Starcite, in one place, checked against each other at
//! compile time.
//!
//! Each bound that carries something another bound must hold is derived from
//! it or asserted against it below (`const _: () = assert!(..)`), so changing
//! one number cannot silently make a record, a snapshot or a request too big
//! for the frame that has to carry it. The chain, smallest to largest:
//!
//! ```text
//! auth token ≤ request head (16 KiB) ≤ wire pre-auth frame (64 KiB)
//! request body (8,000,000) + command overhead = largest Raft entry
//! largest Raft entry + raft message budget  ≤ largest unchunked Raft message < peer frame (16 MiB)
//! request body + forwarding overhead         ≤ peer request body            < peer frame
//! request body + framing                     ≤ binary-protocol frame (16 MiB)
//! entries record budget + largest Raft entry ≤ log frame (64 MiB)
//! snapshot chunk + record overhead           ≤ log frame, and ≤ peer frame
//! ```
//!
//! Records that could outgrow a frame are split: a batch of Raft entries is
//! written as several `Entries` records of at most [`ENTRIES_RECORD_BYTES`] (plus
//! one entry), a group snapshot as `SnapshotPart` records of [`SNAPSHOT_CHUNK`]
//! bytes followed by its `Snapshot` record, and a Raft message larger than
//! [`MAX_UNCHUNKED_RAFT_MESSAGE`] (a snapshot for a follower) crosses the peer
//! transport as [`RAFT_CHUNK`]-byte chunks that the receiver reassembles.
//! The hot tier (unarchived events, `STARCITE_EVENT_STORE_MAX_SIZE`) is the
//! only bound that is configured at run time: it bounds snapshot size, and no
//! frame has to hold a whole snapshot.

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

// --- client-facing ----------------------------------------------------------

/// Largest HTTP request body (the reference API's 8,000,000 bytes); 413 beyond.
pub const REQUEST_BODY: usize = 8_000_000;
/// Largest HTTP request head (request line + headers); 431 beyond.
pub const REQUEST_HEAD: usize = 16 * KIB;
/// Headers per request; 431 beyond.
pub const REQUEST_HEADERS: usize = 64;
/// Largest bearer token (JWT) accepted, from a header, a query string or a
/// binary-protocol `Hello`; longer ones are malformed (401).
pub const AUTH_TOKEN: usize = 8 * KIB;
/// Largest inbound WebSocket frame payload (tail sockets only receive pings/close).
pub const WS_INBOUND_FRAME: usize = 64 * KIB;
/// Largest outbound tail frame batch (several events in one WebSocket message).
pub const TAIL_FRAME: usize = MIB;
/// Largest binary-protocol (`wire::proto`) frame payload.
pub const WIRE_FRAME: usize = 16 * MIB;
/// Largest binary-protocol frame before `Hello` is accepted.
pub const WIRE_PREAUTH_FRAME: usize = 64 * KIB;

// --- replicated commands ------------------------------------------------------

/// Bytes a command (and its archived Raft entry, with term, index and context)
/// may add to the request body that produced it: session, producer and tenant
/// ids, principal, fingerprint, rkyv and protobuf framing. Ids and metadata are
/// bounded by validation far below this.
pub const COMMAND_OVERHEAD: usize = 256 * KIB;
/// Largest Raft entry a client request can produce.
pub const MAX_ENTRY: usize = REQUEST_BODY + COMMAND_OVERHEAD;

// --- the per-core log ---------------------------------------------------------

/// Largest payload of one log frame (one `LogRecord`).
pub const LOG_FRAME: usize = 64 * MIB;
/// Bytes an archived `LogRecord` adds around its entries or snapshot bytes.
pub const RECORD_OVERHEAD: usize = 64 * KIB;
/// An `Entries` record is closed once its entries reach this many bytes; the
/// rest of the batch goes into the next record (one entry always fits).
pub const ENTRIES_RECORD_BYTES: usize = 16 * MIB;
/// A group snapshot is written (to the log) and sent (to a follower) in chunks
/// of this many bytes of state.
pub const SNAPSHOT_CHUNK: usize = 8 * MIB;

// --- between nodes ------------------------------------------------------------

/// Largest payload of one peer (cluster transport) frame.
pub const PEER_FRAME: usize = 16 * MIB;
/// Envelope bytes a peer frame adds around a request, response or Raft message.
pub const PEER_FRAME_OVERHEAD: usize = KIB;
/// Largest request, response or control body between nodes.
pub const PEER_BODY: usize = PEER_FRAME - PEER_FRAME_OVERHEAD;
/// Largest Raft message sent in one peer frame; larger ones (snapshots) are
/// sent as chunks of [`RAFT_CHUNK`] bytes and reassembled by the receiver.
pub const MAX_UNCHUNKED_RAFT_MESSAGE: usize = PEER_FRAME - PEER_FRAME_OVERHEAD;
/// Chunk size of a Raft message sent in pieces.
pub const RAFT_CHUNK: usize = SNAPSHOT_CHUNK;
/// Largest Raft message (a snapshot) a node reassembles from chunks. A group's
/// snapshot is bounded by its node's hot tier; this is the hard ceiling.
pub const MAX_RAFT_MESSAGE: usize = 4096 * MIB;
/// Entry bytes raft puts in one append message (`max_size_per_msg`); raft
/// always sends at least one entry, so a message holds at most this plus one
/// [`MAX_ENTRY`].
pub const RAFT_MAX_SIZE_PER_MSG: usize = MIB;

// --- memory -------------------------------------------------------------------

/// Default bound of unarchived ("hot") events on a node
/// (`STARCITE_EVENT_STORE_MAX_SIZE`), split evenly over its cores.
pub const DEFAULT_HOT_TIER: u64 = 2 * 1024 * MIB as u64;

// --- how they fit ---------------------------------------------------------------

// A token travels in the head (header or query) or in a pre-auth wire frame.
const _: () = assert!(AUTH_TOKEN + KIB <= REQUEST_HEAD);
const _: () = assert!(AUTH_TOKEN + KIB <= WIRE_PREAUTH_FRAME);
// Every append a client may send becomes one entry that fits a log record ...
const _: () = assert!(ENTRIES_RECORD_BYTES + MAX_ENTRY + RECORD_OVERHEAD <= LOG_FRAME);
// ... and one Raft append message that needs no chunking.
const _: () = assert!(RAFT_MAX_SIZE_PER_MSG + MAX_ENTRY + KIB <= MAX_UNCHUNKED_RAFT_MESSAGE);
// A request forwarded to the leader's node fits one peer request.
const _: () = assert!(REQUEST_BODY + COMMAND_OVERHEAD <= PEER_BODY);
// A binary-protocol append carries a whole request body.
const _: () = assert!(REQUEST_BODY + COMMAND_OVERHEAD <= WIRE_FRAME);
// Snapshot chunks fit both the log frame and the peer frame.
const _: () = assert!(SNAPSHOT_CHUNK + RECORD_OVERHEAD <= LOG_FRAME);
const _: () = assert!(RAFT_CHUNK + PEER_FRAME_OVERHEAD <= PEER_FRAME);
const _: () = assert!(RAFT_CHUNK <= MAX_UNCHUNKED_RAFT_MESSAGE);
const _: () = assert!(PEER_FRAME <= LOG_FRAME);
// The tail batch bound only stops batching (one event always goes out alone).
const _: () = assert!(WS_INBOUND_FRAME <= TAIL_FRAME);
// The default hot tier holds many largest appends (even split over 64 cores).
const _: () = assert!(DEFAULT_HOT_TIER >= 64 * 2 * MAX_ENTRY as u64);
// A frame length is a u32 on disk and on the wire.
const _: () = assert!(LOG_FRAME <= u32::MAX as usize);
const _: () = assert!(MAX_RAFT_MESSAGE > MAX_UNCHUNKED_RAFT_MESSAGE);
