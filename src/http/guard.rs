//! Node-wide connection accounting shared by every core's accept loop: connections
//! per client address and open WebSocket (tail) sessions.
//!
//! Both counters are touched once when a connection (or session) starts and once when
//! it ends, never per request, so a mutex is cheap enough for the per-address map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Node-wide caps; `0` for `max_per_ip` means no per-address cap.
#[derive(Debug)]
pub struct NodeConnections {
    max_per_ip: usize,
    max_websockets: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    websockets: AtomicUsize,
}

impl Default for NodeConnections {
    /// No per-address cap, no WebSocket cap (tests and embedded use).
    fn default() -> Self {
        Self::new(0, usize::MAX)
    }
}

impl NodeConnections {
    pub fn new(max_per_ip: usize, max_websockets: usize) -> Self {
        Self {
            max_per_ip,
            max_websockets,
            per_ip: Mutex::new(HashMap::new()),
            websockets: AtomicUsize::new(0),
        }
    }

    /// Counts a connection from `ip` (IPv4-mapped IPv6 addresses count as their IPv4
    /// address); `None` when that address already has `max_per_ip` connections.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max_per_ip == 0 {
            return Some(IpSlot { node: None, ip });
        }
        let ip = ip.to_canonical();
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            node: Some(Arc::clone(self)),
            ip,
        })
    }

    /// Counts a WebSocket session; `None` at the node's cap.
    pub fn open_websocket(self: &Arc<Self>) -> Option<WebSocketSlot> {
        let mut cur = self.websockets.load(Ordering::Relaxed);
        loop {
            if cur >= self.max_websockets {
                return None;
            }
            match self.websockets.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(WebSocketSlot(Arc::clone(self))),
                Err(now) => cur = now,
            }
        }
    }

    /// Open WebSocket sessions on the node.
    pub fn websockets(&self) -> usize {
        self.websockets.load(Ordering::Relaxed)
    }

    /// Open connections from `ip` (0 when not tracked).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        let map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// One counted connection; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    node: Option<Arc<NodeConnections>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(node) = &self.node else { return };
        let mut map = node.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// One counted WebSocket session; released on drop.
#[derive(Debug)]
pub struct WebSocketSlot(Arc<NodeConnections>);

impl Drop for WebSocketSlot {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_counts_mapped_addresses_once() {
        let node = Arc::new(NodeConnections::new(2, 1));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let a = node.admit(v4).unwrap();
        let b = node.admit(mapped).unwrap();
        assert!(node.admit(v4).is_none());
        assert!(node.admit("10.0.0.2".parse().unwrap()).is_some());
        assert_eq!(node.connections_from(v4), 2);
        drop(a);
        assert!(node.admit(mapped).is_some());
        drop(b);
        assert_eq!(node.connections_from(v4), 0);
        let w = node.open_websocket().unwrap();
        assert!(node.open_websocket().is_none());
        drop(w);
        assert!(node.open_websocket().is_some());
    }

    #[test]
    fn zero_means_no_per_ip_cap() {
        let node = Arc::new(NodeConnections::new(0, 10));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| node.admit(ip).unwrap()).collect();
        assert_eq!(slots.len(), 100);
        assert_eq!(node.connections_from(ip), 0);
    }
}
