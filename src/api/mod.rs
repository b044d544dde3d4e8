//! The public Starcite API: validation of client input, error envelope, rendering,
//! and the route handlers that send work to the owning core.

pub mod conventions;
pub mod error;
pub mod fingerprint;
pub mod principal;
pub mod query;
pub mod render;
pub mod validate;
