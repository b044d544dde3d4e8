//! What a core's engine loop awaits and talks to, as small traits: a clock with
//! timers and a peer network. The log disk is [`super::segment_log::LogDisk`].
//!
//! Production implements them with monoio's timer and the cluster
//! [`Transport`]; the simulator (sim/) with virtual time and a simulated
//! network, so it runs the production [`super::engine_loop::EngineLoop`].
//! The engine loop is generic over them (monomorphized, no dynamic dispatch).

use std::future::Future;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cluster::transport::Transport;

/// Time for the engine: monotonic instants, wall-clock microseconds (event
/// timestamps) and sleeping until a deadline.
pub trait Clock {
    fn now(&self) -> Instant;
    /// Microseconds since the Unix epoch.
    fn wall_us(&self) -> i64;
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;
}

/// The real clock: `Instant::now`, `SystemTime::now`, monoio's timer.
#[derive(Clone, Copy, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_us(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        monoio::time::sleep_until(deadline.into())
    }
}

/// Sending Raft messages to peer nodes (fire and forget: Raft retransmits).
pub trait PeerNet {
    /// Whether messages to `peer` can leave now; when not, the engine reports
    /// the peer unreachable to Raft instead of sending.
    fn is_connected(&self, peer: &str) -> bool;
    /// One batch of `(group, encoded message)` for `peer`.
    fn send_raft(&self, peer: &str, batch: Vec<(u32, Vec<u8>)>);
}

impl PeerNet for Transport {
    fn is_connected(&self, peer: &str) -> bool {
        Transport::is_connected(self, peer)
    }

    fn send_raft(&self, peer: &str, batch: Vec<(u32, Vec<u8>)>) {
        Transport::send_raft(self, peer, batch)
    }
}

/// Waits for whichever of two futures finishes first, polling `a` first
/// (deterministic: no random branch order, no runtime needed).
pub async fn first_of<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
            return std::task::Poll::Ready(Either::A(v));
        }
        if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
            return std::task::Poll::Ready(Either::B(v));
        }
        std::task::Poll::Pending
    })
    .await
}

pub enum Either<A, B> {
    A(A),
    B(B),
}
