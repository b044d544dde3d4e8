//! `starcite`: a clustered, durable session event log with the Starcite
//! HTTP/WebSocket API.

use clap::{Parser, Subcommand};
use starcite::config::{Config, ProcessEnv, Profile};

/// mimalloc instead of glibc malloc: per-thread free lists without arena
/// locks or consolidation passes; chosen by measurement (docs/performance.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "starcite",
    version = starcite::version(),
    about = "Durable session event log with the Starcite HTTP/WebSocket API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node configured from the environment (contract §12 variables:
    /// PORT, RELEASE_NODE, STARCITE_WRITE_NODE_IDS, STARCITE_WRITE_REPLICATION_FACTOR,
    /// STARCITE_NUM_GROUPS, STARCITE_RAFT_DATA_DIR, STARCITE_AUTH_MODE, STARCITE_CORES,
    /// STARCITE_EVENT_STORE_MAX_SIZE, STARCITE_PRODUCER_DEDUPE_WINDOW, ...).
    /// Defaults: auth jwt (needs STARCITE_AUTH_JWT_ISSUER, STARCITE_AUTH_JWT_AUDIENCE,
    /// STARCITE_AUTH_JWKS_URL), data dir priv/raft, port 4000.
    Start,
    /// Run a single development node with embedded defaults: auth none, data
    /// under ./starcite-data, port 4000, replication factor 1, no external
    /// services. Every environment variable of `start` still overrides a default.
    Dev,
    #[command(flatten)]
    Operator(starcite::ops::cli::OperatorCommand),
}

fn main() {
    disable_transparent_hugepages();
    starcite::set_build_version(option_env!("STARCITE_BUILD_VERSION"));
    let cli = Cli::parse();
    let profile = match cli.command {
        Command::Start => Profile::Start,
        Command::Dev => Profile::Dev,
        Command::Operator(cmd) => std::process::exit(starcite::ops::cli::run_cli(cmd)),
    };
    init_logging();
    let cfg = match Config::from_env(profile, &ProcessEnv) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("starcite: configuration error: {e}");
            std::process::exit(2);
        }
    };
    if cfg.auth.is_none() {
        tracing::warn!("STARCITE_AUTH_MODE=none: every request runs as tenant \"service\" with no authentication");
    }
    if let Err(e) = starcite::node::run(cfg) {
        eprintln!("starcite: {e}");
        std::process::exit(1);
    }
}

/// mimalloc asks for transparent huge pages on its arenas (`MADV_HUGEPAGE`), so
/// every fresh arena page costs a 2 MiB fault that zeroes the whole huge page on
/// the engine thread (`clear_page_erms`, 5.7% of a 3-node profile at 16
/// producers) and doubles the p99 of appends (8.8 → 4.4 ms, docs/performance.md).
/// `PR_SET_THP_DISABLE` turns THP off for this process whatever the host's
/// `transparent_hugepage` mode; a failure (old kernel, seccomp) only costs that.
fn disable_transparent_hugepages() {
    // SAFETY: prctl with integer arguments only; it touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
