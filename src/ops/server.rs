//! The admin socket server: `<data dir>/admin.sock`, mode 0600, served by one
//! dedicated thread (plus one short-lived thread per connection, at most
//! [`MAX_CONNECTIONS`]). Blocking I/O: this is not a hot path.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::protocol::{
    encode_line, error_response, ok_response, LineError, LineReader, Request, MAX_REQUEST_BYTES,
};
use super::{socket_path, sys};

/// At most this many connections are served at once; extra ones get an error line and
/// are closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection must deliver each complete request line within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const SOCKET_MODE: libc::mode_t = 0o600;

/// What the node exposes to operators. Implemented by the node; called from the admin
/// threads, so it must be thread-safe, and each call should return promptly (the
/// client does the waiting, by polling).
pub trait OpsBackend: Send + Sync + 'static {
    /// Contract §10.2 `status()` map (extra fields allowed).
    fn status(&self) -> Value;
    /// The ready set (§10.1), sorted.
    fn ready_nodes(&self) -> Vec<String>;
    /// Marks `node` (None = this node) `draining` cluster-wide.
    fn drain(&self, node: Option<&str>) -> Result<(), OpsError>;
    /// Marks `node` (None = this node) `ready` cluster-wide.
    fn undrain(&self, node: Option<&str>) -> Result<(), OpsError>;
    /// Re-checks readiness (§5.5, refreshing the consensus probe as a readiness request does).
    fn local_ready(&self) -> bool;
    /// Write node ∧ own status `draining` ∧ not in own ready set ∧ every visible node reports it draining.
    fn local_drained(&self) -> bool;
    /// Replica list of `group`; `InvalidGroupId` outside `0 ≤ group < num_groups`.
    fn group_replicas(&self, group: u32) -> Result<Vec<String>, OpsError>;
    /// Approves replacing write node `node` by the new incarnation it runs (a
    /// Raft membership change in each of its groups) and reports progress:
    /// `{"node","raft_id","incarnation","voter_groups","groups","done"}`.
    /// Idempotent; the client polls it until `done`.
    fn replace_node(&self, node: &str) -> Result<Value, OpsError> {
        Err(OpsError::Unavailable(format!(
            "replace_node({node:?}) is not supported by this node"
        )))
    }
}

/// Failures an operator function reports; the `Display` text is shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpsError {
    #[error("{0:?} is not a write node (not listed in STARCITE_WRITE_NODE_IDS)")]
    InvalidWriteNode(String),
    #[error("group id {0} is out of range (valid ids: 0 <= id < STARCITE_NUM_GROUPS)")]
    InvalidGroupId(u32),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl OpsError {
    /// The `error` code on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            OpsError::InvalidWriteNode(_) => "invalid_write_node",
            OpsError::InvalidGroupId(_) => "invalid_group_id",
            OpsError::Unavailable(_) => "unavailable",
        }
    }
}

/// Tunables, fixed in production; tests shorten the timeout.
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    pub read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            read_timeout: READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// A running admin socket. Dropping it (or calling [`AdminServer::stop`]) stops the
/// threads, closes open connections and removes the socket file.
pub struct AdminServer {
    path: PathBuf,
    /// (device, inode) of the socket file we created: only that file is removed.
    identity: Option<(u64, u64)>,
    shared: Arc<Shared>,
    waker: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    /// Clones of the open connections, so `stop` can shut them down.
    open: HashMap<u64, UnixStream>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds `<data_dir>/admin.sock` (mode 0600; a stale socket file left by a crash is
/// replaced; a socket another live process serves is not) and serves it on a
/// dedicated thread.
pub fn serve_admin(data_dir: &Path, backend: Arc<dyn OpsBackend>) -> io::Result<AdminServer> {
    serve_admin_with(data_dir, backend, ServeOptions::default())
}

pub(crate) fn serve_admin_with(
    data_dir: &Path,
    backend: Arc<dyn OpsBackend>,
    opts: ServeOptions,
) -> io::Result<AdminServer> {
    fs::create_dir_all(data_dir)?;
    let bind_path = socket_path(data_dir);
    // Remember an absolute path for the removal at shutdown, in case the working
    // directory changes meanwhile.
    let path = fs::canonicalize(data_dir)
        .map(|d| socket_path(&d))
        .unwrap_or_else(|_| bind_path.clone());
    clear_stale_socket(&bind_path)?;
    let listener = sys::bind_listener(&bind_path, SOCKET_MODE, 64).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the admin socket {}: {e}", bind_path.display()),
        )
    })?;
    let meta = fs::symlink_metadata(&bind_path);
    let identity = meta.as_ref().ok().map(|m| (m.dev(), m.ino()));
    if let Err(e) = fs::set_permissions(&bind_path, fs::Permissions::from_mode(SOCKET_MODE)) {
        let _ = fs::remove_file(&bind_path);
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot restrict the admin socket {}: {e}",
                bind_path.display()
            ),
        ));
    }
    listener.set_nonblocking(true)?;
    let (waker, wake_rx) = UnixStream::pair()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        conns: Mutex::new(Conns::default()),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("starcite-admin".to_owned())
            .spawn(move || accept_loop(listener, wake_rx, shared, backend, opts))
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(&bind_path);
            return Err(e);
        }
    };
    tracing::info!(path = %path.display(), "admin socket listening");
    Ok(AdminServer {
        path,
        identity,
        shared,
        waker: Some(waker),
        thread: Some(thread),
    })
}

/// Removes a socket file nobody serves any more. Refuses when a live process answers
/// on it, or when the path is something other than a socket.
fn clear_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; remove it to let the node create its admin socket",
                path.display()
            ),
        ));
    }
    match sys::connect_timeout(path, Duration::from_secs(1)) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is serving the admin socket {}",
                path.display()
            ),
        )),
        Err(e)
            if e.kind() == io::ErrorKind::ConnectionRefused
                || e.kind() == io::ErrorKind::NotFound =>
        {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot check the existing admin socket {}: {e}",
                path.display()
            ),
        )),
    }
}

impl AdminServer {
    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving: closes open connections, joins the threads, removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Closing our end of the pair wakes the accept thread's poll.
        drop(self.waker.take());
        let _ = thread.join();
        // Remove the file only if it is still the one we created.
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            let ours = match self.identity {
                Some(id) => id == (meta.dev(), meta.ino()),
                None => true,
            };
            if ours {
                let _ = fs::remove_file(&self.path);
            }
        }
        tracing::info!(path = %self.path.display(), "admin socket closed");
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: UnixListener,
    wake: UnixStream,
    shared: Arc<Shared>,
    backend: Arc<dyn OpsBackend>,
    opts: ServeOptions,
) {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    let euid = sys::effective_uid();
    while !shared.stop.load(Ordering::SeqCst) {
        match sys::poll_readable([listener.as_raw_fd(), wake.as_raw_fd()], 1000) {
            Ok([_, true]) => break,
            Ok([false, _]) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: poll failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                handles.retain(|h| !h.is_finished());
                if let Some(h) = admit(stream, euid, &shared, &backend, &opts) {
                    handles.push(h);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // E.g. out of descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "admin socket: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(listener);
    for stream in shared.conns().open.values() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    for h in handles {
        let _ = h.join();
    }
}

/// Answers one error line without ever blocking the accept thread, then closes.
fn reject(stream: UnixStream, code: &str, message: &str) {
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write_all(&encode_line(&error_response(code, message)));
}

fn admit(
    stream: UnixStream,
    euid: u32,
    shared: &Arc<Shared>,
    backend: &Arc<dyn OpsBackend>,
    opts: &ServeOptions,
) -> Option<JoinHandle<()>> {
    if stream.set_nonblocking(false).is_err() {
        return None;
    }
    // The 0600 mode already keeps other users out; this also holds if someone loosens it.
    if let Some(uid) = sys::peer_uid(&stream) {
        if uid != euid && uid != 0 {
            tracing::warn!(uid, "admin socket: refused a connection from another user");
            reject(
                stream,
                "forbidden",
                "only the user running the node (or root) may use the admin socket",
            );
            return None;
        }
    }
    let mut conns = shared.conns();
    if conns.open.len() >= opts.max_connections {
        drop(conns);
        reject(
            stream,
            "too_many_connections",
            &format!(
                "the admin socket serves at most {} connections at a time; retry shortly",
                opts.max_connections
            ),
        );
        return None;
    }
    let Ok(clone) = stream.try_clone() else {
        drop(conns);
        reject(stream, "internal", "cannot serve this connection");
        return None;
    };
    let id = conns.next_id;
    conns.next_id += 1;
    conns.open.insert(id, clone);
    drop(conns);
    let spawned = {
        let shared = shared.clone();
        let backend = backend.clone();
        let read_timeout = opts.read_timeout;
        std::thread::Builder::new()
            .name("starcite-admin-conn".to_owned())
            .spawn(move || {
                let _guard = ConnGuard {
                    id,
                    shared: shared.clone(),
                };
                serve_connection(&stream, &shared, &*backend, read_timeout);
            })
    };
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot start a connection thread");
            if let Some(stream) = shared.conns().open.remove(&id) {
                reject(stream, "internal", "cannot serve this connection");
            }
            None
        }
    }
}

/// Forgets the connection when its thread ends, however it ends.
struct ConnGuard {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.conns().open.remove(&self.id);
    }
}

fn serve_connection(
    stream: &UnixStream,
    shared: &Shared,
    backend: &dyn OpsBackend,
    read_timeout: Duration,
) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut reader = LineReader::default();
    let send = |v: &Value| (&*stream).write_all(&encode_line(v)).is_ok();
    while !shared.stop.load(Ordering::SeqCst) {
        let deadline = Instant::now() + read_timeout;
        match reader.read_line(stream, MAX_REQUEST_BYTES, deadline) {
            Ok(Some(line)) => {
                if !send(&handle_line(&line, backend)) {
                    return;
                }
            }
            Ok(None) => return,
            Err(LineError::TooLong) => {
                send(&error_response(
                    "request_too_large",
                    format!("requests are limited to {MAX_REQUEST_BYTES} bytes per line"),
                ));
                return;
            }
            Err(LineError::TimedOut) => {
                send(&error_response(
                    "timeout",
                    format!(
                        "no complete request within {} ms; closing",
                        read_timeout.as_millis()
                    ),
                ));
                return;
            }
            Err(LineError::Io(_)) => return,
        }
    }
}

/// The response to one request line.
pub(crate) fn handle_line(line: &[u8], backend: &dyn OpsBackend) -> Value {
    if line.iter().all(u8::is_ascii_whitespace) {
        return error_response(
            "bad_request",
            "empty request; send one JSON object per line, e.g. {\"op\":\"status\"}",
        );
    }
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err(msg) => return error_response("bad_request", msg),
    };
    let op = req.op();
    match catch_unwind(AssertUnwindSafe(|| dispatch(req, backend))) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!(op, "admin socket: operator function panicked");
            error_response(
                "internal",
                format!("the node failed while running {op} (see the node log)"),
            )
        }
    }
}

fn dispatch(req: Request, backend: &dyn OpsBackend) -> Value {
    let outcome = |r: Result<Value, OpsError>| match r {
        Ok(v) => ok_response(v),
        Err(e) => error_response(e.code(), e.to_string()),
    };
    match req {
        Request::Status => ok_response(backend.status()),
        Request::ReadyNodes => ok_response(json!(backend.ready_nodes())),
        Request::LocalReady => ok_response(json!(backend.local_ready())),
        Request::LocalDrained => ok_response(json!(backend.local_drained())),
        Request::Drain { node } => {
            tracing::info!(
                node = node.as_deref().unwrap_or("<this node>"),
                "operator: drain"
            );
            outcome(backend.drain(node.as_deref()).map(|()| json!("ok")))
        }
        Request::Undrain { node } => {
            tracing::info!(
                node = node.as_deref().unwrap_or("<this node>"),
                "operator: undrain"
            );
            outcome(backend.undrain(node.as_deref()).map(|()| json!("ok")))
        }
        Request::ReplaceNode { node } => outcome(backend.replace_node(&node)),
        Request::GroupReplicas { group } => {
            outcome(backend.group_replicas(group).map(|r| json!(r)))
        }
    }
}
