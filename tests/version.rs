//! The version a build reports: `starcite --version` and `starcite ops status`
//! show the crate version plus `+<STARCITE_BUILD_VERSION>` when the build set it
//! (the Ansible upgrade runbook tells builds apart by it).

mod common;

use std::process::Command;

use common::Server;

fn expected() -> String {
    let pkg = env!("CARGO_PKG_VERSION");
    match option_env!("STARCITE_BUILD_VERSION").map(str::trim) {
        Some(b) if !b.is_empty() => format!("{pkg}+{b}"),
        _ => pkg.to_owned(),
    }
}

#[test]
fn version_flag_and_ops_status_report_the_build_version() {
    let bin = env!("CARGO_BIN_EXE_starcite");
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("starcite {}", expected())
    );

    let server = Server::start_default();
    let out = Command::new(bin)
        .args(["ops", "status", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .expect("run ops status");
    assert!(out.status.success(), "ops status: {out:?}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["version"], expected().as_str(), "{st}");
}
