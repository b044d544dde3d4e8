//! The cold tier: committed history flushed off the hot tier to an archive backend,
//! and read back for old cursors (contract §9.4, §9.5, §11; decisions 6–8).
//!
//! - [`event`]: the archived forms of events and sessions and their conversions.
//! - [`layout`]: S3 object keys, 256-seq chunks and the idempotent chunk merge.
//! - [`adapter`]: the blocking backend interface and its configuration;
//!   [`fs`], [`s3`] and [`postgres`] implement it.
//! - [`archiver`]: the dedicated archiver thread (flush, then `ack_archived`).
//! - [`cold`]: cold reads for tails, off the shard cores, through a bounded
//!   chunk cache.

pub mod adapter;
pub mod archiver;
pub mod cache;
pub mod cold;
pub mod config;
pub mod event;
pub mod fs;
pub mod layout;
pub mod postgres;
pub mod s3;
pub mod stats;

pub use adapter::{Adapter, ArchiveConfig, ArchiveError, Backend};
pub use event::{ArchiveEvent, SessionRecord};
