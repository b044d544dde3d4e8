//! A per-core shutdown signal that any number of tasks can await.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    waiters: RefCell<Waiters>,
}

/// Wakers of the pending [`ShutdownWait`]s: one slot per live wait, freed when
/// the wait is dropped, so a poll is O(1) and the list stays as long as the
/// number of waits alive (a linear `will_wake` scan of every waker ever
/// registered cost a tail socket O(sockets + connections ever served) per
/// delivered event).
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// Cheap to clone; lives on one core.
#[derive(Clone, Default)]
pub struct Shutdown(Rc<Inner>);

impl Shutdown {
    pub fn fire(&self) {
        self.0.fired.set(true);
        let wakers: Vec<Waker> = self
            .0
            .waiters
            .borrow_mut()
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.get()
    }

    /// Resolves once `fire` has been called.
    pub fn wait(&self) -> ShutdownWait {
        ShutdownWait {
            inner: self.0.clone(),
            slot: None,
        }
    }
}

pub struct ShutdownWait {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl Future for ShutdownWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.inner.fired.get() {
            return Poll::Ready(());
        }
        let mut w = this.inner.waiters.borrow_mut();
        match this.slot {
            Some(i) => match &mut w.slots[i] {
                Some(old) if old.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match w.free.pop() {
                    Some(i) => i,
                    None => {
                        w.slots.push(None);
                        w.slots.len() - 1
                    }
                };
                w.slots[i] = Some(cx.waker().clone());
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownWait {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            if let Ok(mut w) = self.inner.waiters.try_borrow_mut() {
                w.slots[i] = None;
                w.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn slots_are_reused_and_fire_wakes_the_pending() {
        let s = Shutdown::default();
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(c.clone());
        let mut cx = Context::from_waker(&waker);
        // Many short-lived waits (a select! per loop turn) keep one slot.
        for _ in 0..10_000 {
            let mut w = s.wait();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(s.0.waiters.borrow().slots.len(), 1);
        let mut a = s.wait();
        let mut b = s.wait();
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        s.fire();
        assert_eq!(c.0.load(Ordering::SeqCst), 2);
        assert!(Pin::new(&mut a).poll(&mut cx).is_ready());
        assert!(s.wait().is_ready_now());
    }

    impl ShutdownWait {
        fn is_ready_now(mut self) -> bool {
            let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
            Pin::new(&mut self)
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
        }
    }
}
