//! One tail WebSocket: replay from the cursor, then live, gap-free (§7, §14.5).
//!
//! The socket subscribes at the owner core first, then replays with reads of up
//! to 1,000 events. Live events are sent only when they are exactly `cursor + 1`;
//! anything else (a gap, or the subscription dropped because this socket fell
//! behind) sends it back to replay from its cursor. Memory per socket is bounded
//! by the subscription buffer.

use std::time::Duration;

use bytes::Bytes;

use std::rc::Rc;

use super::messages::{CoreRequest, LiveEvent, Subscriber, SUBSCRIBER_DEPTH};
use super::peer_rpc::{self, PeerRequest, PeerResponse};
use super::shutdown::Shutdown;
use crate::cluster::transport::Transport;
use crate::http::{WebSocket, WsEvent, WsReader, WsWriter};
use starcite_shards::EngineError;

/// Events per replay read (contract §12.3).
const REPLAY_READ: usize = 1_000;
/// Timeout of one replay read or subscription at the owner core.
const OWNER_TIMEOUT: Duration = Duration::from_secs(5);

/// A replay frame holds at most this many bytes of events (unless one event is
/// larger): frames may be shorter than `batch_size`, and clients' default frame
/// limits (16 MiB) are never hit by batching.
const MAX_FRAME_BYTES: usize = starcite_wire::limits::TAIL_FRAME;

/// Splits events into frames of at most `batch` events and `MAX_FRAME_BYTES`.
fn frames_of(events: &[(u64, Bytes)], batch: usize) -> Vec<&[(u64, Bytes)]> {
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
        assert_eq!(sizes(frames_of(&ev(5, 400_000), 1000)), vec![2, 2, 1]);
        assert_eq!(sizes(frames_of(&ev(2, 2 << 20), 1000)), vec![1, 1]);
        assert!(frames_of(&[], 3).is_empty());
    }
}

/// Close codes (§7.3, §14.19).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_INTERNAL: u16 = 1011;
const CLOSE_TOKEN_EXPIRED: u16 = 4001;

pub struct TailSpec {
    pub session: String,
    pub cursor: u64,
    pub batch_size: usize,
    pub source: TailSource,
    pub subscriber_id: u64,
    pub shutdown: Shutdown,
    /// The token's `exp` (Unix seconds): the socket closes with 4001 then.
    pub expires_at: Option<u64>,
    /// The session's tenant (rendered into events read from the archive).
    pub tenant_id: String,
    /// Where events below the hot tier come from.
    pub cold: crate::archive::cold::ColdTier,
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

/// Live events already queued that one write may carry.
const LIVE_BURST: usize = 256;

/// Remote tails poll between these bounds, backing off while idle.
const REMOTE_POLL_MIN: Duration = Duration::from_millis(10);
const REMOTE_POLL_MAX: Duration = Duration::from_millis(200);

enum Stop {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The peer is gone or closed; just drop the connection.
    Gone,
}

pub async fn run_tail(ws: WebSocket, spec: TailSpec) {
    let (mut reader, mut writer) = ws.split();
    let mut tail = Tail { spec, live: None };
    let stop = tail.run(&mut reader, &mut writer).await;
    tail.unsubscribe();
    if let Stop::Close(code, reason) = stop {
        let _ = writer.close(code, reason).await;
    }
}

struct Tail {
    spec: TailSpec,
    live: Option<flume::Receiver<LiveEvent>>,
}

impl Tail {
    /// Time left until the token expires (a year when it never does).
    fn until_expiry(&self) -> Duration {
        let Some(exp) = self.spec.expires_at else {
            return Duration::from_secs(365 * 86_400);
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms))
    }

    async fn run(&mut self, reader: &mut WsReader, writer: &mut WsWriter) -> Stop {
        if self.until_expiry().is_zero() {
            return Stop::Close(CLOSE_TOKEN_EXPIRED, "token_expired");
        }
        if matches!(self.spec.source, TailSource::Remote { .. }) {
            return self.run_remote(reader, writer).await;
        }
        loop {
            if self.live.is_none() {
                match self.subscribe().await {
                    Ok(rx) => self.live = Some(rx),
                    Err(stop) => return stop,
                }
            }
            if let Err(stop) = self.replay(writer).await {
                return stop;
            }
            if let Err(stop) = self.follow(reader, writer).await {
                return stop;
            }
        }
    }

    /// Subscribes at the owner core. The session is known to exist (the
    /// upgrade checked it), but this replica may not have applied its create
    /// yet: wait for it a little.
    async fn subscribe(&self) -> Result<flume::Receiver<LiveEvent>, Stop> {
        let deadline = std::time::Instant::now() + OWNER_TIMEOUT;
        loop {
            let (tx, rx) = flume::bounded(SUBSCRIBER_DEPTH);
            let subscriber = Subscriber {
                id: self.spec.subscriber_id,
                tx,
            };
            let session = self.spec.session.clone();
            let info = self
                .ask(|reply| CoreRequest::Subscribe {
                    session,
                    subscriber,
                    reply,
                })
                .await?;
            if info.is_some() {
                return Ok(rx);
            }
            if std::time::Instant::now() >= deadline {
                return Err(Stop::Close(CLOSE_INTERNAL, "session_not_found"));
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn unsubscribe(&self) {
        let TailSource::Local { owner } = &self.spec.source else {
            return;
        };
        let session = self.spec.session.clone();
        let _ = owner.try_send(CoreRequest::Unsubscribe {
            session,
            id: self.spec.subscriber_id,
        });
    }

    async fn ask<T>(&self, make: impl FnOnce(flume::Sender<T>) -> CoreRequest) -> Result<T, Stop> {
        let TailSource::Local { owner } = &self.spec.source else {
            return Err(Stop::Close(CLOSE_INTERNAL, "raft_unavailable"));
        };
        let (tx, rx) = flume::bounded(1);
        let exchange = async {
            owner.send_async(make(tx)).await.ok()?;
            rx.recv_async().await.ok()
        };
        match monoio::time::timeout(OWNER_TIMEOUT, exchange).await {
            Ok(Some(v)) => Ok(v),
            _ => Err(Stop::Close(CLOSE_INTERNAL, "raft_unavailable")),
        }
    }

    /// Sends every event after the cursor that the owner has, in frames of at
    /// most `batch_size` (a frame never spans two reads).
    async fn replay(&mut self, writer: &mut WsWriter) -> Result<(), Stop> {
        loop {
            if self.spec.shutdown.is_fired() {
                return Err(Stop::Close(CLOSE_GOING_AWAY, "going_away"));
            }
            if self.until_expiry().is_zero() {
                return Err(Stop::Close(CLOSE_TOKEN_EXPIRED, "token_expired"));
            }
            let (session, after) = (self.spec.session.clone(), self.spec.cursor);
            let read = self
                .ask(|reply| CoreRequest::Read {
                    session,
                    after,
                    limit: REPLAY_READ,
                    reply,
                })
                .await?;
            let events = match read {
                Ok(read) => read.events,
                Err(EngineError::Archived { archived_seq }) => self.cold_read(archived_seq).await?,
                Err(EngineError::ArchiveReadUnavailable) => {
                    return Err(Stop::Close(CLOSE_INTERNAL, "archive_read_unavailable"))
                }
                Err(_) => return Err(Stop::Close(CLOSE_INTERNAL, "raft_unavailable")),
            };
            if events.is_empty() {
                return Ok(());
            }
            let contiguous = events
                .iter()
                .enumerate()
                .all(|(i, (seq, _))| *seq == after + 1 + i as u64);
            if !contiguous {
                return Err(Stop::Close(CLOSE_INTERNAL, "event_gap_detected"));
            }
            for chunk in frames_of(&events, self.spec.batch_size.max(1)) {
                let frame = self.frame(chunk.iter().map(|(_, f)| f));
                writer.send_text(frame).await.map_err(|_| Stop::Gone)?;
                self.spec.cursor = chunk.last().map_or(self.spec.cursor, |(seq, _)| *seq);
            }
        }
    }

    /// Live phase. Returns Ok to go back to replay (gap or dropped subscription).
    async fn follow(&mut self, reader: &mut WsReader, writer: &mut WsWriter) -> Result<(), Stop> {
        let Some(live) = self.live.clone() else {
            return Ok(());
        };
        loop {
            monoio::select! {
                event = live.recv_async() => match event {
                    Ok(e) if e.seq <= self.spec.cursor => {}
                    Ok(e) if e.seq == self.spec.cursor + 1 => {
                        // Whatever else is already queued goes out in the same
                        // write (frames of at most batch_size events each).
                        let mut events = vec![(e.seq, e.frame)];
                        let mut gap = false;
                        while events.len() < LIVE_BURST {
                            let Ok(next) = live.try_recv() else { break };
                            let expected = events.last().map_or(0, |(s, _)| s + 1);
                            if next.seq < expected {
                                continue;
                            }
                            if next.seq > expected {
                                gap = true;
                                break;
                            }
                            events.push((next.seq, next.frame));
                        }
                        let frames: Vec<Bytes> = frames_of(&events, self.spec.batch_size.max(1))
                            .into_iter()
                            .map(|chunk| self.frame(chunk.iter().map(|(_, f)| f)))
                            .collect();
                        writer.send_texts(frames).await.map_err(|_| Stop::Gone)?;
                        self.spec.cursor = events.last().map_or(self.spec.cursor, |(s, _)| *s);
                        if gap {
                            return Ok(());
                        }
                    }
                    Ok(_) => return Ok(()),
                    Err(_) => {
                        // Dropped for falling behind: resubscribe, then replay.
                        self.live = None;
                        return Ok(());
                    }
                },
                inbound = reader.next() => match inbound {
                    WsEvent::Ping(payload) => writer.send_pong(payload).await.map_err(|_| Stop::Gone)?,
                    WsEvent::Close(_) => return Err(Stop::Close(CLOSE_NORMAL, "")),
                    WsEvent::Closed => return Err(Stop::Gone),
                    _ => {}
                },
                _ = self.spec.shutdown.wait() => return Err(Stop::Close(CLOSE_GOING_AWAY, "going_away")),
                _ = monoio::time::sleep(self.until_expiry()) => return Err(Stop::Close(CLOSE_TOKEN_EXPIRED, "token_expired")),
            }
        }
    }

    /// Tail served from a remote replica: read after the cursor, send, and poll
    /// again (sooner while events flow), watching the socket and shutdown.
    async fn run_remote(&mut self, reader: &mut WsReader, writer: &mut WsWriter) -> Stop {
        let mut idle = REMOTE_POLL_MIN;
        loop {
            match self.remote_read().await {
                Ok(events) if !events.is_empty() => {
                    let after = self.spec.cursor;
                    let contiguous = events
                        .iter()
                        .enumerate()
                        .all(|(i, (seq, _))| *seq == after + 1 + i as u64);
                    if !contiguous {
                        return Stop::Close(CLOSE_INTERNAL, "event_gap_detected");
                    }
                    for chunk in frames_of(&events, self.spec.batch_size.max(1)) {
                        let frame = self.frame(chunk.iter().map(|(_, f)| f));
                        if writer.send_text(frame).await.is_err() {
                            return Stop::Gone;
                        }
                        self.spec.cursor = chunk.last().map_or(self.spec.cursor, |(seq, _)| *seq);
                    }
                    idle = REMOTE_POLL_MIN;
                    continue;
                }
                Ok(_) => {}
                Err(stop) => return stop,
            }
            monoio::select! {
                inbound = reader.next() => match inbound {
                    WsEvent::Ping(payload) => {
                        if writer.send_pong(payload).await.is_err() {
                            return Stop::Gone;
                        }
                    }
                    WsEvent::Close(_) => return Stop::Close(CLOSE_NORMAL, ""),
                    WsEvent::Closed => return Stop::Gone,
                    _ => {}
                },
                _ = self.spec.shutdown.wait() => return Stop::Close(CLOSE_GOING_AWAY, "going_away"),
                _ = monoio::time::sleep(idle.min(self.until_expiry())) => {
                    if self.until_expiry().is_zero() {
                        return Stop::Close(CLOSE_TOKEN_EXPIRED, "token_expired");
                    }
                }
            }
            idle = (idle * 2).min(REMOTE_POLL_MAX);
        }
    }

    /// Reads after the cursor from the first replica that answers.
    async fn remote_read(&self) -> Result<Vec<(u64, Bytes)>, Stop> {
        let TailSource::Remote {
            transport,
            replicas,
        } = &self.spec.source
        else {
            return Ok(Vec::new());
        };
        let req = PeerRequest::Read {
            session: self.spec.session.clone(),
            after: self.spec.cursor,
            limit: REPLAY_READ,
        };
        let body = peer_rpc::encode(&req);
        for node in replicas {
            let Ok(answer) = transport.request(node, body.clone()).await else {
                continue;
            };
            match peer_rpc::decode::<PeerResponse>(&answer) {
                Some(PeerResponse::Read(Ok((events, _)))) => {
                    return Ok(events
                        .into_iter()
                        .map(|(seq, f)| (seq, Bytes::from(f)))
                        .collect());
                }
                Some(PeerResponse::Read(Err(EngineError::Archived { archived_seq }))) => {
                    return self.cold_read(archived_seq).await;
                }
                Some(PeerResponse::Read(Err(EngineError::ArchiveReadUnavailable))) => {
                    return Err(Stop::Close(CLOSE_INTERNAL, "archive_read_unavailable"));
                }
                _ => continue,
            }
        }
        Err(Stop::Close(CLOSE_INTERNAL, "raft_unavailable"))
    }

    /// Events after the cursor that only the archive holds (§9.5): exactly
    /// `cursor + 1 ..= min(cursor + 1000, archived_seq)`, or the socket closes with
    /// 1011 and the reason (decision 6) — never a silent skip.
    async fn cold_read(&self, archived_seq: u64) -> Result<Vec<(u64, Bytes)>, Stop> {
        let spec = &self.spec;
        spec.cold
            .read_below_hot(
                &spec.session,
                &spec.tenant_id,
                spec.cursor,
                archived_seq,
                REPLAY_READ as u64,
            )
            .await
            .map_err(|reason| Stop::Close(CLOSE_INTERNAL, reason))
    }

    /// One text frame: the event itself for batch_size 1, else a JSON array.
    fn frame<'a>(&self, mut events: impl Iterator<Item = &'a Bytes>) -> Bytes {
        if self.spec.batch_size <= 1 {
            return events.next().cloned().unwrap_or_default();
        }
        let mut out = Vec::with_capacity(256);
        out.push(b'[');
        for (i, e) in events.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e);
        }
        out.push(b']');
        Bytes::from(out)
    }
}
