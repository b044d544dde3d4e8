#[cfg(feature = "client")]
pub mod client;
pub mod limits;
pub mod log;
pub mod peer;
pub mod proto;
pub mod record;
