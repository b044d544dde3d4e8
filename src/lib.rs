//! The `starcite` node: configuration, per-core runtime, HTTP/WebSocket gateway,
//! routing of requests to the core that owns a session's group.

pub mod api;
pub mod archive;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod node;
pub mod ops;
pub mod phoenix;
pub mod service;
pub mod tail;
pub mod tls;
pub mod wire_server;

static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This build's version: the crate version, plus `+<STARCITE_BUILD_VERSION>` when
/// the binary was built with that variable set (`STARCITE_BUILD_VERSION=rc2 cargo
/// build` gives `0.1.0+rc2`). `starcite --version` and `starcite ops status` show it.
pub fn version() -> &'static str {
    VERSION.get_or_init(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// Called once by the binary before anything reads [`version`], with its own
/// `option_env!("STARCITE_BUILD_VERSION")`: read there, only the small binary
/// crate is rebuilt when the variable changes, not this library.
pub fn set_build_version(build: Option<&str>) {
    let _ = VERSION.set(build_version(env!("CARGO_PKG_VERSION"), build));
}

fn build_version(pkg: &str, build: Option<&str>) -> String {
    match build.map(str::trim).filter(|b| !b.is_empty()) {
        Some(b) => format!("{pkg}+{b}"),
        None => pkg.to_owned(),
    }
}

#[cfg(test)]
mod version_tests {
    use super::build_version;

    #[test]
    fn build_version_appends_the_build_string() {
        assert_eq!(build_version("0.1.0", None), "0.1.0");
        assert_eq!(build_version("0.1.0", Some("")), "0.1.0");
        assert_eq!(build_version("0.1.0", Some(" rc2 ")), "0.1.0+rc2");
        assert!(super::version().starts_with(env!("CARGO_PKG_VERSION")));
    }
}
