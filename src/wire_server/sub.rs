//! One subscription of a binary connection: the HTTP tail's semantics (replay
//! from the cursor, then live, in order and without gaps) delivered as
//! `Events` messages instead of WebSocket frames.
//!
//! Authorization and the choice of source are the gateway's
//! ([`Gateway::tail_source`]); the owner core's `Subscribe`/`Read` requests
//! and the peers' `Read` are the ones HTTP tails use.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use starcite_wire::proto::{codes, Event, ServerMsg};

use crate::api::error::ApiError;
use crate::api::principal::AuthContext;
use crate::node::gateway::Gateway;
use crate::node::messages::{CoreRequest, LiveEvent, Subscriber, SUBSCRIBER_DEPTH};
use crate::node::peer_rpc::{self, PeerRequest, PeerResponse};
use crate::node::tail::TailSource;

/// Events per replay read.
const REPLAY_READ: usize = 1_000;
/// Timeout of one request to the owner core.
const OWNER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of events per `Events` message (unless one event is larger).
const MAX_EVENTS_BYTES: usize = 1 << 20;
const REMOTE_POLL_MIN: Duration = Duration::from_millis(10);
const REMOTE_POLL_MAX: Duration = Duration::from_millis(200);

/// How a subscription ended.
pub(super) enum SubEnd {
    /// Unsubscribed, or the connection is closing: nothing to send.
    Stopped,
    Api(ApiError),
    Protocol(&'static str, &'static str),
}

struct Sub {
    id: u64,
    session: String,
    /// The session's tenant (rendered into events read from the archive).
    tenant_id: String,
    cursor: u64,
    max_batch: usize,
    out: flume::Sender<ServerMsg>,
    stop: flume::Receiver<()>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_subscription(
    gw: Rc<Gateway>,
    auth: Rc<AuthContext>,
    session: String,
    cursor: u64,
    max_batch: usize,
    id: u64,
    out: flume::Sender<ServerMsg>,
    stop: flume::Receiver<()>,
) -> SubEnd {
    let (source, subscriber_id, tenant_id) = match gw.tail_source(&auth, &session).await {
        Ok(v) => v,
        Err(e) => return SubEnd::Api(e),
    };
    let mut sub = Sub {
        id,
        session,
        tenant_id,
        cursor,
        max_batch,
        out,
        stop,
    };
    match source {
        TailSource::Local { owner } => {
            let end = sub.run_local(&gw, &owner, subscriber_id).await;
            let _ = owner.try_send(CoreRequest::Unsubscribe {
                session: sub.session.clone(),
                id: subscriber_id,
            });
            end
        }
        TailSource::Remote {
            transport,
            replicas,
        } => sub.run_remote(&gw, &transport, &replicas).await,
    }
}

async fn ask<T>(
    owner: &flume::Sender<CoreRequest>,
    make: impl FnOnce(flume::Sender<T>) -> CoreRequest,
) -> Result<T, SubEnd> {
    let (tx, rx) = flume::bounded(1);
    let exchange = async {
        owner.send_async(make(tx)).await.ok()?;
        rx.recv_async().await.ok()
    };
    match monoio::time::timeout(OWNER_TIMEOUT, exchange).await {
        Ok(Some(v)) => Ok(v),
        _ => Err(SubEnd::Api(ApiError::raft_unavailable())),
    }
}

impl Sub {
    fn stopped(&self) -> bool {
        self.stop.is_disconnected()
    }

    /// Sends events (seq-contiguous after the cursor) in messages of at most
    /// `max_batch` events and about `MAX_EVENTS_BYTES`.
    async fn send(&mut self, events: &[(u64, Bytes)]) -> Result<(), SubEnd> {
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == self.cursor + 1 + i as u64);
        if !contiguous {
            return Err(SubEnd::Api(ApiError::event_gap_detected()));
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (seq, frame) in events {
            if !batch.is_empty()
                && (batch.len() == self.max_batch || bytes + frame.len() > MAX_EVENTS_BYTES)
            {
                self.flush(&mut batch).await?;
                bytes = 0;
            }
            bytes += frame.len();
            batch.push(Event {
                seq: *seq,
                json: frame.to_vec(),
            });
        }
        self.flush(&mut batch).await
    }

    async fn flush(&mut self, batch: &mut Vec<Event>) -> Result<(), SubEnd> {
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        let msg = ServerMsg::Events {
            subscription: self.id,
            events: std::mem::take(batch),
        };
        let sent = monoio::select! {
            r = self.out.send_async(msg) => r.is_ok(),
            _ = self.stop.recv_async() => false,
        };
        if !sent {
            return Err(SubEnd::Stopped);
        }
        self.cursor = last;
        Ok(())
    }

    async fn run_local(
        &mut self,
        gw: &Gateway,
        owner: &flume::Sender<CoreRequest>,
        subscriber_id: u64,
    ) -> SubEnd {
        let mut live: Option<flume::Receiver<LiveEvent>> = None;
        loop {
            if self.stopped() {
                return SubEnd::Stopped;
            }
            if live.is_none() {
                match self.subscribe(owner, subscriber_id).await {
                    Ok(rx) => live = Some(rx),
                    Err(end) => return end,
                }
            }
            // Replay everything after the cursor.
            loop {
                let (session, after) = (self.session.clone(), self.cursor);
                let read = match ask(owner, |reply| CoreRequest::Read {
                    session,
                    after,
                    limit: REPLAY_READ,
                    reply,
                })
                .await
                {
                    Ok(Ok(r)) => r.events,
                    Ok(Err(starcite_shards::EngineError::Archived { archived_seq })) => {
                        match self.cold_read(gw, archived_seq).await {
                            Ok(events) => events,
                            Err(end) => return end,
                        }
                    }
                    Ok(Err(starcite_shards::EngineError::ArchiveReadUnavailable)) => {
                        return SubEnd::Api(ApiError::archive_read_unavailable())
                    }
                    Ok(Err(_)) => return SubEnd::Api(ApiError::raft_unavailable()),
                    Err(end) => return end,
                };
                if read.is_empty() {
                    break;
                }
                if let Err(end) = self.send(&read).await {
                    return end;
                }
            }
            // Live, until a gap or a drop sends us back to replay.
            let Some(rx) = live.clone() else { continue };
            loop {
                let event = monoio::select! {
                    e = rx.recv_async() => e,
                    _ = self.stop.recv_async() => return SubEnd::Stopped,
                    _ = gw.shutdown.wait() => return SubEnd::Protocol(codes::SHUTTING_DOWN, "this node is shutting down"),
                };
                match event {
                    Ok(e) if e.seq <= self.cursor => {}
                    Ok(e) if e.seq == self.cursor + 1 => {
                        // Take whatever else is already queued, in one message.
                        let mut events = vec![(e.seq, e.frame)];
                        while events.len() < self.max_batch {
                            match rx.try_recv() {
                                Ok(n) => events.push((n.seq, n.frame)),
                                Err(_) => break,
                            }
                        }
                        let start = events.partition_point(|(s, _)| *s <= self.cursor);
                        let run = events[start..]
                            .iter()
                            .enumerate()
                            .take_while(|(i, (s, _))| *s == self.cursor + 1 + *i as u64)
                            .count();
                        let gap = start + run < events.len();
                        if let Err(end) = self.send(&events[start..start + run]).await {
                            return end;
                        }
                        if gap {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {
                        live = None;
                        break;
                    }
                }
            }
        }
    }

    /// Events below the hot tier, from the archive (docs/archive.md): exactly
    /// the next range after the cursor, or the error that ends the subscription.
    async fn cold_read(
        &self,
        gw: &Gateway,
        archived_seq: u64,
    ) -> Result<Vec<(u64, Bytes)>, SubEnd> {
        gw.cold
            .read_below_hot(
                &self.session,
                &self.tenant_id,
                self.cursor,
                archived_seq,
                REPLAY_READ as u64,
            )
            .await
            .map_err(|reason| {
                SubEnd::Api(if reason == "event_gap_detected" {
                    ApiError::event_gap_detected()
                } else {
                    ApiError::archive_read_unavailable()
                })
            })
    }

    async fn subscribe(
        &self,
        owner: &flume::Sender<CoreRequest>,
        subscriber_id: u64,
    ) -> Result<flume::Receiver<LiveEvent>, SubEnd> {
        let deadline = std::time::Instant::now() + OWNER_TIMEOUT;
        loop {
            let (tx, rx) = flume::bounded(SUBSCRIBER_DEPTH);
            let subscriber = Subscriber {
                id: subscriber_id,
                tx,
            };
            let session = self.session.clone();
            let info = ask(owner, |reply| CoreRequest::Subscribe {
                session,
                subscriber,
                reply,
            })
            .await?;
            if info.is_some() {
                return Ok(rx);
            }
            if std::time::Instant::now() >= deadline {
                return Err(SubEnd::Api(ApiError::session_not_found()));
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run_remote(
        &mut self,
        gw: &Gateway,
        transport: &crate::cluster::transport::Transport,
        replicas: &[String],
    ) -> SubEnd {
        let mut idle = REMOTE_POLL_MIN;
        loop {
            if self.stopped() {
                return SubEnd::Stopped;
            }
            let req = PeerRequest::Read {
                session: self.session.clone(),
                after: self.cursor,
                limit: REPLAY_READ,
            };
            let body = peer_rpc::encode(&req);
            let mut events = None;
            for node in replicas {
                let Ok(answer) = transport.request(node, body.clone()).await else {
                    continue;
                };
                match peer_rpc::decode::<PeerResponse>(&answer) {
                    Some(PeerResponse::Read(Ok((ev, _)))) => {
                        events = Some(ev);
                        break;
                    }
                    Some(PeerResponse::Read(Err(starcite_shards::EngineError::Archived {
                        archived_seq,
                    }))) => match self.cold_read(gw, archived_seq).await {
                        Ok(cold) => {
                            events = Some(
                                cold.into_iter()
                                    .map(|(s, f)| (s, String::from_utf8_lossy(&f).into_owned()))
                                    .collect(),
                            );
                            break;
                        }
                        Err(end) => return end,
                    },
                    Some(PeerResponse::Read(Err(
                        starcite_shards::EngineError::ArchiveReadUnavailable,
                    ))) => return SubEnd::Api(ApiError::archive_read_unavailable()),
                    _ => continue,
                }
            }
            let Some(events) = events else {
                return SubEnd::Api(ApiError::raft_unavailable());
            };
            if !events.is_empty() {
                let events: Vec<(u64, Bytes)> = events
                    .into_iter()
                    .map(|(s, f)| (s, Bytes::from(f)))
                    .collect();
                if let Err(end) = self.send(&events).await {
                    return end;
                }
                idle = REMOTE_POLL_MIN;
                continue;
            }
            monoio::select! {
                _ = monoio::time::sleep(idle) => {}
                _ = self.stop.recv_async() => return SubEnd::Stopped,
                _ = gw.shutdown.wait() => return SubEnd::Protocol(codes::SHUTTING_DOWN, "this node is shutting down"),
            }
            idle = (idle * 2).min(REMOTE_POLL_MAX);
        }
    }
}
