//! The simulated peer network under the production engine loop: what a core
//! sends goes to the world's outbox; the world delays, drops, duplicates or
//! cuts it (partitions, crashed peers) and delivers it through the production
//! `PeerInbound` (decoding, heartbeat unpacking, routing to the owning core).

use std::cell::RefCell;
use std::rc::Rc;

use starcite::node::engine_io::PeerNet;

/// Raft messages to one peer: (group, encoded message).
pub type RaftBatch = Vec<(u32, Vec<u8>)>;

/// One node's view of the network; all nodes share the outbox and link state.
pub struct SimNet {
    pub me: usize,
    pub shared: Rc<NetShared>,
}

#[derive(Default)]
pub struct NetShared {
    pub names: Vec<String>,
    /// (from, to, batch) in send order.
    pub outbox: RefCell<Vec<(usize, usize, RaftBatch)>>,
    /// `up[a][b]`: a connection from a to b exists (b is up, not cut off).
    pub up: RefCell<Vec<Vec<bool>>>,
}

impl NetShared {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

impl PeerNet for SimNet {
    fn is_connected(&self, peer: &str) -> bool {
        self.shared
            .index(peer)
            .is_some_and(|p| self.shared.up.borrow()[self.me][p])
    }

    fn send_raft(&self, peer: &str, batch: Vec<(u32, Vec<u8>)>) {
        if let Some(to) = self.shared.index(peer) {
            self.shared.outbox.borrow_mut().push((self.me, to, batch));
        }
    }
}
