//! Node configuration from the reference's environment variables (contract §12).
//!
//! Every value is validated at boot; a bad value stops boot with a message that
//! names the variable (decision 12).

use std::path::PathBuf;

use starcite_shards::limits::{
    DEFAULT_CHECKPOINT_BYTES, DEFAULT_DEDUPE_WINDOW, PRODUCERS_PER_SESSION,
};

/// How the process was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `starcite start`: production defaults, configuration from the environment.
    Start,
    /// `starcite dev`: embedded defaults (single node, auth none, ./starcite-data).
    Dev,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    pub port: u16,
    /// `STARCITE_WIRE_PORT`: the binary client protocol (docs/wire-protocol.md);
    /// 0 disables it.
    pub wire_port: u16,
    /// `STARCITE_OPS_PORT`: a second listener serving only health and metrics
    /// (0 = none).
    pub ops_port: u16,
    pub data_dir: PathBuf,
    pub cores: u32,
    pub num_groups: u32,
    /// Every node of the cluster (`CLUSTER_NODES`), this one included.
    pub cluster_nodes: Vec<String>,
    pub write_node_ids: Vec<String>,
    pub replication_factor: u32,
    /// Cluster port used for node ids without an explicit `:port`.
    pub cluster_port: u16,
    /// Listen for peers on this port instead of the one in this node's id
    /// (`STARCITE_CLUSTER_LISTEN_PORT`; for a proxy or NAT in front of it).
    pub cluster_listen_port: Option<u16>,
    /// `SECRET_KEY_BASE`: peers authenticate each other with it.
    pub secret: Option<String>,
    pub dedupe_window: usize,
    pub producer_cap: usize,
    /// Hot-tier memory bound for the whole node (`STARCITE_EVENT_STORE_MAX_SIZE`).
    pub event_store_max_bytes: u64,
    pub checkpoint_bytes: u64,
    /// Raft log writes with O_DIRECT|O_DSYNC into preallocated segments
    /// (`STARCITE_LOG_DIRECT_IO`, default true; falls back to buffered writes +
    /// fdatasync where the file system refuses O_DIRECT).
    pub log_direct_io: bool,
    /// `STARCITE_LEADER_FOLLOWS_WRITER` (default true): a group whose
    /// commands arrive through one other node moves its leadership there
    /// (`node::writer_affinity`).
    pub leader_follows_writer: bool,
    pub telemetry: bool,
    /// `STARCITE_REJOIN`: this node replaces one whose disk was lost.
    pub rejoin: bool,
    /// JWT settings; `None` in auth mode `none`.
    pub auth: Option<crate::auth::AuthConfig>,
    /// The archive backend and archiver settings (contract §9.4, §11).
    pub archive: crate::archive::ArchiveConfig,
    /// TLS on the public listeners (`STARCITE_TLS_CERT_FILE` + `STARCITE_TLS_KEY_FILE`);
    /// `None`: plaintext.
    pub tls: Option<TlsConfig>,
    /// Extra CA bundle for outbound TLS (`STARCITE_TLS_CA_FILE`); see [`crate::tls`].
    pub tls_ca_file: Option<PathBuf>,
    /// Connection and tail-socket caps over the per-core connection cap.
    pub conn_limits: ConnLimits,
}

/// Certificate chain and private key files (PEM) of the public listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Default `STARCITE_MAX_CONNECTIONS_PER_IP`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u64 = 4_096;
/// Default `STARCITE_MAX_TAIL_SOCKETS`.
pub const DEFAULT_MAX_TAIL_SOCKETS: u64 = 10_000;

/// Per-node connection limits of the HTTP gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// `STARCITE_MAX_CONNECTIONS_PER_IP`: open connections from one client address
    /// across all cores (0 = no per-address cap).
    pub max_connections_per_ip: usize,
    /// `STARCITE_MAX_TAIL_SOCKETS`: open tail WebSockets on the node.
    pub max_tail_sockets: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP as usize,
            max_tail_sockets: DEFAULT_MAX_TAIL_SOCKETS as usize,
        }
    }
}

/// `STARCITE_TLS_CERT_FILE` / `STARCITE_TLS_KEY_FILE` (both or neither; each must be
/// a readable PEM file and together a usable pair) and `STARCITE_TLS_CA_FILE`.
fn tls_settings(env: &impl Env) -> Result<(Option<TlsConfig>, Option<PathBuf>), ConfigError> {
    const CERT: &str = "STARCITE_TLS_CERT_FILE";
    const KEY: &str = "STARCITE_TLS_KEY_FILE";
    let cert = non_blank(env, CERT).map(PathBuf::from);
    let key = non_blank(env, KEY).map(PathBuf::from);
    let tls = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => return Err(err(KEY, format!("must be set when {CERT} is"))),
        (None, Some(_)) => return Err(err(CERT, format!("must be set when {KEY} is"))),
        (Some(cert_file), Some(key_file)) => {
            crate::tls::load_certs(&cert_file).map_err(|e| err(CERT, e))?;
            crate::tls::load_key(&key_file).map_err(|e| err(KEY, e))?;
            crate::tls::server_config(&cert_file, &key_file).map_err(|e| err(KEY, e))?;
            Some(TlsConfig {
                cert_file,
                key_file,
            })
        }
    };
    let ca = non_blank(env, crate::tls::CA_FILE_VAR).map(PathBuf::from);
    if let Some(path) = &ca {
        crate::tls::client_config_with_ca(Some(path))
            .map_err(|e| err(crate::tls::CA_FILE_VAR, e))?;
    }
    Ok((tls, ca))
}

fn conn_limits(env: &impl Env) -> Result<ConnLimits, ConfigError> {
    Ok(ConnLimits {
        max_connections_per_ip: int(
            env,
            "STARCITE_MAX_CONNECTIONS_PER_IP",
            DEFAULT_MAX_CONNECTIONS_PER_IP,
            0,
            10_000_000,
        )? as usize,
        max_tail_sockets: int(
            env,
            "STARCITE_MAX_TAIL_SOCKETS",
            DEFAULT_MAX_TAIL_SOCKETS,
            1,
            10_000_000,
        )? as usize,
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

pub(crate) fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// A source of variables (the process environment, or a map in tests).
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl Config {
    pub fn from_env(profile: Profile, env: &impl Env) -> Result<Config, ConfigError> {
        let dev = profile == Profile::Dev;
        let auth = auth_mode(env, dev)?;
        let node_name =
            non_blank(env, "RELEASE_NODE").unwrap_or_else(|| "starcite@127.0.0.1".to_owned());
        let port = int(env, "PORT", 4000u64, 1, u64::from(u16::MAX))? as u16;
        let wire_port = int(env, "STARCITE_WIRE_PORT", 4001u64, 0, u64::from(u16::MAX))? as u16;
        let ops_port = int(env, "STARCITE_OPS_PORT", 0, 0, u64::from(u16::MAX))? as u16;
        if ops_port != 0 && (ops_port == port || ops_port == wire_port) {
            return Err(err(
                "STARCITE_OPS_PORT",
                "must differ from PORT and STARCITE_WIRE_PORT",
            ));
        }
        let data_dir = non_blank(env, "STARCITE_RAFT_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(if dev { "./starcite-data" } else { "priv/raft" }));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let cores = int(env, "STARCITE_CORES", cpus, 1, 1024)? as u32;
        let num_groups = int(env, "STARCITE_NUM_GROUPS", 256, 1, 1 << 20)? as u32;
        let cluster_nodes =
            node_list(env, "CLUSTER_NODES")?.unwrap_or_else(|| vec![node_name.clone()]);
        let write_node_ids =
            node_list(env, "STARCITE_WRITE_NODE_IDS")?.unwrap_or_else(|| vec![node_name.clone()]);
        let default_rf = if dev { 1 } else { 3 };
        let replication_factor =
            int(env, "STARCITE_WRITE_REPLICATION_FACTOR", default_rf, 1, 7)? as u32;
        let cluster_port = int(env, "STARCITE_CLUSTER_PORT", 4370, 1, u64::from(u16::MAX))? as u16;
        let secret = non_blank(env, "SECRET_KEY_BASE");
        let cluster_listen_port = match env.get("STARCITE_CLUSTER_LISTEN_PORT") {
            Some(_) => Some(int(
                env,
                "STARCITE_CLUSTER_LISTEN_PORT",
                0,
                1,
                u64::from(u16::MAX),
            )? as u16),
            None => None,
        };
        check_topology(
            &node_name,
            &cluster_nodes,
            &write_node_ids,
            replication_factor,
        )?;
        for id in &cluster_nodes {
            node_socket_addr(id, cluster_port).map_err(|reason| err("CLUSTER_NODES", reason))?;
        }
        if cluster_nodes.len() > 1 && secret.as_deref().is_none_or(|s| s.len() < 16) {
            return Err(err("SECRET_KEY_BASE", "a cluster needs the same secret (at least 16 characters) on every node; peers authenticate with it"));
        }
        let dedupe_window = int(
            env,
            "STARCITE_PRODUCER_DEDUPE_WINDOW",
            DEFAULT_DEDUPE_WINDOW as u64,
            1,
            65_536,
        )? as usize;
        let event_store_max_bytes = size(
            env,
            "STARCITE_EVENT_STORE_MAX_SIZE",
            starcite_wire::limits::DEFAULT_HOT_TIER,
        )?;
        let checkpoint_bytes = size(
            env,
            "STARCITE_LOG_CHECKPOINT_SIZE",
            DEFAULT_CHECKPOINT_BYTES,
        )?;
        let log_direct_io = boolean(env, "STARCITE_LOG_DIRECT_IO", true)?;
        let leader_follows_writer = boolean(env, "STARCITE_LEADER_FOLLOWS_WRITER", true)?;
        let telemetry = boolean(env, "STARCITE_ENABLE_TELEMETRY", true)?;
        let rejoin = boolean(env, "STARCITE_REJOIN", false)?;
        let (tls, tls_ca_file) = tls_settings(env)?;
        let conn_limits = conn_limits(env)?;
        let archive = crate::archive::config::from_env(env, dev, &data_dir)?;
        if write_node_ids.len() > 1
            && matches!(archive.backend, crate::archive::Backend::Fs { .. })
            && non_blank(env, "STARCITE_ARCHIVE_FS_DIR").is_none()
        {
            return Err(err(
                "STARCITE_ARCHIVE_FS_DIR",
                "a cluster with the fs archive needs one directory every node shares; set it, or use s3 or postgres",
            ));
        }
        Ok(Config {
            node_name,
            port,
            wire_port,
            ops_port,
            data_dir,
            cores,
            num_groups,
            cluster_nodes,
            write_node_ids,
            replication_factor,
            cluster_port,
            cluster_listen_port,
            secret,
            dedupe_window,
            producer_cap: PRODUCERS_PER_SESSION,
            event_store_max_bytes,
            checkpoint_bytes,
            log_direct_io,
            leader_follows_writer,
            telemetry,
            rejoin,
            auth,
            tls,
            tls_ca_file,
            conn_limits,
            archive,
        })
    }
}

/// `STARCITE_AUTH_MODE` (contract §2.1); jwt mode needs its issuer, audience
/// and JWKS URL (decision 12: fail fast, naming the variable).
fn auth_mode(env: &impl Env, dev: bool) -> Result<Option<crate::auth::AuthConfig>, ConfigError> {
    let default = if dev { "none" } else { "jwt" };
    let mode = env
        .get("STARCITE_AUTH_MODE")
        .map(|v| v.trim().to_lowercase());
    let mode = mode
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| default.to_owned());
    match mode.as_str() {
        "none" => Ok(None),
        "jwt" => crate::auth::auth_config_from_env(|k| env.get(k))
            .map(Some)
            .map_err(|(var, reason)| err(var, reason)),
        other => Err(err(
            "STARCITE_AUTH_MODE",
            format!("must be jwt or none, got {other:?}"),
        )),
    }
}

/// A comma-separated node list: trimmed, blanks dropped; a duplicate is an error.
fn node_list(env: &impl Env, var: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(raw) = env.get(var) else {
        return Ok(None);
    };
    let mut ids: Vec<String> = Vec::new();
    for id in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if ids.iter().any(|x| x == id) {
            return Err(err(var, format!("lists {id} twice")));
        }
        if !id.contains('@') {
            return Err(err(
                var,
                format!("{id:?} is not a node id of the form name@host[:port]"),
            ));
        }
        ids.push(id.to_owned());
    }
    if ids.is_empty() {
        return Err(err(var, "lists no node"));
    }
    Ok(Some(ids))
}

fn check_topology(
    node: &str,
    cluster: &[String],
    writers: &[String],
    rf: u32,
) -> Result<(), ConfigError> {
    if !cluster.iter().any(|n| n == node) {
        return Err(err(
            "CLUSTER_NODES",
            format!("does not list this node ({node}, from RELEASE_NODE)"),
        ));
    }
    if let Some(stray) = writers.iter().find(|w| !cluster.contains(w)) {
        return Err(err(
            "STARCITE_WRITE_NODE_IDS",
            format!("{stray} is not in CLUSTER_NODES"),
        ));
    }
    if rf as usize > writers.len() {
        let reason = format!(
            "replication factor {rf} exceeds the {} write node(s)",
            writers.len()
        );
        return Err(err("STARCITE_WRITE_REPLICATION_FACTOR", reason));
    }
    Ok(())
}

/// The cluster address of a node id `name@host[:port]`.
pub fn node_socket_addr(id: &str, default_port: u16) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let host_port = id
        .split_once('@')
        .map(|(_, h)| h)
        .ok_or_else(|| format!("{id:?}: expected name@host[:port]"))?;
    let with_port = match host_port.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() && !host_port.ends_with(']') => {
            host_port.to_owned()
        }
        _ => format!("{host_port}:{default_port}"),
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("{id}: cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{id}: {with_port} resolves to no address"))
}

pub(crate) fn non_blank(env: &impl Env, var: &str) -> Option<String> {
    env.get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Integer grammar of §12.1: trimmed, fully parsed, optional sign, in range.
pub(crate) fn int(
    env: &impl Env,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = env.get(var) else {
        return Ok(default);
    };
    let v: i128 = raw
        .trim()
        .parse()
        .map_err(|_| err(var, format!("not an integer: {raw:?}")))?;
    if v < i128::from(min) || v > i128::from(max) {
        return Err(err(
            var,
            format!("must be between {min} and {max}, got {v}"),
        ));
    }
    Ok(v as u64)
}

/// Boolean grammar of §12.1.
pub(crate) fn boolean(
    env: &impl Env,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(raw) = env.get(var) else {
        return Ok(default);
    };
    match raw.trim().to_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(err(var, format!("not a boolean: {raw:?}"))),
    }
}

/// Size grammar of §12.1: digits, optional spaces, optional unit; no unit = MiB.
pub fn parse_size(raw: &str) -> Option<u64> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" => 1 << 20,
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

pub(crate) fn size(env: &impl Env, var: &'static str, default: u64) -> Result<u64, ConfigError> {
    let Some(raw) = env.get(var) else {
        return Ok(default);
    };
    parse_size(&raw).ok_or_else(|| {
        err(
            var,
            format!("not a positive size (e.g. 256MB, 4G): {raw:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_defaults() {
        let c = Config::from_env(Profile::Dev, &[("STARCITE_CORES", "2")]).unwrap();
        assert_eq!(c.port, 4000);
        assert_eq!(c.wire_port, 4001);
        assert_eq!(c.data_dir, PathBuf::from("./starcite-data"));
        assert_eq!(c.num_groups, 256);
        assert_eq!(c.cores, 2);
        assert_eq!(c.event_store_max_bytes, 2 << 30);
    }

    #[test]
    fn jwt_mode_needs_its_settings() {
        let e = Config::from_env(Profile::Start, &[("PORT", "1")]).unwrap_err();
        assert!(e.var.starts_with("STARCITE_AUTH_J"), "{e}");
        let jwt = [
            ("STARCITE_AUTH_JWT_ISSUER", "https://issuer.test"),
            ("STARCITE_AUTH_JWT_AUDIENCE", "starcite-api"),
            ("STARCITE_AUTH_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
            ("STARCITE_WRITE_REPLICATION_FACTOR", "1"),
            ("STARCITE_S3_BUCKET", "events"),
        ];
        let c = Config::from_env(Profile::Start, &jwt).unwrap();
        assert_eq!(
            c.auth.as_ref().map(|a| a.issuer.as_str()),
            Some("https://issuer.test")
        );
        let e = Config::from_env(Profile::Start, &[("STARCITE_AUTH_MODE", "bogus")]).unwrap_err();
        assert_eq!(e.var, "STARCITE_AUTH_MODE");
        assert!(Config::from_env(
            Profile::Start,
            &[
                ("STARCITE_AUTH_MODE", " NONE "),
                ("STARCITE_WRITE_REPLICATION_FACTOR", "1"),
                ("STARCITE_ARCHIVE_ADAPTER", "fs")
            ]
        )
        .is_ok());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("PORT", "x"),
            ("PORT", "70000"),
            ("STARCITE_NUM_GROUPS", "0"),
            ("STARCITE_EVENT_STORE_MAX_SIZE", "12Q"),
            ("STARCITE_ENABLE_TELEMETRY", "maybe"),
            ("STARCITE_WRITE_REPLICATION_FACTOR", "2"),
            ("STARCITE_WRITE_NODE_IDS", "x"),
        ] {
            let e = Config::from_env(Profile::Dev, &[(var, val)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={val}");
        }
    }

    #[test]
    fn cluster_topology_is_validated() {
        let base = [
            ("RELEASE_NODE", "a@127.0.0.1:4371"),
            (
                "CLUSTER_NODES",
                "a@127.0.0.1:4371, b@127.0.0.1:4372,c@127.0.0.1:4373",
            ),
            (
                "STARCITE_WRITE_NODE_IDS",
                "a@127.0.0.1:4371,b@127.0.0.1:4372,c@127.0.0.1:4373",
            ),
            ("STARCITE_WRITE_REPLICATION_FACTOR", "3"),
            ("SECRET_KEY_BASE", "0123456789abcdef0123"),
            ("STARCITE_ARCHIVE_FS_DIR", "/shared/archive"),
        ];
        let c = Config::from_env(Profile::Dev, &base).unwrap();
        assert_eq!(c.cluster_nodes.len(), 3);
        // A cluster cannot archive into each node's own directory.
        let mut own_dirs = base;
        own_dirs[5] = ("STARCITE_ARCHIVE_FS_DIR", " ");
        assert_eq!(
            Config::from_env(Profile::Dev, &own_dirs).unwrap_err().var,
            "STARCITE_ARCHIVE_FS_DIR"
        );
        assert_eq!(
            node_socket_addr("b@127.0.0.1:4372", 4370).unwrap().port(),
            4372
        );
        assert_eq!(node_socket_addr("b@127.0.0.1", 4370).unwrap().port(), 4370);
        let mut no_secret = base;
        no_secret[4] = ("SECRET_KEY_BASE", "");
        assert_eq!(
            Config::from_env(Profile::Dev, &no_secret).unwrap_err().var,
            "SECRET_KEY_BASE"
        );
        let mut rf4 = base;
        rf4[3] = ("STARCITE_WRITE_REPLICATION_FACTOR", "4");
        assert_eq!(
            Config::from_env(Profile::Dev, &rf4).unwrap_err().var,
            "STARCITE_WRITE_REPLICATION_FACTOR"
        );
        let mut missing_me = base;
        missing_me[0] = ("RELEASE_NODE", "z@127.0.0.1:4379");
        assert_eq!(
            Config::from_env(Profile::Dev, &missing_me).unwrap_err().var,
            "CLUSTER_NODES"
        );
        let mut dup = base;
        dup[1] = ("CLUSTER_NODES", "a@127.0.0.1:4371,a@127.0.0.1:4371");
        assert_eq!(
            Config::from_env(Profile::Dev, &dup).unwrap_err().var,
            "CLUSTER_NODES"
        );
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let e =
            Config::from_env(Profile::Dev, &[("STARCITE_TLS_CERT_FILE", "/x.pem")]).unwrap_err();
        assert_eq!(e.var, "STARCITE_TLS_KEY_FILE");
        let e = Config::from_env(Profile::Dev, &[("STARCITE_TLS_KEY_FILE", "/x.pem")]).unwrap_err();
        assert_eq!(e.var, "STARCITE_TLS_CERT_FILE");
        let e = Config::from_env(
            Profile::Dev,
            &[
                ("STARCITE_TLS_CERT_FILE", "/nonexistent/cert.pem"),
                ("STARCITE_TLS_KEY_FILE", "/nonexistent/key.pem"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.var, "STARCITE_TLS_CERT_FILE");
        assert!(e.reason.contains("/nonexistent/cert.pem"), "{e}");
        let e = Config::from_env(Profile::Dev, &[("STARCITE_TLS_CA_FILE", "/nonexistent/ca")])
            .unwrap_err();
        assert_eq!(e.var, "STARCITE_TLS_CA_FILE");
        let c = Config::from_env(Profile::Dev, &[("STARCITE_CORES", "1")]).unwrap();
        assert_eq!(c.tls, None);
        assert_eq!(c.conn_limits, ConnLimits::default());
    }

    #[test]
    fn connection_limits() {
        let c = Config::from_env(
            Profile::Dev,
            &[
                ("STARCITE_MAX_CONNECTIONS_PER_IP", "0"),
                ("STARCITE_MAX_TAIL_SOCKETS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.conn_limits.max_connections_per_ip, 0);
        assert_eq!(c.conn_limits.max_tail_sockets, 7);
        for (var, val) in [
            ("STARCITE_MAX_CONNECTIONS_PER_IP", "-1"),
            ("STARCITE_MAX_TAIL_SOCKETS", "0"),
            ("STARCITE_MAX_TAIL_SOCKETS", "many"),
        ] {
            assert_eq!(
                Config::from_env(Profile::Dev, &[(var, val)])
                    .unwrap_err()
                    .var,
                var
            );
        }
    }

    #[test]
    fn size_grammar() {
        assert_eq!(parse_size("256MB"), Some(256 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("1024"), Some(1024 << 20));
        assert_eq!(parse_size("10 kib"), Some(10 << 10));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("MB"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
