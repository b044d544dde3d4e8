//! Operator interface (contract §10.2): a local admin socket in the node's data
//! directory and the `starcite ops …` / `starcite rpc "…"` commands that use it.
//!
//! * The node calls [`serve_admin`] with its data dir and an [`OpsBackend`]; the
//!   socket `<data dir>/admin.sock` (mode 0600, so only the node's user and root can
//!   use it) is served on a dedicated thread until the returned [`AdminServer`] is
//!   dropped, which removes the socket file.
//! * The binary flattens [`OperatorCommand`] into its subcommands and calls
//!   [`run_cli`]; the wait commands poll the node every 200 ms, so the server never
//!   blocks for long.
//!
//! Wire format: see [`protocol`].

mod sys;

pub mod cli;
pub mod client;
pub mod protocol;
pub mod rpc;
pub mod server;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use cli::{run_cli, run_ops, run_rpc, OperatorCommand, OpsCommand};
pub use client::{AdminClient, ClientError};
pub use protocol::Request;
pub use server::{serve_admin, AdminServer, OpsBackend, OpsError};

/// File name of the admin socket inside the data directory.
pub const SOCKET_FILE_NAME: &str = "admin.sock";
/// Where the CLI looks for the data directory when `--data-dir` is not given.
pub const DATA_DIR_ENV: &str = "STARCITE_RAFT_DATA_DIR";
/// The `starcite dev` data directory, the CLI's last resort.
pub const DEFAULT_DATA_DIR: &str = "./starcite-data";

/// `<data_dir>/admin.sock`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE_NAME)
}
