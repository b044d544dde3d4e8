//! Multi-process cluster harness: starts N `starcite dev` nodes wired into one
//! cluster (contract §8, §10), a fault-injecting TCP proxy for network
//! partitions, a retrying load generator, and a cross-node verifier.
//!
//! Everything here is a child process or a thread of the test: `Drop` kills
//! only the PIDs this harness spawned. Clusters of one test binary never run
//! at the same time (a process-wide lock is held by every `Cluster`), so the
//! default parallel test runner does not put 9 nodes on 2 cores.

use super::{append_path, build_request, pct, try_request, Frame, HttpConn, Response, Tail};

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const SECRET: &str = "starcite-cluster-test-secret-0123456789abcdef";
pub const BIN: &str = env!("CARGO_BIN_EXE_starcite");

/// One cluster at a time per test binary.
static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

// ---------------------------------------------------------------------------
// Options and node processes
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub writers: usize,
    pub routers: usize,
    pub rf: usize,
    /// Put a fault-injecting proxy on every node's cluster port (see [`Net`]).
    pub proxy: bool,
    pub num_groups: u32,
    pub cores: u32,
    /// Extra environment for every node.
    pub env: Vec<(String, String)>,
    /// Bound for the initial "every node ready" wait and for `restart`.
    pub ready_timeout: Duration,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            writers: 3,
            routers: 0,
            rf: 3,
            proxy: false,
            num_groups: 16,
            cores: 1,
            env: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

pub struct NodeProc {
    /// Short name (`n1`, `r1`).
    pub name: String,
    /// Full node id (`n1@127.0.0.1:<cluster port>`), as in RELEASE_NODE.
    pub id: String,
    pub writer: bool,
    pub http_port: u16,
    /// The binary protocol port (`STARCITE_WIRE_PORT`), one per node.
    pub wire_port: u16,
    /// The port in the id (where peers connect; the proxy when `proxy`).
    pub cluster_port: u16,
    /// Where the node itself listens for peers.
    pub listen_port: u16,
    pub data_dir: PathBuf,
    log_dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl NodeProc {
    fn log_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}-start{}.log", self.name, self.starts))
    }
}

#[derive(Debug, Clone)]
pub struct OpsOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct Cluster {
    pub opts: ClusterOpts,
    nodes: Vec<NodeProc>,
    common_env: Vec<(String, String)>,
    net: Option<Net>,
    tmp: Option<tempfile::TempDir>,
    _guard: MutexGuard<'static, ()>,
}

/// `n` distinct free loopback ports (see [`super::free_ports`]).
fn free_ports(n: usize) -> Vec<u16> {
    super::free_ports(n)
}

impl Cluster {
    /// Starts every node and waits (bounded by `opts.ready_timeout`) until each
    /// one's `/health/ready` answers 200.
    pub fn start(opts: ClusterOpts) -> Cluster {
        let guard = CLUSTER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            opts.writers >= 1 && opts.rf >= 1 && opts.rf <= opts.writers,
            "bad opts {opts:?}"
        );
        let tmp = tempfile::Builder::new()
            .prefix("stc-cluster-")
            .tempdir()
            .expect("tempdir");
        let n = opts.writers + opts.routers;
        let both = free_ports(2 * n);
        let (http, wire) = both.split_at(n);
        // With a proxy the id port is the proxy's listener (kept bound); the
        // node listens on a separate port.
        let mut proxy_listeners = Vec::new();
        let (cluster_ports, listen_ports) = if opts.proxy {
            for _ in 0..n {
                proxy_listeners.push(TcpListener::bind("127.0.0.1:0").expect("bind proxy"));
            }
            let cp: Vec<u16> = proxy_listeners
                .iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect();
            let lp = free_ports(n);
            (cp, lp)
        } else {
            let cp = free_ports(n);
            (cp.clone(), cp)
        };
        let mut nodes = Vec::new();
        for i in 0..n {
            let writer = i < opts.writers;
            let name = if writer {
                format!("n{}", i + 1)
            } else {
                format!("r{}", i + 1 - opts.writers)
            };
            let id = format!("{name}@127.0.0.1:{}", cluster_ports[i]);
            let base = tmp.path().join(&name);
            let data_dir = base.join("data");
            let log_dir = base.join("logs");
            std::fs::create_dir_all(&data_dir).unwrap();
            std::fs::create_dir_all(&log_dir).unwrap();
            nodes.push(NodeProc {
                name,
                id,
                writer,
                http_port: http[i],
                wire_port: wire[i],
                cluster_port: cluster_ports[i],
                listen_port: listen_ports[i],
                data_dir,
                log_dir,
                child: None,
                starts: 0,
            });
        }
        let all: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let writers: Vec<String> = nodes
            .iter()
            .filter(|n| n.writer)
            .map(|n| n.id.clone())
            .collect();
        let mut common_env = vec![
            ("CLUSTER_NODES".to_string(), all.join(",")),
            ("STARCITE_WRITE_NODE_IDS".to_string(), writers.join(",")),
            (
                "STARCITE_WRITE_REPLICATION_FACTOR".to_string(),
                opts.rf.to_string(),
            ),
            ("SECRET_KEY_BASE".to_string(), SECRET.to_string()),
            ("STARCITE_CORES".to_string(), opts.cores.to_string()),
            (
                "STARCITE_NUM_GROUPS".to_string(),
                opts.num_groups.to_string(),
            ),
        ];
        common_env.extend(opts.env.iter().cloned());
        let net = if opts.proxy {
            Some(Net::start(
                proxy_listeners,
                all.clone(),
                listen_ports.clone(),
            ))
        } else {
            None
        };
        let mut c = Cluster {
            opts,
            nodes,
            common_env,
            net,
            tmp: Some(tmp),
            _guard: guard,
        };
        eprintln!(
            "[cluster] starting {} node(s) in {}: {}",
            n,
            c.tmp.as_ref().unwrap().path().display(),
            c.nodes
                .iter()
                .map(|n| format!("{} http={}", n.id, n.http_port))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let t0 = Instant::now();
        for i in 0..n {
            c.spawn(i);
        }
        let timeout = c.opts.ready_timeout;
        for i in 0..n {
            let left = timeout
                .saturating_sub(t0.elapsed())
                .max(Duration::from_secs(1));
            if let Err(e) = c.wait_ready(i, left) {
                panic!(
                    "[cluster] node {} not ready within {timeout:?}: {e}",
                    c.nodes[i].name
                );
            }
        }
        eprintln!(
            "[cluster] all {n} nodes ready after {} ms",
            ms(t0.elapsed())
        );
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn node(&self, i: usize) -> &NodeProc {
        &self.nodes[i]
    }
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }
    pub fn id(&self, i: usize) -> &str {
        &self.nodes[i].id
    }
    pub fn http_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }
    pub fn wire_port(&self, i: usize) -> u16 {
        self.nodes[i].wire_port
    }
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.http_port).collect()
    }
    pub fn ports_of(&self, idx: &[usize]) -> Vec<u16> {
        idx.iter().map(|i| self.nodes[*i].http_port).collect()
    }
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data_dir
    }
    /// Index of the node with this id or short name.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.id == id || n.name == id || id.split('@').next() == Some(n.name.as_str())
        })
    }

    /// Sets an environment variable for nodes started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.common_env.retain(|(k, _)| k != key);
        self.common_env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts node `i`'s process (it must not be running); does not wait.
    pub fn spawn(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "node {} is already running",
            self.nodes[i].name
        );
        let env = self.common_env.clone();
        let proxied = self.net.is_some();
        let node = &mut self.nodes[i];
        node.starts += 1;
        let log = std::fs::File::create(node.log_path()).expect("create log");
        let mut cmd = Command::new(BIN);
        cmd.arg("dev")
            .current_dir(node.data_dir.parent().unwrap())
            .env("RELEASE_NODE", &node.id)
            .env("PORT", node.http_port.to_string())
            .env("STARCITE_WIRE_PORT", node.wire_port.to_string())
            .env("STARCITE_RAFT_DATA_DIR", &node.data_dir)
            // One archive for the whole cluster (the fs adapter's shared directory).
            .env(
                "STARCITE_ARCHIVE_FS_DIR",
                node.data_dir
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .join("archive"),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        if proxied {
            cmd.env("STARCITE_CLUSTER_LISTEN_PORT", node.listen_port.to_string());
        }
        let child = cmd.spawn().expect("spawn starcite");
        eprintln!(
            "[cluster] spawned {} (pid {}, start #{})",
            node.name,
            child.id(),
            node.starts
        );
        node.child = Some(child);
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL node `i` (only its PID) and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("[cluster] kill -9 {}", self.nodes[i].name);
        }
    }

    /// SIGTERM node `i` and wait up to `timeout`; SIGKILL if it has not exited by then.
    /// Returns the exit status if it exited on its own.
    pub fn sigterm(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let name = self.nodes[i].name.clone();
        let Some(mut c) = self.nodes[i].child.take() else {
            return None;
        };
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                eprintln!("[cluster] {name} exited after SIGTERM: {st}");
                return Some(st);
            }
            if Instant::now() > deadline {
                eprintln!("[cluster] {name} did not exit within {timeout:?} of SIGTERM; SIGKILL");
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill -9 (if running) and start again with the same data dir and ports;
    /// waits for readiness (panics on timeout).
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        let t = self.opts.ready_timeout;
        if let Err(e) = self.wait_ready(i, t) {
            panic!(
                "[cluster] {} not ready within {t:?} after restart: {e}",
                self.nodes[i].name
            );
        }
    }

    /// One `/health/ready` probe: (status, body) or an error string.
    pub fn ready(&self, i: usize) -> Result<(u16, Value), String> {
        let req = build_request("GET", "/health/ready", &[], None);
        match try_request(self.nodes[i].http_port, &req, false, Duration::from_secs(3)) {
            Ok(r) => {
                let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()));
                Ok((r.status, v))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Polls `/health/ready` until 200 (Ok) or timeout / process exit (Err).
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.nodes[i].child = None;
                    return Err(format!(
                        "{} exited ({st}) before becoming ready; log tail:\n{}",
                        self.nodes[i].name,
                        self.log_tail(i, 60)
                    ));
                }
            } else {
                return Err(format!("{} is not running", self.nodes[i].name));
            }
            match self.ready(i) {
                Ok((200, _)) => return Ok(()),
                Ok((st, v)) => last = format!("{st} {v}"),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "last /health/ready: {last}; log tail:\n{}",
                    self.log_tail(i, 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_all_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        for i in 0..self.nodes.len() {
            let left = timeout
                .saturating_sub(t0.elapsed())
                .max(Duration::from_millis(200));
            self.wait_ready(i, left)
                .map_err(|e| format!("{}: {e}", self.nodes[i].name))?;
        }
        Ok(())
    }

    // --- operator commands ------------------------------------------------

    /// `starcite ops --data-dir <dir of node i> <args…>` (bounded by 120 s).
    pub fn ops_full(&self, i: usize, args: &[&str]) -> OpsOut {
        let mut cmd = Command::new(BIN);
        cmd.arg("ops")
            .arg("--data-dir")
            .arg(&self.nodes[i].data_dir)
            .args(args);
        run_bounded(cmd, Duration::from_secs(120))
    }

    /// (exit code, stdout) of `starcite ops … <args>` on node `i`.
    pub fn ops(&self, i: usize, args: &[&str]) -> (i32, String) {
        let o = self.ops_full(i, args);
        if o.code != 0 {
            eprintln!(
                "[ops {} {:?}] exit {}: stdout {:?} stderr {:?}",
                self.nodes[i].name, args, o.code, o.stdout, o.stderr
            );
        }
        (o.code, o.stdout)
    }

    /// Runs an ops command and panics unless it exits 0.
    #[track_caller]
    pub fn ops_ok(&self, i: usize, args: &[&str]) -> String {
        let o = self.ops_full(i, args);
        assert_eq!(
            o.code, 0,
            "starcite ops {args:?} on {}: stdout {:?} stderr {:?}",
            self.nodes[i].name, o.stdout, o.stderr
        );
        o.stdout
    }

    /// `starcite rpc --data-dir <dir> "<expr>"`.
    pub fn rpc(&self, i: usize, expr: &str) -> OpsOut {
        let mut cmd = Command::new(BIN);
        cmd.arg("rpc")
            .arg("--data-dir")
            .arg(&self.nodes[i].data_dir)
            .arg(expr);
        run_bounded(cmd, Duration::from_secs(120))
    }

    /// `ops status` parsed; panics if the command fails.
    #[track_caller]
    pub fn status(&self, i: usize) -> Value {
        let out = self.ops_ok(i, &["status"]);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "ops status of {} is not JSON ({e}): {out}",
                self.nodes[i].name
            )
        })
    }

    pub fn try_status(&self, i: usize) -> Option<Value> {
        let o = self.ops_full(i, &["status"]);
        if o.code != 0 {
            return None;
        }
        serde_json::from_str(&o.stdout).ok()
    }

    /// `leaders.per_node` as node index → count (as reported by node `i`).
    pub fn leaders_per_node(&self, i: usize) -> BTreeMap<usize, u64> {
        let st = self.status(i);
        let mut out = BTreeMap::new();
        if let Some(m) = st["leaders"]["per_node"].as_object() {
            for (k, v) in m {
                if let Some(idx) = self.index_of(k) {
                    out.insert(idx, v.as_u64().unwrap_or(0));
                }
            }
        }
        out
    }

    /// Each running node's own count of groups it leads (exact, no gossip lag).
    pub fn own_leaders(&mut self) -> BTreeMap<usize, u64> {
        let mut out = BTreeMap::new();
        for i in 0..self.nodes.len() {
            if self.is_running(i) {
                out.insert(i, self.leaders_per_node(i).get(&i).copied().unwrap_or(0));
            }
        }
        out
    }

    /// Node indexes in the ready set according to `ops ready-nodes` on node `i`.
    pub fn ready_nodes(&self, i: usize) -> Result<Vec<usize>, String> {
        let o = self.ops_full(i, &["ready-nodes"]);
        if o.code != 0 {
            return Err(format!("exit {} stderr {}", o.code, o.stderr));
        }
        let line = o
            .stdout
            .lines()
            .find(|l| l.starts_with("ready_nodes="))
            .ok_or_else(|| format!("unexpected output {:?}", o.stdout))?;
        let list = &line["ready_nodes=".len()..];
        let mut out = Vec::new();
        for n in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(
                self.index_of(n)
                    .ok_or_else(|| format!("unknown node {n:?} in {line:?}"))?,
            );
        }
        out.sort();
        Ok(out)
    }

    /// Polls until `ready_nodes(i)` equals `want` (sorted) or timeout.
    pub fn wait_ready_set(
        &self,
        i: usize,
        want: &[usize],
        timeout: Duration,
    ) -> Result<Duration, String> {
        let mut want = want.to_vec();
        want.sort();
        let t0 = Instant::now();
        let mut last = Err("never asked".to_string());
        while t0.elapsed() < timeout {
            last = self.ready_nodes(i);
            if last.as_ref().ok() == Some(&want) {
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "ready set on {} never became {want:?} within {timeout:?}; last {last:?}",
            self.nodes[i].name
        ))
    }

    // --- network faults -----------------------------------------------------

    pub fn net(&self) -> &Net {
        self.net
            .as_ref()
            .expect("cluster started without proxy: true")
    }

    // --- logs ---------------------------------------------------------------

    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let s = std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default();
        let v: Vec<&str> = s.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Every log line (all nodes, all starts) containing `needle`.
    pub fn grep_logs(&self, needle: &str) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for s in 1..=n.starts {
                let p = n.log_dir.join(format!("{}-start{s}.log", n.name));
                if let Ok(text) = std::fs::read_to_string(&p) {
                    for l in text.lines().filter(|l| l.contains(needle)) {
                        out.push(format!("{} start {s}: {l}", n.name));
                    }
                }
            }
        }
        out
    }

    /// A node process panicking is always a server bug.
    #[track_caller]
    pub fn assert_no_panics(&self) {
        let p = self.grep_logs("panicked");
        assert!(p.is_empty(), "node log(s) show panics:\n{}", p.join("\n"));
    }

    fn dump_logs(&self, lines: usize) {
        for (i, n) in self.nodes.iter().enumerate() {
            eprintln!(
                "---- log tail of {} ({}; {}) ----\n{}",
                n.name,
                n.id,
                n.log_path().display(),
                self.log_tail(i, lines)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.dump_logs(80);
        }
        for n in self.nodes.iter_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(net) = self.net.take() {
            net.stop();
        }
        if let Some(tmp) = self.tmp.take() {
            if panicking || std::env::var_os("STARCITE_TEST_KEEP").is_some() {
                let p = tmp.keep();
                eprintln!("[cluster] kept data and logs in {}", p.display());
            }
        }
    }
}

/// Runs a child command with a deadline (killing only that child on timeout).
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> OpsOut {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn starcite ops");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code().unwrap_or(-1),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break -9;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break -1,
        }
    };
    OpsOut {
        code,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// Fault-injecting TCP proxy
// ---------------------------------------------------------------------------

/// One proxy per destination node, listening on that node's id port and
/// forwarding to its real listen port. The source node of a connection is
/// identified from the connector's first (Hello) frame, which carries its node
/// id in clear; so a cut between A and B closes existing connections and
/// refuses new ones in both directions, and nothing else.
pub struct Net {
    inner: Arc<NetInner>,
    threads: Vec<JoinHandle<()>>,
    ports: Vec<u16>,
}

struct NetInner {
    ids: Vec<String>,
    targets: Vec<u16>,
    blocked: Mutex<HashSet<(usize, usize)>>,
    conns: Mutex<HashMap<u64, ProxyConn>>,
    next: AtomicU64,
    stop: AtomicBool,
    refused: AtomicU64,
    cut: AtomicU64,
}

struct ProxyConn {
    src: Option<usize>,
    dst: usize,
    a: TcpStream,
    b: TcpStream,
}

impl NetInner {
    fn identify(&self, buf: &[u8]) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, id) in self.ids.iter().enumerate() {
            let n = id.as_bytes();
            if buf.windows(n.len()).any(|w| w == n) && best.map_or(true, |(_, l)| n.len() > l) {
                best = Some((i, n.len()));
            }
        }
        best.map(|(i, _)| i)
    }

    fn is_blocked(&self, src: Option<usize>, dst: usize) -> bool {
        let b = self.blocked.lock().unwrap();
        match src {
            Some(s) => b.contains(&(s, dst)),
            None => b.iter().any(|(x, y)| *x == dst || *y == dst),
        }
    }

    fn enforce(&self) {
        let conns = self.conns.lock().unwrap();
        for c in conns.values() {
            if self.is_blocked(c.src, c.dst) {
                let _ = c.a.shutdown(Shutdown::Both);
                let _ = c.b.shutdown(Shutdown::Both);
                self.cut.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut b = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn proxy_conn(inner: Arc<NetInner>, dst: usize, mut client: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut src = None;
    while Instant::now() < deadline && buf.len() < 16 * 1024 && !inner.stop.load(Ordering::Relaxed)
    {
        match client.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                if let Some(s) = inner.identify(&buf) {
                    src = Some(s);
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
    let _ = client.set_read_timeout(None);
    if inner.stop.load(Ordering::Relaxed) || inner.is_blocked(src, dst) {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let mut server = match TcpStream::connect_timeout(
        &([127, 0, 0, 1], inner.targets[dst]).into(),
        Duration::from_secs(2),
    ) {
        Ok(s) => s,
        Err(_) => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    if server.write_all(&buf).is_err() {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let id = inner.next.fetch_add(1, Ordering::Relaxed);
    let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    inner
        .conns
        .lock()
        .unwrap()
        .insert(id, ProxyConn { src, dst, a, b });
    // A partition may have been set between the check above and the insert.
    if inner.is_blocked(src, dst) {
        inner.enforce();
    }
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || pump(s2, c2));
    pump(client, server);
    let _ = back.join();
    inner.conns.lock().unwrap().remove(&id);
}

impl Net {
    fn start(listeners: Vec<TcpListener>, ids: Vec<String>, targets: Vec<u16>) -> Net {
        let inner = Arc::new(NetInner {
            ids,
            targets,
            blocked: Mutex::new(HashSet::new()),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let threads = listeners
            .into_iter()
            .enumerate()
            .map(|(dst, l)| {
                let inner = inner.clone();
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        if inner.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Ok(s) = s {
                            let inner = inner.clone();
                            std::thread::spawn(move || proxy_conn(inner, dst, s));
                        }
                    }
                })
            })
            .collect();
        Net {
            inner,
            threads,
            ports,
        }
    }

    /// Cuts every link between a node of `a` and a node of `b` (both directions).
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        {
            let mut bl = self.inner.blocked.lock().unwrap();
            for x in a {
                for y in b {
                    bl.insert((*x, *y));
                    bl.insert((*y, *x));
                }
            }
        }
        self.inner.enforce();
        eprintln!("[net] partition {a:?} | {b:?}");
    }

    /// Cuts node `i` off from every other node.
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.inner.ids.len()).filter(|x| *x != i).collect();
        self.partition(&[i], &others);
    }

    pub fn heal(&self) {
        self.inner.blocked.lock().unwrap().clear();
        eprintln!("[net] healed");
    }

    /// (connections refused, connections cut) so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.refused.load(Ordering::Relaxed),
            self.inner.cut.load(Ordering::Relaxed),
        )
    }

    /// Open proxied connections as (src, dst).
    pub fn open_links(&self) -> Vec<(Option<usize>, usize)> {
        self.inner
            .conns
            .lock()
            .unwrap()
            .values()
            .map(|c| (c.src, c.dst))
            .collect()
    }

    fn stop(mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        for p in &self.ports {
            let _ = TcpStream::connect_timeout(
                &([127, 0, 0, 1], *p).into(),
                Duration::from_millis(200),
            );
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for c in self.inner.conns.lock().unwrap().values() {
            let _ = c.a.shutdown(Shutdown::Both);
            let _ = c.b.shutdown(Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------
// Client helpers that tolerate node failures
// ---------------------------------------------------------------------------

fn pick(ports: &[u16]) -> u16 {
    use rand::Rng;
    ports[rand::thread_rng().gen_range(0..ports.len())]
}

fn error_name(r: &Response) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// POST a JSON body to a random port of `ports`, retrying 503 / I/O errors
/// (other nodes, identical body) until a non-503 answer or `budget` passes.
pub fn post_retry(
    ports: &[u16],
    path: &str,
    body: &Value,
    budget: Duration,
) -> Result<(u16, Value, u32), String> {
    let t0 = Instant::now();
    let raw = body.to_string();
    let mut attempts = 0;
    let mut last = String::new();
    while t0.elapsed() < budget {
        attempts += 1;
        let port = pick(ports);
        let req = build_request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(raw.as_bytes()),
        );
        match try_request(port, &req, false, Duration::from_secs(12)) {
            Ok(r) if r.status == 503 => last = format!(":{port} 503 {}", r.text()),
            Ok(r) => {
                let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()));
                return Ok((r.status, v, attempts));
            }
            Err(e) => last = format!(":{port} {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("POST {path} {body}: no answer other than 503/I-O within {budget:?} ({attempts} attempts; last {last})"))
}

/// Creates sessions through random nodes (201, or 409 on a retry of an
/// ambiguous attempt).
pub fn create_sessions(ports: &[u16], ids: &[String]) {
    for id in ids {
        let (st, v, attempts) = post_retry(
            ports,
            "/v1/sessions",
            &json!({"id": id, "metadata": {"suite": "cluster"}}),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
        let ok = st == 201 || (st == 409 && attempts > 1 && v["error"] == "session_exists");
        assert!(ok, "create {id}: {st} {v}");
    }
}

/// `GET /v1/sessions` (all pages) on one node, without panicking.
pub fn try_list(port: u16) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut q = "/v1/sessions?limit=1000".to_string();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={}", pct(c)));
        }
        let r = try_request(
            port,
            &build_request("GET", &q, &[], None),
            false,
            Duration::from_secs(10),
        )
        .map_err(|e| format!("list :{port}: {e}"))?;
        if r.status != 200 {
            return Err(format!("list :{port}: {} {}", r.status, r.text()));
        }
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("list :{port}: {e}"))?;
        out.extend(v["sessions"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
    Err("list did not terminate".into())
}

/// Reads a session through a tail on `port` until it has `last` events
/// (reconnecting with its cursor on close or silence). Every frame must be
/// exactly the next seq.
pub fn read_session(
    port: u16,
    session: &str,
    last: u64,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    let deadline = Instant::now() + timeout;
    let mut out: Vec<Value> = Vec::new();
    let mut last_err = String::from("-");
    let mut reconnects = 0;
    while (out.len() as u64) < last {
        if Instant::now() >= deadline {
            return Err(format!(
                "tail of {session} on :{port}: {} of {last} events within {timeout:?} ({reconnects} reconnects; last: {last_err})",
                out.len()
            ));
        }
        let cursor = out.len();
        let mut t =
            match Tail::try_connect(port, session, &format!("cursor={cursor}&batch_size=1000")) {
                Ok(t) => t,
                Err((st, body)) => {
                    last_err = format!("connect: {st} {}", String::from_utf8_lossy(&body));
                    reconnects += 1;
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
        while (out.len() as u64) < last {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match t.next_frame((deadline - now).min(Duration::from_secs(3))) {
                Frame::Json(v) => {
                    let items = match v {
                        Value::Array(a) => a,
                        o => vec![o],
                    };
                    for e in items {
                        if e["seq"].as_u64() != Some(out.len() as u64 + 1) {
                            return Err(format!(
                                "tail of {session} on :{port}: expected seq {} next, got {e}",
                                out.len() + 1
                            ));
                        }
                        out.push(e);
                    }
                }
                Frame::Timeout => {
                    last_err = format!("silence at cursor {}", out.len());
                    break;
                }
                Frame::Closed(c) => {
                    last_err = format!("closed {c:?} at cursor {}", out.len());
                    break;
                }
                Frame::Other(s) => return Err(format!("tail of {session} on :{port}: {s}")),
            }
        }
        reconnects += 1;
        t.close();
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Ack {
    pub session: String,
    pub seq: u64,
    pub producer_id: String,
    pub producer_seq: u64,
    /// Completion time since load start.
    pub at: Duration,
    /// From the first attempt to the acknowledgement (retries included).
    pub latency: Duration,
    pub attempts: u32,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct LoadOpts {
    pub producers: usize,
    pub sessions: Vec<String>,
    pub ports: Vec<u16>,
    /// Pause between two appends of one producer.
    pub think: Duration,
    /// A producer stops retrying one append after this long (it becomes `pending`).
    pub retry_budget: Duration,
    /// Payload padding in bytes.
    pub pad: usize,
    /// Producer id prefix (distinct loads must use distinct prefixes).
    pub tag: String,
    /// Client timeout of one request.
    pub request_timeout: Duration,
}

impl LoadOpts {
    pub fn new(tag: &str, producers: usize, sessions: &[String], ports: &[u16]) -> LoadOpts {
        LoadOpts {
            producers,
            sessions: sessions.to_vec(),
            ports: ports.to_vec(),
            think: Duration::from_millis(10),
            retry_budget: Duration::from_secs(60),
            pad: 64,
            tag: tag.to_string(),
            request_timeout: Duration::from_secs(12),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProducerState {
    pub id: String,
    pub session: String,
    pub next: u64,
    /// A producer_seq whose outcome is unknown (last attempt 503 / I/O error).
    pub pending: Option<u64>,
    pub pad: usize,
}

pub fn load_body(producer: &str, pseq: u64, pad: usize) -> Value {
    json!({
        "type": "cluster.load",
        "payload": {"producer": producer, "n": pseq, "pad": "x".repeat(pad)},
        "producer_id": producer,
        "producer_seq": pseq,
    })
}

struct LoadShared {
    start: Instant,
    stop: AtomicBool,
    ports: Mutex<Vec<u16>>,
    acks: Mutex<Vec<Ack>>,
    errors: Mutex<Vec<String>>,
    outcomes: Mutex<BTreeMap<String, u64>>,
}

impl LoadShared {
    fn count(&self, k: String) {
        *self.outcomes.lock().unwrap().entry(k).or_default() += 1;
    }
}

pub struct Load {
    shared: Arc<LoadShared>,
    handles: Vec<JoinHandle<ProducerState>>,
}

#[derive(Debug)]
pub struct LoadReport {
    pub acks: Vec<Ack>,
    pub producers: Vec<ProducerState>,
    pub errors: Vec<String>,
    /// Non-201 outcomes by kind (`503 raft_timeout`, `io`, …).
    pub outcomes: BTreeMap<String, u64>,
    pub duration: Duration,
}

impl Load {
    /// Starts `producers` threads; producer k appends to session k mod M.
    pub fn start(o: LoadOpts) -> Load {
        assert!(!o.sessions.is_empty() && !o.ports.is_empty());
        let shared = Arc::new(LoadShared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            ports: Mutex::new(o.ports.clone()),
            acks: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            outcomes: Mutex::new(BTreeMap::new()),
        });
        let handles = (0..o.producers)
            .map(|k| {
                let p = ProducerState {
                    id: format!("{}-p{k}", o.tag),
                    session: o.sessions[k % o.sessions.len()].clone(),
                    next: 1,
                    pending: None,
                    pad: o.pad,
                };
                let shared = shared.clone();
                let o = o.clone();
                std::thread::spawn(move || run_producer(p, shared, o))
            })
            .collect();
        Load { shared, handles }
    }

    /// Time since the load started (use it to mark fault times).
    pub fn now(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// Changes the nodes new requests go to.
    pub fn set_ports(&self, ports: &[u16]) {
        *self.shared.ports.lock().unwrap() = ports.to_vec();
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.shared.acks.lock().unwrap().clone()
    }

    pub fn ack_count(&self) -> usize {
        self.shared.acks.lock().unwrap().len()
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        let producers = self
            .handles
            .drain(..)
            .map(|h| h.join().expect("producer thread panicked"))
            .collect();
        LoadReport {
            acks: self.shared.acks.lock().unwrap().clone(),
            producers,
            errors: self.shared.errors.lock().unwrap().clone(),
            outcomes: self.shared.outcomes.lock().unwrap().clone(),
            duration: self.shared.start.elapsed(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn run_producer(mut p: ProducerState, sh: Arc<LoadShared>, o: LoadOpts) -> ProducerState {
    let path = append_path(&p.session);
    let mut conns: HashMap<u16, HttpConn> = HashMap::new();
    while !sh.stop.load(Ordering::Relaxed) {
        let pseq = p.next;
        let body = load_body(&p.id, pseq, p.pad).to_string();
        let t0 = Instant::now();
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(50);
        loop {
            attempts += 1;
            let port = {
                let ports = sh.ports.lock().unwrap();
                pick(&ports)
            };
            let c = conns
                .entry(port)
                .or_insert_with(|| HttpConn::with_timeout(port, o.request_timeout));
            let res = c.try_post(&path, body.as_bytes());
            let retry = match res {
                Ok(r) if r.status == 201 => {
                    let v: Value = match serde_json::from_slice(&r.body) {
                        Ok(v) => v,
                        Err(_) => {
                            sh.errors.lock().unwrap().push(format!(
                                "{}/{pseq}: 201 with non-JSON body {:?}",
                                p.id,
                                r.text()
                            ));
                            p.pending = Some(pseq);
                            return p;
                        }
                    };
                    let seq = v["seq"].as_u64();
                    let deduped = v["deduped"].as_bool();
                    if seq.is_none()
                        || deduped.is_none()
                        || (deduped == Some(true) && attempts == 1)
                    {
                        sh.errors.lock().unwrap().push(format!(
                            "{}/{pseq} via :{port}: first attempt answered {v}",
                            p.id
                        ));
                        p.pending = Some(pseq);
                        return p;
                    }
                    if deduped == Some(true) {
                        sh.count("201 deduped (retry had landed)".into());
                    }
                    sh.acks.lock().unwrap().push(Ack {
                        session: p.session.clone(),
                        seq: seq.unwrap(),
                        producer_id: p.id.clone(),
                        producer_seq: pseq,
                        at: sh.start.elapsed(),
                        latency: t0.elapsed(),
                        attempts,
                        port,
                    });
                    p.next += 1;
                    false
                }
                Ok(r) if r.status == 503 || r.status == 429 => {
                    sh.count(format!("{} {}", r.status, error_name(&r)));
                    true
                }
                Ok(r) => {
                    sh.errors.lock().unwrap().push(format!(
                        "{}/{pseq} via :{port} (attempt {attempts}): {} {}",
                        p.id,
                        r.status,
                        r.text()
                    ));
                    // A 4xx changes nothing; the outcome of earlier attempts is unknown.
                    p.pending = Some(pseq);
                    return p;
                }
                Err(e) => {
                    sh.count(format!("io {:?}", e.kind()));
                    true
                }
            };
            if !retry {
                break;
            }
            if sh.stop.load(Ordering::Relaxed) || t0.elapsed() > o.retry_budget {
                p.pending = Some(pseq);
                return p;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
        if !o.think.is_zero() {
            std::thread::sleep(o.think);
        }
    }
    p
}

/// Resends every pending append (identical body) through `ports` until it is
/// acknowledged (fresh or deduped); returns the resulting acks.
pub fn resolve_pending(
    ports: &[u16],
    producers: &mut [ProducerState],
    budget: Duration,
) -> Vec<Ack> {
    let mut out = Vec::new();
    for p in producers.iter_mut() {
        let Some(pseq) = p.pending.take() else {
            continue;
        };
        let t0 = Instant::now();
        let (st, v, attempts) = post_retry(
            ports,
            &append_path(&p.session),
            &load_body(&p.id, pseq, p.pad),
            budget,
        )
        .unwrap_or_else(|e| panic!("resolving pending {}/{pseq}: {e}", p.id));
        assert_eq!(st, 201, "retry of pending append {}/{pseq}: {st} {v}", p.id);
        let seq = v["seq"].as_u64().expect("seq");
        eprintln!(
            "[load] pending {}/{pseq} resolved: seq {seq} deduped={} ({} attempts)",
            p.id, v["deduped"], attempts
        );
        out.push(Ack {
            session: p.session.clone(),
            seq,
            producer_id: p.id.clone(),
            producer_seq: pseq,
            at: Duration::ZERO,
            latency: t0.elapsed(),
            attempts,
            port: 0,
        });
        p.next = pseq + 1;
    }
    out
}

/// Appends one body with retries; returns the ack (panics on failure). A
/// dedupe is accepted only after an ambiguous attempt of this call.
pub fn append_acked(ports: &[u16], session: &str, producer: &str, pseq: u64, pad: usize) -> Ack {
    append_acked_inner(ports, session, producer, pseq, pad, false)
}

/// Like [`append_acked`] for the resend of an append that earlier answered an
/// ambiguous 503: it may dedupe (the earlier attempt committed after all).
pub fn resend_acked(
    ports: &[u16],
    session: &str,
    producer: &str,
    pseq: u64,
    pad: usize,
) -> (Ack, bool) {
    let a = append_acked_inner(ports, session, producer, pseq, pad, true);
    let deduped = a.attempts == u32::MAX;
    (Ack { attempts: 1, ..a }, deduped)
}

fn append_acked_inner(
    ports: &[u16],
    session: &str,
    producer: &str,
    pseq: u64,
    pad: usize,
    resend: bool,
) -> Ack {
    let t0 = Instant::now();
    let (st, v, mut attempts) = post_retry(
        ports,
        &append_path(session),
        &load_body(producer, pseq, pad),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("append {session} {producer}/{pseq}: {e}"));
    assert_eq!(st, 201, "append {session} {producer}/{pseq}: {st} {v}");
    if v["deduped"] == json!(true) {
        assert!(
            resend || attempts > 1,
            "first attempt of {producer}/{pseq} deduped: {v}"
        );
        if resend {
            attempts = u32::MAX;
        }
    }
    Ack {
        session: session.to_string(),
        seq: v["seq"].as_u64().expect("seq"),
        producer_id: producer.to_string(),
        producer_seq: pseq,
        at: Duration::ZERO,
        latency: t0.elapsed(),
        attempts,
        port: 0,
    }
}

// ---------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Gaps {
    /// Longest time without any acknowledged append (all sessions).
    pub global: Duration,
    pub global_at: Duration,
    /// Longest time without an acknowledged append, per session.
    pub per_session: BTreeMap<String, Duration>,
    pub worst_session: String,
    pub worst: Duration,
}

fn longest(times: &mut Vec<Duration>, from: Duration, to: Duration) -> (Duration, Duration) {
    times.retain(|t| *t >= from && *t <= to);
    times.sort();
    let mut prev = from;
    let mut best = (Duration::ZERO, from);
    for t in times.iter().chain(std::iter::once(&to)) {
        let g = t.saturating_sub(prev);
        if g > best.0 {
            best = (g, prev);
        }
        prev = *t;
    }
    best
}

/// Unavailability windows of the acks between `from` and `to` (load time).
pub fn gaps(acks: &[Ack], sessions: &[String], from: Duration, to: Duration) -> Gaps {
    let mut all: Vec<Duration> = acks.iter().filter(|a| a.port != 0).map(|a| a.at).collect();
    let (global, global_at) = longest(&mut all, from, to);
    let mut per_session = BTreeMap::new();
    let (mut worst_session, mut worst) = (String::new(), Duration::ZERO);
    for s in sessions {
        let mut t: Vec<Duration> = acks
            .iter()
            .filter(|a| a.port != 0 && &a.session == s)
            .map(|a| a.at)
            .collect();
        let (g, _) = longest(&mut t, from, to);
        if g > worst {
            worst = g;
            worst_session = s.clone();
        }
        per_session.insert(s.clone(), g);
    }
    Gaps {
        global,
        global_at,
        per_session,
        worst_session,
        worst,
    }
}

impl Gaps {
    pub fn print(&self, label: &str) {
        let stalled: Vec<String> = self
            .per_session
            .iter()
            .filter(|(_, g)| **g > Duration::from_millis(1000))
            .map(|(s, g)| format!("{s}={}ms", ms(*g)))
            .collect();
        eprintln!(
            "[window] {label}: longest gap without any ack {} ms (from t={} ms); worst per-session gap {} ms ({}); sessions stalled >1s: [{}]",
            ms(self.global),
            ms(self.global_at),
            ms(self.worst),
            self.worst_session,
            stalled.join(", ")
        );
    }
}

pub fn latency_summary(acks: &[Ack]) -> String {
    let mut l: Vec<Duration> = acks
        .iter()
        .filter(|a| a.port != 0)
        .map(|a| a.latency)
        .collect();
    if l.is_empty() {
        return "no acks".into();
    }
    l.sort();
    let q = |f: f64| ms(l[((l.len() - 1) as f64 * f) as usize]);
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    format!(
        "{} acks; latency p50 {} ms, p99 {} ms, max {} ms; {} needed retries",
        l.len(),
        q(0.5),
        q(0.99),
        q(1.0),
        retried
    )
}

impl LoadReport {
    pub fn print(&self, label: &str) {
        eprintln!(
            "[load] {label}: {} over {} ms; non-201 outcomes {:?}; errors {}",
            latency_summary(&self.acks),
            ms(self.duration),
            self.outcomes,
            self.errors.len()
        );
    }

    #[track_caller]
    pub fn assert_no_errors(&self) {
        assert!(
            self.errors.is_empty(),
            "load saw unexpected answers:\n{}",
            self.errors.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Verifier
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Verified {
    pub last: BTreeMap<String, u64>,
    pub events: u64,
}

/// For each session, reads all events via tail from every node in `nodes` and
/// asserts: seqs 1..last gap-free, identical on every node, every acknowledged
/// append present at its seq exactly once, no producer_seq twice (and per
/// producer exactly 1..K in seq order). With `exact`, the session holds exactly
/// the acknowledged events (every ambiguous attempt was resolved).
#[track_caller]
pub fn verify(
    c: &Cluster,
    nodes: &[usize],
    sessions: &[String],
    acks: &[Ack],
    exact: bool,
) -> Verified {
    // last_seq per session, as listed by each node; they must converge.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listed: BTreeMap<usize, BTreeMap<String, Option<u64>>> = BTreeMap::new();
    loop {
        let mut errs = Vec::new();
        listed.clear();
        for &i in nodes {
            match try_list(c.http_port(i)) {
                Ok(rows) => {
                    let m = rows
                        .iter()
                        .filter_map(|r| {
                            r["id"]
                                .as_str()
                                .map(|id| (id.to_string(), r["last_seq"].as_u64()))
                        })
                        .collect();
                    listed.insert(i, m);
                }
                Err(e) => errs.push(format!("{}: {e}", c.name(i))),
            }
        }
        let agree = errs.is_empty()
            && sessions.iter().all(|s| {
                let vals: HashSet<Option<u64>> = listed
                    .values()
                    .map(|m| m.get(s).copied().flatten())
                    .collect();
                vals.len() == 1 && !vals.contains(&None)
            });
        if agree {
            break;
        }
        if Instant::now() > deadline {
            let detail: Vec<String> = sessions
                .iter()
                .map(|s| {
                    let per: Vec<String> = listed
                        .iter()
                        .map(|(i, m)| format!("{}={:?}", c.name(*i), m.get(s)))
                        .collect();
                    format!("{s}: {}", per.join(" "))
                })
                .collect();
            panic!(
                "list rows (last_seq) do not agree across nodes after 30 s; errors {errs:?}\n{}",
                detail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut out = Verified {
        last: BTreeMap::new(),
        events: 0,
    };
    for s in sessions {
        let sacks: Vec<&Ack> = acks.iter().filter(|a| &a.session == s).collect();
        let max_acked = sacks.iter().map(|a| a.seq).max().unwrap_or(0);
        let last = listed.values().next().unwrap()[s].unwrap();
        assert!(
            last >= max_acked,
            "session {s}: listed last_seq {last} < highest acknowledged seq {max_acked}"
        );
        let mut reference: Option<(usize, Vec<Value>)> = None;
        for &i in nodes {
            let evs = read_session(c.http_port(i), s, last, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{}: {e}", c.name(i)));
            assert_eq!(
                evs.len() as u64,
                last,
                "session {s} on {}: {} events, listed last_seq {last}",
                c.name(i),
                evs.len()
            );
            match &reference {
                None => reference = Some((i, evs)),
                Some((ri, rev)) => {
                    if let Some(k) = (0..rev.len()).find(|k| rev[*k] != evs[*k]) {
                        panic!(
                            "session {s}: histories diverge at seq {}:\n  {}: {}\n  {}: {}",
                            k + 1,
                            c.name(*ri),
                            rev[k],
                            c.name(i),
                            evs[k]
                        );
                    }
                }
            }
        }
        let evs = reference.map(|r| r.1).unwrap_or_default();
        for a in &sacks {
            let e = &evs[(a.seq - 1) as usize];
            assert_eq!(
                (e["producer_id"].as_str(), e["producer_seq"].as_u64()),
                (Some(a.producer_id.as_str()), Some(a.producer_seq)),
                "session {s}: seq {} holds {e}, but it was acknowledged for {a:?}",
                a.seq
            );
        }
        let mut per: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &evs {
            per.entry(e["producer_id"].as_str().unwrap_or("?").to_string())
                .or_default()
                .push(e["producer_seq"].as_u64().unwrap_or(0));
        }
        for (pid, ps) in &per {
            assert_eq!(
                ps,
                &(1..=ps.len() as u64).collect::<Vec<_>>(),
                "session {s}: producer {pid}: producer_seqs are not 1..K, each once, in seq order"
            );
        }
        let distinct: HashSet<(&str, u64)> = sacks
            .iter()
            .map(|a| (a.producer_id.as_str(), a.producer_seq))
            .collect();
        assert_eq!(
            distinct.len(),
            sacks.len(),
            "session {s}: the same (producer, producer_seq) was acknowledged twice"
        );
        if exact {
            assert_eq!(
                evs.len(),
                sacks.len(),
                "session {s}: {} events stored but {} appends acknowledged (all ambiguous attempts were resolved)",
                evs.len(),
                sacks.len()
            );
        }
        out.events += last;
        out.last.insert(s.clone(), last);
    }
    eprintln!(
        "[verify] {} sessions, {} events, identical on {:?}",
        sessions.len(),
        out.events,
        nodes.iter().map(|i| c.name(*i)).collect::<Vec<_>>()
    );
    out
}

/// Session ids `<prefix>-0 … <prefix>-(n-1)`.
pub fn session_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{prefix}-{k}")).collect()
}
