//! `append --open-loop --rate R`: every producer sends on a fixed schedule
//! (R / producers per second, phases staggered) whatever the server does, and
//! latency is measured from each request's *intended* send time, so a stall
//! shows up in the percentiles as the queue it would build for real clients
//! (no coordinated omission). Each producer still has one request in flight
//! on its connection: when it falls behind its schedule the next requests are
//! sent at once and carry the delay. Requests whose intended time falls in the
//! measured window but that could not even be sent within `grace` of the end
//! count as errors ("missed").

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{new_hist, progress, Conn, ProducerResult, ReqTemplate};

pub const GRACE: Duration = Duration::from_secs(5);

#[allow(clippy::too_many_arguments)]
pub fn producer_loop(
    addr: SocketAddr,
    timeout: Duration,
    tpl: ReqTemplate,
    interval: Duration,
    phase: Duration,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ProducerResult {
    let mut res = ProducerResult::default();
    let mut hist = new_hist();
    let mut conn = Conn::new(addr, timeout);
    let mut req = Vec::with_capacity(tpl.head_before_len.len() + tpl.body_prefix.len() + 64);
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
    let _ = conn.ensure();
    let first = start + phase;
    let mut k: u32 = 0;
    let mut seq: u64 = 1;
    loop {
        let intended = first + interval * k;
        if intended >= end {
            break;
        }
        let now = Instant::now();
        if now > end + GRACE {
            // Could not keep up: every remaining scheduled request is missed.
            let mut i = intended;
            while i < end {
                if i >= measure_from {
                    res.errors += 1;
                }
                k += 1;
                i = first + interval * k;
            }
            if res.error_samples.len() < 3 {
                res.error_samples
                    .push("open loop: schedule missed (server too slow for the rate)".into());
            }
            break;
        }
        if intended > now {
            std::thread::sleep(intended - now);
        }
        k += 1;
        tpl.render(seq, &mut req);
        let r = conn.roundtrip(&req);
        let t1 = Instant::now();
        let measured = intended >= measure_from;
        match r {
            Ok(resp) if resp.status == 201 => {
                seq += 1;
                progress::ok();
                if measured {
                    res.ok += 1;
                    let us = (t1 - intended).as_micros().max(1) as u64;
                    let _ = hist.record(us.min(60_000_000));
                }
            }
            Ok(resp) => {
                progress::err();
                if measured {
                    res.errors += 1;
                }
                if res.error_samples.len() < 3 {
                    res.error_samples.push(format!(
                        "{} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    ));
                }
                if resp.status == 409 {
                    seq += 1;
                }
            }
            Err(e) => {
                progress::err();
                if measured {
                    res.errors += 1;
                }
                if res.error_samples.len() < 3 {
                    res.error_samples.push(format!("io: {e}"));
                }
            }
        }
    }
    res.hist = Some(hist);
    res
}

/// Per-producer interval and phase for a total rate over `producers`.
pub fn schedule(rate: f64, producers: usize, i: usize) -> (Duration, Duration) {
    let per = (rate / producers as f64).max(1e-6);
    let interval = Duration::from_secs_f64(1.0 / per);
    let phase = interval.mul_f64(i as f64 / producers as f64);
    (interval, phase)
}
