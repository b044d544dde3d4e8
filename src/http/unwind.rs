//! Panic containment: a panic inside a handler future is caught at the poll that
//! raised it, so it ends one request (or one WebSocket session), not the core.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Wraps a future so that a panic while polling it resolves to `Err(payload)`.
///
/// `AssertUnwindSafe`: after a panic the inner future is never polled again (the
/// wrapper returns `Ready`), and the caller drops it and ends the connection; state
/// shared with other tasks (`RefCell`s, mutexes) is released by unwinding.
pub(crate) struct CatchUnwind<F> {
    inner: F,
}

pub(crate) fn catch_unwind_future<F: Future>(inner: F) -> CatchUnwind<F> {
    CatchUnwind { inner }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field; it is never moved out.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The message of a panic payload, for the log line.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_a_panic_at_poll() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let ok = catch_unwind_future(async { 7 }).await;
            assert_eq!(ok.ok(), Some(7));
            let caught = catch_unwind_future(async {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                panic!("boom {}", 1);
            })
            .await;
            let payload = caught.err().expect("caught");
            assert_eq!(panic_message(payload.as_ref()), "boom 1");
        });
    }
}
