//! Black-box tests: session create / list, routing envelope, content
//! negotiation, HEAD, health endpoints (api-contract §1, §4.1, §4.2, §5.1,
//! §5.2, §5.5, §14).

mod common;

use common::*;
use serde_json::{json, Value};

fn is_generated_id(id: &str) -> bool {
    id.len() == 20
        && id.starts_with("ses_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn assert_service_principal(p: &Value) {
    assert_eq!(
        p,
        &json!({"tenant_id": "service", "id": "service", "type": "service"}),
        "creator_principal"
    );
}

#[test]
fn create_generates_id_and_has_contract_shape() {
    let s = Server::start_default();
    let (st, v) = post_json(s.port(), "/v1/sessions", &json!({}));
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().expect("id string");
    assert!(
        is_generated_id(id),
        "generated id {id:?} is not ses_ + 16 url-safe chars"
    );
    assert_eq!(v["title"], Value::Null);
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(v["last_seq"], json!(0));
    assert_service_principal(&v["creator_principal"]);
    let created = v["created_at"].as_str().expect("created_at");
    assert!(is_micro_ts(created), "created_at {created:?}");
    assert_eq!(v["updated_at"], v["created_at"], "updated_at == created_at");
    assert!(
        v.get("tenant_id").is_none(),
        "no top-level tenant_id in create response: {v}"
    );
    let keys: std::collections::BTreeSet<_> = v.as_object().unwrap().keys().cloned().collect();
    let want: std::collections::BTreeSet<String> = [
        "id",
        "title",
        "creator_principal",
        "metadata",
        "last_seq",
        "created_at",
        "updated_at",
        // Current API (docs/api.md): added members only.
        "version",
        "archived",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(keys, want, "create response keys");
    let ct = get(s.port(), "/health/live");
    assert!(ct
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));

    // Two generated ids differ.
    let (_, v2) = post_json(s.port(), "/v1/sessions", &json!({"title": null}));
    assert!(is_generated_id(v2["id"].as_str().unwrap()));
    assert_ne!(v["id"], v2["id"]);
}

#[test]
fn create_with_given_id_title_metadata() {
    let s = Server::start_default();
    let meta =
        json!({"workflow": "legal", "nested": {"a": [1, 2, {"b": null}]}, "tenant_id": "beta"});
    let v = create_session_with(
        s.port(),
        json!({"id": "my session/1", "title": "Contract review", "metadata": meta,
               "creator_principal": {"tenant_id": "evil"}, "tenant_id": "evil", "unknown": 5}),
    );
    assert_eq!(v["id"], "my session/1");
    assert_eq!(v["title"], "Contract review");
    assert_eq!(
        v["metadata"], meta,
        "metadata stored verbatim (tenant_id not injected/checked)"
    );
    assert_service_principal(&v["creator_principal"]);
    assert_eq!(v["last_seq"], 0);

    // Empty-string title is allowed.
    let v = create_session_with(s.port(), json!({"id": "t-empty", "title": ""}));
    assert_eq!(v["title"], "");
    // Whitespace id is a valid id (nothing is trimmed).
    let v = create_session_with(s.port(), json!({"id": " "}));
    assert_eq!(v["id"], " ");
    // Content-Type is irrelevant: JSON is parsed whatever it says (§14.16).
    let r = request(
        s.port(),
        "POST",
        "/v1/sessions",
        &[("Content-Type", "text/plain")],
        Some(br#"{"id":"ct-text"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["id"], "ct-text");
    let r = request(
        s.port(),
        "POST",
        "/v1/sessions",
        &[],
        Some(br#"{"id":"ct-none"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["id"], "ct-none");
}

#[test]
fn create_validation_errors() {
    let s = Server::start_default();
    let p = s.port();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"id": ""}), "invalid_event"),
        (json!({"id": 123}), "invalid_event"),
        (json!({"id": true}), "invalid_event"),
        (json!({"id": ["a"]}), "invalid_event"),
        (json!({"id": {"a": 1}}), "invalid_event"),
        (json!({"title": 5}), "invalid_event"),
        (json!({"title": {"a": 1}}), "invalid_event"),
        (json!({"title": ["x"]}), "invalid_event"),
        (json!({"metadata": []}), "invalid_metadata"),
        (json!({"metadata": "x"}), "invalid_metadata"),
        (json!({"metadata": 1}), "invalid_metadata"),
        (json!({"metadata": true}), "invalid_metadata"),
        // Order: id, then title, then metadata.
        (
            json!({"id": 1, "title": 2, "metadata": "x"}),
            "invalid_event",
        ),
        (json!({"title": 2, "metadata": "x"}), "invalid_event"),
    ];
    for (body, code) in cases {
        let (st, v) = post_json(p, "/v1/sessions", &body);
        assert_error(st, &v, 400, code);
        if code == "invalid_event" {
            assert_eq!(v["message"], "Invalid event payload", "{body}");
        } else {
            assert_eq!(v["message"], "Invalid metadata payload", "{body}");
        }
    }
    // Null counts as absent.
    let v = create_session_with(p, json!({"id": "nulls", "title": null, "metadata": null}));
    assert_eq!(v["metadata"], json!({}));
    // A non-object top level contributes no fields → a generated id.
    let (st, v) = post_json(p, "/v1/sessions", &json!([1, 2, 3]));
    assert_eq!(st, 201, "{v}");
    assert!(is_generated_id(v["id"].as_str().unwrap()), "{v}");
    // None of the failures created anything: only the successful creates exist.
    let rows = list_all(p, "");
    assert_eq!(rows.len(), 2, "{rows:?}");
}

#[test]
fn create_duplicate_is_session_exists() {
    let s = Server::start_default();
    create_session_with(
        s.port(),
        json!({"id": "dup", "title": "first", "metadata": {"k": "v"}}),
    );
    let (st, v) = post_json(
        s.port(),
        "/v1/sessions",
        &json!({"id": "dup", "title": "second", "metadata": {"k": "other"}}),
    );
    assert_error(st, &v, 409, "session_exists");
    assert_eq!(v["message"], "Session already exists");
    // No side effects: the original is unchanged.
    let rows = list_all(s.port(), "");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["title"], "first");
    assert_eq!(rows[0]["metadata"], json!({"k": "v"}));
}

#[test]
fn malformed_json_is_invalid_event() {
    let s = Server::start_default();
    for body in [
        &b"{\"id\":"[..],
        b"{not json}",
        b"\xff\xfe",
        b"{\"id\":\"a\"} trailing",
    ] {
        let r = post_raw(s.port(), "/v1/sessions", body);
        assert_error_resp(&r, 400, "invalid_event");
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions array: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_pages_with_limit_and_cursor() {
    let s = Server::start_default();
    let p = s.port();
    // Created out of order; list is ascending by id bytes.
    let mut want: Vec<String> = Vec::new();
    for i in [5, 3, 7, 1, 2, 6, 4] {
        let id = format!("s-{i:02}");
        create_session_with(
            p,
            json!({"id": id, "title": format!("t{i}"), "metadata": {"i": i.to_string()}}),
        );
        want.push(id);
    }
    // "B-upper" sorts before "s-.." in byte order.
    create_session(p, "B-upper");
    want.push("B-upper".into());
    want.sort();

    let (st, v) = get_json(p, "/v1/sessions?limit=3");
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), want[0..3].to_vec());
    assert_eq!(v["next_cursor"], json!(want[2]));

    let (st, v) = get_json(p, &format!("/v1/sessions?limit=3&cursor={}", want[2]));
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), want[3..6].to_vec());
    assert_eq!(v["next_cursor"], json!(want[5]));

    let (st, v) = get_json(p, &format!("/v1/sessions?limit=3&cursor={}", want[5]));
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), want[6..8].to_vec());
    assert_eq!(
        v["next_cursor"],
        Value::Null,
        "next_cursor null on the last page: {v}"
    );
    assert!(
        v.as_object().unwrap().contains_key("next_cursor"),
        "next_cursor key present"
    );

    // Cursor is "strictly greater than" and need not be an existing id.
    let (_, v) = get_json(p, "/v1/sessions?limit=100&cursor=s-035");
    assert_eq!(ids(&v), vec!["s-04", "s-05", "s-06", "s-07"]);
    let (_, v) = get_json(p, "/v1/sessions?cursor=zzz");
    assert_eq!(ids(&v), Vec::<String>::new());
    assert_eq!(v["next_cursor"], Value::Null);

    // Default limit (100) returns all 8; digits-string limit is accepted.
    let (_, v) = get_json(p, "/v1/sessions");
    assert_eq!(ids(&v), want);
    assert_eq!(v["next_cursor"], Value::Null);
    let (st, v) = get_json(p, "/v1/sessions?limit=002");
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), want[0..2].to_vec());
    let (st, v) = get_json(p, "/v1/sessions?limit=%2B2");
    assert_eq!(st, 200, "limit=+2: {v}");
    assert_eq!(ids(&v), want[0..2].to_vec());
    let (st, v) = get_json(p, "/v1/sessions?limit=1000");
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v).len(), 8);
}

#[test]
fn list_next_cursor_null_when_last_page_is_full() {
    // §14.14: next_cursor is null on the last page, also when that page is full.
    let s = Server::start_default();
    for i in 0..4 {
        create_session(s.port(), &format!("full-{i}"));
    }
    let (_, v) = get_json(s.port(), "/v1/sessions?limit=2");
    assert_eq!(v["next_cursor"], "full-1");
    let (_, v) = get_json(s.port(), "/v1/sessions?limit=2&cursor=full-1");
    assert_eq!(ids(&v), vec!["full-2", "full-3"]);
    assert_eq!(v["next_cursor"], Value::Null, "{v}");
}

#[test]
fn list_rows_shape_and_last_seq() {
    let s = Server::start_default();
    let p = s.port();
    let created = create_session_with(
        p,
        json!({"id": "row", "title": "T", "metadata": {"a": "b"}}),
    );
    create_session(p, "row-empty");
    for i in 1..=3 {
        append_ok(p, "row", &event("w", i));
    }
    let (st, v) = get_json(p, "/v1/sessions");
    assert_eq!(st, 200);
    let rows = v["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let row = &rows[0];
    assert_eq!(row["id"], "row");
    assert_eq!(row["title"], "T");
    assert_eq!(row["tenant_id"], "service");
    assert_service_principal(&row["creator_principal"]);
    assert_eq!(row["metadata"], json!({"a": "b"}));
    assert_eq!(row["created_at"], created["created_at"]);
    assert_eq!(row["last_seq"], 3, "list row last_seq (§14.8): {row}");
    let upd = row["updated_at"].as_str().expect("updated_at");
    assert!(is_micro_ts(upd), "updated_at {upd:?}");
    assert!(
        upd >= created["created_at"].as_str().unwrap(),
        "updated_at >= created_at"
    );
    assert_eq!(rows[1]["id"], "row-empty");
    assert_eq!(rows[1]["last_seq"], 0);
    assert_eq!(rows[1]["title"], Value::Null);
}

#[test]
fn list_invalid_limit_cursor_metadata() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "x");
    for q in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=",
        "limit=1e2",
        "limit[a]=1",
    ] {
        let (st, v) = get_json(p, &format!("/v1/sessions?{q}"));
        assert_error(st, &v, 400, "invalid_limit");
        assert_eq!(v["message"], "Invalid limit value", "{q}");
    }
    for q in ["cursor=", "cursor[a]=b", "cursor[]=b"] {
        let (st, v) = get_json(p, &format!("/v1/sessions?{q}"));
        assert_error(st, &v, 400, "invalid_cursor");
        assert_eq!(v["message"], "Invalid cursor value", "{q}");
    }
    for q in [
        "metadata=x",
        "metadata[]=x",
        "metadata[a][b]=x",
        "metadata[a][]=x",
    ] {
        let (st, v) = get_json(p, &format!("/v1/sessions?{q}"));
        assert_error(st, &v, 400, "invalid_metadata");
        assert_eq!(v["message"], "Invalid metadata payload", "{q}");
    }
    // Order: limit, then cursor, then metadata.
    let (st, v) = get_json(p, "/v1/sessions?limit=0&cursor=&metadata=x");
    assert_error(st, &v, 400, "invalid_limit");
    let (st, v) = get_json(p, "/v1/sessions?cursor=&metadata=x");
    assert_error(st, &v, 400, "invalid_cursor");
}

#[test]
fn list_metadata_filters_nested_and_dotted() {
    let s = Server::start_default();
    let p = s.port();
    create_session_with(
        p,
        json!({"id": "a", "metadata": {"team": "red", "env": "prod"}}),
    );
    create_session_with(
        p,
        json!({"id": "b", "metadata": {"team": "red", "env": "dev"}}),
    );
    create_session_with(
        p,
        json!({"id": "c", "metadata": {"team": "blue", "env": "prod", "a.b": "1"}}),
    );
    create_session_with(
        p,
        json!({"id": "d", "metadata": {"a": {"b": "1"}, "n": 1, "team": "red team"}}),
    );
    create_session(p, "e");

    let q = |query: &str| -> Vec<String> {
        let (st, v) = get_json(p, &format!("/v1/sessions?{query}"));
        assert_eq!(st, 200, "{query}: {v}");
        ids(&v)
    };
    assert_eq!(q("metadata[team]=red"), vec!["a", "b"]);
    assert_eq!(
        q("metadata%5Bteam%5D=red"),
        vec!["a", "b"],
        "percent-encoded brackets"
    );
    assert_eq!(q("metadata[team]=red&metadata[env]=prod"), vec!["a"]);
    assert_eq!(q("metadata.team=red"), vec!["a", "b"]);
    assert_eq!(q("metadata.team=red+team"), vec!["d"], "form decoding of +");
    assert_eq!(q("metadata.team=red%20team"), vec!["d"]);
    assert_eq!(q("metadata.env=prod&metadata[team]=blue"), vec!["c"]);
    // Dotted form filters the literal top-level key "a.b", not a path.
    assert_eq!(q("metadata.a.b=1"), vec!["c"]);
    // Same key in both forms: the dotted one wins.
    assert_eq!(q("metadata[team]=blue&metadata.team=red"), vec!["a", "b"]);
    assert_eq!(q("metadata.team=red&metadata[team]=blue"), vec!["a", "b"]);
    // Query values are strings: numeric metadata never matches over HTTP.
    assert_eq!(q("metadata[n]=1"), Vec::<String>::new());
    // No match.
    assert_eq!(q("metadata[team]=green"), Vec::<String>::new());
    // Dotted non-scalar values are dropped silently (no filter).
    assert_eq!(q("metadata.team[x]=red"), vec!["a", "b", "c", "d", "e"]);
    // Filters combine with paging.
    let (_, v) = get_json(p, "/v1/sessions?metadata[team]=red&limit=1");
    assert_eq!(ids(&v), vec!["a"]);
    assert_eq!(v["next_cursor"], "a");
    let (_, v) = get_json(p, "/v1/sessions?metadata[team]=red&limit=1&cursor=a");
    assert_eq!(ids(&v), vec!["b"]);
    assert_eq!(
        v["next_cursor"],
        Value::Null,
        "no more matching rows after b: {v}"
    );
}

#[test]
fn unknown_routes_are_not_found_envelope() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "r");
    for (m, path) in [
        ("GET", "/nope"),
        ("GET", "/"),
        ("POST", "/v1/sessions/r/unknown"),
        ("DELETE", "/v1/sessions"),
        ("PUT", "/v1/sessions/r/append"),
        ("GET", "/v1/sessions/r/append"),
        ("POST", "/health/live"),
        ("PUT", "/v1/sessions/r"),
        ("GET", "/v1/sessions/r/archive"),
        ("GET", "/v2/sessions"),
    ] {
        let r = request(p, m, path, &[], if m == "GET" { None } else { Some(b"{}") });
        assert_error_resp(&r, 404, "not_found");
    }
}

#[test]
fn accept_header_negotiation() {
    let s = Server::start_default();
    let p = s.port();
    for accept in ["text/html", "text/plain", "application/xml"] {
        let r = request(p, "GET", "/v1/sessions", &[("Accept", accept)], None);
        assert_eq!(
            r.status,
            406,
            "Accept: {accept} → {} {}",
            r.status,
            r.text()
        );
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("406 body not JSON: {:?}", r.text()));
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "406 envelope: {v}"
        );
        let r = request(
            p,
            "POST",
            "/v1/sessions",
            &[("Accept", accept)],
            Some(b"{}"),
        );
        assert_eq!(r.status, 406, "POST with Accept: {accept}: {}", r.text());
    }
    // Nothing was created by the refused POSTs.
    assert_eq!(list_all(p, "").len(), 0);
    for accept in [
        "application/json",
        "*/*",
        "application/*",
        "text/html, application/json;q=0.9",
        "text/html,*/*;q=0.8",
    ] {
        let r = request(p, "GET", "/v1/sessions", &[("Accept", accept)], None);
        assert_eq!(
            r.status,
            200,
            "Accept: {accept} → {} {}",
            r.status,
            r.text()
        );
    }
    // Health routes are not /v1 routes.
    let r = request(p, "GET", "/health/live", &[("Accept", "text/html")], None);
    assert_eq!(r.status, 200);
}

#[test]
fn head_behaves_like_get_without_body() {
    let s = Server::start_default();
    let p = s.port();
    create_session(p, "h");
    for path in [
        "/health/live",
        "/health/ready",
        "/v1/sessions",
        "/v1/sessions?limit=1",
    ] {
        let r = raw_request(
            p,
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "HEAD {path}");
        assert!(r.body.is_empty());
    }
    // HEAD on an unknown route is 404 like GET.
    let r = raw_request(
        p,
        b"HEAD /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    // HEAD followed by GET on one keep-alive connection: the HEAD response
    // must not carry a body that would corrupt the next response.
    let mut st = connect(p, IO_TIMEOUT).unwrap();
    use std::io::Write;
    st.write_all(b"HEAD /health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let r1 = read_response(&mut st, &mut buf, true).unwrap();
    assert_eq!(r1.status, 200);
    let r2 = read_response(&mut st, &mut buf, false).unwrap();
    assert_eq!(r2.status, 200);
    assert_eq!(r2.json(), json!({"status": "ok"}));
}

#[test]
fn health_endpoints() {
    let s = Server::start_default();
    let (st, v) = get_json(s.port(), "/health/live");
    assert_eq!((st, v), (200, json!({"status": "ok"})));
    let (st, v) = get_json(s.port(), "/health/ready");
    assert_eq!(
        (st, v),
        (200, json!({"status": "ok", "mode": "write_node"}))
    );
    let r = get(s.port(), "/health/ready");
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
}

#[test]
fn keep_alive_and_pipelining() {
    let s = Server::start_default();
    let p = s.port();
    // Many requests on one connection.
    let mut c = HttpConn::new(p);
    for i in 0..20 {
        let (st, v) = c.post_json("/v1/sessions", &json!({"id": format!("ka-{i:02}")}));
        assert_eq!(st, 201, "{v}");
    }
    // Pipelined requests: answers in order.
    let mut st = connect(p, IO_TIMEOUT).unwrap();
    use std::io::Write;
    let mut reqs = Vec::new();
    for i in 0..5 {
        let body = format!(r#"{{"id":"pipe-{i}"}}"#);
        reqs.extend_from_slice(
            format!(
                "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    st.write_all(&reqs).unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        let r = read_response(&mut st, &mut buf, false).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.json()["id"], format!("pipe-{i}"));
    }
    assert_eq!(list_all(p, "").len(), 25);
}

#[test]
fn garbage_and_hostile_requests_do_not_hurt_the_server() {
    let s = Server::start_default();
    let p = s.port();
    // Plain garbage: a 400 or a closed connection, never a hang or crash.
    for raw in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    ] {
        match try_request(p, raw, false, IO_TIMEOUT) {
            Ok(r) => assert!(
                (400..500).contains(&r.status) || r.status == 505,
                "garbage {raw:?} → {}",
                r.status
            ),
            Err(e) => assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "garbage {raw:?} made the server hang: {e}"
            ),
        }
    }
    // Conflicting duplicated Content-Length (request smuggling) must be refused.
    let raw = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"id\":\"smug\"}";
    if let Ok(r) = try_request(p, raw, false, IO_TIMEOUT) {
        assert_eq!(
            r.status,
            400,
            "conflicting Content-Length → {} {}",
            r.status,
            r.text()
        );
    }
    // A client that connects and sends half a request then goes away.
    {
        use std::io::Write;
        let mut c = connect(p, IO_TIMEOUT).unwrap();
        c.write_all(b"POST /v1/sessions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"id\"")
            .unwrap();
    }
    // The server is alive and correct afterwards.
    let (st, v) = get_json(p, "/health/live");
    assert_eq!((st, v), (200, json!({"status": "ok"})));
    assert!(!list_all(p, "").iter().any(|r| r["id"] == "smug"));
    create_session(p, "after-garbage");
}

#[test]
fn list_default_limit_is_100() {
    let s = Server::start_default();
    let p = s.port();
    let mut c = HttpConn::new(p);
    for i in 0..150 {
        let (st, v) = c.post_json("/v1/sessions", &json!({"id": format!("d-{i:03}")}));
        assert_eq!(st, 201, "{v}");
    }
    let (st, v) = get_json(p, "/v1/sessions");
    assert_eq!(st, 200);
    let page = ids(&v);
    assert_eq!(page.len(), 100);
    assert_eq!(page[0], "d-000");
    assert_eq!(page[99], "d-099");
    assert_eq!(v["next_cursor"], "d-099");
    let (_, v) = get_json(p, "/v1/sessions?cursor=d-099");
    assert_eq!(ids(&v).len(), 50);
    assert_eq!(v["next_cursor"], Value::Null);
    assert_eq!(list_all(p, "").len(), 150);
}

#[test]
fn concurrent_create_of_one_id_has_exactly_one_winner() {
    let s = Server::start_default();
    let p = s.port();
    for round in 0..5 {
        let id = format!("race-{round}");
        let hs: Vec<_> = (0..8)
            .map(|k| {
                let id = id.clone();
                std::thread::spawn(move || {
                    post_json(
                        p,
                        "/v1/sessions",
                        &json!({"id": id, "title": format!("t{k}")}),
                    )
                })
            })
            .collect();
        let results: Vec<(u16, Value)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<&Value> = results
            .iter()
            .filter(|(st, _)| *st == 201)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (st, v) in &results {
            if *st != 201 {
                assert_error(*st, v, 409, "session_exists");
            }
        }
        let rows = list_all(p, "");
        let row = rows.iter().find(|r| r["id"] == id.as_str()).expect("row");
        assert_eq!(
            row["title"], winners[0]["title"],
            "stored session is the winner's"
        );
    }
}

#[test]
fn metrics_endpoint() {
    // §14.17: on by default at /metrics (Prometheus text), off with
    // STARCITE_ENABLE_TELEMETRY=false (then 404).
    let s = Server::start_default();
    create_session(s.port(), "m");
    append_ok(s.port(), "m", &event("w", 1));
    let r = get(s.port(), "/metrics");
    assert_eq!(r.status, 200, "/metrics: {} {}", r.status, r.text());
    let cts: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        cts.len(),
        1,
        "exactly one Content-Type header on /metrics, got {cts:?}"
    );
    assert!(
        cts[0].starts_with("text/plain"),
        "/metrics Content-Type {:?}",
        cts[0]
    );
    let text = r.text();
    assert!(
        text.lines().any(|l| l.starts_with("starcite_")),
        "no starcite_ metric family:\n{text}"
    );
    drop(s);
    let s = Server::start(ServerOpts::new().env("STARCITE_ENABLE_TELEMETRY", "false"));
    let r = get(s.port(), "/metrics");
    assert_error_resp(&r, 404, "not_found");
}

#[test]
fn http_client_compatibility() {
    use std::io::Write;
    let s = Server::start_default();
    let p = s.port();
    // Accept with parameters.
    let r = request(
        p,
        "GET",
        "/v1/sessions",
        &[("Accept", "application/json; charset=utf-8")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // HTTP/1.0 request.
    let r = raw_request(p, b"GET /health/live HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    // Chunked request body (streaming clients send these).
    let r = raw_request(
        p,
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"id\"\r\n9\r\n:\"chunk\"}\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 201, "chunked body: {} {}", r.status, r.text());
    assert_eq!(r.json()["id"], "chunk");
    // Expect: 100-continue (curl sends it for bodies over 1 KiB): the server
    // answers 100 Continue (or the final status) without waiting for the body.
    let body = format!(r#"{{"id":"expect","title":"{}"}}"#, "t".repeat(2000));
    let mut st = connect(p, IO_TIMEOUT).unwrap();
    st.write_all(
        format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    st.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut st, &mut buf, false)
        .unwrap_or_else(|e| panic!("no 100 Continue within 3 s of `Expect: 100-continue`: {e}"));
    assert_eq!(first.status, 100, "interim response");
    st.write_all(body.as_bytes()).unwrap();
    let r = read_response(&mut st, &mut buf, false).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["id"], "expect");
}

#[test]
fn idle_connections_and_huge_headers_do_not_block_others() {
    use std::io::Write;
    let s = Server::start_default();
    let p = s.port();
    // 64 connections that never send anything, plus 16 with half a request.
    let mut idle = Vec::new();
    for i in 0..80 {
        let mut c = connect(p, IO_TIMEOUT).unwrap();
        if i % 5 == 0 {
            c.write_all(b"POST /v1/sessions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
                .unwrap();
        }
        idle.push(c);
    }
    let t0 = std::time::Instant::now();
    for i in 0..20 {
        create_session(p, &format!("live-{i}"));
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "requests slowed by idle connections: {:?}",
        t0.elapsed()
    );
    // A 1 MiB header block: refused (400/413/431) or connection closed; never a hang.
    let big = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    match try_request(p, big.as_bytes(), false, IO_TIMEOUT) {
        Ok(r) => assert!(
            [200, 400, 413, 431].contains(&r.status),
            "huge header → {}",
            r.status
        ),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "huge header made the server hang: {e}"
        ),
    }
    drop(idle);
    assert_eq!(get_json(p, "/health/live").0, 200);
    assert_eq!(list_all(p, "").len(), 20);
}

#[test]
fn list_paging_with_special_character_ids() {
    let s = Server::start_default();
    let p = s.port();
    let mut want: Vec<String> = [
        "p+1", "p 1", "p/1", "p&x=1", "p%1", "p#1", "p[1]", "pü", "p=1", "p;1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for id in &want {
        create_session(p, id);
    }
    want.sort();
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let q = match &cursor {
            Some(c) => format!("/v1/sessions?limit=3&cursor={}", pct(c)),
            None => "/v1/sessions?limit=3".to_string(),
        };
        let (st, v) = get_json(p, &q);
        assert_eq!(st, 200, "{q}: {v}");
        got.extend(ids(&v));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        got, want,
        "byte-ordered paging over ids needing percent-encoding"
    );
}

#[test]
fn connection_close_is_honoured() {
    use std::io::{Read, Write};
    let s = Server::start_default();
    let mut st = connect(s.port(), IO_TIMEOUT).unwrap();
    st.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut st, &mut buf, false).unwrap();
    assert_eq!(r.status, 200);
    st.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut rest = [0u8; 64];
    let n = st
        .read(&mut rest)
        .expect("server should close the connection after `Connection: close`");
    assert_eq!(n, 0, "extra bytes after the response");
}
