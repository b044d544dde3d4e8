pub mod log;
pub mod record;
