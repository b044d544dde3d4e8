//! The raw tail WebSocket (`GET /v1/sessions/:id/tail`, §7, §14.5): the
//! engine's batches as text frames — the event itself for `batch_size` 1, else
//! JSON arrays of at most `batch_size` events. One batch goes out in one write
//! (live events already queued included).

use std::time::Duration;

use bytes::Bytes;

use super::engine::{frames_of, Engine};
use crate::http::{WebSocket, WsEvent};
use crate::node::shutdown::Shutdown;

/// Close codes (§7.3, §14.19).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_INTERNAL: u16 = 1011;
const CLOSE_TOKEN_EXPIRED: u16 = 4001;

pub struct TailSpec {
    pub engine: Engine,
    pub batch_size: usize,
    pub shutdown: Shutdown,
    /// The token's `exp` (Unix seconds): the socket closes with 4001 then.
    pub expires_at: Option<u64>,
}

enum Stop {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The peer is gone or closed; just drop the connection.
    Gone,
}

/// Time left until `expires_at` (Unix seconds); a year when there is none.
pub fn until_expiry(expires_at: Option<u64>) -> Duration {
    let Some(exp) = expires_at else {
        return Duration::from_secs(365 * 86_400);
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms))
}

pub async fn run_tail(ws: WebSocket, mut spec: TailSpec) {
    let (mut reader, mut writer) = ws.split();
    let stop = loop {
        if spec.shutdown.is_fired() {
            break Stop::Close(CLOSE_GOING_AWAY, "going_away");
        }
        let left = until_expiry(spec.expires_at);
        if left.is_zero() {
            break Stop::Close(CLOSE_TOKEN_EXPIRED, "token_expired");
        }
        monoio::select! {
            batch = spec.engine.next() => match batch {
                Ok(events) => {
                    let frames: Vec<Bytes> = frames_of(&events, spec.batch_size)
                        .into_iter()
                        .map(|chunk| frame(spec.batch_size, chunk))
                        .collect();
                    if writer.send_texts(frames).await.is_err() {
                        break Stop::Gone;
                    }
                }
                Err(e) => break Stop::Close(CLOSE_INTERNAL, e.reason()),
            },
            inbound = reader.next() => match inbound {
                WsEvent::Ping(payload) => match writer.send_pong(payload).await {
                    Ok(()) => {}
                    Err(_) => break Stop::Gone,
                },
                WsEvent::Close(_) => break Stop::Close(CLOSE_NORMAL, ""),
                WsEvent::Closed => break Stop::Gone,
                _ => {}
            },
            _ = spec.shutdown.wait() => break Stop::Close(CLOSE_GOING_AWAY, "going_away"),
            _ = monoio::time::sleep(left) => break Stop::Close(CLOSE_TOKEN_EXPIRED, "token_expired"),
        }
    };
    drop(spec.engine);
    if let Stop::Close(code, reason) = stop {
        let _ = writer.close(code, reason).await;
    }
}

/// One text frame: the event itself for batch_size 1, else a JSON array.
fn frame(batch_size: usize, events: &[(u64, Bytes)]) -> Bytes {
    if batch_size <= 1 {
        return events.first().map(|(_, f)| f.clone()).unwrap_or_default();
    }
    let mut out = Vec::with_capacity(events.iter().map(|(_, f)| f.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, (_, e)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    Bytes::from(out)
}
