//! What the nodes spent on a measured window: CPU and context switches of the
//! node processes (from /proc, every thread including io_uring workers), and the
//! log and stage counters of their `/metrics`. Divided by the acknowledged
//! appends of the window, these explain the cost of one append.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{get_once, Target};

/// Counters of one node at one instant.
#[derive(Clone, Default)]
pub struct NodeSample {
    cpu_ticks: u64,
    vcsw: u64,
    ivcsw: u64,
    /// Sums of the node's Prometheus counters we divide by appends.
    metrics: Vec<(String, f64)>,
}

/// Counters read from `/metrics` (summed over labels).
const METRICS: &[&str] = &[
    "starcite_log_writes_total",
    "starcite_log_fsyncs_total",
    "starcite_commands_applied_total",
    "starcite_peer_frames_sent_total",
    "starcite_append_stage_seconds_total",
];

fn proc_cpu_ticks(pid: u32) -> u64 {
    super::proc_cpu_ticks(pid).unwrap_or(0)
}

/// Voluntary and involuntary context switches summed over the live threads.
fn ctx_switches(pid: u32) -> (u64, u64) {
    let mut v = 0;
    let mut iv = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for t in tasks.filter_map(Result::ok) {
        let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for line in s.lines() {
            if let Some(x) = line.strip_prefix("voluntary_ctxt_switches:") {
                v += x.trim().parse::<u64>().unwrap_or(0);
            } else if let Some(x) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                iv += x.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    (v, iv)
}

/// Sums every sample line of `name` (any labels) in a Prometheus text body;
/// with a `stage` label, `name{stage=...}` lines are kept apart as `name:stage`.
fn scrape(body: &str, out: &mut Vec<(String, f64)>) {
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = key.split_once('{').unwrap_or((key, ""));
        if !METRICS.contains(&name) {
            continue;
        }
        let key = match labels.split_once("stage=\"") {
            Some((_, rest)) => format!("{name}:{}", rest.split('"').next().unwrap_or("")),
            None => name.to_owned(),
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v += value,
            None => out.push((key, value)),
        }
    }
}

pub fn sample(pids: &[u32], targets: &[Target]) -> Vec<NodeSample> {
    let n = pids.len().max(targets.len());
    (0..n)
        .map(|i| {
            let mut s = NodeSample::default();
            if let Some(&pid) = pids.get(i) {
                s.cpu_ticks = proc_cpu_ticks(pid);
                (s.vcsw, s.ivcsw) = ctx_switches(pid);
            }
            if let Some(t) = targets.get(i) {
                if let Ok(r) = get_once(t, "/metrics", std::time::Duration::from_secs(2)) {
                    scrape(&String::from_utf8_lossy(&r.body), &mut s.metrics);
                }
            }
            s
        })
        .collect()
}

fn metric(samples: &[NodeSample], key: &str) -> f64 {
    samples
        .iter()
        .flat_map(|s| s.metrics.iter())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .sum()
}

/// Tracepoints counted by [`SyscallProbe`]: every system call, and every
/// io_uring submission queue entry the kernel takes from the nodes' rings.
const PERF_EVENTS: &str = "raw_syscalls:sys_enter,io_uring:io_uring_submit_req";

/// System calls and io_uring submissions of the node processes over one
/// window, counted by `perf stat` on two tracepoints (counting only, no
/// sampling). `None` where the machine cannot count them: no `perf`, or the
/// tracepoints not readable (`perf_event_paranoid`, containers). Threads that
/// start after the window opened (io-wq workers) are not counted.
pub struct SyscallProbe {
    child: Child,
    deadline: Instant,
}

/// What [`SyscallProbe::finish`] counted, summed over the processes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SyscallCounts {
    pub syscalls: f64,
    pub uring_submissions: f64,
}

impl SyscallProbe {
    /// Starts counting now, for `window` (perf stops by itself after it).
    pub fn start(pids: &[u32], window: Duration) -> Option<Self> {
        if pids.is_empty() {
            return None;
        }
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", PERF_EVENTS, "-p", &list.join(",")])
            .args(["--", "sleep", &format!("{:.3}", window.as_secs_f64())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        Some(Self {
            child,
            deadline: Instant::now() + window + Duration::from_secs(5),
        })
    }

    /// Waits for perf (bounded: killed 5 s after the window) and reads its counts.
    pub fn finish(mut self) -> Option<SyscallCounts> {
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
        let mut text = String::new();
        self.child.stderr.take()?.read_to_string(&mut text).ok()?;
        parse_perf_csv(&text)
    }
}

/// Reads `perf stat -x ,` output: `value,unit,event,...` per event; a value of
/// `<not supported>` or `<not counted>` means the machine cannot count it.
fn parse_perf_csv(text: &str) -> Option<SyscallCounts> {
    let count = |event: &str| -> Option<f64> {
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.get(2) == Some(&event)).then(|| fields[0].trim().parse::<f64>().ok())?
        })
    };
    Some(SyscallCounts {
        syscalls: count("raw_syscalls:sys_enter")?,
        uring_submissions: count("io_uring:io_uring_submit_req")?,
    })
}

/// The cost of one acknowledged append over the window `before..after`.
pub fn per_append(
    before: &[NodeSample],
    after: &[NodeSample],
    appends: u64,
    pids: bool,
    syscalls: Option<SyscallCounts>,
) -> Value {
    if appends == 0 || before.is_empty() {
        return Value::Null;
    }
    let n = appends as f64;
    let tick_us = 1e6 / super::clock_ticks_per_sec() as f64;
    let sum = |f: &dyn Fn(&NodeSample) -> u64| -> f64 {
        after.iter().map(f).sum::<u64>() as f64 - before.iter().map(f).sum::<u64>() as f64
    };
    let delta = |key: &str| metric(after, key) - metric(before, key);
    let fsyncs = delta("starcite_log_fsyncs_total");
    let applied = delta("starcite_commands_applied_total");
    let mut stages = serde_json::Map::new();
    let stage_us =
        |stage: &str| delta(&format!("starcite_append_stage_seconds_total:{stage}")) * 1e6 / n;
    for stage in ["parse", "forward", "handoff", "commit"] {
        stages.insert(stage.into(), json!(stage_us(stage)));
    }
    // The owner core's share minus its parts: the reply's way back to the gateway.
    let reply = stage_us("owner") - stage_us("handoff") - stage_us("commit");
    stages.insert("reply".into(), json!(reply.max(0.0)));
    json!({
        "node_cpu_us": if pids { json!(sum(&|s| s.cpu_ticks) * tick_us / n) } else { Value::Null },
        "voluntary_ctx_switches": if pids { json!(sum(&|s| s.vcsw) / n) } else { Value::Null },
        "involuntary_ctx_switches": if pids { json!(sum(&|s| s.ivcsw) / n) } else { Value::Null },
        "log_writes": delta("starcite_log_writes_total") / n,
        "fsyncs": fsyncs / n,
        "peer_frames": delta("starcite_peer_frames_sent_total") / n,
        "commands_per_fsync": if fsyncs > 0.0 { json!(applied / fsyncs) } else { Value::Null },
        "syscalls": syscalls.map(|c| c.syscalls / n),
        "uring_submissions": syscalls.map(|c| c.uring_submissions / n),
        "stage_us": stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_stat_csv() {
        let text = "\n1234,,raw_syscalls:sys_enter,4000000,100.00,,\n\
                    567,,io_uring:io_uring_submit_req,4000000,100.00,,\n";
        assert_eq!(
            parse_perf_csv(text),
            Some(SyscallCounts {
                syscalls: 1234.0,
                uring_submissions: 567.0
            })
        );
        let refused = "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n\
                       <not supported>,,io_uring:io_uring_submit_req,0,100.00,,\n";
        assert_eq!(parse_perf_csv(refused), None);
        assert_eq!(parse_perf_csv("perf: command not found"), None);
    }
}
