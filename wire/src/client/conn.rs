//! One client connection: blocking socket, a writer thread and a reader thread.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{ClientConfig, ClientError, Inner};
use crate::proto::{encode, ClientMsg, Decoder, Preface, ServerMsg, MAX_FRAME, PREFACE_LEN};

pub(crate) struct ConnHandle {
    pub(crate) id: u64,
    pub(crate) addr: String,
    /// The node's id, from `HelloOk`.
    pub(crate) node: String,
    max_frame: usize,
    /// The write side: requests are written by the submitting thread itself
    /// (no hand-off to another thread on the latency path).
    wr: Mutex<TcpStream>,
    /// Frames held back while corked (`cork` / `uncork`): a batch of
    /// requests leaves in one write.
    corked: Mutex<Option<Vec<u8>>>,
    stream: TcpStream,
    draining: AtomicBool,
    dead: AtomicBool,
}

impl ConnHandle {
    /// Open, not lost, and not told to go away.
    pub(crate) fn usable(&self) -> bool {
        !self.dead.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Writes one request. Called with the client's state lock held, so
    /// requests leave in submission order. It can only block while the
    /// server is not reading, which it does not do below its in-flight limit
    /// (the client's `max_inflight` is capped to stay below it).
    pub(crate) fn send(&self, msg: &ClientMsg) {
        let mut buf = Vec::new();
        if encode(msg, self.max_frame, &mut buf).is_err() {
            // Too large for the server: it would close the connection. Send
            // nothing; the request is answered when the connection is lost.
            // (Callers keep events below the server's max_frame.)
            return;
        }
        if let Some(held) = self
            .corked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            held.extend_from_slice(&buf);
            return;
        }
        self.write(&buf);
    }

    fn write(&self, buf: &[u8]) {
        let mut wr = self.wr.lock().unwrap_or_else(|p| p.into_inner());
        if wr.write_all(buf).is_err() {
            // The reader sees the connection end and moves what is unanswered.
            let _ = wr.shutdown(Shutdown::Both);
        }
    }

    /// Holds the frames of the following `send`s until `uncork`.
    pub(crate) fn cork(&self) {
        let mut c = self.corked.lock().unwrap_or_else(|p| p.into_inner());
        c.get_or_insert_with(Vec::new);
    }

    /// Writes the frames held since `cork`, in order, in one write.
    pub(crate) fn uncork(&self) {
        let held = self.corked.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(buf) = held.filter(|b| !b.is_empty()) {
            self.write(&buf);
        }
    }

    pub(crate) fn close(&self) {
        self.dead.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn connect_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connect(e.to_string())
}

/// Connects, exchanges prefaces and `Hello`, and starts the threads.
pub(crate) fn open(
    inner: Arc<Inner>,
    id: u64,
    addr: &str,
    cfg: &ClientConfig,
) -> Result<Arc<ConnHandle>, ClientError> {
    let sock = addr
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| connect_err("address resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&sock, cfg.connect_timeout).map_err(connect_err)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(cfg.connect_timeout))
        .map_err(connect_err)?;
    stream
        .set_write_timeout(Some(cfg.connect_timeout))
        .map_err(connect_err)?;
    stream
        .write_all(&Preface::OURS.to_bytes())
        .map_err(connect_err)?;
    let mut theirs = [0u8; PREFACE_LEN];
    stream.read_exact(&mut theirs).map_err(connect_err)?;
    let theirs = Preface::parse(&theirs).map_err(connect_err)?;
    Preface::OURS.negotiate(theirs).map_err(connect_err)?;
    let mut hello = Vec::new();
    let msg = ClientMsg::Hello {
        request_id: 0,
        token: cfg.token.clone(),
        client: cfg.client_name.clone(),
    };
    encode(&msg, MAX_FRAME, &mut hello).map_err(connect_err)?;
    stream.write_all(&hello).map_err(connect_err)?;
    let mut dec = Decoder::new(MAX_FRAME);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + cfg.connect_timeout;
    let (node, max_frame) = loop {
        match dec.next::<ServerMsg>().map_err(connect_err)? {
            Some(ServerMsg::HelloOk {
                node, max_frame, ..
            }) => break (node, max_frame as usize),
            Some(ServerMsg::Error {
                code,
                message,
                status,
                ..
            }) => {
                return Err(ClientError::Server {
                    code,
                    message,
                    status,
                })
            }
            Some(_) => continue,
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(connect_err("no HelloOk in time"));
        }
        let n = stream.read(&mut buf).map_err(connect_err)?;
        if n == 0 {
            return Err(connect_err("closed during Hello"));
        }
        dec.push(&buf[..n]);
    };
    stream.set_read_timeout(None).map_err(connect_err)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(connect_err)?;
    let handle = Arc::new(ConnHandle {
        id,
        addr: addr.to_owned(),
        node,
        max_frame,
        wr: Mutex::new(stream.try_clone().map_err(connect_err)?),
        corked: Mutex::new(None),
        stream: stream.try_clone().map_err(connect_err)?,
        draining: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    });
    let weak = Arc::downgrade(&inner);
    let h = handle.clone();
    std::thread::Builder::new()
        .name(format!("starcite-wire-r{id}"))
        .spawn(move || read_loop(stream, dec, weak, h))
        .map_err(connect_err)?;
    Ok(handle)
}

fn read_loop(mut stream: TcpStream, mut dec: Decoder, inner: Weak<Inner>, h: Arc<ConnHandle>) {
    let mut buf = vec![0u8; 64 * 1024];
    'outer: loop {
        loop {
            match dec.next::<ServerMsg>() {
                Ok(Some(msg)) => {
                    let Some(inner) = inner.upgrade() else {
                        break 'outer;
                    };
                    inner.on_message(&h, msg);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => dec.push(&buf[..n]),
        }
    }
    h.close();
    if let Some(inner) = inner.upgrade() {
        inner.on_lost(&h);
    }
}
