pub mod log;
pub mod peer;
pub mod proto;
pub mod record;
