//! Session operations independent of the transport: create, get, list, patch,
//! archive/unarchive, lookup, and the lifecycle subscription check. HTTP
//! (`node::gateway`), the Phoenix socket and the binary protocol call these;
//! each renders the results its own way.
//!
//! They run on the core the request landed on and reach the session's group
//! through the gateway's routing (`Gateway::command` forwards a command to the
//! group leader on any node; reads ask a replica).
//!
//! Authorization follows upstream's policy for the routes added after the
//! first release (get, patch, archive, unarchive): scope, then the token's
//! `session_id` pin, then existence (404), then tenant. Create, list and
//! lookup keep the first release's order (contract §3).

use serde_json::Value;
use std::time::{Duration, Instant};

use starcite_shards::routing::{Route, Step};
use starcite_shards::shard::{ArchivedFilter, ListRow, Proposal, SessionInfo};
use starcite_shards::state::machine::Outcome;
use starcite_shards::EngineError;

use crate::api::error::ApiError;
use crate::api::principal::{scope, AuthContext, Principal, PrincipalType};
use crate::api::query::ListParams;
use crate::api::render::{render_session_created, SessionView};
use crate::api::validate::{generate_session_id, validate_create, validate_patch};
use crate::node::control::routing_candidates;
use crate::node::gateway::{Gateway, READ_TIMEOUT, ROUTE_DEADLINE};

/// Pause before asking again when no replica names a leader (election).
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(50);
use crate::node::messages::CoreRequest;
use crate::node::peer_rpc::{PeerRequest, PeerResponse};
use crate::service::lifecycle::{LifecycleEvent, SessionFacts};

/// One page of a list: the rows, and the cursor of the next page if any.
pub struct SessionPage {
    pub rows: Vec<ListRow>,
    pub next_cursor: Option<String>,
}

impl Gateway {
    /// A create from a parsed body (HTTP and the binary protocol): the new
    /// session's id and its 201 body.
    pub async fn create_session(
        &self,
        auth: &AuthContext,
        body: Result<Value, ApiError>,
    ) -> Result<(String, String), ApiError> {
        if !auth.allows(scope::CREATE) {
            return Err(ApiError::forbidden_scope());
        }
        let body = body?;
        let input = validate_create(&body, auth)?;
        let id = input.id.clone().unwrap_or_else(generate_session_id);
        let metadata_json = Value::Object(input.metadata.clone()).to_string();
        let principal = &auth.principal;
        let proposal = Proposal::Create {
            id: id.clone(),
            tenant_id: principal.tenant_id.clone(),
            title: input.title.clone(),
            metadata_json,
            principal_id: principal.id.clone(),
            principal_type: principal.kind.as_str().to_owned(),
        };
        let outcome = self.command(&id, proposal).await?;
        let Outcome::Created { created_at_us } = outcome else {
            return Err(ApiError::internal_error());
        };
        let view = SessionView {
            id: &id,
            title: input.title.as_deref(),
            tenant_id: &principal.tenant_id,
            creator: principal,
            metadata: &input.metadata,
            last_seq: 0,
            created_at_us,
            updated_at_us: created_at_us,
            version: 1,
            archived: false,
        };
        let facts = SessionFacts {
            id: &id,
            tenant_id: &principal.tenant_id,
            title: input.title.as_deref(),
            metadata: &input.metadata,
            created_at_us,
            updated_at_us: created_at_us,
            version: 1,
            archived: false,
        };
        self.emit_lifecycle(&[
            LifecycleEvent::activated(&facts),
            LifecycleEvent::created(&facts),
        ]);
        Ok((id.clone(), render_session_created(&view)))
    }

    /// `GET /v1/sessions/:id`: the session's catalog entry.
    pub async fn get_session(&self, auth: &AuthContext, id: &str) -> Result<ListRow, ApiError> {
        self.authorize_session(auth, id, scope::READ).await
    }

    /// `PATCH /v1/sessions/:id`: title and/or metadata (merged one level),
    /// optionally only at `expected_version`. Bumps `version` and `updated_at`.
    pub async fn patch_session(
        &self,
        auth: &AuthContext,
        id: &str,
        body: Result<Value, ApiError>,
    ) -> Result<ListRow, ApiError> {
        let input = validate_patch(&body?)?;
        self.authorize_session(auth, id, scope::CREATE).await?;
        let proposal = Proposal::Patch {
            session: id.to_owned(),
            set_title: input.title.is_some(),
            title: input.title.flatten(),
            metadata_json: input.metadata.map(|m| Value::Object(m).to_string()),
            expected_version: input.expected_version,
        };
        let (row, changed) = self.catalog_command(id, proposal).await?;
        if changed {
            self.emit_lifecycle(&[LifecycleEvent::updated(&facts(&row))]);
        }
        Ok(row)
    }

    /// `POST /v1/sessions/:id/archive` (`true`) and `/unarchive` (`false`):
    /// idempotent; lifecycle events only on a real change.
    pub async fn set_archived(
        &self,
        auth: &AuthContext,
        id: &str,
        archived: bool,
    ) -> Result<ListRow, ApiError> {
        self.authorize_session(auth, id, scope::CREATE).await?;
        let proposal = Proposal::SetArchived {
            session: id.to_owned(),
            archived,
        };
        let (row, changed) = self.catalog_command(id, proposal).await?;
        if changed {
            self.emit_lifecycle(&[LifecycleEvent::archive_state(&facts(&row))]);
        }
        Ok(row)
    }

    /// Checks upstream's order (scope → pin → existence → tenant) and returns
    /// the session's current entry.
    async fn authorize_session(
        &self,
        auth: &AuthContext,
        id: &str,
        needed: &str,
    ) -> Result<ListRow, ApiError> {
        if !auth.allows(needed) {
            return Err(ApiError::forbidden_scope());
        }
        if !auth.lock_allows(id) {
            return Err(ApiError::forbidden_session());
        }
        let row = self.find_row(id).await?;
        if !auth.none_mode && row.tenant_id != auth.principal.tenant_id {
            return Err(ApiError::forbidden_tenant());
        }
        Ok(row)
    }

    async fn catalog_command(
        &self,
        id: &str,
        proposal: Proposal,
    ) -> Result<(ListRow, bool), ApiError> {
        match self.command(id, proposal).await? {
            Outcome::Catalog { session, changed } => Ok((session, changed)),
            _ => Err(ApiError::internal_error()),
        }
    }

    /// The `lifecycle` topic's join check (upstream's policy): any caller in
    /// auth mode `none`; else a service principal with `session:read` and no
    /// `session_id` pin. Returns the tenant whose events it may see.
    pub fn authorize_lifecycle(&self, auth: &AuthContext) -> Result<String, ApiError> {
        if auth.none_mode {
            return Ok(auth.principal.tenant_id.clone());
        }
        if auth.session_lock.is_some() {
            return Err(ApiError::forbidden_session());
        }
        if auth.principal.kind != PrincipalType::Service {
            return Err(ApiError::forbidden());
        }
        if !auth.allows(scope::READ) {
            return Err(ApiError::forbidden_scope());
        }
        Ok(auth.principal.tenant_id.clone())
    }

    /// [`Self::authorize_lifecycle`], then a live feed of the tenant's
    /// lifecycle events on this node (every node's events reach it).
    pub fn subscribe_lifecycle(
        &self,
        auth: &AuthContext,
    ) -> Result<flume::Receiver<LifecycleEvent>, ApiError> {
        let tenant = self.authorize_lifecycle(auth)?;
        self.lifecycle
            .subscribe(&tenant)
            .ok_or_else(ApiError::raft_unavailable)
    }

    /// `GET /v1/sessions`: one page, ascending by id, of the caller's tenant
    /// (every tenant in auth mode `none`).
    pub async fn list_sessions(
        &self,
        auth: &AuthContext,
        params: &ListParams,
    ) -> Result<SessionPage, ApiError> {
        if !auth.allows(scope::READ) {
            return Err(ApiError::forbidden_scope());
        }
        let limit = params.limit as usize;
        let tenant = if auth.none_mode {
            None
        } else {
            Some(auth.principal.tenant_id.clone())
        };
        // Every core of every write node returns its first limit+1 matches; the
        // merged page is exact (O(nodes × cores × page)).
        let mut rows = self
            .local_list(
                params.cursor.clone(),
                limit + 1,
                tenant.clone(),
                params.filters.clone(),
                params.archived,
            )
            .await?;
        let req = PeerRequest::List {
            cursor: params.cursor.clone(),
            limit: limit + 1,
            tenant,
            filters: params.filters.clone(),
            archived: params.archived,
        };
        for node in self.topo.writers.iter().filter(|n| **n != self.topo.me) {
            if let Some(PeerResponse::List(part)) = self.peer(node, &req).await {
                rows.extend(part);
            }
        }
        rows.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
        rows.dedup_by(|a, b| a.id == b.id);
        if let Some(lock) = &auth.session_lock {
            rows.retain(|r| r.id == *lock);
        }
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more {
            rows.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(SessionPage { rows, next_cursor })
    }

    pub async fn local_list(
        &self,
        cursor: Option<String>,
        limit: usize,
        tenant: Option<String>,
        filters: Vec<(String, String)>,
        archived: ArchivedFilter,
    ) -> Result<Vec<ListRow>, ApiError> {
        let mut rows = Vec::new();
        if !self.topo.is_writer() {
            return Ok(rows);
        }
        for core in 0..self.cores.len() as u32 {
            let (cursor, tenant, filters) = (cursor.clone(), tenant.clone(), filters.clone());
            let part = self
                .ask(core, READ_TIMEOUT, |reply| CoreRequest::List {
                    cursor,
                    limit,
                    tenant,
                    filters,
                    archived,
                    reply,
                })
                .await
                .map_err(|_| ApiError::archive_read_unavailable())?;
            rows.extend(part);
        }
        Ok(rows)
    }

    pub async fn local_info(&self, id: &str) -> Result<Option<SessionInfo>, ApiError> {
        let session = id.to_owned();
        self.ask(self.owner(id), READ_TIMEOUT, |reply| CoreRequest::Info {
            session,
            reply,
        })
        .await
    }

    /// The session's catalog entry if this node's replica leads its group.
    pub async fn local_row(
        &self,
        id: &str,
    ) -> Result<Result<Option<ListRow>, EngineError>, ApiError> {
        if !self.topo.replicates(self.topo.group(id)) {
            return Ok(Err(EngineError::NotLeader { leader: None }));
        }
        let session = id.to_owned();
        self.ask(self.owner(id), READ_TIMEOUT, |reply| CoreRequest::Get {
            session,
            reply,
        })
        .await
    }

    /// The session's tenant and last seq, or 404. Served by a local replica
    /// when there is one, else by the first replica that answers.
    pub async fn lookup(&self, id: &str) -> Result<SessionInfo, ApiError> {
        let group = self.topo.group(id);
        if self.topo.replicates(group) {
            if let Some(info) = self.local_info(id).await? {
                return Ok(info);
            }
            if self.topo.single_node() {
                return Err(ApiError::session_not_found());
            }
        }
        // Not here (no local replica, or it has not applied the create yet):
        // any replica that has it answers, the leader first (read-your-writes).
        let mut answered = self.topo.replicates(group);
        for node in self.remote_replicas_leader_first(group) {
            if let Some(PeerResponse::Info(info)) = self
                .peer(
                    &node,
                    &PeerRequest::Info {
                        session: id.to_owned(),
                    },
                )
                .await
            {
                answered = true;
                if let Some(info) = info {
                    return Ok(info);
                }
            }
        }
        if answered {
            Err(ApiError::session_not_found())
        } else {
            Err(ApiError::raft_unavailable())
        }
    }

    /// The session's catalog entry, or 404, read on the group's leader (so a
    /// GET after a PATCH through another node sees it), found like commands
    /// find it: the cached leader, the local replica, then the replicas in
    /// routing order, following NotLeader hints, within [`ROUTE_DEADLINE`].
    async fn find_row(&self, id: &str) -> Result<ListRow, ApiError> {
        let group = self.topo.group(id);
        let deadline = Instant::now() + ROUTE_DEADLINE;
        let hint = self.leader_node(id);
        let mut candidates = routing_candidates(&self.control, self.topo.replicas(group));
        if self.topo.replicates(group) {
            candidates.retain(|n| *n != self.topo.me);
            candidates.insert(0, self.topo.me.clone());
        }
        let Some(mut route) = Route::new(candidates, hint) else {
            return Err(ApiError::raft_unavailable());
        };
        let mut leader_seen = false;
        loop {
            let target = route.target().clone();
            let answer = if target == self.topo.me {
                Some(self.local_row(id).await?)
            } else {
                let req = PeerRequest::Get {
                    session: id.to_owned(),
                };
                match self.peer(&target, &req).await {
                    Some(PeerResponse::Row(r)) => Some(r),
                    _ => None,
                }
            };
            let leader = match answer {
                Some(Ok(row)) => {
                    self.remember_leader(group, &target);
                    return row.ok_or_else(ApiError::session_not_found);
                }
                Some(Err(EngineError::NotLeader { leader })) => {
                    leader.and_then(|l| self.topo.node_of(l)).map(str::to_owned)
                }
                _ => None,
            };
            leader_seen |= leader.is_some();
            if Instant::now() >= deadline {
                return Err(if leader_seen {
                    ApiError::raft_timeout()
                } else {
                    ApiError::raft_unavailable()
                });
            }
            if route.redirect(leader) == Step::Backoff {
                monoio::time::sleep(NO_LEADER_BACKOFF).await;
            }
        }
    }

    /// Remembers the node that served a leader read as the group's leader.
    fn remember_leader(&self, group: u32, node: &str) {
        if self.leader_hints.borrow().get(&group).map(String::as_str) != Some(node) {
            self.leader_hints
                .borrow_mut()
                .insert(group, node.to_owned());
        }
    }

    /// The group's replicas other than this node, in routing order with the
    /// last known leader first.
    fn remote_replicas_leader_first(&self, group: u32) -> Vec<String> {
        let hint = self.leader_hints.borrow().get(&group).cloned();
        let mut nodes = routing_candidates(&self.control, self.topo.replicas(group));
        if let Some(h) = hint {
            nodes.retain(|n| *n != h);
            nodes.insert(0, h);
        }
        nodes.retain(|n| *n != self.topo.me);
        nodes
    }
}

/// The lifecycle fields of a catalog entry.
fn facts(row: &ListRow) -> SessionFacts<'_> {
    SessionFacts {
        id: &row.id,
        tenant_id: &row.tenant_id,
        title: row.title.as_deref(),
        metadata: &row.metadata,
        created_at_us: row.created_at_us,
        updated_at_us: row.updated_at_us,
        version: row.version,
        archived: row.archived,
    }
}

/// The creator of a catalog entry.
pub fn row_principal(r: &ListRow) -> Principal {
    let kind = match r.principal_type.as_str() {
        "user" => PrincipalType::User,
        "agent" => PrincipalType::Agent,
        _ => PrincipalType::Service,
    };
    Principal {
        tenant_id: r.tenant_id.clone(),
        id: r.principal_id.clone(),
        kind,
    }
}

/// A catalog entry as the renderers take it.
pub fn row_view<'a>(r: &'a ListRow, p: &'a Principal) -> SessionView<'a> {
    SessionView {
        id: &r.id,
        title: r.title.as_deref(),
        tenant_id: &r.tenant_id,
        creator: p,
        metadata: &r.metadata,
        last_seq: r.last_seq,
        created_at_us: r.created_at_us,
        updated_at_us: r.updated_at_us,
        version: r.version,
        archived: r.archived,
    }
}
