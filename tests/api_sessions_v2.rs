//! The session routes of the current API (upstream v0.0.5) against a real
//! `starcite` process: GET/PATCH/archive/unarchive, the `archived` list
//! filter, the new fields of session and append bodies, CORS, the ops port,
//! restart survival, JWT scopes/pins/tenants, and a 3-node cluster plus a
//! router node (every operation through every node, so through non-leaders).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use jwt_simple::prelude::*;
use serde_json::{json, Value};

fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string());
    request(
        port,
        method,
        path,
        &headers,
        body.as_deref().map(str::as_bytes),
    )
}

/// 409 `expected_version_conflict`: exactly `error`, `message`, `current_version`.
fn assert_version_conflict(r: &Response, expected: u64, current: u64) {
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({
            "error": "expected_version_conflict",
            "message": format!("Expected version {expected}, current version is {current}"),
            "current_version": current,
        })
    );
}

fn ok_json(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    r.json()
}

fn patch(port: u16, id: &str, body: &Value) -> Response {
    call(
        port,
        "PATCH",
        &format!("/v1/sessions/{}", pct(id)),
        None,
        Some(body),
    )
}

fn show(port: u16, id: &str) -> Response {
    call(
        port,
        "GET",
        &format!("/v1/sessions/{}", pct(id)),
        None,
        None,
    )
}

fn set_archived(port: u16, id: &str, archived: bool) -> Response {
    let verb = if archived { "archive" } else { "unarchive" };
    call(
        port,
        "POST",
        &format!("/v1/sessions/{}/{verb}", pct(id)),
        None,
        Some(&json!({})),
    )
}

fn list_ids(port: u16, query: &str) -> Vec<String> {
    let extra = if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    };
    list_all(port, &extra)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn get_patch_archive_and_list_filter() {
    let s = Server::start_default();
    let p = s.port();
    let created = create_session_with(
        p,
        json!({"id": "s1", "title": "One", "metadata": {"a": 1, "nested": {"x": 1}}}),
    );
    assert_eq!(created["version"], 1);
    assert_eq!(created["archived"], false);
    assert_eq!(created["updated_at"], created["created_at"]);
    assert!(created.get("tenant_id").is_none(), "create keeps §4.1");

    // GET: the catalog entry.
    let got = ok_json(&show(p, "s1"), 200);
    for key in [
        "id",
        "title",
        "tenant_id",
        "creator_principal",
        "metadata",
        "created_at",
        "updated_at",
    ] {
        assert!(got.get(key).is_some(), "GET lacks {key}: {got}");
    }
    assert_eq!(got["id"], "s1");
    assert_eq!(got["title"], "One");
    assert_eq!(got["version"], 1);
    assert_eq!(got["archived"], false);
    assert!(is_micro_ts(got["updated_at"].as_str().unwrap()));
    assert_error_resp(&show(p, "nope"), 404, "session_not_found");

    // PATCH: title only, then metadata merged one level, version and updated_at bump.
    let v2 = ok_json(&patch(p, "s1", &json!({"title": "Uno"})), 200);
    assert_eq!(v2["title"], "Uno");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["metadata"], json!({"a": 1, "nested": {"x": 1}}));
    assert!(v2["updated_at"].as_str() >= created["updated_at"].as_str());
    let v3 = ok_json(
        &patch(p, "s1", &json!({"metadata": {"b": 2, "nested": {"y": 2}}})),
        200,
    );
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["title"], "Uno");
    assert_eq!(
        v3["metadata"],
        json!({"a": 1, "nested": {"y": 2}, "b": 2}),
        "one level: nested objects are replaced, keys are never deleted"
    );
    assert_eq!(v3["last_seq"], 0);
    // Title null clears it; expected_version as digits is accepted.
    let v4 = ok_json(
        &patch(p, "s1", &json!({"title": null, "expected_version": "3"})),
        200,
    );
    assert_eq!(v4["title"], Value::Null);
    assert_eq!(v4["version"], 4);

    // Version conflict: 409 with current_version, nothing changes.
    let r = patch(p, "s1", &json!({"title": "late", "expected_version": 3}));
    assert_version_conflict(&r, 3, 4);
    assert_eq!(ok_json(&show(p, "s1"), 200)["version"], 4);
    let v5 = ok_json(
        &patch(p, "s1", &json!({"title": "T5", "expected_version": 4})),
        200,
    );
    assert_eq!(v5["version"], 5);

    // PATCH validation (upstream's order and codes).
    for (body, code) in [
        (json!({}), "invalid_session"),
        (json!({"metadata": {}}), "invalid_session"),
        (json!({"title": 5}), "invalid_session"),
        (json!({"title": ["x"]}), "invalid_session"),
        (json!({"metadata": "x"}), "invalid_metadata"),
        (json!({"metadata": null}), "invalid_metadata"),
        (
            json!({"title": "x", "expected_version": 0}),
            "invalid_session",
        ),
        (
            json!({"title": "x", "expected_version": -1}),
            "invalid_session",
        ),
        (
            json!({"title": "x", "expected_version": 1.5}),
            "invalid_session",
        ),
        (
            json!({"title": "x", "expected_version": "abc"}),
            "invalid_session",
        ),
    ] {
        assert_error_resp(&patch(p, "s1", &body), 400, code);
    }
    let r = request(
        p,
        "PATCH",
        "/v1/sessions/s1",
        &[("Content-Type", "application/json")],
        Some(b"{not json"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_error_resp(
        &patch(p, "nope", &json!({"title": "x"})),
        404,
        "session_not_found",
    );
    // Title with an empty metadata patch is a real change.
    assert_eq!(
        ok_json(
            &patch(p, "s1", &json!({"title": "T6", "metadata": {}})),
            200
        )["version"],
        6
    );

    // Archive: idempotent, no version bump, updated_at only on a real change.
    create_session(p, "s2");
    create_session(p, "s3");
    let a1 = ok_json(&set_archived(p, "s2", true), 200);
    assert_eq!(a1["archived"], true);
    assert_eq!(a1["version"], 1);
    assert_eq!(a1["id"], "s2");
    assert!(a1.get("tenant_id").is_some());
    let a2 = ok_json(&set_archived(p, "s2", true), 200);
    assert_eq!(a2, a1, "archiving twice changes nothing");
    assert_error_resp(&set_archived(p, "nope", true), 404, "session_not_found");
    assert_error_resp(&set_archived(p, "nope", false), 404, "session_not_found");
    // A body is ignored (even a malformed one).
    let r = request(p, "POST", "/v1/sessions/s2/archive", &[], Some(b"garbage"));
    assert_eq!(ok_json(&r, 200)["archived"], true);

    // List filter.
    assert_eq!(list_ids(p, ""), vec!["s1", "s3"]);
    assert_eq!(list_ids(p, "archived=false"), vec!["s1", "s3"]);
    assert_eq!(list_ids(p, "archived=true"), vec!["s2"]);
    assert_eq!(list_ids(p, "archived=all"), vec!["s1", "s2", "s3"]);
    for bad in [
        "archived=yes",
        "archived=",
        "archived=TRUE",
        "archived[x]=1",
    ] {
        let (st, body) = get_json(p, &format!("/v1/sessions?{bad}"));
        assert_error(st, &body, 400, "invalid_list_query");
    }
    let (st, page) = get_json(p, "/v1/sessions?archived=all&limit=1");
    assert_eq!(st, 200);
    let row = &page["sessions"][0];
    assert_eq!(row["id"], "s1");
    assert_eq!(row["version"], 6);
    assert_eq!(row["archived"], false);
    assert!(row.get("updated_at").is_some());
    assert_eq!(page["next_cursor"], "s1");

    // Appends to an archived session are allowed; the 201 has cursor fields.
    let (st, body) = append(p, "s2", &event("w", 1));
    assert_eq!(st, 201, "{body}");
    assert_eq!(
        body,
        json!({"seq": 1, "last_seq": 1, "deduped": false, "cursor": 1, "committed_cursor": 1})
    );
    let (st, body) = append(p, "s2", &event("w", 1));
    assert_eq!(st, 201);
    assert_eq!(body["deduped"], true);
    assert_eq!(body["cursor"], 1);

    // Unarchive: back in the default list; idempotent.
    let u = ok_json(&set_archived(p, "s2", false), 200);
    assert_eq!(u["archived"], false);
    assert_eq!(u["last_seq"], 1);
    assert_eq!(ok_json(&set_archived(p, "s2", false), 200), u);
    assert_eq!(list_ids(p, ""), vec!["s1", "s2", "s3"]);
    assert!(list_ids(p, "archived=true").is_empty());

    // Unknown methods on the entry stay 404; HEAD works like GET.
    let r = call(p, "DELETE", "/v1/sessions/s1", None, None);
    assert_error_resp(&r, 404, "not_found");
    let r = request(p, "HEAD", "/v1/sessions/s1", &[], None);
    assert_eq!(r.status, 200);
}

#[test]
fn cors_on_every_response_and_preflight() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "c1");
    for (method, path) in [
        ("GET", "/v1/sessions"),
        ("GET", "/v1/sessions/c1"),
        ("GET", "/v1/sessions/missing"),
        ("GET", "/health/live"),
        ("GET", "/nope"),
    ] {
        let r = request(p, method, path, &[("Origin", "https://ui.example")], None);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("*"),
            "{path}"
        );
        assert_eq!(r.header("access-control-allow-credentials"), None, "{path}");
    }
    let r = request(
        p,
        "OPTIONS",
        "/v1/sessions",
        &[
            ("Origin", "https://ui.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        None,
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET,POST,PUT,PATCH,DELETE,OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization,content-type")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // Preflight of any path, even one that does not exist.
    let r = request(p, "OPTIONS", "/v1/sessions/c1/append", &[], None);
    assert_eq!(r.status, 204);
    // A preflight creates nothing.
    assert_eq!(list_ids(p, "archived=all"), vec!["c1"]);
}

#[test]
fn ops_port_serves_health_and_metrics_only() {
    let ops = free_port();
    let s = Server::start(ServerOpts::new().env("STARCITE_OPS_PORT", &ops.to_string()));
    let (st, body) = get_json(ops, "/health/live");
    assert_eq!((st, body), (200, json!({"status": "ok"})));
    let (st, body) = get_json(ops, "/health/ready");
    assert_eq!(st, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["mode"], "write_node");
    let r = get(ops, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("starcite_log_fsyncs_total"),
        "{}",
        r.text()
    );
    // The API is not served there.
    assert_error_resp(&get(ops, "/v1/sessions"), 404, "not_found");
    let r = post_raw(ops, "/v1/sessions", b"{}");
    assert_eq!(r.status, 404);
    // The API port still serves health and metrics too.
    assert_eq!(get(s.port(), "/health/live").status, 200);
    assert_eq!(get(s.port(), "/metrics").status, 200);
}

#[test]
fn ops_port_must_differ_from_the_api_port() {
    let port = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_starcite"))
        .arg("dev")
        .env("PORT", port.to_string())
        .env("STARCITE_OPS_PORT", port.to_string())
        .env(
            "STARCITE_RAFT_DATA_DIR",
            tempfile::tempdir().unwrap().path(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("STARCITE_OPS_PORT"), "{err}");
}

/// Catalog changes are Raft commands: they survive kill -9 (log replay) and
/// a restart from a checkpoint (snapshot).
#[test]
fn catalog_changes_survive_restart_and_checkpoints() {
    let mut s = Server::start(ServerOpts::new().env("STARCITE_LOG_CHECKPOINT_SIZE", "1MB"));
    let p = s.port();
    create_session_with(p, json!({"id": "r1", "title": "A", "metadata": {"k": "v"}}));
    create_session(p, "r2");
    ok_json(
        &patch(p, "r1", &json!({"title": "B", "metadata": {"k2": 2}})),
        200,
    );
    ok_json(&set_archived(p, "r2", true), 200);
    let before1 = ok_json(&show(p, "r1"), 200);
    let before2 = ok_json(&show(p, "r2"), 200);
    s.kill();
    s.restart();
    let p = s.port();
    assert_eq!(
        ok_json(&show(p, "r1"), 200),
        before1,
        "replayed from the log"
    );
    assert_eq!(ok_json(&show(p, "r2"), 200), before2);
    assert_eq!(list_ids(p, ""), vec!["r1"]);

    // Enough appends to pass the checkpoint size: groups are snapshotted and
    // old segments dropped, so the next start restores from snapshots.
    let pad = "x".repeat(4_000);
    for i in 1..=700u64 {
        let mut ev = event("w", i);
        ev["payload"] = json!({"pad": pad});
        let (st, body) = append(p, "r1", &ev);
        assert_eq!(st, 201, "{body}");
    }
    ok_json(&patch(p, "r1", &json!({"metadata": {"k3": 3}})), 200);
    let before1 = ok_json(&show(p, "r1"), 200);
    assert_eq!(before1["version"], 3);
    s.kill();
    s.restart();
    let p = s.port();
    assert_eq!(
        ok_json(&show(p, "r1"), 200),
        before1,
        "restored from a checkpoint"
    );
    assert_eq!(ok_json(&show(p, "r2"), 200), before2);
    assert_eq!(list_ids(p, "archived=true"), vec!["r2"]);
}

// ---------------------------------------------------------------------------
// JWT mode
// ---------------------------------------------------------------------------

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "starcite-api";

fn jwks_server(key: &RS256KeyPair) -> String {
    let comps = key.public_key().to_components();
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
        "n": URL_SAFE_NO_PAD.encode(&comps.n), "e": URL_SAFE_NO_PAD.encode(&comps.e),
    }]})
    .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    format!("http://127.0.0.1:{port}/.well-known/jwks.json")
}

#[derive(Serialize, Deserialize)]
struct Extra {
    tenant_id: String,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
}

fn token(key: &RS256KeyPair, tenant: &str, scope: &str, lock: Option<&str>) -> String {
    let extra = Extra {
        tenant_id: tenant.into(),
        scope: scope.into(),
        session_id: lock.map(str::to_owned),
    };
    let claims = Claims::with_custom_claims(extra, jwt_simple::prelude::Duration::from_secs(600))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject("user:u-42");
    key.sign(claims).unwrap()
}

#[test]
fn jwt_scopes_pins_and_tenants_on_the_new_routes() {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let s = Server::start(
        ServerOpts::new()
            .env("STARCITE_AUTH_MODE", "jwt")
            .env("STARCITE_AUTH_JWT_ISSUER", ISSUER)
            .env("STARCITE_AUTH_JWT_AUDIENCE", AUDIENCE)
            .env("STARCITE_AUTH_JWKS_URL", &jwks_server(&key)),
    );
    let p = s.port();
    let all = token(
        &key,
        "acme",
        "session:create session:append session:read",
        None,
    );
    let read_only = token(&key, "acme", "session:read", None);
    let create_only = token(&key, "acme", "session:create", None);
    let pinned = token(&key, "acme", "session:create session:read", Some("j1"));
    let other_tenant = token(&key, "other", "session:create session:read", None);
    let r = call(
        p,
        "POST",
        "/v1/sessions",
        Some(&all),
        Some(&json!({"id": "j1", "title": "t"})),
    );
    assert_eq!(ok_json(&r, 201)["version"], 1);
    call(
        p,
        "POST",
        "/v1/sessions",
        Some(&all),
        Some(&json!({"id": "j2"})),
    );
    let path = "/v1/sessions/j1";

    // No or bad token: 401 on every new route, CORS headers included.
    for (method, route) in [
        ("GET", path),
        ("PATCH", path),
        ("POST", "/v1/sessions/j1/archive"),
        ("POST", "/v1/sessions/j1/unarchive"),
    ] {
        let r = call(p, method, route, None, Some(&json!({"title": "x"})));
        assert_error_resp(&r, 401, "unauthorized");
        assert!(r.header("www-authenticate").is_some());
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let r = call(
            p,
            method,
            route,
            Some("not.a.jwt"),
            Some(&json!({"title": "x"})),
        );
        assert_error_resp(&r, 401, "unauthorized");
    }

    // GET needs session:read; PATCH/archive need session:create.
    let r = call(p, "GET", path, Some(&create_only), None);
    assert_error_resp(&r, 403, "forbidden_scope");
    let got = ok_json(&call(p, "GET", path, Some(&read_only), None), 200);
    assert_eq!(got["tenant_id"], "acme");
    assert_eq!(
        got["creator_principal"],
        json!({"tenant_id": "acme", "id": "u-42", "type": "user"})
    );
    let r = call(
        p,
        "PATCH",
        path,
        Some(&read_only),
        Some(&json!({"title": "x"})),
    );
    assert_error_resp(&r, 403, "forbidden_scope");
    let r = call(p, "POST", "/v1/sessions/j1/archive", Some(&read_only), None);
    assert_error_resp(&r, 403, "forbidden_scope");
    let r = call(
        p,
        "POST",
        "/v1/sessions/j1/unarchive",
        Some(&read_only),
        None,
    );
    assert_error_resp(&r, 403, "forbidden_scope");
    // Body validation comes first for PATCH (upstream: validate, then authorize).
    let r = call(p, "PATCH", path, Some(&read_only), Some(&json!({})));
    assert_error_resp(&r, 400, "invalid_session");

    // A token pinned to j1 manages j1 only; the pin is checked before existence.
    assert_eq!(
        ok_json(
            &call(
                p,
                "PATCH",
                path,
                Some(&pinned),
                Some(&json!({"title": "p"}))
            ),
            200
        )["version"],
        2
    );
    for (method, route) in [
        ("GET", "/v1/sessions/j2"),
        ("PATCH", "/v1/sessions/j2"),
        ("POST", "/v1/sessions/j2/archive"),
        ("GET", "/v1/sessions/missing"),
    ] {
        let r = call(
            p,
            method,
            route,
            Some(&pinned),
            Some(&json!({"title": "x"})),
        );
        assert_error_resp(&r, 403, "forbidden_session");
    }
    // Another tenant: 404 for a missing session, 403 for an existing one.
    let r = call(p, "GET", "/v1/sessions/missing", Some(&other_tenant), None);
    assert_error_resp(&r, 404, "session_not_found");
    for (method, route) in [
        ("GET", path),
        ("PATCH", path),
        ("POST", "/v1/sessions/j1/archive"),
        ("POST", "/v1/sessions/j1/unarchive"),
    ] {
        let r = call(
            p,
            method,
            route,
            Some(&other_tenant),
            Some(&json!({"title": "x"})),
        );
        assert_error_resp(&r, 403, "forbidden_tenant");
    }
    assert_eq!(
        ok_json(&call(p, "GET", path, Some(&all), None), 200)["title"],
        "p"
    );

    // Archive with a create-scoped token; the list filter stays tenant-scoped.
    let a = ok_json(
        &call(
            p,
            "POST",
            "/v1/sessions/j2/archive",
            Some(&create_only),
            None,
        ),
        200,
    );
    assert_eq!(a["archived"], true);
    let r = call(
        p,
        "GET",
        "/v1/sessions?archived=true",
        Some(&read_only),
        None,
    );
    let ids: Vec<_> = ok_json(&r, 200)["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("j2")]);
    let r = call(
        p,
        "GET",
        "/v1/sessions?archived=all",
        Some(&other_tenant),
        None,
    );
    assert_eq!(ok_json(&r, 200)["sessions"], json!([]));
    let r = call(
        p,
        "GET",
        "/v1/sessions?archived=maybe",
        Some(&read_only),
        None,
    );
    assert_error_resp(&r, 400, "invalid_list_query");
    // The pinned token lists only its session, whatever the filter.
    let r = call(p, "GET", "/v1/sessions?archived=all", Some(&pinned), None);
    let ids: Vec<_> = ok_json(&r, 200)["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("j1")]);
    // Version conflict in JWT mode too.
    let r = call(
        p,
        "PATCH",
        path,
        Some(&all),
        Some(&json!({"title": "z", "expected_version": 1})),
    );
    assert_version_conflict(&r, 1, 2);
    // Preflight needs no token.
    let r = request(
        p,
        "OPTIONS",
        path,
        &[("Access-Control-Request-Headers", "authorization")],
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization")
    );
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// Three write nodes (rf 3) and a router: each operation goes through every
/// node in turn, so through the group leader, non-leaders and the router
/// (which holds no data), and every node sees every change.
#[test]
fn cluster_catalog_changes_through_any_node() {
    use common::cluster::{Cluster, ClusterOpts};
    let c = Cluster::start(ClusterOpts {
        writers: 3,
        routers: 1,
        rf: 3,
        ..Default::default()
    });
    let ports = c.ports();
    let ids: Vec<String> = (0..3).map(|i| format!("cs{i}")).collect();
    common::cluster::create_sessions(&ports, &ids);
    for id in &ids {
        for (round, port) in ports.iter().enumerate() {
            let want = round as u64 + 2;
            let r = patch(
                *port,
                id,
                &json!({"metadata": {format!("n{round}"): round}, "expected_version": want - 1}),
            );
            let body = ok_json(&r, 200);
            assert_eq!(body["version"], want, "{id} via node {round}");
            for (j, other) in ports.iter().enumerate() {
                let got = ok_json(&show(*other, id), 200);
                assert_eq!(
                    got["version"], want,
                    "{id}: node {j} after a PATCH via {round}"
                );
            }
        }
        let stale = patch(ports[0], id, &json!({"title": "x", "expected_version": 1}));
        assert_version_conflict(&stale, 1, ports.len() as u64 + 1);
    }
    // Archive through the router, unarchive through a write node, archive
    // again through another: idempotent everywhere.
    let a = ok_json(&set_archived(ports[3], "cs0", true), 200);
    assert_eq!(a["archived"], true);
    assert_eq!(ok_json(&set_archived(ports[1], "cs0", true), 200), a);
    for port in &ports {
        assert_eq!(list_ids(*port, "archived=true"), vec!["cs0"]);
        assert_eq!(list_ids(*port, ""), vec!["cs1", "cs2"]);
        assert_eq!(list_ids(*port, "archived=all"), ids);
    }
    ok_json(&set_archived(ports[2], "cs0", false), 200);
    for port in &ports {
        assert_eq!(list_ids(*port, ""), ids);
        assert_error_resp(&show(*port, "missing"), 404, "session_not_found");
    }
    let (st, body) = append(ports[3], "cs1", &event("w", 1));
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["cursor"], 1);
    assert_eq!(body["committed_cursor"], 1);
    c.assert_no_panics();
}
