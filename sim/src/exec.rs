//! A deterministic single-threaded executor with virtual time.
//!
//! The production engine loop is an `async fn` written against the
//! [`Clock`] trait; here its futures are polled in task-id order whenever they
//! were woken (by a flume channel, or by a timer of the simulated clock), and
//! virtual time only moves when every task is idle. Nothing depends on the wall
//! clock or on thread scheduling, so one seed gives one run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use starcite::node::engine_io::Clock;

/// Virtual time in microseconds, with timers that wake tasks.
#[derive(Clone)]
pub struct SimClock {
    inner: Rc<ClockInner>,
}

struct ClockInner {
    now: Cell<u64>,
    base: Instant,
    seq: Cell<u64>,
    timers: RefCell<BTreeMap<(u64, u64), Waker>>,
}

/// Wall-clock microseconds at virtual time zero (event timestamps).
const EPOCH_US: i64 = 1_767_225_600_000_000;

impl SimClock {
    pub fn new() -> Self {
        SimClock {
            inner: Rc::new(ClockInner {
                now: Cell::new(0),
                base: Instant::now(),
                seq: Cell::new(0),
                timers: RefCell::new(BTreeMap::new()),
            }),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.inner.now.get()
    }

    /// Moves time forward (never back).
    pub fn advance_to(&self, t: u64) {
        if t > self.inner.now.get() {
            self.inner.now.set(t);
        }
    }

    /// When the earliest timer is due.
    pub fn next_timer(&self) -> Option<u64> {
        self.inner.timers.borrow().keys().next().map(|(at, _)| *at)
    }

    /// Wakes every task whose timer is due.
    pub fn fire_due(&self) {
        let now = self.now_us();
        loop {
            let due = {
                let mut timers = self.inner.timers.borrow_mut();
                match timers.first_key_value() {
                    Some((&(at, _), _)) if at <= now => timers.pop_first(),
                    _ => None,
                }
            };
            match due {
                Some((_, waker)) => waker.wake(),
                None => return,
            }
        }
    }

    /// Sleeps `us` microseconds of virtual time.
    pub fn sleep_us(&self, us: u64) -> Sleep {
        Sleep {
            clock: self.clone(),
            at: self.now_us() + us,
            key: None,
        }
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.inner.base + Duration::from_micros(self.now_us())
    }

    fn wall_us(&self) -> i64 {
        EPOCH_US + self.now_us() as i64
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        let d = deadline.saturating_duration_since(self.inner.base);
        // Round up: never wake before the deadline.
        let at = d.as_micros() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000));
        Sleep {
            clock: self.clone(),
            at,
            key: None,
        }
    }
}

/// A virtual-time sleep; cancellation-safe (dropping it removes its timer).
pub struct Sleep {
    clock: SimClock,
    at: u64,
    key: Option<(u64, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = self.clock.inner.clone();
        if inner.now.get() >= self.at {
            if let Some(k) = self.key.take() {
                inner.timers.borrow_mut().remove(&k);
            }
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(k) => k,
            None => {
                let s = inner.seq.get() + 1;
                inner.seq.set(s);
                let k = (self.at, s);
                self.key = Some(k);
                k
            }
        };
        inner.timers.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.clock.inner.timers.borrow_mut().remove(&k);
        }
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Task {
    future: Pin<Box<dyn Future<Output = ()>>>,
    flag: Arc<Flag>,
    waker: Waker,
}

/// Tasks polled in id order; a dropped (cancelled) task is gone for good.
#[derive(Default)]
pub struct Executor {
    tasks: Vec<Option<Task>>,
    pub polls: u64,
}

impl Executor {
    pub fn spawn(&mut self, future: impl Future<Output = ()> + 'static) -> usize {
        let flag = Arc::new(Flag(AtomicBool::new(true)));
        let waker = Waker::from(flag.clone());
        self.tasks.push(Some(Task {
            future: Box::pin(future),
            flag,
            waker,
        }));
        self.tasks.len() - 1
    }

    /// Drops a task's future where it stands (a crashed process).
    pub fn cancel(&mut self, id: usize) {
        if let Some(slot) = self.tasks.get_mut(id) {
            *slot = None;
        }
    }

    /// Polls woken tasks until none is; returns false if that did not settle
    /// within `max_polls` (a busy loop in the engine).
    pub fn run_ready(&mut self, max_polls: u64) -> bool {
        let mut polls = 0;
        loop {
            let before = polls;
            let mut any = false;
            for id in 0..self.tasks.len() {
                let Some(task) = self.tasks[id].as_mut() else {
                    continue;
                };
                if !task.flag.0.swap(false, Ordering::Relaxed) {
                    continue;
                }
                any = true;
                polls += 1;
                let waker = task.waker.clone();
                let mut cx = Context::from_waker(&waker);
                if task.future.as_mut().poll(&mut cx).is_ready() {
                    self.tasks[id] = None;
                }
            }
            self.polls += polls - before;
            if !any {
                return true;
            }
            if polls > max_polls {
                return false;
            }
        }
    }
}
