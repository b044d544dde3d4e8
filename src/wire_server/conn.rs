//! One binary-protocol connection: preface, `Hello`, then pipelined requests.
//!
//! Tasks of a connection (all on its core):
//! - the reader (this function's loop) decodes frames and starts one task per
//!   request once it holds one of `max_inflight` permits: when they are all
//!   taken it stops reading, so a client that floods requests is slowed by
//!   TCP, never buffered without bound;
//! - request tasks run the gateway function, then hand their answer to the
//!   writer after the previous request of the same session did (answers of a
//!   session come back in request order) and give their permit back;
//! - subscription tasks (see `sub.rs`) send `Events`;
//! - the writer batches answers into socket writes, each bounded by
//!   `write_timeout`;
//! - a watcher sends `Goaway` when the node drains or shuts down.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{
    AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable,
};
use starcite_wire::proto::{
    codes, encode, ClientMsg, Decoder, FrameError, Preface, ServerMsg, MAX_FRAME,
    MAX_PREAUTH_FRAME, PREFACE_LEN,
};

use super::body::{append_value, create_json};
use super::sub::{run_subscription, SubEnd};
use super::WireLimits;
use crate::api::error::ApiError;
use crate::api::principal::AuthContext;
use crate::api::validate::parse_body;
use crate::node::gateway::Gateway;
use crate::node::shutdown::Shutdown;

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;
/// The writer gathers answers into one write up to about this many bytes.
const WRITE_BATCH: usize = 256 * 1024;
/// Answers queued for the writer (beyond the in-flight permits' own).
const OUT_QUEUE: usize = 256;

/// Serves one connection until it closes. Never panics on client input.
pub async fn run<S>(stream: S, gw: Rc<Gateway>, limits: Rc<WireLimits>)
where
    S: AsyncReadRent + AsyncWriteRent + Split + 'static,
{
    let mut stream = stream;
    let preface = monoio::time::timeout(
        limits.hello_timeout,
        stream.read_exact(vec![0u8; PREFACE_LEN]),
    )
    .await;
    let theirs = match preface {
        Ok((Ok(_), buf)) => {
            let mut b = [0u8; PREFACE_LEN];
            b.copy_from_slice(&buf[..PREFACE_LEN]);
            match Preface::parse(&b) {
                Ok(p) => p,
                Err(_) => return,
            }
        }
        _ => return,
    };
    // Our preface goes out either way: a client with no common version
    // learns our range from it, then we close.
    let (res, _) = monoio::time::timeout(
        limits.write_timeout,
        stream.write_all(Preface::OURS.to_bytes().to_vec()),
    )
    .await
    .unwrap_or((Err(std::io::ErrorKind::TimedOut.into()), Vec::new()));
    if res.is_err() || Preface::OURS.negotiate(theirs).is_err() {
        let _ = stream.shutdown().await;
        return;
    }
    let (rd, wr) = stream.into_split();
    let (out_tx, out_rx) = flume::bounded::<ServerMsg>(OUT_QUEUE);
    let kill = Shutdown::default();
    let writer = monoio::spawn(write_loop(wr, out_rx, limits.write_timeout, kill.clone()));
    let (permit_tx, permit_rx) = flume::bounded::<()>(limits.max_inflight.max(1));
    let conn = Rc::new(Conn {
        gw,
        limits,
        out: out_tx,
        auth: RefCell::new(None),
        permit_tx,
        permit_rx,
        lanes: RefCell::new(HashMap::new()),
        subs: RefCell::new(HashMap::new()),
        next_gen: std::cell::Cell::new(1),
        goaway: Shutdown::default(),
        closed: Shutdown::default(),
    });
    monoio::spawn(watch_node(conn.clone()));
    read_loop(&conn, rd, &kill).await;
    conn.closed.fire();
    // Subscriptions end; requests already read get `drain_grace` to finish.
    conn.subs.borrow_mut().clear();
    let deadline = std::time::Instant::now() + conn.limits.drain_grace;
    while !conn.permit_rx.is_empty() && !kill.is_fired() && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    if !conn.permit_rx.is_empty() {
        kill.fire();
    }
    drop(conn);
    // The writer ends once every sender is gone (queue flushed) or on kill.
    let limit = Duration::from_secs(1) + Duration::from_millis(100);
    if monoio::time::timeout(limit, writer).await.is_err() {
        kill.fire();
    }
}

struct Conn {
    gw: Rc<Gateway>,
    limits: Rc<WireLimits>,
    out: flume::Sender<ServerMsg>,
    /// Set by a successful `Hello`: who is calling, and the token's `exp`.
    auth: RefCell<Option<(Rc<AuthContext>, Option<u64>)>>,
    /// In-flight permits: a bounded channel used as a semaphore.
    permit_tx: flume::Sender<()>,
    permit_rx: flume::Receiver<()>,
    /// Per session, the completion signal of its latest request (answers of
    /// a session are written in request order).
    lanes: RefCell<HashMap<String, flume::Receiver<()>>>,
    /// Live subscriptions: dropping the sender stops the task.
    subs: RefCell<HashMap<u64, (u64, flume::Sender<()>)>>,
    /// Generation of subscriptions (tells a replaced entry from one's own).
    next_gen: std::cell::Cell<u64>,
    /// Fired to stop reading (Goaway sent).
    goaway: Shutdown,
    /// Fired when the reader has ended.
    closed: Shutdown,
}

/// Gives an in-flight permit back when dropped (also if a task is cancelled).
struct Permit(Rc<Conn>);

impl Drop for Permit {
    fn drop(&mut self) {
        let _ = self.0.permit_rx.try_recv();
    }
}

fn api_error(request_id: u64, e: &ApiError, leader: Option<String>) -> ServerMsg {
    ServerMsg::Error {
        request_id,
        code: e.code.to_owned(),
        message: e.message.clone(),
        status: e.status,
        leader,
    }
}

/// Reads frames until EOF, a protocol error, Goaway or the writer's death.
async fn read_loop<R: AsyncReadRent>(conn: &Rc<Conn>, mut rd: R, kill: &Shutdown) {
    let mut dec = Decoder::new(MAX_PREAUTH_FRAME);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let hello_deadline = std::time::Instant::now() + conn.limits.hello_timeout;
    loop {
        // Decode everything buffered before reading more.
        let msg = match dec.next::<ClientMsg>() {
            Ok(Some(m)) => m,
            Ok(None) => {
                let authed = conn.auth.borrow().is_some();
                let limit = if !authed {
                    hello_deadline.saturating_duration_since(std::time::Instant::now())
                } else if conn.permit_rx.is_empty() && conn.subs.borrow().is_empty() {
                    conn.limits.idle_timeout
                } else {
                    Duration::from_secs(86_400)
                };
                // The connection (and its subscriptions) ends when its token
                // expires, as HTTP tails do (4001 there, Goaway here).
                let expires_at = conn.auth.borrow().as_ref().and_then(|(_, e)| *e);
                let until_expiry = expires_at.map_or(Duration::from_secs(86_400 * 365), |exp| {
                    Duration::from_secs(exp.saturating_sub(crate::auth::unix_now()))
                });
                let read = monoio::select! {
                    r = monoio::time::timeout(limit, rd.read(std::mem::take(&mut buf))) => r,
                    _ = conn.goaway.wait() => return,
                    _ = kill.wait() => return,
                    _ = monoio::time::sleep(until_expiry) => {
                        let _ = conn
                            .out
                            .send_async(ServerMsg::Goaway {
                                code: codes::TOKEN_EXPIRED.into(),
                                message: "the token of this connection expired; reconnect with a fresh one".into(),
                            })
                            .await;
                        return;
                    }
                };
                match read {
                    Err(_) => {
                        let _ = conn.out.try_send(ServerMsg::protocol_error(
                            0,
                            codes::TIMEOUT,
                            if authed {
                                "idle connection"
                            } else {
                                "no Hello in time"
                            },
                        ));
                        return;
                    }
                    Ok((Ok(0), _)) | Ok((Err(_), _)) => return,
                    Ok((Ok(n), b)) => {
                        dec.push(&b[..n]);
                        buf = b;
                        buf.clear();
                        continue;
                    }
                }
            }
            Err(e) => {
                let (code, message) = match &e {
                    FrameError::TooLarge { .. } => (codes::FRAME_TOO_LARGE, e.to_string()),
                    _ => (codes::INVALID_FRAME, e.to_string()),
                };
                let _ = conn
                    .out
                    .send_async(ServerMsg::protocol_error(0, code, message))
                    .await;
                return;
            }
        };
        if !dispatch(conn, msg, &mut dec).await {
            return;
        }
    }
}

/// Handles one request. Returns false to stop reading.
async fn dispatch(conn: &Rc<Conn>, msg: ClientMsg, dec: &mut Decoder) -> bool {
    let rid = msg.request_id();
    let auth = conn.auth.borrow().clone();
    let Some((auth, expires_at)) = auth else {
        let ClientMsg::Hello { token, .. } = msg else {
            let _ = conn
                .out
                .send_async(ServerMsg::protocol_error(
                    rid,
                    codes::HELLO_REQUIRED,
                    "the first request must be Hello",
                ))
                .await;
            return false;
        };
        return hello(conn, rid, token, dec).await;
    };
    if expires_at.is_some_and(|exp| exp < crate::auth::unix_now()) {
        let _ = conn
            .out
            .send_async(ServerMsg::Goaway {
                code: codes::TOKEN_EXPIRED.into(),
                message: "the token of this connection expired; reconnect with a fresh one".into(),
            })
            .await;
        return false;
    }
    match msg {
        ClientMsg::Hello { .. } => {
            let m = ServerMsg::protocol_error(rid, codes::DUPLICATE_HELLO, "already authenticated");
            conn.out.send_async(m).await.is_ok()
        }
        ClientMsg::Ping { payload, .. } => {
            let m = ServerMsg::Pong {
                request_id: rid,
                payload,
            };
            conn.out.send_async(m).await.is_ok()
        }
        ClientMsg::CreateSession {
            id,
            title,
            metadata,
            ..
        } => {
            let Some(permit) = acquire(conn).await else {
                return false;
            };
            let body = create_json(id.as_deref(), title.as_deref(), metadata.as_deref());
            let c = conn.clone();
            monoio::spawn(async move {
                let body = body.and_then(|b| parse_body(&b));
                let answer = match c.gw.create_session(&auth, body).await {
                    Ok((id, json)) => ServerMsg::SessionCreated {
                        request_id: rid,
                        id,
                        json: json.into_bytes(),
                    },
                    Err(e) => api_error(rid, &e, None),
                };
                let _ = c.out.send_async(answer).await;
                drop(permit);
            });
            true
        }
        ClientMsg::Append {
            session, fields, ..
        } => {
            let Some(permit) = acquire(conn).await else {
                return false;
            };
            let (done_tx, done_rx) = flume::bounded::<()>(1);
            let prev = conn
                .lanes
                .borrow_mut()
                .insert(session.clone(), done_rx.clone());
            let c = conn.clone();
            monoio::spawn(async move {
                // The HTTP body's value, limit and errors (`body::append_value`).
                let body = append_value(&fields);
                let result = c.gw.append_body(&auth, session.clone(), body).await;
                let leader = c.gw.leader_node(&session).filter(|n| *n != c.gw.topo.me);
                let answer = match result {
                    Ok((seq, last_seq, deduped)) => ServerMsg::AppendAck {
                        request_id: rid,
                        seq,
                        last_seq,
                        deduped,
                        leader,
                    },
                    Err(e) => {
                        let hint = e.code.starts_with("raft_").then_some(leader).flatten();
                        api_error(rid, &e, hint)
                    }
                };
                if let Some(prev) = prev {
                    // Ok or disconnected: either way the previous answer is out.
                    let _ = prev.recv_async().await;
                }
                let _ = c.out.send_async(answer).await;
                drop(done_tx);
                let mut lanes = c.lanes.borrow_mut();
                if lanes
                    .get(&session)
                    .is_some_and(|r| r.same_channel(&done_rx))
                {
                    lanes.remove(&session);
                }
                drop(lanes);
                drop(permit);
            });
            true
        }
        ClientMsg::Subscribe {
            session,
            cursor,
            max_batch,
            ..
        } => {
            let refuse = |code: &str, msg: &str| ServerMsg::protocol_error(rid, code, msg);
            let answer = if max_batch == 0 || max_batch > conn.limits.max_batch {
                Some(api_error(rid, &ApiError::invalid_tail_batch_size(), None))
            } else if conn.subs.borrow().contains_key(&rid) {
                Some(refuse(
                    codes::DUPLICATE_SUBSCRIPTION,
                    "a live subscription already has this request id",
                ))
            } else if conn.subs.borrow().len() >= conn.limits.max_subscriptions {
                Some(refuse(
                    codes::TOO_MANY_SUBSCRIPTIONS,
                    "too many live subscriptions on this connection",
                ))
            } else {
                None
            };
            if let Some(m) = answer {
                return conn.out.send_async(m).await.is_ok();
            }
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            let gen = conn.next_gen.get();
            conn.next_gen.set(gen + 1);
            conn.subs.borrow_mut().insert(rid, (gen, stop_tx));
            let c = conn.clone();
            monoio::spawn(async move {
                let end = run_subscription(
                    c.gw.clone(),
                    auth,
                    session,
                    cursor,
                    max_batch as usize,
                    rid,
                    c.out.clone(),
                    stop_rx,
                )
                .await;
                {
                    let mut subs = c.subs.borrow_mut();
                    if subs.get(&rid).is_some_and(|(g, _)| *g == gen) {
                        subs.remove(&rid);
                    }
                }
                let msg = match end {
                    SubEnd::Stopped => None,
                    SubEnd::Api(e) => Some(api_error(rid, &e, None)),
                    SubEnd::Protocol(code, message) => {
                        Some(ServerMsg::protocol_error(rid, code, message))
                    }
                };
                if let Some(m) = msg {
                    let _ = c.out.send_async(m).await;
                }
            });
            true
        }
        ClientMsg::Unsubscribe { subscription, .. } => {
            let removed = conn.subs.borrow_mut().remove(&subscription).is_some();
            let m = if removed {
                ServerMsg::Unsubscribed {
                    request_id: rid,
                    subscription,
                }
            } else {
                ServerMsg::protocol_error(
                    rid,
                    codes::UNKNOWN_SUBSCRIPTION,
                    "no live subscription with this id",
                )
            };
            conn.out.send_async(m).await.is_ok()
        }
    }
}

/// Waits for an in-flight permit (backpressure); None if the connection is going away.
async fn acquire(conn: &Rc<Conn>) -> Option<Permit> {
    monoio::select! {
        r = conn.permit_tx.send_async(()) => r.ok().map(|_| Permit(conn.clone())),
        _ = conn.goaway.wait() => None,
    }
}

async fn hello(conn: &Rc<Conn>, rid: u64, token: Option<String>, dec: &mut Decoder) -> bool {
    let authed = match &conn.gw.auth {
        None => Ok((AuthContext::none(), None)),
        Some(service) => match token {
            None => Err(ApiError::unauthorized()),
            Some(t) if t.len() > starcite_wire::limits::AUTH_TOKEN => Err(ApiError::unauthorized()),
            Some(t) => service
                .authenticate(t)
                .await
                .map(|a| (a.context, Some(a.expires_at)))
                .map_err(|f| f.api_error()),
        },
    };
    match authed {
        Ok((ctx, exp)) => {
            *conn.auth.borrow_mut() = Some((Rc::new(ctx), exp));
            dec.set_max_frame(conn.limits.max_frame);
            let ok = ServerMsg::HelloOk {
                request_id: rid,
                version: starcite_wire::proto::VERSION_MAX,
                node: conn.gw.topo.me.clone(),
                max_frame: conn.limits.max_frame.min(MAX_FRAME) as u32,
                max_inflight: conn.limits.max_inflight as u32,
                max_subscriptions: conn.limits.max_subscriptions as u32,
                max_batch: conn.limits.max_batch,
            };
            conn.out.send_async(ok).await.is_ok()
        }
        Err(e) => {
            let _ = conn.out.send_async(api_error(rid, &e, None)).await;
            false
        }
    }
}

/// Sends Goaway when the node is drained or shutting down, then stops the reader.
async fn watch_node(conn: Rc<Conn>) {
    let gw = conn.gw.clone();
    let (code, message) = loop {
        monoio::select! {
            _ = monoio::time::sleep(Duration::from_millis(500)) => {
                if gw.topo.is_writer() && gw.control.is_drained(&gw.topo.me) {
                    break (codes::DRAINING, "this node is draining; reconnect to another node");
                }
            }
            _ = gw.shutdown.wait() => break (codes::SHUTTING_DOWN, "this node is shutting down; reconnect to another node"),
            _ = conn.closed.wait() => return,
        }
    };
    let _ = conn
        .out
        .send_async(ServerMsg::Goaway {
            code: code.into(),
            message: message.into(),
        })
        .await;
    conn.goaway.fire();
}

/// Writes answers as they come, several per write when they queue up.
async fn write_loop<W: AsyncWriteRent>(
    mut wr: W,
    rx: flume::Receiver<ServerMsg>,
    timeout: Duration,
    kill: Shutdown,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let first = monoio::select! {
            m = rx.recv_async() => m,
            _ = kill.wait() => break,
        };
        let Ok(first) = first else { break };
        push(&first, &mut buf);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(m) => push(&m, &mut buf),
                Err(_) => break,
            }
        }
        let write = monoio::select! {
            r = monoio::time::timeout(timeout, wr.write_all(std::mem::take(&mut buf))) => r,
            _ = kill.wait() => break,
        };
        match write {
            Ok((Ok(_), mut b)) => {
                b.clear();
                if b.capacity() > 4 * WRITE_BATCH {
                    b = Vec::with_capacity(16 * 1024);
                }
                buf = b;
            }
            _ => {
                kill.fire();
                break;
            }
        }
    }
    if !kill.is_fired() {
        let _ = monoio::time::timeout(timeout, wr.shutdown()).await;
    }
}

/// Encodes one answer; one that cannot be framed becomes an `internal_error`.
fn push(m: &ServerMsg, buf: &mut Vec<u8>) {
    if encode(m, MAX_FRAME, buf).is_err() {
        let e = api_error(m.request_id(), &ApiError::internal_error(), None);
        let _ = encode(&e, MAX_FRAME, buf);
    }
}
