//! The HTTP routes of the public API on one core (contract §1, §3, §5).
//!
//! The gateway validates and renders on the core the connection landed on, then
//! sends one message to the core that owns the session's group. The happy path
//! of an append is one cross-core hop there and one back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starcite_shards::placement::core_of;
use starcite_shards::routing::{Route, Step};
use starcite_shards::shard::{ListRow, Proposal};
use starcite_shards::state::machine::Outcome;
use starcite_shards::EngineError;

use super::control::{routing_candidates, ControlState};
use super::messages::{CoreRequest, Reply as ReplyTx};
use super::peer_rpc::{self, PeerRequest, PeerResponse};
use super::shutdown::Shutdown;
use super::stages::{self, Stage};
use super::topology::Topology;
use crate::api::error::ApiError;
use crate::api::principal::{AuthContext, Principal};
use crate::api::query::{list_params, parse_query, tail_params};
use crate::api::render::{
    render_append_result, render_event_body, render_session_page, render_session_row, SessionView,
};
use crate::api::validate::{fingerprint, parse_body, validate_append};
use crate::auth::{find_token, AuthFailure, AuthService};
use crate::cluster::transport::{Transport, TransportError};
use crate::http::{Handler, Reply, Request, Response};
use crate::service::lifecycle::LifecycleEvent;
use crate::service::sessions::{row_principal, row_view};
use crate::tail::{run_tail, Engine, TailSource, TailSpec};

/// Consensus command timeout (contract §12.3).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Timeout of a read or lookup on another core.
pub const READ_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Bound on routing a command to its leader, retries included: a write that
/// cannot reach a quorum answers 503 within this.
pub const ROUTE_DEADLINE: Duration = Duration::from_millis(4_000);
/// Pause before retrying when no leader is known (election in progress).
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(50);

/// Everything a core's gateway needs; shared by its connection tasks.
pub struct Gateway {
    pub core: u32,
    pub cores: Arc<Vec<flume::Sender<CoreRequest>>>,
    pub topo: Arc<Topology>,
    pub control: Arc<ControlState>,
    /// This core's connections to the other nodes (None on a one-node cluster).
    pub transport: Option<Rc<Transport>>,
    pub shutdown: Shutdown,
    pub telemetry: bool,
    pub next_subscriber: Cell<u64>,
    /// Last known leader node per group (corrected by NotLeader answers).
    pub leader_hints: RefCell<HashMap<u32, String>>,
    /// JWT verification (None in auth mode `none`).
    pub auth: Option<Arc<AuthService>>,
    /// Requests by route and status, shared by every core.
    pub requests: Arc<super::metrics::RequestCounters>,
    /// Reads below the hot tier (archive + read cache) and archive counters.
    pub cold: crate::archive::cold::ColdTier,
    /// This node's session lifecycle subscribers (`service::lifecycle`).
    pub lifecycle: Arc<crate::service::lifecycle::LifecycleHub>,
}

/// Who is calling, and until when (token `exp`, Unix seconds).
struct Caller {
    ctx: AuthContext,
    expires_at: Option<u64>,
}

/// `STARCITE_TEST_PANIC_ROUTE=1` (tests only, off by default): `GET /__test/panic`
/// panics inside the handler, to prove a panic costs one request, not the core.
fn test_panic_route_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED
        .get_or_init(|| std::env::var("STARCITE_TEST_PANIC_ROUTE").is_ok_and(|v| v.trim() == "1"))
}

impl Handler for Gateway {
    async fn handle(&self, req: Request) -> Reply {
        if req.path == "/__test/panic" && test_panic_route_enabled() {
            panic!("test panic route");
        }
        let route = route_name(&req);
        if req.method == "OPTIONS" {
            let reply = Reply::Http(cors_preflight(&req));
            self.requests.count(route, 204);
            return reply;
        }
        let reply = match self.route(req).await {
            Ok(reply) => reply,
            Err(Failure::Api(e)) => Reply::Http(error_response(&e)),
            Err(Failure::Auth(f)) => Reply::Http(
                error_response(&f.api_error())
                    .with_header("www-authenticate", f.www_authenticate()),
            ),
        };
        let reply = match reply {
            Reply::Http(r) => Reply::Http(with_cors(r)),
            ws => ws,
        };
        let status = match &reply {
            Reply::Http(r) => r.status,
            Reply::WebSocket(_) => 101,
        };
        self.requests.count(route, status);
        reply
    }
}

/// CORS on every HTTP response (upstream's CORSPlug with origin `*`, no
/// credentials, every header exposed).
pub fn with_cors(r: Response) -> Response {
    r.with_header("access-control-allow-origin", "*")
        .with_header("access-control-expose-headers", "*")
}

/// A CORS preflight (any `OPTIONS` request): 204, empty, the allowed methods
/// and the requested headers echoed back.
fn cors_preflight(req: &Request) -> Response {
    let requested = req
        .header("access-control-request-headers")
        .unwrap_or("")
        .to_owned();
    with_cors(Response::new(204))
        .with_header("access-control-max-age", "1728000")
        .with_header("access-control-allow-headers", requested)
        .with_header(
            "access-control-allow-methods",
            "GET,POST,PUT,PATCH,DELETE,OPTIONS",
        )
}

/// The `STARCITE_OPS_PORT` listener: health and metrics only (plaintext, no
/// authentication, like the same routes on the API port).
pub struct OpsHandler(pub Rc<Gateway>);

impl Handler for OpsHandler {
    async fn handle(&self, req: Request) -> Reply {
        let gw = &self.0;
        let method = if req.method == "HEAD" {
            "GET"
        } else {
            req.method.as_str()
        };
        let answer = match (method, req.path.as_str()) {
            ("GET", "/health/live") => json(200, r#"{"status":"ok"}"#.to_owned()),
            ("GET", "/health/ready") => gw.health_ready(),
            ("GET", "/metrics") => gw.metrics().await,
            _ => Err(ApiError::not_found()),
        };
        let reply = answer.unwrap_or_else(|e| Reply::Http(error_response(&e)));
        let status = match &reply {
            Reply::Http(r) => r.status,
            Reply::WebSocket(_) => 101,
        };
        gw.requests.count(route_name(&req), status);
        reply
    }
}

/// The metrics label of a request's route.
fn route_name(req: &Request) -> &'static str {
    let p = req.path.as_str();
    let v1 = p.strip_prefix("/v1/sessions/");
    match p {
        "/v1/sessions" if req.method == "POST" => "create",
        "/v1/sessions" => "list",
        _ if v1.is_some_and(|r| r.ends_with("/append")) => "append",
        _ if v1.is_some_and(|r| r.ends_with("/tail")) => "tail",
        _ if v1.is_some_and(|r| r.ends_with("/archive") || r.ends_with("/unarchive")) => "archive",
        _ if v1.is_some_and(|r| !r.contains('/')) && req.method == "PATCH" => "patch",
        _ if v1.is_some_and(|r| !r.contains('/')) => "get",
        "/v1/socket/websocket" => "socket",
        _ if p.starts_with("/health/") => "health",
        "/metrics" => "metrics",
        _ => "other",
    }
}

/// Why a request failed: an API error, or authentication (401 + WWW-Authenticate).
enum Failure {
    Api(ApiError),
    Auth(AuthFailure),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

pub fn error_response(e: &ApiError) -> Response {
    Response::json(e.status, e.to_json())
}

fn json(status: u16, body: String) -> Result<Reply, ApiError> {
    Ok(Reply::Http(Response::json(status, Bytes::from(body))))
}

impl Gateway {
    async fn route(&self, req: Request) -> Result<Reply, Failure> {
        let method = if req.method == "HEAD" {
            "GET"
        } else {
            req.method.as_str()
        };
        let segments: Vec<&str> = req.path.split('/').skip(1).collect();
        match (method, segments.as_slice()) {
            ("GET", ["health", "live"]) => Ok(json(200, r#"{"status":"ok"}"#.to_owned())?),
            ("GET", ["health", "ready"]) => Ok(self.health_ready()?),
            ("GET", ["metrics"]) if self.telemetry => Ok(self.metrics().await?),
            ("GET", ["v1", "socket", "websocket"]) => Ok(crate::phoenix::upgrade(&req).await),
            (_, ["v1", "sessions", ..]) => {
                let route = self
                    .v1_route(method, &segments[2..])
                    .ok_or_else(ApiError::not_found)?;
                check_accept(&req)?;
                let caller = self.authenticate(&req).await.map_err(Failure::Auth)?;
                let auth = &caller.ctx;
                Ok(match route {
                    V1::Create => self.create(&req, auth).await?,
                    V1::List => self.list(&req, auth).await?,
                    V1::Append(id) => self.append(&req, auth, id).await?,
                    V1::Tail(id) => self.tail(&req, &caller, id).await?,
                    V1::Get(id) => self.show(auth, &id).await?,
                    V1::Patch(id) => {
                        let row = self.patch_session(auth, &id, parse_body(&req.body)).await?;
                        entry_reply(&row)?
                    }
                    V1::Archive(id, archived) => {
                        entry_reply(&self.set_archived(auth, &id, archived).await?)?
                    }
                })
            }
            _ => Err(ApiError::not_found().into()),
        }
    }

    /// Contract §2: the fixed principal in mode `none`, else a verified JWT
    /// (header, or `access_token` on WebSocket upgrades only).
    async fn authenticate(&self, req: &Request) -> Result<Caller, AuthFailure> {
        let Some(service) = &self.auth else {
            return Ok(Caller {
                ctx: AuthContext::none(),
                expires_at: None,
            });
        };
        let upgrade = req.is_websocket_upgrade();
        let query = req.query.as_deref().map(|q| parse_query(q.as_bytes()));
        let query_token = query.as_ref().and_then(crate::api::query::access_token);
        let token = find_token(&req.headers, query_token.as_deref(), upgrade)?;
        let authed = service.authenticate(token).await?;
        Ok(Caller {
            ctx: authed.context,
            expires_at: Some(authed.expires_at),
        })
    }

    fn v1_route(&self, method: &str, rest: &[&str]) -> Option<V1> {
        match (method, rest) {
            ("POST", []) => Some(V1::Create),
            ("GET", []) => Some(V1::List),
            ("POST", [id, "append"]) => decode_id(id).map(V1::Append),
            ("GET", [id, "tail"]) => decode_id(id).map(V1::Tail),
            ("GET", [id]) => decode_id(id).map(V1::Get),
            ("PATCH", [id]) => decode_id(id).map(V1::Patch),
            ("POST", [id, "archive"]) => decode_id(id).map(|id| V1::Archive(id, true)),
            ("POST", [id, "unarchive"]) => decode_id(id).map(|id| V1::Archive(id, false)),
            _ => None,
        }
    }

    pub(crate) fn owner(&self, session: &str) -> u32 {
        core_of(self.topo.group(session), self.cores.len() as u32)
    }

    /// Sends a request to a core and awaits its answer, both within `timeout`.
    pub(crate) async fn ask<T>(
        &self,
        core: u32,
        timeout: Duration,
        make: impl FnOnce(ReplyTx<T>) -> CoreRequest,
    ) -> Result<T, ApiError> {
        let (tx, rx) = flume::bounded(1);
        let inbox = &self.cores[core as usize];
        let exchange = async {
            inbox
                .send_async(make(tx))
                .await
                .map_err(|_| ApiError::raft_unavailable())?;
            rx.recv_async()
                .await
                .map_err(|_| ApiError::raft_unavailable())
        };
        monoio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ApiError::raft_timeout())?
    }

    async fn create(&self, req: &Request, auth: &AuthContext) -> Result<Reply, ApiError> {
        let (_, body) = self.create_session(auth, parse_body(&req.body)).await?;
        json(201, body)
    }

    /// Publishes lifecycle events to this node's subscribers and sends them
    /// to every other node (best effort: see `service::lifecycle`).
    pub fn emit_lifecycle(&self, events: &[LifecycleEvent]) {
        for event in events {
            self.lifecycle.publish(event);
            if let Some(transport) = &self.transport {
                let body =
                    peer_rpc::encode(&peer_rpc::ControlMessage::Lifecycle(event.body.clone()));
                for peer in self.topo.peers() {
                    transport.send_control(peer, body.clone());
                }
            }
        }
    }

    /// Proposes on this node's replica of the session's group. `via` is the
    /// node whose gateway received the client's request (`None`: this one).
    pub async fn local_propose(
        &self,
        proposal: Proposal,
        via: Option<&str>,
    ) -> Result<Result<Outcome, EngineError>, ApiError> {
        if !self.topo.replicates(self.topo.group(proposal.session())) {
            return Ok(Err(EngineError::NotLeader { leader: None }));
        }
        let core = self.owner(proposal.session());
        let origin = self.topo.slot(via.unwrap_or(&self.topo.me));
        let since = Instant::now();
        let answer = self
            .ask(core, COMMAND_TIMEOUT, |reply| CoreRequest::Propose {
                proposal,
                reply,
                since,
                origin,
            })
            .await;
        stages::record(Stage::Owner, since.elapsed());
        answer
    }

    /// Sends a request to a peer; transport failures become `None`.
    pub(crate) async fn peer(&self, node: &str, req: &PeerRequest) -> Option<PeerResponse> {
        self.peer_call(node, req).await.ok()
    }

    /// Sends a request to a peer, telling a request that never left (safe to
    /// send elsewhere) from one whose fate is unknown.
    async fn peer_call(&self, node: &str, req: &PeerRequest) -> Result<PeerResponse, Delivery> {
        let Some(transport) = self.transport.as_ref() else {
            return Err(Delivery::NotSent);
        };
        match transport.request(node, peer_rpc::encode_request(req)).await {
            Ok(body) => peer_rpc::decode_response(&body).ok_or(Delivery::Unknown),
            Err(
                TransportError::UnknownPeer
                | TransportError::NotConnected
                | TransportError::Overloaded,
            ) => Err(Delivery::NotSent),
            Err(TransportError::TooLarge) => Err(Delivery::NotSent),
            Err(TransportError::Timeout | TransportError::Closed) => Err(Delivery::Unknown),
        }
    }

    /// Routes a command to its group's leader: the local replica, a cached
    /// hint, or the replicas in routing order, following NotLeader hints.
    /// Only answers that prove the command was NOT proposed are retried.
    pub(crate) async fn command(
        &self,
        session: &str,
        proposal: Proposal,
    ) -> Result<Outcome, ApiError> {
        let group = self.topo.group(session);
        let deadline = Instant::now() + ROUTE_DEADLINE;
        // Fast path, no control-plane lookups: the cached leader, else the
        // local replica.
        let hint = self.leader_hints.borrow().get(&group).cloned();
        let preferred = hint.or_else(|| self.topo.replicates(group).then(|| self.topo.me.clone()));
        // Whether any replica named a leader: if none ever did, the group has
        // no quorum reachable from here (`raft_unavailable`), else it is slow.
        let mut leader_seen = false;
        let mut redirect = None;
        if let Some(target) = preferred {
            match self.attempt(group, &target, &proposal).await? {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::Redirect(leader) => {
                    leader_seen |= leader.is_some();
                    redirect = leader;
                }
            }
        }
        let mut candidates = routing_candidates(&self.control, self.topo.replicas(group));
        if self.topo.replicates(group) {
            candidates.retain(|n| *n != self.topo.me);
            candidates.insert(0, self.topo.me.clone());
        }
        let Some(mut route) = Route::new(candidates, redirect) else {
            return Err(ApiError::raft_unavailable());
        };
        loop {
            if Instant::now() >= deadline {
                return Err(if leader_seen {
                    ApiError::raft_timeout()
                } else {
                    ApiError::raft_unavailable()
                });
            }
            let target = route.target().clone();
            let step = match self.attempt(group, &target, &proposal).await? {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::Redirect(leader) => {
                    leader_seen |= leader.is_some();
                    route.redirect(leader)
                }
            };
            if step == Step::Backoff {
                monoio::time::sleep(NO_LEADER_BACKOFF).await;
            }
        }
    }

    /// Sends a command to one node. A redirect means it was provably not
    /// proposed there (NotLeader, or the request never left); anything of
    /// unknown fate ends the route with 503 (the client retries, §6.7).
    async fn attempt(
        &self,
        group: u32,
        target: &str,
        proposal: &Proposal,
    ) -> Result<Attempt, ApiError> {
        let answer = if target == self.topo.me {
            Some(self.local_propose(proposal.clone(), None).await?)
        } else {
            let since = Instant::now();
            let answer = self
                .peer_call(
                    target,
                    &PeerRequest::Propose {
                        proposal: proposal.clone(),
                    },
                )
                .await;
            stages::record(Stage::Forward, since.elapsed());
            match answer {
                Ok(PeerResponse::Command(r)) => Some(r),
                Err(Delivery::NotSent) => None,
                Ok(_) | Err(Delivery::Unknown) => return Err(ApiError::raft_timeout()),
            }
        };
        match answer {
            Some(Ok(outcome)) => {
                if self.leader_hints.borrow().get(&group).map(String::as_str) != Some(target) {
                    self.leader_hints
                        .borrow_mut()
                        .insert(group, target.to_owned());
                }
                Ok(Attempt::Done(outcome))
            }
            Some(Err(EngineError::NotLeader { leader })) => {
                let leader = leader
                    .and_then(|id| self.topo.node_of(id))
                    .map(str::to_owned);
                if leader.is_none() {
                    self.leader_hints.borrow_mut().remove(&group);
                }
                Ok(Attempt::Redirect(leader))
            }
            None => Ok(Attempt::Redirect(None)),
            Some(Err(e)) => Err(engine_error(e)),
        }
    }

    async fn append(
        &self,
        req: &Request,
        auth: &AuthContext,
        id: String,
    ) -> Result<Reply, ApiError> {
        let (seq, last_seq, deduped) = self.append_body(auth, id, parse_body(&req.body)).await?;
        json(201, render_append_result(seq, last_seq, deduped))
    }

    /// An append from a parsed body (HTTP and the binary protocol):
    /// `(seq, last_seq, deduped)`. Checks in the contract's order (§3).
    pub async fn append_body(
        &self,
        auth: &AuthContext,
        id: String,
        body: Result<serde_json::Value, ApiError>,
    ) -> Result<(u64, u64, bool), ApiError> {
        let parse_started = Instant::now();
        if !auth.lock_allows(&id) {
            return Err(ApiError::forbidden_session());
        }
        if !auth.none_mode {
            // §3 order: lookup (404) → scope → lock → tenant, before the body.
            let info = self.lookup(&id).await?;
            if !auth.allows("session:append") {
                return Err(ApiError::forbidden_scope());
            }
            if info.tenant_id != auth.principal.tenant_id {
                return Err(ApiError::forbidden_tenant());
            }
        }
        // Validate first so the happy path is one hop; a client error is only
        // reported once the session is known to exist (404 precedes 400, §3).
        let validated = body.and_then(|body| validate_append(&body, auth));
        let input = match validated {
            Ok(input) => input,
            Err(e) => {
                if auth.none_mode {
                    self.lookup(&id).await?;
                }
                return Err(e);
            }
        };
        let proposal = Proposal::Append {
            session: id.clone(),
            producer_id: input.producer_id.clone(),
            producer_seq: input.producer_seq,
            fingerprint: fingerprint(&input).to_le_bytes(),
            expected_seq: input.expected_seq,
            body: render_event_body(&input, &auth.principal.tenant_id),
        };
        stages::record(Stage::Parse, parse_started.elapsed());
        match self.command(&id, proposal).await? {
            Outcome::Appended {
                seq,
                last_seq,
                deduped,
            } => Ok((seq, last_seq, deduped)),
            _ => Err(ApiError::internal_error()),
        }
    }

    /// The node that last answered a command for the session's group (the
    /// leader, as far as this core knows).
    pub fn leader_node(&self, session: &str) -> Option<String> {
        let group = self.topo.group(session);
        self.leader_hints.borrow().get(&group).cloned()
    }

    async fn list(&self, req: &Request, auth: &AuthContext) -> Result<Reply, ApiError> {
        let query = parse_query(req.query.as_deref().unwrap_or("").as_bytes());
        let params = list_params(&query)?;
        let page = self.list_sessions(auth, &params).await?;
        let principals: Vec<Principal> = page.rows.iter().map(row_principal).collect();
        let views: Vec<SessionView<'_>> = page
            .rows
            .iter()
            .zip(&principals)
            .map(|(r, p)| row_view(r, p))
            .collect();
        json(
            200,
            render_session_page(&views, page.next_cursor.as_deref()),
        )
    }

    async fn show(&self, auth: &AuthContext, id: &str) -> Result<Reply, ApiError> {
        entry_reply(&self.get_session(auth, id).await?)
    }

    pub async fn local_read(
        &self,
        session: String,
        after: u64,
        limit: usize,
    ) -> Result<Result<starcite_shards::shard::ReadResult, EngineError>, ApiError> {
        let core = self.owner(&session);
        self.ask(core, READ_TIMEOUT, |reply| CoreRequest::Read {
            session,
            after,
            limit,
            reply,
        })
        .await
    }

    async fn tail(&self, req: &Request, caller: &Caller, id: String) -> Result<Reply, ApiError> {
        let auth = &caller.ctx;
        if !req.is_websocket_upgrade() {
            return Err(ApiError::invalid_websocket_upgrade());
        }
        let query = parse_query(req.query.as_deref().unwrap_or("").as_bytes());
        let params = tail_params(&query)?;
        let (source, subscriber_id, tenant_id) = self.tail_source(auth, &id).await?;
        let engine = Engine::new(
            id,
            tenant_id,
            source,
            subscriber_id,
            self.cold.clone(),
            params.cursor,
        );
        let spec = TailSpec {
            engine,
            batch_size: params.batch_size as usize,
            shutdown: self.shutdown.clone(),
            expires_at: caller.expires_at,
        };
        Ok(Reply::WebSocket(Box::new(move |ws| {
            Box::pin(run_tail(ws, spec))
        })))
    }

    /// The authorization checks of a tail (§3 order) and where its events
    /// come from, with a fresh subscriber id and the session's tenant (HTTP
    /// tails and binary subscriptions).
    pub async fn tail_source(
        &self,
        auth: &AuthContext,
        id: &str,
    ) -> Result<(TailSource, u64, String), ApiError> {
        let id = id.to_owned();
        if !auth.lock_allows(&id) {
            return Err(ApiError::forbidden_session());
        }
        let info = self.lookup(&id).await?;
        if !auth.allows("session:read") {
            return Err(ApiError::forbidden_scope());
        }
        if !auth.none_mode && info.tenant_id != auth.principal.tenant_id {
            return Err(ApiError::forbidden_tenant());
        }
        let sub_id = self.next_subscriber.get();
        self.next_subscriber.set(sub_id + 1);
        let group = self.topo.group(&id);
        let source = if self.topo.replicates(group) {
            TailSource::Local {
                owner: self.cores[self.owner(&id) as usize].clone(),
            }
        } else {
            let replicas = routing_candidates(&self.control, self.topo.replicas(group));
            match &self.transport {
                Some(t) => TailSource::Remote {
                    transport: t.clone(),
                    replicas,
                },
                None => return Err(ApiError::raft_unavailable()),
            }
        };
        Ok((
            source,
            (u64::from(self.core) << 48) | sub_id,
            info.tenant_id,
        ))
    }

    /// Readiness per contract §5.5.
    fn health_ready(&self) -> Result<Reply, ApiError> {
        let writer = self.topo.is_writer();
        let mode = if writer { "write_node" } else { "router_node" };
        let not_ready = |reason: &str, detail: Option<serde_json::Value>| {
            let mut body =
                serde_json::json!({"status": "starting", "mode": mode, "reason": reason});
            if let Some(d) = detail {
                body["detail"] = d;
            }
            json(503, body.to_string())
        };
        if self.shutdown.is_fired() {
            return not_ready("shutting_down", None);
        }
        if writer {
            if self.control.is_drained(&self.topo.me) {
                return not_ready("draining", None);
            }
            if !self.control.local_consensus_ready() {
                return not_ready("raft_sync", Some(self.sync_detail()));
            }
            if !self.control.ready_nodes().contains(&self.topo.me) {
                return not_ready("observer_sync", None);
            }
        } else if self.control.ready_nodes().len() < self.topo.writers.len() / 2 + 1 {
            let detail = serde_json::json!({"startup_mode": "router", "consensus_ready?": false, "probe_result": "quorum_unreachable"});
            return not_ready("router_sync", Some(detail));
        }
        json(
            200,
            serde_json::json!({"status": "ok", "mode": mode}).to_string(),
        )
    }

    /// The `detail` of a `raft_sync` answer (contract §5.5).
    fn sync_detail(&self) -> serde_json::Value {
        let checked = (0..self.topo.num_groups)
            .filter(|g| self.topo.replicates(*g))
            .count();
        let mut detail = serde_json::json!({
            "startup_mode": "write",
            "consensus_ready?": false,
            "consensus_probe_fresh?": true,
            "consensus_probe_age_ms": 0,
            "checked_groups": checked,
        });
        if let Some((core, age)) = self.control.stalled_core(super::control::now_ms()) {
            // A core stopped reporting: stalled or dead, so nothing it says is fresh.
            detail["consensus_probe_fresh?"] = false.into();
            detail["consensus_probe_age_ms"] = age.into();
            detail["stalled_core"] = core.into();
            detail["probe_result"] = "core_stalled".into();
            return detail;
        }
        let Some((group, reason)) = self.control.sync_failure() else {
            detail["probe_result"] = "startup_sync".into();
            return detail;
        };
        detail["failing_group_id"] = group.into();
        let replicas: Vec<&str> = self.topo.replicas(group).collect();
        let reachable = replicas
            .iter()
            .filter(|n| self.control.is_visible(n))
            .count();
        let quorum = replicas.len() / 2 + 1;
        let result = match reason {
            "leader_unknown" if reachable < quorum => {
                detail["reachable_replicas"] = reachable.into();
                detail["required_quorum"] = quorum.into();
                "quorum_unreachable"
            }
            "leader_unknown" | "leader_unreported" => "leader_unknown",
            "catching_up" => "catching_up",
            other => other,
        };
        detail["probe_result"] = result.into();
        detail
    }

    async fn metrics(&self) -> Result<Reply, ApiError> {
        use super::metrics::{Histogram, BATCH_BUCKETS, LATENCY_BUCKETS};
        let mut stats = Vec::new();
        for core in 0..self.cores.len() as u32 {
            stats.push(
                self.ask(core, READ_TIMEOUT, |reply| CoreRequest::Stats { reply })
                    .await?,
            );
        }
        let mut out = String::new();
        out.push_str("# HELP starcite_append_stage_seconds_total Time appends spent per stage (docs/metrics.md).\n# TYPE starcite_append_stage_seconds_total counter\n");
        for (stage, name) in stages::STAGES {
            out.push_str(&format!(
                "starcite_append_stage_seconds_total{{stage=\"{name}\"}} {}\n",
                stages::seconds(stage)
            ));
        }
        out.push_str(&format!(
            "# HELP starcite_peer_frames_sent_total Frames written to peer nodes.\n# TYPE starcite_peer_frames_sent_total counter\nstarcite_peer_frames_sent_total {}\n",
            stages::peer_frames()
        ));
        let mut per_core =
            |name: &str, help: &str, kind: &str, f: fn(&super::messages::CoreStats) -> u64| {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                for s in &stats {
                    out.push_str(&format!("{name}{{core=\"{}\"}} {}\n", s.core, f(s)));
                }
            };
        per_core(
            "starcite_log_writes_total",
            "Group-commit log writes.",
            "counter",
            |s| s.writes,
        );
        per_core(
            "starcite_log_fsyncs_total",
            "fdatasync calls on the Raft log.",
            "counter",
            |s| s.syncs,
        );
        per_core(
            "starcite_log_write_bytes_total",
            "Bytes appended to the Raft log.",
            "counter",
            |s| s.write_bytes,
        );
        per_core(
            "starcite_commands_applied_total",
            "Client commands answered after commit.",
            "counter",
            |s| s.entries_written,
        );
        per_core(
            "starcite_hot_tier_bytes",
            "Bytes of unarchived events held in memory.",
            "gauge",
            |s| s.hot_bytes,
        );
        per_core(
            "starcite_raft_leaders",
            "Raft groups led by this node.",
            "gauge",
            |s| s.leaders as u64,
        );
        per_core(
            "starcite_raft_elections_won_total",
            "Times a local replica became leader.",
            "counter",
            |s| s.elections_won,
        );
        per_core(
            "starcite_raft_leader_follow_moves_total",
            "Leadership transfers started because a group's commands came from another node.",
            "counter",
            |s| s.follow_moves,
        );
        per_core(
            "starcite_raft_apply_lag_entries",
            "Committed entries not yet applied (follower lag).",
            "gauge",
            |s| s.apply_lag,
        );
        per_core(
            "starcite_pending_commands",
            "Commands proposed and not yet answered.",
            "gauge",
            |s| s.pending as u64,
        );
        per_core(
            "starcite_tail_subscribers",
            "Live tail subscriptions.",
            "gauge",
            |s| s.tail_subscribers as u64,
        );
        per_core(
            "starcite_tail_dropped_to_replay_total",
            "Tail subscribers that fell behind and resumed by replay.",
            "counter",
            |s| s.tail_dropped,
        );
        let mut commit = Histogram::new(LATENCY_BUCKETS);
        let mut fsync = Histogram::new(LATENCY_BUCKETS);
        let mut batch = Histogram::new(BATCH_BUCKETS);
        for s in &stats {
            commit.merge(&s.commit_latency);
            fsync.merge(&s.fsync_latency);
            batch.merge(&s.batch_commands);
        }
        commit.render(
            "starcite_commit_latency_seconds",
            "From proposal to committed and applied, on the owner core.",
            &mut out,
        );
        fsync.render(
            "starcite_log_fsync_seconds",
            "Log write plus fdatasync of one group-commit batch.",
            &mut out,
        );
        batch.render(
            "starcite_log_batch_commands",
            "Client commands answered per log write (group-commit batch size).",
            &mut out,
        );
        self.requests.render(&mut out);
        self.cold
            .stats
            .render(self.cold.adapter, self.cold.cache.bytes(), &mut out);
        let mut response =
            Response::new(200).with_header("content-type", "text/plain; version=0.0.4");
        response.body = Bytes::from(out);
        Ok(Reply::Http(response))
    }
}

/// One routing attempt's result.
enum Attempt {
    Done(Outcome),
    /// Not proposed there; the leader it named, if any.
    Redirect(Option<String>),
}

/// What became of a request to a peer that got no answer.
enum Delivery {
    /// It never left this node: safe to send elsewhere.
    NotSent,
    /// It may have been processed.
    Unknown,
}

enum V1 {
    Create,
    List,
    Append(String),
    Tail(String),
    Get(String),
    Patch(String),
    /// Archive (`true`) or unarchive (`false`).
    Archive(String, bool),
}

/// A 200 with a session's catalog entry (GET, PATCH, archive, unarchive).
fn entry_reply(row: &ListRow) -> Result<Reply, ApiError> {
    let principal = row_principal(row);
    json(200, render_session_row(&row_view(row, &principal)))
}

/// Percent-decodes a path segment; an empty id matches no route.
fn decode_id(raw: &str) -> Option<String> {
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    (!id.is_empty()).then_some(id)
}

/// `/v1` answers JSON only: an `Accept` that excludes it is 406 (§1).
fn check_accept(req: &Request) -> Result<(), ApiError> {
    let Some(accept) = req.header("accept") else {
        return Ok(());
    };
    let ok = accept.split(',').any(|range| {
        let media = range
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*" | "application/*" | "application/json"
        )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable())
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::SessionNotFound => ApiError::session_not_found(),
        EngineError::SessionExists => ApiError::session_exists(),
        EngineError::ExpectedSeqConflict { expected, current } => {
            ApiError::expected_seq_conflict(expected, current)
        }
        EngineError::ProducerSeqConflict {
            producer_id,
            expected,
            got,
        } => ApiError::producer_seq_conflict(&producer_id, expected, got),
        EngineError::ProducerReplayConflict => ApiError::producer_replay_conflict(),
        EngineError::ExpectedVersionConflict { expected, current } => {
            ApiError::expected_version_conflict(expected, current)
        }
        EngineError::Backpressure => ApiError::event_store_backpressure(),
        EngineError::TooLarge => ApiError::payload_too_large(),
        EngineError::NotLeader { .. } | EngineError::Unavailable => ApiError::raft_unavailable(),
        EngineError::ArchiveReadUnavailable | EngineError::Archived { .. } => {
            ApiError::archive_read_unavailable()
        }
    }
}

/// Shared handle type used by the bootstrap.
pub type GatewayRc = Rc<Gateway>;
