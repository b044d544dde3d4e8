//! Host tuning scripts (`tuning/`): `check` reports every setting with one of
//! three verdicts and never crashes, `--json` is valid JSON listing the same
//! settings, `apply --dry-run` plans without changing anything, `apply` refuses
//! to run without root, converges on a fake machine and is idempotent, and the
//! systemd units pass `systemd-analyze verify` (when it exists) and keep the
//! settings the node relies on (io_uring allowed, limits, stop timeout).
//!
//! Every command runs under a time bound and is killed (that PID only) when it
//! overruns. Nothing here changes the machine: the one real `apply` run writes
//! into a fake /proc, /sys and /etc built in a temporary directory, after a dry
//! run has proved that every path it would touch is inside that directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
const VERDICTS: [&str; 3] = ["ok", "differs", "cannot tell"];
/// Settings `check` reports besides one per key of sysctl.d/60-starcite.conf.
const FIXED_SETTINGS: [&str; 13] = [
    "kernel",
    "io_uring",
    "memlock",
    "nofile",
    "nproc",
    "cpu_governor",
    "clocksource",
    "transparent_hugepage",
    "transparent_hugepage_defrag",
    "data_dir_filesystem",
    "disk_scheduler",
    "disk_write_cache",
    "ntp",
];
const NOBODY: &str = "65534";

fn tuning() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning")
}

fn script(name: &str) -> String {
    tuning().join(name).to_string_lossy().into_owned()
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdin closed, killing it (its PID only) after `TIMEOUT`.
fn run(mut cmd: Command) -> Out {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(st) => break st,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{shown} did not finish within {TIMEOUT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Out {
        code: status.code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Keys of sysctl.d/60-starcite.conf (a leading "-" only marks them optional).
fn sysctl_keys() -> Vec<String> {
    let text =
        std::fs::read_to_string(tuning().join("sysctl.d/60-starcite.conf")).expect("sysctl conf");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && l.contains('='))
        .map(|l| {
            l.split('=')
                .next()
                .unwrap()
                .trim()
                .trim_start_matches('-')
                .to_string()
        })
        .collect()
}

/// Wanted value of each sysctl key, blanks collapsed.
fn sysctl_wanted() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(tuning().join("sysctl.d/60-starcite.conf")).expect("sysctl conf");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (
                k.trim().trim_start_matches('-').to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn expected_settings() -> BTreeSet<String> {
    let keys = sysctl_keys();
    assert!(keys.len() >= 20, "sysctl conf lost keys: {keys:?}");
    for k in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.netdev_max_backlog",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_tw_reuse",
        "fs.file-max",
        "fs.nr_open",
        "vm.swappiness",
        "vm.dirty_bytes",
        "vm.dirty_background_bytes",
        "kernel.io_uring_disabled",
    ] {
        assert!(keys.iter().any(|x| x == k), "sysctl conf must set {k}");
    }
    FIXED_SETTINGS
        .iter()
        .map(|s| s.to_string())
        .chain(keys)
        .collect()
}

/// Parses `check`'s text output into setting -> (verdict, line); panics on any
/// line that is neither a `#` comment nor a verdict line.
fn parse_text(out: &Out) -> BTreeMap<String, (String, String)> {
    let mut m = BTreeMap::new();
    for line in out.stdout.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let verdict = VERDICTS
            .iter()
            .filter(|v| line.starts_with(&format!("{v} ")))
            .max_by_key(|v| v.len())
            .unwrap_or_else(|| panic!("line without a verdict: {line:?}\n{}", out.describe()));
        let rest = line[verdict.len()..].trim_start();
        let (name, detail) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("no 'name: ' in {line:?}"));
        assert!(!detail.trim().is_empty(), "no detail in {line:?}");
        let prev = m.insert(name.to_string(), (verdict.to_string(), line.to_string()));
        assert!(prev.is_none(), "{name} reported twice\n{}", out.describe());
    }
    m
}

fn assert_complete_text(out: &Out) -> BTreeMap<String, (String, String)> {
    assert!(
        matches!(out.code, Some(0) | Some(1)),
        "check must exit 0 or 1 on a machine it can read\n{}",
        out.describe()
    );
    assert!(
        out.stderr.trim().is_empty(),
        "check wrote to stderr (a script error?)\n{}",
        out.describe()
    );
    let m = parse_text(out);
    let expected = expected_settings();
    let got: BTreeSet<String> = m.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "settings missing: {missing:?}\n{}",
        out.describe()
    );
    assert!(
        extra.is_empty(),
        "unexpected settings: {extra:?}\n{}",
        out.describe()
    );
    let differs = m.values().any(|(v, _)| v == "differs");
    assert_eq!(
        out.code,
        Some(differs as i32),
        "exit status must be 1 iff something differs\n{}",
        out.describe()
    );
    for (name, (verdict, line)) in &m {
        if verdict == "differs" {
            for part in ["current ", "wanted ", "why: ", "fix: "] {
                assert!(
                    line.contains(part),
                    "{name}: a differs line needs {part:?}: {line}"
                );
            }
        }
    }
    m
}

fn is_root() -> bool {
    run(cmd("id", &["-u"])).stdout.trim() == "0"
}

/// A command that runs `program args` as nobody (root only, needs setpriv), or
/// None with the reason printed.
fn as_nobody(program: &str, args: &[&str]) -> Option<Command> {
    if !is_root() {
        return None;
    }
    let base = ["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"];
    let probe = run(cmd(
        "setpriv",
        &[&base[..], &["test", "-x", program]].concat(),
    ));
    if probe.code != Some(0) {
        println!("note: cannot run {program} as nobody here (no setpriv, or the checkout is not readable by nobody): skipped");
        return None;
    }
    Some(cmd("setpriv", &[&base[..], &[program], args].concat()))
}

#[test]
fn scripts_are_executable_and_shellcheck_clean() {
    for name in ["check", "apply"] {
        let meta = std::fs::metadata(tuning().join(name)).expect(name);
        assert!(
            meta.permissions().mode() & 0o111 == 0o111,
            "tuning/{name} must be chmod +x"
        );
    }
    let sc = Command::new("shellcheck")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(sc, Ok(s) if s.success()) {
        println!(
            "note: shellcheck not installed: lint skipped (check/apply assertions run regardless)"
        );
        return;
    }
    let mut c = cmd(
        "shellcheck",
        &["-x", "-S", "warning", "check", "apply", "lib.sh"],
    );
    c.current_dir(tuning());
    let out = run(c);
    assert_eq!(out.code, Some(0), "shellcheck\n{}", out.describe());
}

#[test]
fn check_reports_every_setting_for_a_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = run(cmd(&script("check"), &["--data-dir", dir]));
    let m = assert_complete_text(&out);
    let fs_line = &m["data_dir_filesystem"].1;
    if m["data_dir_filesystem"].0 != "cannot tell" {
        assert!(
            fs_line.contains(dir),
            "the filesystem line names the data dir: {fs_line}"
        );
    }
    println!("{}", out.stdout);

    // A data dir that does not exist yet is checked through its parent.
    let missing = tmp.path().join("not/yet");
    let out = run(cmd(
        &script("check"),
        &["--data-dir", missing.to_str().unwrap()],
    ));
    let m = assert_complete_text(&out);
    if m["data_dir_filesystem"].0 != "cannot tell" {
        assert!(
            m["data_dir_filesystem"].1.contains("does not exist yet"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn check_json_lists_every_setting() {
    let out = run(cmd(&script("check"), &["--json"]));
    assert!(matches!(out.code, Some(0) | Some(1)), "{}", out.describe());
    let doc: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON: {e}\n{}", out.describe()));
    assert_eq!(
        doc["exit_status"].as_i64(),
        out.code.map(i64::from),
        "exit_status field = exit code"
    );
    let results = doc["results"].as_array().expect("results array");
    let mut names = BTreeSet::new();
    let mut counts = BTreeMap::new();
    for r in results {
        let name = r["setting"].as_str().expect("setting").to_string();
        let verdict = r["verdict"].as_str().expect("verdict");
        assert!(VERDICTS.contains(&verdict), "{name}: bad verdict {verdict}");
        *counts.entry(verdict.to_string()).or_insert(0i64) += 1;
        if verdict == "differs" {
            for f in ["current", "wanted", "why", "fix"] {
                assert!(
                    r[f].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: differs needs {f}: {r}"
                );
            }
        }
        if verdict == "cannot tell" {
            assert!(
                r["note"].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: cannot tell needs a reason: {r}"
            );
        }
        assert!(names.insert(name.clone()), "{name} listed twice");
    }
    assert_eq!(names, expected_settings(), "--json must list every setting");
    for (k, field) in [
        ("ok", "ok"),
        ("differs", "differs"),
        ("cannot tell", "cannot_tell"),
    ] {
        assert_eq!(
            doc["summary"][field].as_i64().unwrap(),
            *counts.get(k).unwrap_or(&0),
            "summary.{field}"
        );
    }
    assert_eq!(
        doc["exit_status"].as_i64(),
        Some(i64::from(counts.get("differs").copied().unwrap_or(0) > 0))
    );
}

#[test]
fn check_usage() {
    let out = run(cmd(&script("check"), &["--help"]));
    assert_eq!(out.code, Some(0));
    assert!(
        out.stdout.contains("--data-dir")
            && out.stdout.contains("--json")
            && out.stdout.contains("Exit status")
    );
    let out = run(cmd(&script("check"), &["--no-such-flag"]));
    assert_eq!(
        out.code,
        Some(2),
        "a wrong command line is status 2\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("--no-such-flag"));
    let out = run(cmd(&script("apply"), &["--no-such-flag"]));
    assert_eq!(out.code, Some(2), "{}", out.describe());
}

#[test]
fn check_runs_unprivileged() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = if is_root() {
        match as_nobody(
            &script("check"),
            &["--data-dir", tmp.path().to_str().unwrap()],
        ) {
            Some(c) => c,
            None => return,
        }
    } else {
        cmd(
            &script("check"),
            &["--data-dir", tmp.path().to_str().unwrap()],
        )
    };
    let out = run(c);
    assert_complete_text(&out);
    assert!(out.stdout.contains("user "), "{}", out.describe());
}

// ---------------------------------------------------------------------------
// apply on this machine: dry run only
// ---------------------------------------------------------------------------

/// Every file `apply` could change on this machine, with its content (None if absent).
fn snapshot() -> BTreeMap<PathBuf, Option<String>> {
    let mut paths: Vec<PathBuf> = sysctl_keys()
        .iter()
        .map(|k| PathBuf::from(format!("/proc/sys/{}", k.replace('.', "/"))))
        .collect();
    paths.push("/sys/kernel/mm/transparent_hugepage/enabled".into());
    paths.push("/sys/kernel/mm/transparent_hugepage/defrag".into());
    paths.push("/etc/sysctl.d/60-starcite.conf".into());
    paths.push("/etc/security/limits.d/60-starcite.conf".into());
    if let Ok(rd) = std::fs::read_dir("/sys/devices/system/cpu") {
        for e in rd.flatten() {
            paths.push(e.path().join("cpufreq/scaling_governor"));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            paths.push(e.path().join("queue/scheduler"));
        }
    }
    paths
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(&p).ok()))
        .collect()
}

#[test]
fn apply_dry_run_plans_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let before = snapshot();
    let swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness").ok();
    let out = run(cmd(&script("apply"), &["--dry-run", "--data-dir", dir]));
    let after = snapshot();
    assert_eq!(
        out.code,
        Some(0),
        "apply --dry-run must exit 0\n{}",
        out.describe()
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").ok(),
        swappiness
    );
    for (p, v) in &before {
        assert_eq!(after.get(p), Some(v), "--dry-run changed {}", p.display());
    }
    assert!(
        out.stdout.contains("nothing will be changed"),
        "{}",
        out.describe()
    );
    let mut would = 0;
    for line in out.stdout.lines() {
        let known = ["#", "would:", "ok:", "skip:"]
            .iter()
            .any(|p| line.starts_with(p));
        assert!(
            known,
            "unexpected dry-run line {line:?}\n{}",
            out.describe()
        );
        would += line.starts_with("would:") as usize;
    }
    assert!(
        out.stdout
            .contains(&format!("# dry run: {would} action(s) planned, none taken")),
        "summary must count the planned actions\n{}",
        out.describe()
    );

    // The plan covers exactly the sysctls that check calls "differs".
    let check = run(cmd(&script("check"), &["--json", "--data-dir", dir]));
    let doc: Value = serde_json::from_str(&check.stdout).expect("check --json");
    for key in sysctl_keys() {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let r = doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["setting"] == key.as_str())
            .expect("key listed");
        let planned = out
            .stdout
            .lines()
            .any(|l| l.starts_with("would:") && l.contains(&format!("> {path} ")));
        match r["verdict"].as_str().unwrap() {
            "differs" => assert!(
                planned,
                "{key} differs but apply plans nothing\n{}",
                out.describe()
            ),
            "ok" => assert!(
                !planned,
                "{key} is ok but apply would write it\n{}",
                out.describe()
            ),
            _ => {}
        }
    }
    println!("{}", out.stdout);
}

#[test]
fn apply_refuses_without_root() {
    let c = if is_root() {
        match as_nobody(&script("apply"), &[]) {
            Some(c) => c,
            None => return,
        }
    } else {
        cmd(&script("apply"), &[])
    };
    let before = snapshot();
    let out = run(c);
    assert_eq!(
        out.code,
        Some(2),
        "apply without root must refuse with status 2\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("root"), "{}", out.describe());
    assert!(
        out.stderr.contains("--dry-run"),
        "the refusal points at --dry-run\n{}",
        out.describe()
    );
    assert_eq!(snapshot(), before);
}

// ---------------------------------------------------------------------------
// A fake machine: check's verdicts, apply converging, idempotence
// ---------------------------------------------------------------------------

struct Fake {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    /// The fake disk behind the data dir, if the data dir is on a block device.
    disk: Option<PathBuf>,
}

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

impl Fake {
    fn proc(&self) -> PathBuf {
        self.root.join("proc")
    }
    fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }
    fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }
    fn sysctl(&self, key: &str) -> PathBuf {
        self.proc().join("sys").join(key.replace('.', "/"))
    }
    fn read(&self, p: &Path) -> String {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn command(&self, name: &str, args: &[&str]) -> Command {
        let mut c = cmd(&script(name), args);
        c.env("STARCITE_TUNING_PROC", self.proc())
            .env("STARCITE_TUNING_SYS", self.sys())
            .env("STARCITE_TUNING_ETC", self.etc())
            .env("STARCITE_TUNING_NO_PROBE", "1");
        c
    }

    /// A machine with a few things wrong, a few better than wanted, one key missing.
    fn new() -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut f = Fake {
            root,
            data,
            disk: None,
            _tmp: tmp,
        };
        write(&f.proc().join("sys/kernel/osrelease"), "6.1.0-fake\n");
        for (k, v) in sysctl_wanted() {
            write(&f.sysctl(&k), &format!("{}\n", v.replace(' ', "\t")));
        }
        write(&f.sysctl("vm.swappiness"), "60\n");
        write(&f.sysctl("net.ipv4.tcp_fin_timeout"), "60\n");
        write(&f.sysctl("vm.dirty_bytes"), "0\n");
        write(&f.sysctl("kernel.io_uring_disabled"), "2\n");
        write(&f.sysctl("net.core.somaxconn"), "100000\n");
        write(&f.sysctl("net.ipv4.ip_local_port_range"), "1024\t65535\n");
        std::fs::remove_file(f.sysctl("net.ipv4.tcp_slow_start_after_idle")).unwrap();
        let mm = f.sys().join("kernel/mm/transparent_hugepage");
        write(&mm.join("enabled"), "[always] madvise never\n");
        write(
            &mm.join("defrag"),
            "[always] defer defer+madvise madvise never\n",
        );
        for (cpu, gov) in [("cpu0", "powersave"), ("cpu1", "performance")] {
            let d = f.sys().join("devices/system/cpu").join(cpu).join("cpufreq");
            write(&d.join("scaling_governor"), &format!("{gov}\n"));
            write(
                &d.join("scaling_available_governors"),
                "performance powersave\n",
            );
        }
        let cs = f.sys().join("devices/system/clocksource/clocksource0");
        write(&cs.join("current_clocksource"), "hpet\n");
        write(&cs.join("available_clocksource"), "tsc hpet acpi_pm \n");

        // The data dir's real device number, mapped to a fake NVMe disk.
        let dev = std::fs::metadata(&f.data).unwrap().dev();
        let (major, minor) = (
            libc::major(dev as libc::dev_t),
            libc::minor(dev as libc::dev_t),
        );
        if major != 0 {
            let disk = f.sys().join("devices/virtual/block/fakedisk");
            write(&disk.join("queue/scheduler"), "[bfq] mq-deadline none\n");
            write(&disk.join("queue/rotational"), "0\n");
            write(&disk.join("queue/write_cache"), "write through\n");
            write(
                &disk.join("device/scsi_disk/0:0:0:0/cache_type"),
                "write back\n",
            );
            std::fs::create_dir_all(f.sys().join("dev/block")).unwrap();
            std::fs::create_dir_all(f.sys().join("block")).unwrap();
            std::os::unix::fs::symlink(&disk, f.sys().join(format!("dev/block/{major}:{minor}")))
                .unwrap();
            std::os::unix::fs::symlink(&disk, f.sys().join("block/fakedisk")).unwrap();
            f.disk = Some(disk);
        } else {
            println!(
                "note: data dir on an anonymous device ({major}:{minor}): fake disk checks skipped"
            );
        }
        f
    }
}

#[test]
fn check_on_a_fake_machine() {
    let f = Fake::new();
    let out = run(f.command("check", &["--data-dir", f.data.to_str().unwrap()]));
    let m = assert_complete_text(&out);
    let v = |s: &str| m[s].0.as_str();
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(v("transparent_hugepage"), "differs");
    assert!(m["transparent_hugepage"].1.contains("madvise"));
    assert_eq!(v("transparent_hugepage_defrag"), "differs");
    assert_eq!(v("cpu_governor"), "differs");
    assert!(
        m["cpu_governor"].1.contains("powersave on 1 of 2 CPUs"),
        "{}",
        m["cpu_governor"].1
    );
    assert_eq!(v("clocksource"), "differs");
    assert_eq!(v("vm.swappiness"), "differs");
    assert!(
        m["vm.swappiness"].1.contains("sysctl -w vm.swappiness=1"),
        "{}",
        m["vm.swappiness"].1
    );
    assert_eq!(v("net.ipv4.tcp_fin_timeout"), "differs");
    assert_eq!(
        v("vm.dirty_bytes"),
        "differs",
        "0 means the ratio is in force"
    );
    assert_eq!(v("net.core.somaxconn"), "ok", "a larger backlog is fine");
    assert_eq!(
        v("net.ipv4.ip_local_port_range"),
        "ok",
        "a wider port range is fine"
    );
    assert_eq!(
        v("net.ipv4.tcp_slow_start_after_idle"),
        "cannot tell",
        "a missing key"
    );
    assert_eq!(v("kernel.io_uring_disabled"), "differs");
    assert_eq!(v("io_uring"), "differs", "io_uring_disabled=2");
    assert_eq!(v("kernel"), "ok", "6.1 >= 5.19");
    if f.disk.is_some() {
        assert_eq!(
            v("disk_scheduler"),
            "differs",
            "bfq on a non-rotational disk"
        );
        assert!(
            m["disk_scheduler"].1.contains("fakedisk: bfq"),
            "{}",
            m["disk_scheduler"].1
        );
        assert_eq!(
            v("disk_write_cache"),
            "differs",
            "write through over a write-back drive"
        );
    }

    // An empty machine: nothing readable in /proc and /sys still never crashes.
    let empty = tempfile::tempdir().unwrap();
    let mut c = cmd(
        &script("check"),
        &["--json", "--data-dir", "/nonexistent/starcite"],
    );
    c.env("STARCITE_TUNING_PROC", empty.path())
        .env("STARCITE_TUNING_SYS", empty.path())
        .env("STARCITE_TUNING_NO_PROBE", "1");
    let out = run(c);
    assert!(matches!(out.code, Some(0) | Some(1)), "{}", out.describe());
    let doc: Value = serde_json::from_str(&out.stdout).expect("json");
    let by: BTreeMap<&str, &str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["setting"].as_str().unwrap(),
                r["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    for s in [
        "cpu_governor",
        "clocksource",
        "transparent_hugepage",
        "vm.swappiness",
        "disk_scheduler",
    ] {
        assert_eq!(
            by[s],
            "cannot tell",
            "{s} with nothing to read\n{}",
            out.describe()
        );
    }
    assert_eq!(by.len(), expected_settings().len());
}

#[test]
fn apply_converges_on_a_fake_machine_and_is_idempotent() {
    if !is_root() {
        println!("note: not root: apply refuses to run for real, fake-machine apply skipped (dry run still checked)");
    }
    let f = Fake::new();
    let data = f.data.to_str().unwrap();
    let root = f.root.to_str().unwrap();

    // Dry run first: every path it would touch must be inside the fake root.
    let dry = run(f.command("apply", &["--dry-run", "--data-dir", data]));
    assert_eq!(dry.code, Some(0), "{}", dry.describe());
    for line in dry.stdout.lines().filter(|l| l.starts_with("would:")) {
        let target = line
            .split(" # ")
            .next()
            .unwrap()
            .rsplit(' ')
            .find(|w| w.starts_with('/'))
            .unwrap_or("");
        assert!(
            target.starts_with(root),
            "dry run would touch {target:?} outside the fake root: {line}"
        );
    }
    for key in [
        "vm.swappiness",
        "net.ipv4.tcp_fin_timeout",
        "vm.dirty_bytes",
        "kernel.io_uring_disabled",
    ] {
        assert!(
            dry.stdout
                .contains(&format!("> {} ", f.sysctl(key).display())),
            "{key} planned\n{}",
            dry.describe()
        );
    }
    assert!(
        !dry.stdout
            .contains(&format!("> {} ", f.sysctl("net.core.somaxconn").display())),
        "never lowers a better value"
    );
    assert!(
        dry.stdout
            .contains("skip:    net.ipv4.tcp_slow_start_after_idle"),
        "{}",
        dry.describe()
    );
    if !is_root() {
        return;
    }

    let out = run(f.command("apply", &["--data-dir", data]));
    assert_eq!(
        out.code,
        Some(0),
        "apply on the fake machine\n{}",
        out.describe()
    );
    let wanted = sysctl_wanted();
    for key in [
        "vm.swappiness",
        "net.ipv4.tcp_fin_timeout",
        "vm.dirty_bytes",
        "kernel.io_uring_disabled",
    ] {
        assert_eq!(f.read(&f.sysctl(key)), wanted[key], "{key} applied");
    }
    assert_eq!(
        f.read(&f.sysctl("net.core.somaxconn")),
        "100000",
        "a better value is left alone"
    );
    assert_eq!(
        f.read(&f.sys().join("kernel/mm/transparent_hugepage/enabled")),
        "madvise"
    );
    assert_eq!(
        f.read(&f.sys().join("kernel/mm/transparent_hugepage/defrag")),
        "madvise"
    );
    assert_eq!(
        f.read(
            &f.sys()
                .join("devices/system/cpu/cpu0/cpufreq/scaling_governor")
        ),
        "performance"
    );
    assert_eq!(
        f.read(
            &f.sys()
                .join("devices/system/clocksource/clocksource0/current_clocksource")
        ),
        "hpet",
        "clocksource is not apply's business"
    );
    if let Some(disk) = &f.disk {
        assert_eq!(f.read(&disk.join("queue/scheduler")), "none");
    }
    for (src, dest) in [
        ("sysctl.d/60-starcite.conf", "sysctl.d/60-starcite.conf"),
        (
            "limits.d/60-starcite.conf",
            "security/limits.d/60-starcite.conf",
        ),
    ] {
        let a = std::fs::read(tuning().join(src)).unwrap();
        let b = std::fs::read(f.etc().join(dest))
            .unwrap_or_else(|e| panic!("{dest} installed: {e}\n{}", out.describe()));
        assert_eq!(a, b, "{dest} is a copy of tuning/{src}");
    }

    // Second run: nothing left to do.
    let again = run(f.command("apply", &["--data-dir", data]));
    assert_eq!(again.code, Some(0), "{}", again.describe());
    assert!(
        !again.stdout.lines().any(|l| l.starts_with("done:")),
        "apply is not idempotent\n{}",
        again.describe()
    );
    assert!(
        again.stdout.contains("# 0 action(s) done, 0 failed"),
        "{}",
        again.describe()
    );

    // And check agrees.
    let out = run(f.command("check", &["--data-dir", data]));
    let m = assert_complete_text(&out);
    for s in [
        "transparent_hugepage",
        "transparent_hugepage_defrag",
        "cpu_governor",
        "vm.swappiness",
        "vm.dirty_bytes",
        "kernel.io_uring_disabled",
        "io_uring",
    ] {
        assert_eq!(m[s].0, "ok", "{s} after apply: {}", m[s].1);
    }
    if f.disk.is_some() {
        assert_eq!(m["disk_scheduler"].0, "ok", "{}", m["disk_scheduler"].1);
    }
}

// ---------------------------------------------------------------------------
// systemd units
// ---------------------------------------------------------------------------

fn unit(name: &str) -> String {
    std::fs::read_to_string(tuning().join("systemd").join(name)).expect(name)
}

fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn units_keep_what_the_node_needs() {
    let svc = directives(&unit("starcite.service"));
    let has = |k: &str, v: &str| svc.iter().any(|(a, b)| a == k && b == v);
    for (k, v) in [
        ("User", "starcite"),
        ("EnvironmentFile", "/etc/starcite/env"),
        ("ExecStart", "/usr/local/bin/starcite start"),
        ("LimitNOFILE", "1048576"),
        ("LimitMEMLOCK", "infinity"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "30"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/starcite"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LockPersonality", "yes"),
    ] {
        assert!(has(k, v), "starcite.service needs {k}={v}");
    }
    assert!(svc.iter().any(|(k, _)| k == "RestartSec"));
    // io_uring must survive every allow-list filter.
    for (k, v) in svc.iter().filter(|(k, _)| k == "SystemCallFilter") {
        if !v.starts_with('~') {
            for sc in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
                assert!(
                    v.split_whitespace().any(|w| w == sc),
                    "{k}={v} would block {sc}"
                );
            }
        } else {
            assert!(
                !v.contains("io_uring") && !v.contains("@aio"),
                "{k}={v} denies io_uring"
            );
        }
    }
    let tun = directives(&unit("starcite-tuning.service"));
    for (k, v) in [
        ("Type", "oneshot"),
        ("RemainAfterExit", "yes"),
        ("Before", "starcite.service"),
        ("ExecStart", "/usr/local/lib/starcite/tuning/apply"),
    ] {
        assert!(
            tun.iter().any(|(a, b)| a == k && b == v),
            "starcite-tuning.service needs {k}={v}"
        );
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let present = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(present, Ok(s) if s.success()) {
        println!("note: systemd-analyze not installed: unit verification skipped (unit content is still checked by units_keep_what_the_node_needs)");
        return;
    }
    // verify insists that executables exist: point the installed paths at
    // this build's binary and at the scripts in the checkout.
    let tmp = tempfile::tempdir().unwrap();
    let tuning_dir = format!("{}/", tuning().display());
    let mut paths = vec![];
    for name in ["starcite.service", "starcite-tuning.service"] {
        let text = unit(name)
            .replace("/usr/local/bin/starcite", env!("CARGO_BIN_EXE_starcite"))
            .replace("/usr/local/lib/starcite/tuning/", &tuning_dir);
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = ["verify", "--man=no"]
        .into_iter()
        .chain(paths.iter().map(String::as_str))
        .collect();
    let out = run(cmd("systemd-analyze", &args));
    assert_eq!(
        out.code,
        Some(0),
        "systemd-analyze verify\n{}",
        out.describe()
    );
    // verify reports bad lines as warnings with exit 0: none may name our units.
    let tmp_s = tmp.path().to_string_lossy().into_owned();
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        assert!(
            !line.contains("starcite.service")
                && !line.contains("starcite-tuning.service")
                && !line.contains(&tmp_s),
            "systemd-analyze complains: {line}\n{}",
            out.describe()
        );
    }
}
