//! A per-core shutdown signal that any number of tasks can await.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

/// Cheap to clone; lives on one core.
#[derive(Clone, Default)]
pub struct Shutdown(Rc<Inner>);

impl Shutdown {
    pub fn fire(&self) {
        self.0.fired.set(true);
        for w in self.0.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.get()
    }

    /// Resolves once `fire` has been called.
    pub fn wait(&self) -> ShutdownWait {
        ShutdownWait(self.0.clone())
    }
}

pub struct ShutdownWait(Rc<Inner>);

impl Future for ShutdownWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.0.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
