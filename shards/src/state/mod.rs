//! The replicated state machine of one group: its sessions, their producer
//! windows and their unarchived (hot) events. Apply is deterministic: everything
//! that varies (time, ids) is inside the command.

pub mod machine;
pub mod producers;
pub mod session;

pub use machine::{Applied, GroupMachine};
pub use session::Session;
