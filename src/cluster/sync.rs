//! Small single-core synchronisation helpers for the transport's tasks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A one-shot event that any number of tasks can await; cheap to clone.
///
/// Built on a flume channel that never carries a message: firing drops the only
/// sender, which wakes every receiver. A waiter that gives up (e.g. the losing
/// branch of a `select!`) unregisters itself, so nothing accumulates however many
/// connections come and go.
#[derive(Clone)]
pub(crate) struct Latch(Rc<LatchInner>);

struct LatchInner {
    tx: RefCell<Option<flume::Sender<()>>>,
    rx: flume::Receiver<()>,
}

impl Latch {
    pub(crate) fn new() -> Self {
        let (tx, rx) = flume::bounded(1);
        Self(Rc::new(LatchInner {
            tx: RefCell::new(Some(tx)),
            rx,
        }))
    }

    pub(crate) fn fire(&self) {
        self.0.tx.borrow_mut().take();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.0.rx.is_disconnected()
    }

    /// Resolves once [`fire`](Self::fire) has been called. Cancel-safe.
    pub(crate) async fn wait(&self) {
        while self.0.rx.recv_async().await.is_ok() {}
    }
}

/// Wakes one waiting task; a notification sent while nobody waits is kept (one
/// permit), so [`notified`](Self::notified) is cancel-safe in a `select!`.
#[derive(Default)]
pub(crate) struct Notify {
    permit: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.permit.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

pub(crate) struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let notify = self.0;
        if notify.permit.replace(false) {
            return Poll::Ready(());
        }
        *notify.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A single-core one-shot channel.
pub(crate) fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let inner = Rc::new(OneshotInner {
        value: RefCell::new(None),
        closed: Cell::new(false),
        waker: RefCell::new(None),
    });
    (OneshotSender(Rc::clone(&inner)), OneshotReceiver(inner))
}

struct OneshotInner<T> {
    value: RefCell<Option<T>>,
    closed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

pub(crate) struct OneshotSender<T>(Rc<OneshotInner<T>>);

impl<T> OneshotSender<T> {
    pub(crate) fn send(self, value: T) {
        *self.0.value.borrow_mut() = Some(value);
        // Drop wakes the receiver.
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        self.0.closed.set(true);
        if let Some(w) = self.0.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves to the value, or `None` if the sender was dropped without sending.
pub(crate) struct OneshotReceiver<T>(Rc<OneshotInner<T>>);

impl<T> Future for OneshotReceiver<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(v) = self.0.value.borrow_mut().take() {
            return Poll::Ready(Some(v));
        }
        if self.0.closed.get() {
            return Poll::Ready(None);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
