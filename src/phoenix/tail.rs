//! The `tail:<session_id>` channel: join checks and parameters as upstream's
//! `TailChannel`/`TailParams`, then the tail engine's batches as `events`
//! pushes (`{"events":[…]}`, at most `batch_size` events each, every event with
//! `cursor` = `seq`).
//!
//! Decisions (docs/api.md):
//! - **gap**: the archive keeps every committed event readable, so a cursor never
//!   expires here and `cursor_expired` is never sent. The one gap is a resume
//!   cursor past the session's end (`resume_invalidated`: the events it claims
//!   to have seen do not exist): `next_cursor` = `committed_cursor` = the
//!   session's `last_seq`, `earliest_available_cursor` = 1, and the channel
//!   continues from `last_seq`. A failure to read (archive or replicas
//!   unavailable) is never turned into a gap: the channel ends with `phx_error`
//!   and the client rejoins from its own cursor.
//! - **live_only: true** starts at the session's `last_seq` at join (no replay);
//!   `cursor` is then ignored. A non-boolean `live_only` is `invalid_live_only`.

use std::time::Duration;

use serde_json::Value;

use super::frame::{events_payload, reason_json};
use super::{Channel, Ctl};
use crate::api::principal::scope;
use crate::tail::{frames_of, Engine};

const DEFAULT_BATCH: u64 = 1;
const MAX_BATCH: u64 = 1_000;

/// Validated join parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinParams {
    pub cursor: u64,
    pub batch_size: usize,
    pub live_only: bool,
}

/// `{cursor?, batch_size?, live_only?}`: the reason of the first bad one.
pub fn parse_params(payload: &Value) -> Result<JoinParams, &'static str> {
    let Value::Object(p) = payload else {
        return Err("unauthorized");
    };
    let cursor = match p.get("cursor") {
        None => 0,
        Some(v) => v.as_u64().ok_or("invalid_cursor")?,
    };
    let batch_size = match p.get("batch_size") {
        None => DEFAULT_BATCH,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_BATCH).contains(n))
            .ok_or("invalid_tail_batch_size")?,
    };
    let live_only = match p.get("live_only") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("invalid_live_only"),
    };
    Ok(JoinParams {
        cursor,
        batch_size: batch_size as usize,
        live_only,
    })
}

/// The `gap` push payload for a resume cursor past the end.
pub fn resume_gap(from: u64, last_seq: u64) -> String {
    serde_json::json!({
        "type": "gap",
        "reason": "resume_invalidated",
        "from_cursor": from,
        "next_cursor": last_seq,
        "committed_cursor": last_seq,
        "earliest_available_cursor": 1,
    })
    .to_string()
}

/// Join checks in upstream's order: token current, parameters, scope, session
/// pin, existence, tenant. Returns the engine (cursor set) and the gap to push.
async fn join(
    ch: &Channel,
    session: &str,
    payload: &Value,
) -> Result<(Engine, JoinParams, Option<String>), &'static str> {
    let ctx = &ch.ctx;
    if session.is_empty() {
        return Err("unauthorized");
    }
    if crate::tail::ws::until_expiry(ctx.expires_at).is_zero() {
        return Err("token_expired");
    }
    let params = parse_params(payload)?;
    if !ctx.auth.allows(scope::READ) {
        return Err("forbidden_scope");
    }
    if !ctx.auth.lock_allows(session) {
        return Err("forbidden_session");
    }
    let (source, subscriber_id, tenant_id) = ctx
        .gw
        .tail_source(&ctx.auth, session)
        .await
        .map_err(|e| e.code)?;
    let mut engine = Engine::new(
        session.to_owned(),
        tenant_id,
        source,
        subscriber_id,
        ctx.gw.cold.clone(),
        params.cursor,
    );
    let last_seq = engine.last_seq().await.map_err(|e| e.reason())?;
    let mut gap = None;
    if params.live_only {
        engine.set_cursor(last_seq);
    } else if params.cursor > last_seq {
        gap = Some(resume_gap(params.cursor, last_seq));
        engine.set_cursor(last_seq);
    }
    Ok((engine, params, gap))
}

/// The channel task: join, then stream until leave, expiry, failure or the
/// socket's end.
pub async fn run(
    ch: Channel,
    join_ref: Value,
    session: String,
    payload: Value,
    ctl: flume::Receiver<Ctl>,
) {
    let joined = monoio::select! {
        j = join(&ch, &session, &payload) => j,
        c = ctl.recv_async() => {
            if let Ok(Ctl::Leave(msg_ref)) = c {
                let _ = ch.reply(&msg_ref, true, "{}").await;
                return ch.end("phx_close").await;
            }
            return ch.ended();
        }
    };
    let (mut engine, params, gap) = match joined {
        Ok(v) => v,
        Err(reason) => {
            let _ = ch.reply(&join_ref, false, &reason_json(reason)).await;
            return ch.ended();
        }
    };
    if !ch.reply(&join_ref, true, "{}").await {
        return;
    }
    if let Some(gap) = gap {
        if !ch.push("gap", gap.as_bytes()).await {
            return;
        }
    }
    let shutdown = ch.ctx.gw.shutdown.clone();
    loop {
        let left = crate::tail::ws::until_expiry(ch.ctx.expires_at);
        if left.is_zero() {
            return expire(&ch).await;
        }
        monoio::select! {
            batch = engine.next() => match batch {
                Ok(events) => {
                    for chunk in frames_of(&events, params.batch_size) {
                        if !ch.push("events", &events_payload(chunk)).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = %ch.topic, reason = e.reason(), "tail channel failed");
                    return ch.end("phx_error").await;
                }
            },
            c = ctl.recv_async() => match c {
                Ok(Ctl::Leave(msg_ref)) => {
                    drop(engine);
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

/// Token expiry: `token_expired`, then the channel closes.
async fn expire(ch: &Channel) {
    if ch
        .push("token_expired", reason_json("token_expired").as_bytes())
        .await
    {
        ch.end("phx_close").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn join_params_as_upstream() {
        let ok = |v: Value| parse_params(&v).unwrap();
        assert_eq!(
            ok(json!({})),
            JoinParams {
                cursor: 0,
                batch_size: 1,
                live_only: false
            }
        );
        assert_eq!(ok(json!({"cursor": 7, "batch_size": 1000})).cursor, 7);
        assert_eq!(ok(json!({"batch_size": 1000})).batch_size, 1000);
        assert!(ok(json!({"live_only": true})).live_only);
        let err = |v: Value| parse_params(&v).unwrap_err();
        assert_eq!(err(json!({"cursor": null})), "invalid_cursor");
        assert_eq!(err(json!({"cursor": "1"})), "invalid_cursor");
        assert_eq!(
            err(json!({"cursor": {"epoch": 0, "seq": 0}})),
            "invalid_cursor"
        );
        assert_eq!(err(json!({"cursor": -1})), "invalid_cursor");
        assert_eq!(err(json!({"cursor": 1.5})), "invalid_cursor");
        assert_eq!(err(json!({"batch_size": "2"})), "invalid_tail_batch_size");
        assert_eq!(err(json!({"batch_size": 0})), "invalid_tail_batch_size");
        assert_eq!(err(json!({"batch_size": 1001})), "invalid_tail_batch_size");
        assert_eq!(
            err(json!({"cursor": "x", "batch_size": 0})),
            "invalid_cursor"
        );
        assert_eq!(err(json!({"live_only": "yes"})), "invalid_live_only");
        assert_eq!(err(json!([1])), "unauthorized");
    }

    #[test]
    fn gap_payload() {
        let v: Value = serde_json::from_str(&resume_gap(50, 3)).unwrap();
        assert_eq!(
            v,
            json!({"type": "gap", "reason": "resume_invalidated", "from_cursor": 50,
                   "next_cursor": 3, "committed_cursor": 3, "earliest_available_cursor": 1})
        );
    }
}
