//! `starcite-bench fsync-probe`: the physical floor of a durable append on this
//! machine's disk, and what each way of reaching it costs in CPU and thread
//! wake-ups. Every mode appends `--bytes` per operation to a file in `--dir`
//! and makes it durable before the next one, one operation at a time:
//!
//! - `uring-buffered`: io_uring write + io_uring fdatasync on a buffered file
//!   (what the log did before; both are punted to io_uring's io-wq workers);
//! - `uring-direct-dsync`: io_uring write to a file opened `O_DIRECT|O_DSYNC`,
//!   preallocated with written zeroes (a pure overwrite: no metadata to commit,
//!   so the kernel can issue it without a worker thread);
//! - `sync-buffered`: blocking `pwrite` + `fdatasync` on the calling thread;
//! - `sync-direct-dsync`: blocking `pwrite` on the `O_DIRECT|O_DSYNC` file.
//!
//! For each: latency percentiles, CPU µs per operation (user + system of the whole
//! process, io-wq workers included), context switches per operation, and how many
//! io-wq worker threads the process had at the end.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};

use crate::new_hist;

#[derive(Args, Clone)]
pub struct FsyncProbeArgs {
    /// Directory on the disk to probe (a file is created and removed there).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Durable operations per mode.
    #[arg(long, default_value_t = 2000)]
    pub ops: usize,
    /// Bytes per operation (rounded up to 4 KiB for the direct modes).
    #[arg(long, default_value_t = 4096)]
    pub bytes: usize,
    /// Modes to run, comma-separated (default: all).
    #[arg(
        long,
        default_value = "uring-buffered,uring-direct-dsync,sync-buffered,sync-direct-dsync"
    )]
    pub modes: String,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const BLOCK: usize = 4096;

/// A 4 KiB-aligned buffer that io_uring may write from (O_DIRECT needs it).
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(BLOCK), BLOCK).unwrap();
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Aligned { ptr, len }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(BLOCK), BLOCK).unwrap();
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

// SAFETY: the buffer is owned and stays put while the kernel reads it.
unsafe impl monoio::buf::IoBuf for Aligned {
    fn read_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

struct Usage {
    cpu_us: f64,
    vcsw: i64,
    ivcsw: i64,
}

fn usage() -> Usage {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Usage {
        cpu_us: tv(ru.ru_utime) + tv(ru.ru_stime),
        vcsw: ru.ru_nvcsw,
        ivcsw: ru.ru_nivcsw,
    }
}

fn io_wq_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("iou-wrk"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn open(path: &PathBuf, direct: bool, size: usize) -> io::Result<std::fs::File> {
    let _ = std::fs::remove_file(path);
    // Preallocate with written zeroes so every probe write is an overwrite.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len());
            f.write_all(&zeros[..n])?;
            left -= n;
        }
        f.sync_all()?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT | libc::O_DSYNC);
    }
    o.open(path)
}

fn run_mode(mode: &str, a: &FsyncProbeArgs) -> Result<Value, String> {
    let direct = mode.ends_with("direct-dsync");
    let len = if direct {
        a.bytes.div_ceil(BLOCK) * BLOCK
    } else {
        a.bytes
    };
    let size = len * a.ops + BLOCK;
    let path = a
        .dir
        .join(format!("starcite-fsync-probe-{}.tmp", std::process::id()));
    let file = open(&path, direct, size).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hist = new_hist();
    let before = usage();
    let started = Instant::now();
    let result: io::Result<()> = if mode.starts_with("uring") {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .map_err(|e| format!("io_uring runtime: {e}"))?;
        rt.block_on(async {
            let f = monoio::fs::File::from_std(file)?;
            let mut buf = Aligned::new(len);
            for i in 0..a.ops {
                let t = Instant::now();
                let (res, b) = f.write_all_at(buf, (i * len) as u64).await;
                buf = b;
                res?;
                if !direct {
                    f.sync_data().await?;
                }
                hist.record(t.elapsed().as_micros() as u64).ok();
            }
            Ok(())
        })
    } else {
        let buf = Aligned::new(len);
        // SAFETY: buf holds len initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, len) };
        let fd = file.as_raw_fd();
        (|| {
            for i in 0..a.ops {
                let t = Instant::now();
                let n = unsafe {
                    libc::pwrite(fd, bytes.as_ptr().cast(), len, (i * len) as libc::off_t)
                };
                if n != len as isize {
                    return Err(io::Error::last_os_error());
                }
                if !direct && unsafe { libc::fdatasync(fd) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                hist.record(t.elapsed().as_micros() as u64).ok();
            }
            Ok(())
        })()
    };
    let wall = started.elapsed().as_secs_f64();
    let after = usage();
    let workers = io_wq_workers();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| format!("{mode}: {e}"))?;
    let n = a.ops as f64;
    Ok(json!({
        "mode": mode,
        "ops": a.ops,
        "bytes": len,
        "ops_per_sec": n / wall,
        "p50_us": hist.value_at_quantile(0.5),
        "p99_us": hist.value_at_quantile(0.99),
        "cpu_us_per_op": (after.cpu_us - before.cpu_us) / n,
        "vcsw_per_op": (after.vcsw - before.vcsw) as f64 / n,
        "ivcsw_per_op": (after.ivcsw - before.ivcsw) as f64 / n,
        "io_wq_workers": workers,
    }))
}

pub fn cmd_fsync_probe(a: FsyncProbeArgs) -> i32 {
    let mut rows = Vec::new();
    println!(
        "{:<20} {:>9} {:>8} {:>8} {:>10} {:>9} {:>9} {:>7}",
        "mode", "ops/s", "p50 µs", "p99 µs", "cpu µs/op", "vcsw/op", "ivcsw/op", "io-wq"
    );
    for mode in a.modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match run_mode(mode, &a) {
            Ok(v) => {
                println!(
                    "{:<20} {:>9.0} {:>8} {:>8} {:>10.1} {:>9.2} {:>9.2} {:>7}",
                    mode,
                    v["ops_per_sec"].as_f64().unwrap_or(0.0),
                    v["p50_us"],
                    v["p99_us"],
                    v["cpu_us_per_op"].as_f64().unwrap_or(0.0),
                    v["vcsw_per_op"].as_f64().unwrap_or(0.0),
                    v["ivcsw_per_op"].as_f64().unwrap_or(0.0),
                    v["io_wq_workers"],
                );
                rows.push(v);
            }
            Err(e) => {
                eprintln!("fsync-probe: {e}");
                return 1;
            }
        }
    }
    if let Some(path) = &a.json {
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&rows).unwrap()) {
            eprintln!("fsync-probe: {}: {e}", path.display());
            return 1;
        }
    }
    0
}
