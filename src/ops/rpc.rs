//! The reference runbook's `rpc` expressions, mapped onto [`OpsCommand`]s.
//!
//! Accepted (the module prefix `Starcite.ControlPlane.Ops.` is optional; whitespace
//! around tokens is ignored; zero-argument calls may omit the parentheses):
//!
//! | expression | command |
//! |---|---|
//! | `status()` | `status` |
//! | `ready_nodes()` | `ready-nodes` |
//! | `local_ready()` / `local_drained()` | one check, prints `local_ready=…` / `local_drained=…` |
//! | `drain_node()` / `drain_node("n")` / `drain_node('n')` / `drain_node(\"n\")` / `drain_node(n)` / `drain_node(:n)` / `drain_node(:"n")` | `drain [n]` |
//! | `undrain_node(…)` | `undrain [n]` (same argument forms) |
//! | `wait_local_drained()` / `wait_local_drained(30000)` | `wait-drained` |
//! | `wait_local_ready()` / `wait_local_ready(60000)` | `wait-ready` |
//! | `group_replicas(7)` | `group-replicas 7` |
//! | `replace_node("n")` (same argument forms as `drain_node`) | `replace-node n` (default timeout) |
//!
//! Integers may use Elixir's `_` digit separators (`30_000`).

use super::cli::{OpsCommand, DEFAULT_REPLACE_MS, DEFAULT_WAIT_MS};

pub const MODULE: &str = "Starcite.ControlPlane.Ops";

const SUPPORTED: &str = "status(), ready_nodes(), local_ready(), local_drained(), drain_node([node]), \
undrain_node([node]), wait_local_drained([timeout_ms]), wait_local_ready([timeout_ms]), group_replicas(group_id), \
replace_node(node)";

/// One argument as written.
#[derive(Debug, PartialEq, Eq)]
enum Arg {
    /// `"x"`, `'x'`, `\"x\"`, `:"x"`: certainly a string.
    Quoted(String),
    /// `x`, `:x`, `7`: a bare token.
    Bare(String),
}

/// Parses one runbook expression. The error is a complete message for operators.
pub fn parse_rpc(expr: &str) -> Result<OpsCommand, String> {
    let s = expr.trim();
    if s.is_empty() {
        return Err(format!("empty expression; expected e.g. {MODULE}.status()"));
    }
    let rest = match s.strip_prefix(MODULE) {
        Some(r) => r
            .trim_start()
            .strip_prefix('.')
            .ok_or_else(|| unknown(s))?
            .trim_start(),
        None => s,
    };
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '?' || c == '!'))
        .unwrap_or(rest.len());
    let (name, after) = rest.split_at(name_len);
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        return Err(unknown(s));
    }
    let after = after.trim();
    let arg = if after.is_empty() {
        None
    } else {
        let inner = after
            .strip_prefix('(')
            .and_then(|a| a.strip_suffix(')'))
            .ok_or_else(|| unknown(s))?
            .trim();
        if inner.is_empty() {
            None
        } else {
            Some(parse_arg(inner).map_err(|why| format!("{name}: {why} in {s:?}"))?)
        }
    };
    let arity = usize::from(arg.is_some());
    let no_arg = |cmd: OpsCommand| match arg {
        None => Ok(cmd),
        Some(_) => Err(format!("{MODULE}.{name}/0 takes no argument")),
    };
    match name {
        "status" => no_arg(OpsCommand::Status),
        "ready_nodes" => no_arg(OpsCommand::ReadyNodes),
        "local_ready" => no_arg(OpsCommand::LocalReady),
        "local_drained" => no_arg(OpsCommand::LocalDrained),
        "drain_node" => Ok(OpsCommand::Drain {
            node: node_arg(name, arg)?,
        }),
        "undrain_node" => Ok(OpsCommand::Undrain {
            node: node_arg(name, arg)?,
        }),
        "replace_node" => match node_arg(name, arg)? {
            Some(node) => Ok(OpsCommand::ReplaceNode {
                node,
                timeout_ms: DEFAULT_REPLACE_MS,
            }),
            None => Err(format!(
                "{MODULE}.replace_node/1 needs the node to replace, e.g. {MODULE}.replace_node(\"starcite@10.0.0.3\")"
            )),
        },
        "wait_local_ready" => Ok(OpsCommand::WaitReady {
            ms: None,
            timeout_ms: timeout_arg(name, arg)?,
        }),
        "wait_local_drained" => Ok(OpsCommand::WaitDrained {
            ms: None,
            timeout_ms: timeout_arg(name, arg)?,
        }),
        "group_replicas" => match arg {
            Some(Arg::Bare(tok)) => {
                let group = parse_int(&tok).and_then(|g| u32::try_from(g).ok()).ok_or_else(|| {
                    format!("group_replicas: group id must be an integer between 0 and 4294967295, got {tok:?}")
                })?;
                Ok(OpsCommand::GroupReplicas { group })
            }
            Some(Arg::Quoted(tok)) => Err(format!(
                "group_replicas: group id must be an integer, got the string {tok:?}"
            )),
            None => Err(format!(
                "{MODULE}.group_replicas/1 needs a group id, e.g. {MODULE}.group_replicas(7)"
            )),
        },
        _ => Err(format!(
            "unknown function {MODULE}.{name}/{arity}; supported: {SUPPORTED}"
        )),
    }
}

fn unknown(expr: &str) -> String {
    format!(
        "cannot understand {expr:?}; expected {MODULE}.<function>(<argument>), one of: {SUPPORTED}"
    )
}

fn node_arg(name: &str, arg: Option<Arg>) -> Result<Option<String>, String> {
    match arg {
        None => Ok(None),
        Some(Arg::Quoted(n) | Arg::Bare(n)) if n.trim().is_empty() => {
            Err(format!("{name}: the node name is empty"))
        }
        Some(Arg::Quoted(n) | Arg::Bare(n)) => Ok(Some(n)),
    }
}

fn timeout_arg(name: &str, arg: Option<Arg>) -> Result<u64, String> {
    match arg {
        None => Ok(DEFAULT_WAIT_MS),
        Some(Arg::Bare(tok)) => parse_int(&tok).ok_or_else(|| {
            format!(
                "{name}: the timeout must be a non-negative integer of milliseconds, got {tok:?}"
            )
        }),
        Some(Arg::Quoted(tok)) => Err(format!(
            "{name}: the timeout must be an integer of milliseconds, got the string {tok:?}"
        )),
    }
}

/// Digits with optional single `_` separators between them (`30_000`).
fn parse_int(tok: &str) -> Option<u64> {
    let b = tok.as_bytes();
    if b.is_empty()
        || !b[0].is_ascii_digit()
        || !b[b.len() - 1].is_ascii_digit()
        || tok.contains("__")
    {
        return None;
    }
    if !b.iter().all(|c| c.is_ascii_digit() || *c == b'_') {
        return None;
    }
    tok.replace('_', "").parse().ok()
}

/// One argument: a quoted string (double, single, backslash-escaped double), an atom,
/// or a bare token. Anything else (e.g. a second argument) is an error.
fn parse_arg(inner: &str) -> Result<Arg, String> {
    if let Some(body) = inner.strip_prefix("\\\"") {
        let body = body
            .strip_suffix("\\\"")
            .ok_or("unterminated \\\"string\\\"")?;
        return plain(body, "\\\"").map(Arg::Quoted);
    }
    if let Some(atom) = inner.strip_prefix(':') {
        if atom.starts_with('"') {
            return quoted(atom, '"').map(Arg::Quoted);
        }
        return bare(atom).map(Arg::Bare);
    }
    if inner.starts_with('"') {
        return quoted(inner, '"').map(Arg::Quoted);
    }
    if inner.starts_with('\'') {
        return quoted(inner, '\'').map(Arg::Quoted);
    }
    bare(inner).map(Arg::Bare)
}

/// `q…q` with `\q` and `\\` escapes inside; the closing quote must end the argument.
fn quoted(s: &str, q: char) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s[1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => break,
            },
            c if c == q => {
                return if chars.as_str().trim().is_empty() {
                    Ok(out)
                } else {
                    Err("expected a single argument".to_owned())
                };
            }
            c => out.push(c),
        }
    }
    Err(format!("unterminated {q}string{q}"))
}

fn plain(body: &str, delim: &str) -> Result<String, String> {
    if body.contains('"') || body.contains('\'') {
        return Err(format!("expected a single {delim}string{delim} argument"));
    }
    Ok(body.to_owned())
}

fn bare(tok: &str) -> Result<String, String> {
    if tok.is_empty() {
        return Err("missing argument".to_owned());
    }
    if tok.contains(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | '"' | '\'' | '\\'))
    {
        return Err("expected a single argument (a node name, or an integer)".to_owned());
    }
    Ok(tok.to_owned())
}
