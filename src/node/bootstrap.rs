//! Node start-up and shutdown: one thread and one monoio runtime per core.

use std::cell::Cell;
use std::fs;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use starcite_shards::placement::core_of;
use starcite_shards::recovery::Recovered;
use starcite_shards::shard::{Shard, ShardConfig};

use super::engine_loop::EngineLoop;
use super::gateway::Gateway;
use super::messages::{CoreRequest, CORE_INBOX_DEPTH};
use super::segment_log::SegmentLog;
use super::shutdown::Shutdown;
use crate::config::Config;
use crate::http::{bind_reuseport, serve, Limits};

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1_500);

/// Runs the node until SIGTERM/SIGINT. Errors are boot failures.
pub fn run(cfg: Config) -> Result<(), String> {
    let _lock = lock_data_dir(&cfg.data_dir)?;
    check_layout(&cfg)?;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..cfg.cores).map(|_| flume::bounded::<CoreRequest>(CORE_INBOX_DEPTH)).unzip();
    let senders = Arc::new(senders);
    let ready: Arc<Vec<Arc<AtomicBool>>> = Arc::new((0..cfg.cores).map(|_| Arc::new(AtomicBool::new(false))).collect());
    let (boot_tx, boot_rx) = std::sync::mpsc::channel::<Result<u32, String>>();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for (core, inbox) in receivers.into_iter().enumerate() {
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        stops.push(stop_tx);
        let ctx = CoreContext {
            core: core as u32,
            cfg: cfg.clone(),
            inbox,
            senders: senders.clone(),
            ready: ready.clone(),
            stop: stop_rx,
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
    tracing::info!(port = cfg.port, cores = cfg.cores, groups = cfg.num_groups, data = %cfg.data_dir.display(), "starcite is serving");
    wait_for_signal()?;
    tracing::info!("shutting down: closing listeners and tails, finishing in-flight requests");
    for stop in &stops {
        let _ = stop.send(());
    }
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

struct CoreContext {
    core: u32,
    cfg: Config,
    inbox: flume::Receiver<CoreRequest>,
    senders: Arc<Vec<flume::Sender<CoreRequest>>>,
    ready: Arc<Vec<Arc<AtomicBool>>>,
    stop: flume::Receiver<()>,
    boot: std::sync::mpsc::Sender<Result<u32, String>>,
}

fn run_core(ctx: CoreContext) {
    let uring = monoio::utils::detect_uring();
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build();
    let mut runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ctx.boot.send(Err(format!("core {}: cannot build runtime: {e}", ctx.core)));
            return;
        }
    };
    tracing::info!(core = ctx.core, driver = if uring { "io_uring" } else { "epoll" }, "core runtime started");
    runtime.block_on(core_main(ctx));
}

async fn core_main(ctx: CoreContext) {
    let core = ctx.core;
    let started = start_engine(&ctx).and_then(|engine| {
        let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, ctx.cfg.port));
        let listener = bind_reuseport(addr)
            .or_else(|_| bind_reuseport(SocketAddr::from(([0, 0, 0, 0], ctx.cfg.port))))
            .map_err(|e| format!("core {core}: cannot listen on port {}: {e}", ctx.cfg.port))?;
        Ok((engine, listener))
    });
    let (engine, listener) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = ctx.boot.send(Err(e));
            return;
        }
    };
    let engine_task = monoio::spawn(engine.run());
    let shutdown = Shutdown::default();
    let gateway = Rc::new(Gateway {
        core,
        cores: ctx.senders.clone(),
        num_groups: ctx.cfg.num_groups,
        ready: ctx.ready.clone(),
        shutdown: shutdown.clone(),
        telemetry: ctx.cfg.telemetry,
        next_subscriber: Cell::new(1),
    });
    let _ = ctx.boot.send(Ok(core));
    let stop = ctx.stop.clone();
    let signal = shutdown.clone();
    monoio::spawn(async move {
        let _ = stop.recv_async().await;
        signal.fire();
    });
    serve(listener, gateway, Rc::new(Limits::default()), shutdown.wait()).await;
    // Listeners are closed and tails told to go away; let in-flight work finish.
    monoio::time::sleep(SHUTDOWN_GRACE).await;
    let _ = ctx.senders[core as usize].send_async(CoreRequest::Shutdown).await;
    engine_task.await;
}

fn start_engine(ctx: &CoreContext) -> Result<EngineLoop, String> {
    let cfg = &ctx.cfg;
    let (core, cores) = (ctx.core, cfg.cores);
    let log_dir = cfg.data_dir.join("log");
    let (log, recovered): (SegmentLog, Recovered) =
        SegmentLog::open(&log_dir, core, |g| g < cfg.num_groups && core_of(g, cores) == core)?;
    let groups = (0..cfg.num_groups).filter(|g| core_of(*g, cores) == core).map(|g| (g, vec![1])).collect();
    let shard_cfg = ShardConfig {
        core,
        cores,
        num_groups: cfg.num_groups,
        raft_id: 1,
        groups,
        dedupe_window: cfg.dedupe_window,
        producer_cap: cfg.producer_cap,
        hot_bytes_limit: cfg.event_store_max_bytes / u64::from(cores),
        incarnation: rand::random(),
        checkpoint_bytes: cfg.checkpoint_bytes,
        segment_bytes: starcite_shards::limits::DEFAULT_SEGMENT_BYTES.min(cfg.checkpoint_bytes / 2).max(1 << 20),
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let shard = Shard::new(shard_cfg, recovered, &logger).map_err(|e| format!("core {core}: {e}"))?;
    let flag = ctx.ready[core as usize].clone();
    Ok(EngineLoop::new(shard, log, ctx.inbox.clone(), flag))
}

fn wait_for_signal() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))?;
    signals.forever().next();
    Ok(())
}

/// One process per data dir: a second one would corrupt the log.
fn lock_data_dir(dir: &Path) -> Result<fs::File, String> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(dir).map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
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
        return Err(format!("data dir {} is in use by another starcite process", dir.display()));
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
            fs::write(&path, want.to_string()).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
