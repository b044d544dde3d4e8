//! A local cluster of `starcite dev` processes on 127.0.0.1, started by the
//! bench itself (README "A three-node cluster on one machine"; the same
//! environment as tests/common/cluster.rs): every node has its own HTTP,
//! binary-protocol and cluster port (all below 32768, so client sockets of the
//! load never hold them), its own data directory, one shard core by default,
//! and the cluster shares one fs archive directory and SECRET_KEY_BASE.
//! Dropping the [`LocalCluster`] kills exactly the processes it started.
//!
//! `starcite-bench cluster --nodes 3 --run "append --producers 1,16,64"` starts
//! the cluster, runs that scenario of this same binary against it (adding
//! `--url` with every node's URL unless the command uses the placeholders
//! `{urls}`, `{url0}`, `{wire}`, `{pid0}`), then stops the cluster.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use super::{get_once, parse_url, Target};

pub const SECRET: &str = "starcite-bench-local-cluster-secret-0123456789abcdef";

#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// The starcite binary.
    #[arg(long, default_value = "target/release/starcite")]
    pub bin: PathBuf,
    /// Number of nodes (all write nodes).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Shard cores per node (STARCITE_CORES).
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// Replication factor (default: min(nodes, 3)).
    #[arg(long)]
    pub rf: Option<usize>,
    /// Extra environment for every node, `KEY=VALUE` (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// A starcite-bench command line to run against the cluster.
    #[arg(long)]
    pub run: Option<String>,
    /// Without --run: keep the cluster up this long, then stop it.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
}

pub struct NodeProc {
    pub name: String,
    pub http_port: u16,
    pub wire_port: u16,
    pub cluster_port: u16,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
}

pub struct LocalCluster {
    pub nodes: Vec<NodeProc>,
    pub dir: PathBuf,
}

/// `n` distinct free ports in 10000..32000 (bind-tested, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let seed = std::process::id() as u64 * 7919 + super::now_nanos() / 1000;
    let mut held = Vec::new();
    let mut k = 0u64;
    while held.len() < n && k < 200_000 {
        let port = 10_000 + ((seed + k * 40_503) % 22_000) as u16;
        k += 1;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl LocalCluster {
    pub fn start(a: &ClusterArgs) -> Result<LocalCluster, String> {
        let n = a.nodes.max(1);
        let dir = std::env::temp_dir().join(format!(
            "starcite-bench-cluster-{}-{:x}",
            std::process::id(),
            super::now_nanos() % 0xffff_ffff
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ports = free_ports(3 * n);
        if ports.len() < 3 * n {
            return Err("no free ports".into());
        }
        let nodes: Vec<NodeProc> = (0..n)
            .map(|i| NodeProc {
                name: format!("n{}", i + 1),
                http_port: ports[i],
                wire_port: ports[n + i],
                cluster_port: ports[2 * n + i],
                data_dir: dir.join(format!("n{}", i + 1)),
                child: None,
            })
            .collect();
        let mut c = LocalCluster { nodes, dir };
        let ids: Vec<String> = c.nodes.iter().map(|x| c.node_id(x)).collect();
        let rf = a.rf.unwrap_or(n.min(3)).clamp(1, n);
        let mut env: Vec<(String, String)> = vec![
            ("SECRET_KEY_BASE".into(), SECRET.into()),
            ("STARCITE_CORES".into(), a.cores.to_string()),
            (
                "STARCITE_ARCHIVE_FS_DIR".into(),
                c.dir.join("archive").display().to_string(),
            ),
            ("RUST_LOG".into(), "warn".into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        if n > 1 {
            env.push(("CLUSTER_NODES".into(), ids.join(",")));
            env.push(("STARCITE_WRITE_NODE_IDS".into(), ids.join(",")));
            env.push(("STARCITE_WRITE_REPLICATION_FACTOR".into(), rf.to_string()));
        }
        for kv in &a.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--env {kv}: expected KEY=VALUE"))?;
            env.retain(|(x, _)| x != k);
            env.push((k.into(), v.into()));
        }
        for i in 0..n {
            let node = &c.nodes[i];
            std::fs::create_dir_all(&node.data_dir).map_err(|e| e.to_string())?;
            let log = std::fs::File::create(c.dir.join(format!("{}.log", node.name)))
                .map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&a.bin);
            cmd.arg("dev")
                .env("PORT", node.http_port.to_string())
                .env("STARCITE_WIRE_PORT", node.wire_port.to_string())
                .env("STARCITE_RAFT_DATA_DIR", node.data_dir.join("data"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log);
            if n > 1 {
                cmd.env("RELEASE_NODE", &ids[i]);
            }
            for (k, v) in &env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .map_err(|e| format!("start {}: {e}", a.bin.display()))?;
            eprintln!(
                "[cluster] {} pid {} http {} wire {} cluster {}",
                node.name,
                child.id(),
                node.http_port,
                node.wire_port,
                node.cluster_port
            );
            c.nodes[i].child = Some(child);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        for i in 0..n {
            let t = c.target(i);
            loop {
                if let Ok(r) = get_once(&t, "/health/ready", Duration::from_secs(2)) {
                    if r.status == 200 {
                        break;
                    }
                }
                if let Some(ch) = c.nodes[i].child.as_mut() {
                    if let Ok(Some(st)) = ch.try_wait() {
                        return Err(format!(
                            "node {} exited at start ({st}); log: {}",
                            c.nodes[i].name,
                            c.dir.join(format!("{}.log", c.nodes[i].name)).display()
                        ));
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!("node {} not ready within 90 s", c.nodes[i].name));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        eprintln!("[cluster] {n} node(s) ready: {}", c.urls());
        Ok(c)
    }

    fn node_id(&self, n: &NodeProc) -> String {
        format!("{}@127.0.0.1:{}", n.name, n.cluster_port)
    }

    pub fn target(&self, i: usize) -> Target {
        parse_url(&self.url(i)).expect("local url")
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].http_port)
    }

    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn wire_addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.wire_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    /// kill -9 of node `i` (a process this cluster started), reaped.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut ch) = self.nodes[i].child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if std::env::var_os("STARCITE_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sum of a metric's samples on one node (0 when unreachable).
pub fn metric(t: &Target, name: &str) -> f64 {
    let Ok(r) = get_once(t, "/metrics", Duration::from_secs(5)) else {
        return 0.0;
    };
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn cmd_cluster(a: ClusterArgs) -> i32 {
    let c = match LocalCluster::start(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let Some(run) = &a.run else {
        println!("urls={}", c.urls());
        println!("wire={}", c.wire_addrs());
        let pids: Vec<String> = (0..c.nodes.len())
            .filter_map(|i| c.pid(i).map(|p| p.to_string()))
            .collect();
        println!("pids={}", pids.join(","));
        std::thread::sleep(Duration::from_secs(a.secs));
        return 0;
    };
    let has_ph = ["{urls}", "{url0}", "{wire}", "{pid0}"]
        .iter()
        .any(|p| run.contains(p));
    let run = run
        .replace("{urls}", &c.urls())
        .replace("{url0}", &c.url(0))
        .replace("{wire}", &c.wire_addrs())
        .replace("{pid0}", &c.pid(0).unwrap_or(0).to_string());
    let mut argv: Vec<String> = run.split_whitespace().map(str::to_owned).collect();
    if argv.first().map(String::as_str) == Some("append") {
        // Node cost per append: every node's CPU, context switches and /metrics.
        let pids: Vec<String> = (0..c.nodes.len())
            .filter_map(|i| c.pid(i).map(|p| p.to_string()))
            .collect();
        if !argv.iter().any(|a| a.starts_with("--pids")) {
            argv.push(format!("--pids={}", pids.join(",")));
        }
        if !argv.iter().any(|a| a.starts_with("--metrics-urls")) {
            argv.push(format!("--metrics-urls={}", c.urls()));
        }
    }
    if !has_ph {
        argv.push(format!("--url={}", c.urls()));
        if argv.first().map(String::as_str) == Some("append") {
            argv.push(format!("--wire={}", c.wire_addrs()));
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "starcite-bench".into());
    eprintln!("[cluster] running: {} {}", exe.display(), argv.join(" "));
    let code = match Command::new(exe).args(&argv).status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    drop(c);
    code
}
