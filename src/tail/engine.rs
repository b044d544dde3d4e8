//! The tail cursor state machine, shared by every tail transport.
//!
//! [`Engine::next`] yields the next batch of events after the cursor, exactly
//! `cursor + 1 ..= cursor + n` in order, and advances the cursor past it:
//!
//! - **Local** (this node replicates the session's group): subscribe at the owner
//!   core first (retrying while this replica has not applied the create yet), then
//!   replay with reads of up to 1,000 events — from the hot tier, or from the
//!   archive below it — until the replica has nothing more, then follow the live
//!   pushes. A live event is taken only when it is exactly `cursor + 1`; events
//!   already queued behind it come in the same batch (up to [`LIVE_BURST`]). A gap
//!   in the pushes, or a subscription dropped because the consumer fell behind,
//!   goes back to replay (resubscribing first), so memory per tail stays bounded
//!   by the subscription buffer.
//! - **Remote** (a router, or a writer outside the group): read after the cursor
//!   from the first replica that answers, backing off between empty polls.
//!
//! `next` is cancel-safe: the state only changes once a batch is complete, so a
//! sink may `select!` it against its socket, shutdown and token expiry.
//! Dropping the engine unsubscribes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starcite_shards::EngineError;

use crate::archive::cold::ColdTier;
use crate::cluster::transport::Transport;
use crate::node::messages::{CoreRequest, LiveEvent, Subscriber, SUBSCRIBER_DEPTH};
use crate::node::peer_rpc::{self, PeerRequest, PeerResponse};

/// Events per replay read (contract §12.3).
pub const REPLAY_READ: usize = 1_000;
/// Timeout of one replay read or subscription at the owner core.
const OWNER_TIMEOUT: Duration = Duration::from_secs(5);
/// Live events already queued that one batch may carry.
pub const LIVE_BURST: usize = 256;
/// Remote tails poll between these bounds, backing off while idle.
const REMOTE_POLL_MIN: Duration = Duration::from_millis(10);
const REMOTE_POLL_MAX: Duration = Duration::from_millis(200);

/// A frame (or binary `Events` message) holds at most this many bytes of events
/// (unless one event is larger): frames may be shorter than the batch size, and
/// clients' default frame limits (16 MiB) are never hit by batching.
pub const MAX_FRAME_BYTES: usize = starcite_wire::limits::TAIL_FRAME;

/// Splits events into frames of at most `batch` events and [`MAX_FRAME_BYTES`].
pub fn frames_of(events: &[(u64, Bytes)], batch: usize) -> Vec<&[(u64, Bytes)]> {
    let batch = batch.max(1);
    let mut frames = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, frame)) in events.iter().enumerate() {
        let full = i - start == batch || (i > start && bytes + frame.len() > MAX_FRAME_BYTES);
        if full {
            frames.push(&events[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += frame.len();
    }
    if start < events.len() {
        frames.push(&events[start..]);
    }
    frames
}

/// Where a tail's events come from.
pub enum TailSource {
    /// This node replicates the session's group: the owner core's applied
    /// state, with live pushes.
    Local { owner: flume::Sender<CoreRequest> },
    /// A node without a replica (router, or a write node outside the group):
    /// reads from replicas over the cluster transport, polling for new events.
    Remote {
        transport: Rc<Transport>,
        replicas: Vec<String>,
    },
}

/// Why a tail cannot continue. Every transport ends the tail with the reason
/// (a close frame, an error message, a channel error), never skips events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailError {
    /// The session did not appear on this replica in time.
    SessionNotFound,
    /// The owner core or every replica failed to answer.
    RaftUnavailable,
    /// Events below the hot tier could not be read from the archive.
    ArchiveReadUnavailable,
    /// A read returned events that are not exactly the next ones.
    EventGapDetected,
}

impl TailError {
    /// The API error code naming this failure.
    pub fn reason(self) -> &'static str {
        match self {
            TailError::SessionNotFound => "session_not_found",
            TailError::RaftUnavailable => "raft_unavailable",
            TailError::ArchiveReadUnavailable => "archive_read_unavailable",
            TailError::EventGapDetected => "event_gap_detected",
        }
    }

    pub fn api_error(self) -> crate::api::error::ApiError {
        use crate::api::error::ApiError;
        match self {
            TailError::SessionNotFound => ApiError::session_not_found(),
            TailError::RaftUnavailable => ApiError::raft_unavailable(),
            TailError::ArchiveReadUnavailable => ApiError::archive_read_unavailable(),
            TailError::EventGapDetected => ApiError::event_gap_detected(),
        }
    }
}

/// One tail's cursor and source. See the module documentation.
pub struct Engine {
    session: String,
    /// The session's tenant (rendered into events read from the archive).
    tenant_id: String,
    cursor: u64,
    source: TailSource,
    subscriber_id: u64,
    cold: ColdTier,
    /// The live subscription (local sources only).
    live: Option<flume::Receiver<LiveEvent>>,
    /// Replaying (reads) rather than following live pushes.
    replaying: bool,
    /// Current back-off of a remote poll.
    idle: Duration,
    /// The session's `last_seq` as of the latest subscribe or read.
    last_seq: u64,
}

impl Engine {
    pub fn new(
        session: String,
        tenant_id: String,
        source: TailSource,
        subscriber_id: u64,
        cold: ColdTier,
        cursor: u64,
    ) -> Engine {
        Engine {
            session,
            tenant_id,
            cursor,
            source,
            subscriber_id,
            cold,
            live: None,
            replaying: true,
            idle: REMOTE_POLL_MIN,
            last_seq: 0,
        }
    }

    /// The last event handed out (or the starting cursor).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Moves the cursor before the first batch (e.g. a Phoenix resume past the
    /// end restarts at `last_seq`).
    pub fn set_cursor(&mut self, cursor: u64) {
        self.cursor = cursor;
        self.replaying = true;
    }

    /// The session's current `last_seq`. A local source subscribes here (so no
    /// event committed after this answer can be missed); a remote one asks the
    /// replicas.
    pub async fn last_seq(&mut self) -> Result<u64, TailError> {
        match &self.source {
            TailSource::Local { .. } => {
                let (rx, last) = self.subscribe().await?;
                self.live = Some(rx);
                self.replaying = true;
                self.last_seq = last;
                Ok(last)
            }
            TailSource::Remote {
                transport,
                replicas,
            } => {
                let body = peer_rpc::encode(&PeerRequest::Info {
                    session: self.session.clone(),
                });
                for node in replicas {
                    let Ok(answer) = transport.request(node, body.clone()).await else {
                        continue;
                    };
                    if let Some(PeerResponse::Info(Some(info))) = peer_rpc::decode(&answer) {
                        self.last_seq = info.last_seq;
                        return Ok(info.last_seq);
                    }
                }
                Err(TailError::RaftUnavailable)
            }
        }
    }

    /// The next batch after the cursor (waits while there is none). Never empty.
    pub async fn next(&mut self) -> Result<Vec<(u64, Bytes)>, TailError> {
        if matches!(self.source, TailSource::Remote { .. }) {
            return self.next_remote().await;
        }
        loop {
            if self.live.is_none() {
                let (rx, last) = self.subscribe().await?;
                self.live = Some(rx);
                self.replaying = true;
                self.last_seq = self.last_seq.max(last);
            }
            if self.replaying {
                let events = self.local_read().await?;
                if !events.is_empty() {
                    return self.deliver(events);
                }
                self.replaying = false;
            }
            let Some(live) = self.live.clone() else {
                continue;
            };
            match live.recv_async().await {
                Ok(e) if e.seq <= self.cursor => {}
                Ok(e) if e.seq == self.cursor + 1 => {
                    let mut events = vec![(e.seq, e.frame)];
                    while events.len() < LIVE_BURST {
                        let Ok(next) = live.try_recv() else { break };
                        let expected = events.last().map_or(0, |(s, _)| s + 1);
                        if next.seq < expected {
                            continue;
                        }
                        if next.seq > expected {
                            // A hole: what is missing is read on the way back.
                            self.replaying = true;
                            break;
                        }
                        events.push((next.seq, next.frame));
                    }
                    self.cursor = events.last().map_or(self.cursor, |(s, _)| *s);
                    self.last_seq = self.last_seq.max(self.cursor);
                    return Ok(events);
                }
                // Ahead of the cursor: replay what lies between.
                Ok(_) => self.replaying = true,
                // Dropped for falling behind: resubscribe, then replay.
                Err(_) => self.live = None,
            }
        }
    }

    /// Checks that `events` are exactly the next ones and advances past them.
    fn deliver(&mut self, events: Vec<(u64, Bytes)>) -> Result<Vec<(u64, Bytes)>, TailError> {
        let after = self.cursor;
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == after + 1 + i as u64);
        if !contiguous {
            return Err(TailError::EventGapDetected);
        }
        self.cursor = events.last().map_or(after, |(s, _)| *s);
        self.last_seq = self.last_seq.max(self.cursor);
        Ok(events)
    }

    /// Subscribes at the owner core: the receiver and the session's `last_seq`.
    /// The session is known to exist (the caller checked it), but this replica
    /// may not have applied its create yet: wait for it a little.
    async fn subscribe(&self) -> Result<(flume::Receiver<LiveEvent>, u64), TailError> {
        let deadline = Instant::now() + OWNER_TIMEOUT;
        loop {
            let (tx, rx) = flume::bounded(SUBSCRIBER_DEPTH);
            let subscriber = Subscriber {
                id: self.subscriber_id,
                tx,
            };
            let session = self.session.clone();
            let info = self
                .ask(|reply| CoreRequest::Subscribe {
                    session,
                    subscriber,
                    reply,
                })
                .await?;
            if let Some(info) = info {
                return Ok((rx, info.last_seq));
            }
            if Instant::now() >= deadline {
                return Err(TailError::SessionNotFound);
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One request to the owner core, answered within [`OWNER_TIMEOUT`].
    async fn ask<T>(
        &self,
        make: impl FnOnce(flume::Sender<T>) -> CoreRequest,
    ) -> Result<T, TailError> {
        let TailSource::Local { owner } = &self.source else {
            return Err(TailError::RaftUnavailable);
        };
        let (tx, rx) = flume::bounded(1);
        let exchange = async {
            owner.send_async(make(tx)).await.ok()?;
            rx.recv_async().await.ok()
        };
        match monoio::time::timeout(OWNER_TIMEOUT, exchange).await {
            Ok(Some(v)) => Ok(v),
            _ => Err(TailError::RaftUnavailable),
        }
    }

    /// Up to [`REPLAY_READ`] events after the cursor from the owner core (or
    /// the archive below its hot tier).
    async fn local_read(&mut self) -> Result<Vec<(u64, Bytes)>, TailError> {
        let (session, after) = (self.session.clone(), self.cursor);
        let read = self
            .ask(|reply| CoreRequest::Read {
                session,
                after,
                limit: REPLAY_READ,
                reply,
            })
            .await?;
        match read {
            Ok(read) => {
                self.last_seq = self.last_seq.max(read.last_seq);
                Ok(read.events)
            }
            Err(EngineError::Archived { archived_seq }) => self.cold_read(archived_seq).await,
            Err(EngineError::ArchiveReadUnavailable) => Err(TailError::ArchiveReadUnavailable),
            Err(_) => Err(TailError::RaftUnavailable),
        }
    }

    async fn next_remote(&mut self) -> Result<Vec<(u64, Bytes)>, TailError> {
        loop {
            let events = self.remote_read().await?;
            if !events.is_empty() {
                self.idle = REMOTE_POLL_MIN;
                return self.deliver(events);
            }
            monoio::time::sleep(self.idle).await;
            self.idle = (self.idle * 2).min(REMOTE_POLL_MAX);
        }
    }

    /// Reads after the cursor from the first replica that answers.
    async fn remote_read(&mut self) -> Result<Vec<(u64, Bytes)>, TailError> {
        let TailSource::Remote {
            transport,
            replicas,
        } = &self.source
        else {
            return Ok(Vec::new());
        };
        let req = PeerRequest::Read {
            session: self.session.clone(),
            after: self.cursor,
            limit: REPLAY_READ,
        };
        let body = peer_rpc::encode(&req);
        for node in replicas {
            let Ok(answer) = transport.request(node, body.clone()).await else {
                continue;
            };
            match peer_rpc::decode::<PeerResponse>(&answer) {
                Some(PeerResponse::Read(Ok((events, last_seq)))) => {
                    self.last_seq = self.last_seq.max(last_seq);
                    return Ok(events
                        .into_iter()
                        .map(|(seq, f)| (seq, Bytes::from(f)))
                        .collect());
                }
                Some(PeerResponse::Read(Err(EngineError::Archived { archived_seq }))) => {
                    return self.cold_read(archived_seq).await;
                }
                Some(PeerResponse::Read(Err(EngineError::ArchiveReadUnavailable))) => {
                    return Err(TailError::ArchiveReadUnavailable);
                }
                _ => continue,
            }
        }
        Err(TailError::RaftUnavailable)
    }

    /// Events after the cursor that only the archive holds (§9.5): exactly
    /// `cursor + 1 ..= min(cursor + 1000, archived_seq)`, or the reason the tail
    /// stops (decision 6) — never a silent skip.
    async fn cold_read(&self, archived_seq: u64) -> Result<Vec<(u64, Bytes)>, TailError> {
        self.cold
            .read_below_hot(
                &self.session,
                &self.tenant_id,
                self.cursor,
                archived_seq,
                REPLAY_READ as u64,
            )
            .await
            .map_err(|reason| {
                if reason == "event_gap_detected" {
                    TailError::EventGapDetected
                } else {
                    TailError::ArchiveReadUnavailable
                }
            })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let TailSource::Local { owner } = &self.source {
            let _ = owner.try_send(CoreRequest::Unsubscribe {
                session: self.session.clone(),
                id: self.subscriber_id,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize, size: usize) -> Vec<(u64, Bytes)> {
        (1..=n as u64)
            .map(|s| (s, Bytes::from(vec![b'x'; size])))
            .collect()
    }

    #[test]
    fn frames_respect_batch_size_and_byte_cap() {
        let sizes = |v: Vec<&[(u64, Bytes)]>| v.iter().map(|f| f.len()).collect::<Vec<_>>();
        assert_eq!(sizes(frames_of(&ev(7, 10), 3)), vec![3, 3, 1]);
        assert_eq!(sizes(frames_of(&ev(5, 10), 1)), vec![1; 5]);
        assert_eq!(sizes(frames_of(&ev(5, 10), 0)), vec![1; 5]);
        assert_eq!(sizes(frames_of(&ev(5, 400_000), 1000)), vec![2, 2, 1]);
        assert_eq!(sizes(frames_of(&ev(2, 2 << 20), 1000)), vec![1, 1]);
        assert!(frames_of(&[], 3).is_empty());
    }
}
