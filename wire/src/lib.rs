pub mod log;
pub mod peer;
pub mod record;
