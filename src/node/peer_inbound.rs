//! What this core does with frames from peers: Raft messages go to the core
//! that owns their group, requests are served from the local replicas, gossip
//! updates the control plane.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use starcite_shards::placement::core_of;

use super::control::ControlState;
use super::gateway::Gateway;
use super::messages::CoreRequest;
use super::peer_rpc::{self, ControlMessage, PeerRequest, PeerResponse};
use crate::cluster::transport::{Inbound, Replier};

pub struct PeerInbound {
    pub cores: Arc<Vec<flume::Sender<CoreRequest>>>,
    pub control: Arc<ControlState>,
    /// This node's lifecycle subscribers (events other nodes publish land here).
    pub lifecycle: Arc<crate::service::lifecycle::LifecycleHub>,
    /// Set once the gateway exists (it holds the transport that holds us).
    pub gateway: RefCell<Option<Rc<Gateway>>>,
}

impl Inbound for PeerInbound {
    fn on_raft(&self, from: &str, messages: Vec<(u32, Vec<u8>)>) {
        let cores = self.cores.len() as u32;
        let mut per_core: HashMap<u32, Vec<(u32, raft::eraftpb::Message)>> = HashMap::new();
        for (group, bytes) in messages {
            if group == super::heartbeats::HEARTBEAT_BATCH_GROUP {
                match super::heartbeats::unpack(&bytes) {
                    Some(beats) => {
                        for (g, m) in beats {
                            per_core.entry(core_of(g, cores)).or_default().push((g, m));
                        }
                    }
                    None => tracing::warn!(peer = from, "malformed heartbeat batch dropped"),
                }
                continue;
            }
            match <raft::eraftpb::Message as protobuf::Message>::parse_from_bytes(&bytes) {
                Ok(msg) => per_core
                    .entry(core_of(group, cores))
                    .or_default()
                    .push((group, msg)),
                Err(e) => {
                    tracing::warn!(peer = from, group, error = %e, "undecodable raft message dropped")
                }
            }
        }
        for (core, messages) in per_core {
            // A full inbox drops the batch: Raft retransmits.
            let _ = self.cores[core as usize].try_send(CoreRequest::Raft { messages });
        }
    }

    fn on_request(&self, from: &str, body: Vec<u8>, reply: Replier) {
        let Some(gateway) = self.gateway.borrow().clone() else {
            reply.send(peer_rpc::encode(&PeerResponse::Unavailable));
            return;
        };
        let Some(request) = peer_rpc::decode_request(&body) else {
            tracing::warn!(peer = from, "undecodable peer request");
            reply.send(peer_rpc::encode(&PeerResponse::Unavailable));
            return;
        };
        let from = from.to_owned();
        monoio::spawn(async move {
            let response = serve(&gateway, request, &from).await;
            reply.send(peer_rpc::encode_response(&response));
        });
    }

    fn on_control(&self, from: &str, body: Vec<u8>) {
        match peer_rpc::decode::<ControlMessage>(&body) {
            Some(ControlMessage::Gossip(g)) if g.from == from => self.control.apply_gossip(g),
            Some(ControlMessage::Lifecycle(body)) => {
                match crate::service::lifecycle::LifecycleEvent::from_body(body) {
                    Some(event) => self.lifecycle.publish(&event),
                    None => tracing::warn!(peer = from, "malformed lifecycle event dropped"),
                }
            }
            _ => tracing::warn!(peer = from, "unexpected control message"),
        }
    }

    fn on_peer_state(&self, peer: &str, connected: bool) {
        self.control.peer_connection(peer, connected);
    }
}

async fn serve(gateway: &Gateway, request: PeerRequest, from: &str) -> PeerResponse {
    let session = match &request {
        PeerRequest::Propose { proposal } => Some(proposal.session().to_owned()),
        PeerRequest::Info { session }
        | PeerRequest::Read { session, .. }
        | PeerRequest::Get { session } => Some(session.clone()),
        PeerRequest::List { .. } => None,
    };
    // Only a replica may answer for a session (a non-replica knows nothing).
    if let Some(s) = session {
        if !gateway.topo.replicates(gateway.topo.group(&s)) {
            return match request {
                PeerRequest::Propose { .. } => {
                    PeerResponse::Command(Err(starcite_shards::EngineError::NotLeader {
                        leader: None,
                    }))
                }
                _ => PeerResponse::Unavailable,
            };
        }
    }
    match request {
        PeerRequest::Propose { proposal } => {
            match gateway.local_propose(proposal, Some(from)).await {
                Ok(result) => PeerResponse::Command(result),
                Err(_) => PeerResponse::Unavailable,
            }
        }
        PeerRequest::Info { session } => match gateway.local_info(&session).await {
            Ok(info) => PeerResponse::Info(info),
            Err(_) => PeerResponse::Unavailable,
        },
        PeerRequest::Read {
            session,
            after,
            limit,
        } => match gateway.local_read(session, after, limit).await {
            Ok(result) => PeerResponse::Read(result.map(|r| {
                let events = r
                    .events
                    .into_iter()
                    .map(|(seq, f)| (seq, String::from_utf8_lossy(&f).into_owned()))
                    .collect();
                (events, r.last_seq)
            })),
            Err(_) => PeerResponse::Unavailable,
        },
        PeerRequest::List {
            cursor,
            limit,
            tenant,
            filters,
            archived,
        } => {
            match gateway
                .local_list(cursor, limit.min(1_001), tenant, filters, archived)
                .await
            {
                Ok(rows) => PeerResponse::List(rows),
                Err(_) => PeerResponse::Unavailable,
            }
        }
        PeerRequest::Get { session } => match gateway.local_row(&session).await {
            Ok(row) => PeerResponse::Row(row),
            Err(_) => PeerResponse::Unavailable,
        },
    }
}
