//! The public Starcite API: validation of client input, error envelope, rendering,
//! and the route handlers that send work to the owning core.

pub mod error;
pub mod principal;
pub mod query;
pub mod validate;
