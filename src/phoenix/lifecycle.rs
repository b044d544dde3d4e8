//! The `lifecycle` channel: live session lifecycle events of the token's
//! tenant, from this node's lifecycle feed (`service::lifecycle`, which every
//! node fills with every node's events), pushed as
//! `["<jr>",null,"lifecycle","lifecycle",{"event":{"kind":…,"session_id":…,"tenant_id":…}}]`.
//!
//! Join checks as upstream's `authorize_lifecycle_subscription`: auth mode
//! `none` joins the fixed tenant; a JWT locked to a session is
//! `forbidden_session`; a principal that is not a service (`sub` type
//! `service`/`svc`/`org`) is `forbidden`; a token without `session:read` is
//! `forbidden_scope`. Live only: no replay, no cursor. A subscriber that falls
//! 1,024 events behind is dropped by the feed; its channel then ends with
//! `phx_error` and the client rejoins (events in between are not replayed —
//! the feed is a notification stream, the sessions themselves are the record).

use std::time::Duration;

use serde_json::Value;

use super::frame::reason_json;
use super::{Channel, Ctl};
use crate::api::principal::{scope, PrincipalType};

/// The tenant whose events the socket's principal may follow, or the reason.
fn authorize(ch: &Channel) -> Result<String, &'static str> {
    let auth = &ch.ctx.auth;
    if crate::tail::ws::until_expiry(ch.ctx.expires_at).is_zero() {
        return Err("token_expired");
    }
    if auth.none_mode {
        return Ok(auth.principal.tenant_id.clone());
    }
    if auth.session_lock.is_some() {
        return Err("forbidden_session");
    }
    if auth.principal.kind != PrincipalType::Service {
        return Err("forbidden");
    }
    if !auth.allows(scope::READ) {
        return Err("forbidden_scope");
    }
    Ok(auth.principal.tenant_id.clone())
}

/// The channel task: join, then push the tenant's events until leave,
/// expiry, the feed dropping it, or the socket's end.
pub async fn run(ch: Channel, join_ref: Value, ctl: flume::Receiver<Ctl>) {
    let feed = authorize(&ch).and_then(|tenant| {
        ch.ctx
            .gw
            .lifecycle
            .subscribe(&tenant)
            .ok_or("too_many_subscribers")
    });
    let feed = match feed {
        Ok(rx) => rx,
        Err(reason) => {
            let _ = ch.reply(&join_ref, false, &reason_json(reason)).await;
            return ch.ended();
        }
    };
    if !ch.reply(&join_ref, true, "{}").await {
        return;
    }
    let shutdown = ch.ctx.gw.shutdown.clone();
    loop {
        let left = crate::tail::ws::until_expiry(ch.ctx.expires_at);
        if left.is_zero() {
            if ch
                .push("token_expired", reason_json("token_expired").as_bytes())
                .await
            {
                ch.end("phx_close").await;
            }
            return;
        }
        monoio::select! {
            event = feed.recv_async() => match event {
                Ok(e) => {
                    let payload = serde_json::json!({ "event": e.body }).to_string();
                    if !ch.push("lifecycle", payload.as_bytes()).await {
                        return;
                    }
                }
                Err(_) => return ch.end("phx_error").await,
            },
            c = ctl.recv_async() => match c {
                Ok(Ctl::Leave(msg_ref)) => {
                    drop(feed);
                    let _ = ch.reply(&msg_ref, true, "{}").await;
                    return ch.end("phx_close").await;
                }
                Err(_) => return,
            },
            _ = shutdown.wait() => return,
            _ = monoio::time::sleep(left.max(Duration::from_millis(1))) => {}
        }
    }
}
