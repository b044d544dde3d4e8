//! Progress on stderr while a scenario runs, and the throughput-over-time
//! series the plots draw.
//!
//! Producers bump the process-wide counters ([`ok`], [`err`]); one sampler
//! thread per run reads them every `interval`, prints a progress line on
//! stderr and keeps `(seconds since start, completions per second)`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static OK: AtomicU64 = AtomicU64::new(0);
static ERR: AtomicU64 = AtomicU64::new(0);

/// Series of finished runs, in run order: (label, [(t secs, per sec)]).
static SERIES: Mutex<Vec<(String, Vec<(f64, f64)>)>> = Mutex::new(Vec::new());

/// One successful operation.
#[inline]
pub fn ok() {
    OK.fetch_add(1, Ordering::Relaxed);
}

/// One failed operation.
#[inline]
pub fn err() {
    ERR.fetch_add(1, Ordering::Relaxed);
}

pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<(f64, f64)>>>,
    label: String,
}

/// Starts sampling (counters reset). `total_secs` is the planned length of
/// the run, for the "t / total" display.
pub fn start(label: &str, total_secs: f64, interval: Duration) -> Progress {
    OK.store(0, Ordering::Relaxed);
    ERR.store(0, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let lab = label.to_owned();
    let tty = std::io::stderr().is_terminal();
    let handle = std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            let t0 = Instant::now();
            let mut series = Vec::new();
            let mut last_ok = 0u64;
            let mut last_t = 0.0f64;
            let mut last_print = 0.0f64;
            while !s2.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                let t = t0.elapsed().as_secs_f64();
                let okn = OK.load(Ordering::Relaxed);
                let errn = ERR.load(Ordering::Relaxed);
                let rate = (okn - last_ok) as f64 / (t - last_t).max(1e-9);
                series.push((t, rate));
                last_ok = okn;
                last_t = t;
                if t - last_print >= 1.0 || tty {
                    let bar = bar(t / total_secs.max(1e-9), 20);
                    let line = format!(
                        "[{lab}] {bar} {t:5.1}/{total_secs:.0} s  {okn} ok  {rate:.0}/s  {errn} errors"
                    );
                    if tty {
                        eprint!("\r{line}\x1b[K");
                    } else if t - last_print >= 2.0 {
                        eprintln!("{line}");
                    } else {
                        continue;
                    }
                    last_print = t;
                }
            }
            if tty {
                eprintln!();
            }
            series
        })
        .expect("spawn progress thread");
    Progress {
        stop,
        handle: Some(handle),
        label: label.to_owned(),
    }
}

fn bar(frac: f64, width: usize) -> String {
    let n = ((frac.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(n), ".".repeat(width - n))
}

impl Progress {
    /// Stops sampling; returns the series and keeps a copy for [`take_all`].
    pub fn finish(mut self) -> Vec<(f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let s = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        SERIES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.label.clone(), s.clone()));
        s
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Every series recorded so far (and forgets them).
pub fn take_all() -> Vec<(String, Vec<(f64, f64)>)> {
    std::mem::take(&mut *SERIES.lock().unwrap_or_else(|p| p.into_inner()))
}
