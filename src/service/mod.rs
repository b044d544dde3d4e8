//! Transport-independent session operations, shared by HTTP, the Phoenix
//! socket and the binary protocol.

pub mod lifecycle;
pub mod sessions;
