//! `starcite ops …` and `starcite rpc "…"`: operator commands run on the node's
//! machine, through `<data dir>/admin.sock`.
//!
//! Exit codes: 0 success; 1 command failure or timeout; 2 usage error; 3 the admin
//! socket cannot be reached.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::client::{AdminClient, ClientError, REQUEST_TIMEOUT};
use super::rpc::parse_rpc;
use super::{DATA_DIR_ENV, DEFAULT_DATA_DIR};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;

/// Default timeout of the wait commands (contract §10.2).
pub const DEFAULT_WAIT_MS: u64 = 30_000;
/// Default timeout of `replace-node` (a snapshot of every group it replicates).
pub const DEFAULT_REPLACE_MS: u64 = 300_000;
/// Polling period of the wait commands (contract §10.2).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The top-level subcommands to flatten into the binary's command enum.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum OperatorCommand {
    /// Operator commands for the node running on this machine, through its admin
    /// socket <data dir>/admin.sock (contract §10.2). Exit codes: 0 ok, 1 failure or
    /// timeout, 2 usage error, 3 node not reachable.
    Ops {
        /// Data directory of the node [default: $STARCITE_RAFT_DATA_DIR, else ./starcite-data]
        #[arg(long, value_name = "DIR", global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        cmd: OpsCommand,
    },
    /// Runs one of the reference runbook's expressions against the local node, e.g.
    /// `starcite rpc "Starcite.ControlPlane.Ops.status()"`, `…drain_node()`,
    /// `…wait_local_drained(30000)`, `…undrain_node()`, `…wait_local_ready(60000)`,
    /// `…ready_nodes()`, `…group_replicas(7)`, `…local_ready()`.
    Rpc {
        /// Data directory of the node [default: $STARCITE_RAFT_DATA_DIR, else ./starcite-data]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The expression, quoted as one shell word
        #[arg(value_name = "EXPRESSION")]
        expr: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum OpsCommand {
    /// Node status as JSON (contract §10.2)
    Status,
    /// Prints `ready_nodes=a,b`
    ReadyNodes,
    /// Marks a write node draining cluster-wide (default: this node); prints `ok`
    Drain { node: Option<String> },
    /// Marks a write node ready again cluster-wide (default: this node); prints `ok`
    Undrain { node: Option<String> },
    /// Prints `group_<id>_replicas=a,b,c`
    GroupReplicas { group: u32 },
    /// Waits until this node is ready; prints `local_ready=true`; exit 1 on timeout
    WaitReady {
        /// Timeout in milliseconds (same as --timeout-ms)
        #[arg(value_name = "MS")]
        ms: Option<u64>,
        #[arg(long, value_name = "MS", default_value_t = DEFAULT_WAIT_MS, conflicts_with = "ms")]
        timeout_ms: u64,
    },
    /// Waits until this node is drained; prints `local_drained=true`; exit 1 on timeout
    WaitDrained {
        /// Timeout in milliseconds (same as --timeout-ms)
        #[arg(value_name = "MS")]
        ms: Option<u64>,
        #[arg(long, value_name = "MS", default_value_t = DEFAULT_WAIT_MS, conflicts_with = "ms")]
        timeout_ms: u64,
    },
    /// Replaces write node NODE, which lost its disk and was restarted with an
    /// empty data dir and STARCITE_REJOIN=true, by a Raft membership change in each
    /// of its groups (old incarnation removed, new one added as a learner, promoted to
    /// voter once caught up). Run on any node; waits until every group of NODE has it
    /// as a voter, printing progress; prints `replaced=NODE`; exit 1 on timeout or if
    /// NODE is not running a new incarnation
    ReplaceNode {
        node: String,
        #[arg(long, value_name = "MS", default_value_t = DEFAULT_REPLACE_MS)]
        timeout_ms: u64,
    },
    /// One readiness check, without waiting: prints `local_ready=true|false`
    LocalReady,
    /// One drained check, without waiting: prints `local_drained=true|false`
    LocalDrained,
}

/// Dispatches an [`OperatorCommand`]; returns the process exit code.
pub fn run_cli(cmd: OperatorCommand) -> i32 {
    match cmd {
        OperatorCommand::Ops { data_dir, cmd } => run_ops(data_dir, cmd),
        OperatorCommand::Rpc { data_dir, expr } => run_rpc(data_dir, &expr),
    }
}

/// Runs one `ops` command against the node whose data dir is `data_dir` (else
/// `$STARCITE_RAFT_DATA_DIR`, else `./starcite-data`); prints the result to stdout and
/// errors to stderr; returns the process exit code.
pub fn run_ops(data_dir: Option<PathBuf>, cmd: OpsCommand) -> i32 {
    let dir = resolve_data_dir(data_dir, std::env::var(DATA_DIR_ENV).ok());
    emit(execute(&dir, &cmd, &Timing::default()))
}

/// Runs one runbook expression (see [`super::rpc`]); unknown expressions exit 2.
pub fn run_rpc(data_dir: Option<PathBuf>, expr: &str) -> i32 {
    let dir = resolve_data_dir(data_dir, std::env::var(DATA_DIR_ENV).ok());
    emit(execute_rpc(&dir, expr, &Timing::default()))
}

fn emit(out: Outcome) -> i32 {
    use std::io::Write;
    if !out.stdout.is_empty() {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.stdout.as_bytes());
        let _ = stdout.flush();
    }
    if !out.stderr.is_empty() {
        let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    }
    out.code
}

/// `--data-dir`, else the environment value (trimmed, ignored when blank), else the
/// `starcite dev` default.
pub fn resolve_data_dir(flag: Option<PathBuf>, env: Option<String>) -> PathBuf {
    if let Some(dir) = flag.filter(|d| !d.as_os_str().is_empty()) {
        return dir;
    }
    env.map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// What a command would print, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome {
            code: EXIT_OK,
            stdout,
            stderr: String::new(),
        }
    }

    fn fail(code: i32, message: impl std::fmt::Display) -> Outcome {
        Outcome {
            code,
            stdout: String::new(),
            stderr: format!("starcite: error: {message}\n"),
        }
    }

    fn client(e: &ClientError) -> Outcome {
        Outcome::fail(e.exit_code(), e)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub request_timeout: Duration,
    pub poll_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            request_timeout: REQUEST_TIMEOUT,
            poll_interval: POLL_INTERVAL,
        }
    }
}

pub(crate) fn execute_rpc(data_dir: &Path, expr: &str, timing: &Timing) -> Outcome {
    match parse_rpc(expr) {
        Ok(cmd) => execute(data_dir, &cmd, timing),
        Err(msg) => Outcome::fail(EXIT_USAGE, msg),
    }
}

pub(crate) fn execute(data_dir: &Path, cmd: &OpsCommand, timing: &Timing) -> Outcome {
    let client = AdminClient::new(data_dir).with_timeout(timing.request_timeout);
    let node = |n: &Option<String>| -> Result<Option<String>, Outcome> {
        match n {
            None => Ok(None),
            Some(n) if n.trim().is_empty() => {
                Err(Outcome::fail(EXIT_USAGE, "the node name is empty"))
            }
            Some(n) => Ok(Some(n.trim().to_owned())),
        }
    };
    let result = match cmd {
        OpsCommand::Status => client.status().map(|v| {
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
            s.push('\n');
            s
        }),
        OpsCommand::ReadyNodes => client
            .ready_nodes()
            .map(|n| format!("ready_nodes={}\n", n.join(","))),
        OpsCommand::Drain { node: n } => match node(n) {
            Ok(n) => client.drain(n.as_deref()).map(|()| "ok\n".to_owned()),
            Err(out) => return out,
        },
        OpsCommand::Undrain { node: n } => match node(n) {
            Ok(n) => client.undrain(n.as_deref()).map(|()| "ok\n".to_owned()),
            Err(out) => return out,
        },
        OpsCommand::GroupReplicas { group } => client
            .group_replicas(*group)
            .map(|r| format!("group_{group}_replicas={}\n", r.join(","))),
        OpsCommand::LocalReady => client.local_ready().map(|b| format!("local_ready={b}\n")),
        OpsCommand::LocalDrained => client
            .local_drained()
            .map(|b| format!("local_drained={b}\n")),
        OpsCommand::WaitReady { ms, timeout_ms } => {
            return wait_until(
                &client,
                "local_ready",
                AdminClient::local_ready,
                ms.unwrap_or(*timeout_ms),
                timing,
            )
        }
        OpsCommand::ReplaceNode {
            node: n,
            timeout_ms,
        } => {
            return match node(&Some(n.clone())) {
                Ok(Some(n)) => replace_node(&client, &n, *timeout_ms, timing),
                Ok(None) | Err(_) => Outcome::fail(EXIT_USAGE, "the node name is empty"),
            };
        }
        OpsCommand::WaitDrained { ms, timeout_ms } => {
            return wait_until(
                &client,
                "local_drained",
                AdminClient::local_drained,
                ms.unwrap_or(*timeout_ms),
                timing,
            )
        }
    };
    match result {
        Ok(stdout) => Outcome::ok(stdout),
        Err(e) => Outcome::client(&e),
    }
}

/// `replace-node`: approves, then polls until every group of `node` has its
/// new incarnation as a voter. Progress lines go to stdout as they change. A
/// node error (not running a new incarnation, unknown node) ends it at once.
fn replace_node(client: &AdminClient, node: &str, timeout_ms: u64, timing: &Timing) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut out = String::new();
    let mut last_line = String::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let per_request = timing
            .request_timeout
            .min(remaining.max(Duration::from_millis(250)));
        let last_err = match client.with_timeout(per_request).replace_node(node) {
            Ok(v) => {
                let groups = v["groups"]
                    .as_u64()
                    .map_or_else(|| "?".to_owned(), |g| g.to_string());
                let line = format!(
                    "replace-node {node}: incarnation {} (raft id {}) is a voter in {}/{groups} groups\n",
                    v["incarnation"], v["raft_id"], v["voter_groups"]
                );
                if line != last_line {
                    out.push_str(&line);
                    last_line = line;
                }
                if v["done"] == serde_json::Value::Bool(true) {
                    out.push_str(&format!("replaced={node}\n"));
                    return Outcome::ok(out);
                }
                None
            }
            Err(e @ ClientError::Remote { .. }) => {
                let mut o = Outcome::client(&e);
                o.stdout = out;
                return o;
            }
            Err(e @ (ClientError::PermissionDenied { .. } | ClientError::Protocol(_))) => {
                return Outcome::client(&e)
            }
            Err(e) => Some(e),
        };
        let now = Instant::now();
        if now >= deadline {
            let why = match last_err {
                Some(e) => format!("last error: {e}"),
                None => format!("last progress: {}", last_line.trim_end()),
            };
            let mut o = Outcome::fail(
                EXIT_FAILURE,
                format!("timed out after {timeout_ms} ms replacing {node}; {why}"),
            );
            o.stdout = out;
            return o;
        }
        std::thread::sleep(timing.poll_interval.min(deadline - now));
    }
}

/// Polls `check` every `timing.poll_interval` until it is true or `timeout_ms` passed.
/// While waiting, an unreachable socket, a slow answer or a transient node error just
/// means "not yet" (the node may be restarting); at the deadline the last such error is
/// reported (exit 3 if the socket was unreachable, else 1).
fn wait_until(
    client: &AdminClient,
    what: &str,
    check: fn(&AdminClient) -> Result<bool, ClientError>,
    timeout_ms: u64,
    timing: &Timing,
) -> Outcome {
    let timeout = Duration::from_millis(timeout_ms);
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let per_request = timing
            .request_timeout
            .min(remaining.max(Duration::from_millis(250)));
        let last_err = match check(&client.with_timeout(per_request)) {
            Ok(true) => return Outcome::ok(format!("{what}=true\n")),
            Ok(false) => None,
            Err(e @ (ClientError::PermissionDenied { .. } | ClientError::Protocol(_))) => {
                return Outcome::client(&e)
            }
            Err(ClientError::Remote { code, message }) if code == "bad_request" => {
                return Outcome::client(&ClientError::Remote { code, message })
            }
            Err(e) => Some(e),
        };
        let now = Instant::now();
        if now >= deadline {
            return match last_err {
                None => Outcome::fail(
                    EXIT_FAILURE,
                    format!("timed out after {timeout_ms} ms: {what} is still false"),
                ),
                Some(e) => Outcome::fail(
                    if e.exit_code() == EXIT_UNREACHABLE {
                        EXIT_UNREACHABLE
                    } else {
                        EXIT_FAILURE
                    },
                    format!("timed out after {timeout_ms} ms waiting for {what}; last error: {e}"),
                ),
            };
        }
        std::thread::sleep(timing.poll_interval.min(deadline - now));
    }
}
