//! Node start-up and shutdown: one thread and one monoio runtime per core.

use std::cell::Cell;
use std::fs;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use starcite_shards::placement::core_of;
use starcite_shards::recovery::Recovered;
use starcite_shards::shard::{Shard, ShardConfig};

use super::control::ControlState;
use super::engine_io::RealClock;
use super::engine_loop::{Cluster, EngineLoop};
use super::gateway::Gateway;
use super::messages::{CoreRequest, CORE_INBOX_DEPTH};
use super::peer_inbound::PeerInbound;
use super::peer_rpc::{self, ControlMessage};
use super::segment_log::{SegmentLog, UringDisk};
use super::shutdown::Shutdown;
use super::topology::Topology;
use crate::cluster::transport::{NodeAddr, Transport, TransportConfig};
use crate::config::{node_socket_addr, Config};
use crate::http::{bind_reuseport, serve_with, Limits, NodeConnections, ServeOptions};

/// Gossip (node status, readiness, drain marks) interval.
const GOSSIP_INTERVAL: Duration = Duration::from_millis(1_000);

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1_500);

/// Runs the node until SIGTERM/SIGINT. Errors are boot failures.
pub fn run(cfg: Config) -> Result<(), String> {
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let incarnation = super::identity::load_or_create(&cfg)?;
    check_layout(&cfg)?;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..cfg.cores)
        .map(|_| flume::bounded::<CoreRequest>(CORE_INBOX_DEPTH))
        .unzip();
    let senders = Arc::new(senders);
    let topo = Arc::new(Topology::new(&cfg).with_incarnation(incarnation));
    let control = Arc::new(ControlState::new(topo.clone(), cfg.data_dir.clone()));
    let auth = cfg.auth.clone().map(crate::auth::AuthService::new);
    let requests = Arc::new(super::metrics::RequestCounters::default());
    let lifecycle = Arc::new(crate::service::lifecycle::LifecycleHub::new());
    let backend = Arc::new(super::ops_backend::NodeOps {
        control: control.clone(),
        cfg: cfg.clone(),
    });
    let admin = crate::ops::server::serve_admin(&cfg.data_dir, backend).map_err(|e| {
        format!(
            "cannot open the admin socket in {}: {e}",
            cfg.data_dir.display()
        )
    })?;
    let serve_opts = ServeOptions {
        tls: crate::tls::Acceptor::from_config(cfg.tls.as_ref())?,
        node: Arc::new(NodeConnections::new(
            cfg.conn_limits.max_connections_per_ip,
            cfg.conn_limits.max_tail_sockets,
        )),
    };
    let archive_stats = Arc::new(crate::archive::stats::ArchiveStats::default());
    let cold = crate::archive::cold::ColdTier::start(&cfg.archive, archive_stats.clone());
    let archiver_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::archive::archiver::Archiver {
        config: cfg.archive.clone(),
        cores: senders.clone(),
        cache: cold.cache.clone(),
        stats: archive_stats,
        stop: archiver_stop.clone(),
    }
    .spawn()
    .map_err(|e| format!("cannot start the archiver thread: {e}"))?;
    let (boot_tx, boot_rx) = std::sync::mpsc::channel::<Result<u32, String>>();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (core, inbox) in receivers.into_iter().enumerate() {
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        stops.push(stop_tx);
        let ctx = CoreContext {
            core: core as u32,
            cfg: cfg.clone(),
            inbox,
            senders: senders.clone(),
            topo: topo.clone(),
            control: control.clone(),
            auth: auth.clone(),
            requests: requests.clone(),
            lifecycle: lifecycle.clone(),
            serve_opts: serve_opts.clone(),
            cold: cold.clone(),
            stop: stop_rx,
            stopping: stopping.clone(),
            boot: boot_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("starcite-core-{core}"))
            .spawn(move || run_core(ctx))
            .map_err(|e| format!("cannot start core thread: {e}"))?;
        threads.push(handle);
    }
    drop(boot_tx);
    for _ in 0..cfg.cores {
        match boot_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a core thread died during start-up".to_owned()),
        }
    }
    tracing::info!(port = cfg.port, tls = cfg.tls.is_some(), cores = cfg.cores, groups = cfg.num_groups, data = %cfg.data_dir.display(), "starcite is serving");
    wait_for_signal()?;
    tracing::info!("shutting down: closing listeners and tails, finishing in-flight requests");
    archiver_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    for stop in &stops {
        let _ = stop.send(());
    }
    for t in threads {
        let _ = t.join();
    }
    admin.stop();
    tracing::info!("stopped cleanly");
    Ok(())
}

struct CoreContext {
    core: u32,
    cfg: Config,
    inbox: flume::Receiver<CoreRequest>,
    senders: Arc<Vec<flume::Sender<CoreRequest>>>,
    topo: Arc<Topology>,
    control: Arc<ControlState>,
    auth: Option<Arc<crate::auth::AuthService>>,
    requests: Arc<super::metrics::RequestCounters>,
    lifecycle: Arc<crate::service::lifecycle::LifecycleHub>,
    /// TLS acceptor and node-wide connection caps, shared by every core.
    serve_opts: ServeOptions,
    /// The archive read path, shared by every core.
    cold: crate::archive::cold::ColdTier,
    stop: flume::Receiver<()>,
    /// Set before the stop signal: a core thread ending after it is expected.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    boot: std::sync::mpsc::Sender<Result<u32, String>>,
}

fn run_core(ctx: CoreContext) {
    let uring = monoio::utils::detect_uring();
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ctx
                .boot
                .send(Err(format!("core {}: cannot build runtime: {e}", ctx.core)));
            return;
        }
    };
    tracing::info!(
        core = ctx.core,
        driver = if uring { "io_uring" } else { "epoll" },
        "core runtime started"
    );
    let core = ctx.core;
    let stopping = ctx.stopping.clone();
    let boot = ctx.boot.clone();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(core_main(ctx))
    }));
    match ran {
        Err(panic) => core_failed(
            core,
            &format!(
                "core thread panicked: {}",
                crate::http::unwind::panic_message(&*panic)
            ),
        ),
        // Ended during start-up: the boot channel reported why.
        Ok(false) => {}
        Ok(true) if stopping.load(std::sync::atomic::Ordering::Relaxed) => {}
        Ok(true) => core_failed(core, "core thread ended while the node was serving"),
    }
    drop(boot);
}

/// Serves until shutdown; `false` if the core could not start (reported on
/// the boot channel).
async fn core_main(ctx: CoreContext) -> bool {
    let core = ctx.core;
    let shutdown = Shutdown::default();
    let inbound = Rc::new(PeerInbound {
        cores: ctx.senders.clone(),
        control: ctx.control.clone(),
        lifecycle: ctx.lifecycle.clone(),
        gateway: std::cell::RefCell::new(None),
    });
    let started = match start_cluster(&ctx, inbound.clone(), &shutdown) {
        Ok(cluster) => {
            let engine = start_engine(
                &ctx,
                cluster.as_ref().map(|(t, _)| Cluster {
                    transport: t.clone(),
                    topo: ctx.topo.clone(),
                    follow_writer: ctx
                        .cfg
                        .leader_follows_writer
                        .then_some(super::writer_affinity::FollowPolicy::DEFAULT),
                }),
            )
            .await;
            engine.map(|engine| (engine, cluster))
        }
        Err(e) => Err(e),
    };
    let started = started.and_then(|(engine, cluster)| {
        let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, ctx.cfg.port));
        let listener = bind_reuseport(addr)
            .or_else(|_| bind_reuseport(SocketAddr::from(([0, 0, 0, 0], ctx.cfg.port))))
            .map_err(|e| format!("core {core}: cannot listen on port {}: {e}", ctx.cfg.port))?;
        let wire = match ctx.cfg.wire_port {
            0 => None,
            port => Some(crate::wire_server::bind(port).map_err(|e| {
                format!("core {core}: cannot listen on STARCITE_WIRE_PORT {port}: {e}")
            })?),
        };
        let ops = match ctx.cfg.ops_port {
            0 => None,
            port => Some(
                bind_reuseport(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
                    .or_else(|_| bind_reuseport(SocketAddr::from(([0, 0, 0, 0], port))))
                    .map_err(|e| {
                        format!("core {core}: cannot listen on STARCITE_OPS_PORT {port}: {e}")
                    })?,
            ),
        };
        Ok((engine, listener, cluster, wire, ops))
    });
    let (engine, listener, cluster, wire, ops) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = ctx.boot.send(Err(e));
            return false;
        }
    };
    // monoio does not catch task panics: a panicking engine would leave the
    // core dead while the node keeps answering. Any end of the engine other
    // than a requested shutdown stops the process.
    let engine_task = monoio::spawn(async move {
        match crate::http::unwind::catch_unwind_future(engine.run()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => core_failed(core, &e),
            Err(panic) => core_failed(
                core,
                &format!(
                    "engine panicked: {}",
                    crate::http::unwind::panic_message(&*panic)
                ),
            ),
        }
    });
    let transport = cluster.as_ref().map(|(t, _)| t.clone());
    let gateway = Rc::new(Gateway {
        core,
        cores: ctx.senders.clone(),
        topo: ctx.topo.clone(),
        control: ctx.control.clone(),
        transport: transport.clone(),
        shutdown: shutdown.clone(),
        telemetry: ctx.cfg.telemetry,
        next_subscriber: Cell::new(1),
        leader_hints: Default::default(),
        auth: ctx.auth.clone(),
        requests: ctx.requests.clone(),
        cold: ctx.cold.clone(),
        lifecycle: ctx.lifecycle.clone(),
    });
    *inbound.gateway.borrow_mut() = Some(gateway.clone());
    crate::phoenix::install(&gateway);
    let wire_task = wire.map(|listener| {
        let limits = Rc::new(crate::wire_server::WireLimits::default());
        monoio::spawn(crate::wire_server::serve(
            listener,
            gateway.clone(),
            limits,
            ctx.serve_opts.tls.clone(),
            shutdown.wait(),
        ))
    });
    let ops_task = ops.map(|listener| {
        monoio::spawn(serve_with(
            listener,
            Rc::new(super::gateway::OpsHandler(gateway.clone())),
            Rc::new(Limits::default()),
            ServeOptions::default(),
            shutdown.wait(),
        ))
    });
    if let Some((transport, listener)) = cluster {
        transport.start(shutdown.wait());
        let serving = transport.clone();
        let stop = shutdown.clone();
        monoio::spawn(async move { serving.serve(listener, stop.wait()).await });
        if core == 0 {
            monoio::spawn(gossip_loop(
                transport,
                ctx.control.clone(),
                shutdown.clone(),
            ));
        }
    }
    let _ = ctx.boot.send(Ok(core));
    let stop = ctx.stop.clone();
    let signal = shutdown.clone();
    let own_inbox = ctx.senders[core as usize].clone();
    monoio::spawn(async move {
        let _ = stop.recv_async().await;
        signal.fire();
        // Leadership moves during the grace period, so peers need no election.
        let _ = own_inbox.send_async(CoreRequest::HandOff).await;
    });
    serve_with(
        listener,
        gateway,
        Rc::new(Limits::default()),
        ctx.serve_opts.clone(),
        shutdown.wait(),
    )
    .await;
    if let Some(task) = wire_task {
        task.await;
    }
    if let Some(task) = ops_task {
        task.await;
    }
    // Listeners are closed and tails told to go away; let in-flight work finish.
    monoio::time::sleep(SHUTDOWN_GRACE).await;
    let _ = ctx.senders[core as usize]
        .send_async(CoreRequest::Shutdown)
        .await;
    engine_task.await;
    true
}

fn transport_config(cfg: &Config, topo: &Topology) -> TransportConfig {
    let peers = topo
        .peers()
        .filter_map(|name| {
            let addr = node_socket_addr(name, cfg.cluster_port).ok()?;
            Some(NodeAddr {
                name: name.to_owned(),
                addr,
            })
        })
        .collect();
    TransportConfig {
        me: topo.me.clone(),
        http_port: cfg.port,
        peers,
        secret: cfg.secret.clone().unwrap_or_default().into_bytes(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        reconnect_backoff: (Duration::from_millis(50), Duration::from_secs(2)),
        max_queued_raft_bytes_per_peer: 32 << 20,
        heartbeat_interval: Duration::from_millis(500),
        peer_timeout: Duration::from_secs(3),
    }
}

/// The transport and cluster listener of this core, on a multi-node cluster.
fn start_cluster(
    ctx: &CoreContext,
    inbound: Rc<PeerInbound>,
    _shutdown: &Shutdown,
) -> Result<Option<(Rc<Transport>, monoio::net::TcpListener)>, String> {
    if ctx.topo.single_node() {
        return Ok(None);
    }
    let mut me = node_socket_addr(&ctx.topo.me, ctx.cfg.cluster_port)?;
    if let Some(port) = ctx.cfg.cluster_listen_port {
        me.set_port(port);
    }
    let listener = bind_reuseport(me).map_err(|e| {
        format!(
            "core {}: cannot listen on cluster address {me}: {e}",
            ctx.core
        )
    })?;
    let transport = Transport::new(transport_config(&ctx.cfg, &ctx.topo), inbound);
    Ok(Some((transport, listener)))
}

/// Core 0 gossips this node's view every second and sweeps node statuses.
async fn gossip_loop(transport: Rc<Transport>, control: Arc<ControlState>, shutdown: Shutdown) {
    loop {
        control.refresh_statuses(super::control::now_ms());
        let body = peer_rpc::encode(&ControlMessage::Gossip(control.gossip()));
        for peer in control.topo.peers() {
            transport.send_control(peer, body.clone());
        }
        monoio::select! {
            _ = monoio::time::sleep(GOSSIP_INTERVAL) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The production engine of a core.
type CoreEngine = EngineLoop<UringDisk, Transport, RealClock>;

async fn start_engine(
    ctx: &CoreContext,
    cluster: Option<Cluster<Transport>>,
) -> Result<CoreEngine, String> {
    let cfg = &ctx.cfg;
    let (core, cores) = (ctx.core, cfg.cores);
    let log_dir = cfg.data_dir.join("log");
    let groups = ctx.topo.local_groups(core);
    let owned: Vec<u32> = groups.iter().map(|(g, _)| *g).collect();
    let disk = UringDisk::open(
        &log_dir,
        core,
        cfg.log_direct_io,
        starcite_shards::limits::DEFAULT_SEGMENT_BYTES,
    )?;
    let (log, recovered): (SegmentLog<UringDisk>, Recovered) = SegmentLog::open(disk, core, |g| {
        g < cfg.num_groups && core_of(g, cores) == core && owned.contains(&g)
    })
    .await
    .map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let shard_cfg = ShardConfig {
        core,
        cores,
        num_groups: cfg.num_groups,
        raft_id: ctx.topo.raft_id(&ctx.topo.me).unwrap_or(0),
        groups,
        dedupe_window: cfg.dedupe_window,
        producer_cap: cfg.producer_cap,
        hot_bytes_limit: cfg.event_store_max_bytes / u64::from(cores),
        incarnation: rand::random(),
        checkpoint_bytes: cfg.checkpoint_bytes,
        segment_bytes: starcite_shards::limits::DEFAULT_SEGMENT_BYTES
            .min(cfg.checkpoint_bytes / 2)
            .max(1 << 20),
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let shard =
        Shard::new(shard_cfg, recovered, &logger).map_err(|e| format!("core {core}: {e}"))?;
    Ok(EngineLoop::new(
        shard,
        log,
        RealClock,
        ctx.inbox.clone(),
        ctx.control.clone(),
        cluster,
    ))
}

/// A core's engine ended other than by shutdown: stop the whole node loudly
/// (systemd restarts it) rather than serve with a dead core.
fn core_failed(core: u32, why: &str) -> ! {
    tracing::error!(core, error = %why, "core engine stopped; stopping the node");
    eprintln!("starcite: core {core}: {why}; stopping the node");
    std::process::exit(70);
}

fn wait_for_signal() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("signals: {e}"))?;
    signals.forever().next();
    Ok(())
}

/// One process per data dir: a second one would corrupt the log.
fn lock_data_dir(dir: &Path) -> Result<fs::File, String> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "data dir {} is in use by another starcite process",
            dir.display()
        ));
    }
    Ok(file)
}

/// The data dir remembers the core and group counts it was written with: a
/// different count would map groups to different logs and lose data.
fn check_layout(cfg: &Config) -> Result<(), String> {
    let path = cfg.data_dir.join("layout.json");
    let want = serde_json::json!({ "cores": cfg.cores, "num_groups": cfg.num_groups, "format": 1 });
    match fs::read(&path) {
        Ok(bytes) => {
            let have: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            if have != want {
                return Err(format!(
                    "{} was created with {have}; this start asks for {want}. Keep STARCITE_CORES and STARCITE_NUM_GROUPS unchanged for an existing data dir",
                    cfg.data_dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(&path, want.to_string().as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `path` so that a crash leaves either no file or the whole file, never a
/// torn one: a temporary file is written and synced, renamed over `path`, and
/// the directory is synced so the rename itself is durable.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod layout_tests {
    use super::write_atomically;

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layout.json");
        write_atomically(&path, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}");
        // A stale temporary from a crash is simply overwritten.
        std::fs::write(dir.path().join("layout.json.tmp"), b"torn").unwrap();
        write_atomically(&path, b"{\"b\":2}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"b\":2}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("layout.json")]);
    }
}
