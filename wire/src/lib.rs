#[cfg(feature = "client")]
pub mod client;
pub mod log;
pub mod peer;
pub mod proto;
pub mod record;
