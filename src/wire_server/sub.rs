//! One subscription of a binary connection: the tail engine's batches
//! ([`crate::tail::Engine`], the same cursor state machine as the WebSocket
//! tails) delivered as `Events` messages of at most `max_batch` events.
//!
//! Authorization and the choice of source are the gateway's
//! ([`Gateway::tail_source`]).

use std::rc::Rc;

use bytes::Bytes;
use starcite_wire::proto::{codes, Event, ServerMsg};

use crate::api::error::ApiError;
use crate::api::principal::AuthContext;
use crate::node::gateway::Gateway;
use crate::tail::{frames_of, Engine};

/// How a subscription ended.
pub(super) enum SubEnd {
    /// Unsubscribed, or the connection is closing: nothing to send.
    Stopped,
    Api(ApiError),
    Protocol(&'static str, &'static str),
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
    let mut engine = Engine::new(
        session,
        tenant_id,
        source,
        subscriber_id,
        gw.cold.clone(),
        cursor,
    );
    loop {
        if stop.is_disconnected() {
            return SubEnd::Stopped;
        }
        let events = monoio::select! {
            batch = engine.next() => match batch {
                Ok(events) => events,
                Err(e) => return SubEnd::Api(e.api_error()),
            },
            _ = stop.recv_async() => return SubEnd::Stopped,
            _ = gw.shutdown.wait() => return SubEnd::Protocol(codes::SHUTTING_DOWN, "this node is shutting down"),
        };
        if !send(id, &events, max_batch, &out, &stop).await {
            return SubEnd::Stopped;
        }
    }
}

/// Sends a batch in messages of at most `max_batch` events and about
/// [`crate::tail::MAX_FRAME_BYTES`]; false once the connection or the
/// subscription is gone.
async fn send(
    id: u64,
    events: &[(u64, Bytes)],
    max_batch: usize,
    out: &flume::Sender<ServerMsg>,
    stop: &flume::Receiver<()>,
) -> bool {
    for chunk in frames_of(events, max_batch) {
        let msg = ServerMsg::Events {
            subscription: id,
            events: chunk
                .iter()
                .map(|(seq, json)| Event {
                    seq: *seq,
                    json: json.to_vec(),
                })
                .collect(),
        };
        let sent = monoio::select! {
            r = out.send_async(msg) => r.is_ok(),
            _ = stop.recv_async() => false,
        };
        if !sent {
            return false;
        }
    }
    true
}
