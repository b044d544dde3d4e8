//! Other topologies (contract §8): five write nodes with replication factor 3
//! (every node serves every session, replicas or not), and a router node in
//! front of three write nodes (it holds no data and forwards everything).

mod common;

use common::cluster::*;
use common::{Frame, Tail};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn five_write_nodes_rf3() {
    let c = Cluster::start(ClusterOpts {
        writers: 5,
        rf: 3,
        ready_timeout: Duration::from_secs(90),
        ..Default::default()
    });
    let groups = c.opts.num_groups;
    // Placement: each group has 3 distinct write-node replicas, the same on every node,
    // and every node replicates exactly the groups that name it.
    let mut replicas = Vec::new();
    for g in 0..groups {
        let out = c.ops_ok(0, &["group-replicas", &g.to_string()]);
        let line = out.trim();
        let list = line
            .strip_prefix(&format!("group_{g}_replicas="))
            .unwrap_or_else(|| panic!("group-replicas {g} printed {out:?}"));
        let idx: BTreeSet<usize> = list
            .split(',')
            .map(|n| {
                c.index_of(n)
                    .unwrap_or_else(|| panic!("unknown node {n} in {line}"))
            })
            .collect();
        assert_eq!(idx.len(), 3, "group {g}: replicas {line}");
        let other = c.ops_ok(4, &["group-replicas", &g.to_string()]);
        assert_eq!(other.trim(), line, "group {g}: nodes disagree on placement");
        replicas.push(idx);
    }
    let mut total = 0;
    for i in c.all() {
        let st = c.status(i);
        let local: BTreeSet<usize> = st["local_groups"]
            .as_array()
            .expect("local_groups")
            .iter()
            .map(|g| g.as_u64().unwrap() as usize)
            .collect();
        let want: BTreeSet<usize> = (0..groups as usize)
            .filter(|g| replicas[*g].contains(&i))
            .collect();
        assert_eq!(
            local,
            want,
            "{}: local_groups disagree with group-replicas",
            c.name(i)
        );
        total += local.len();
    }
    assert_eq!(total, 3 * groups as usize);
    let per: Vec<usize> = c
        .all()
        .iter()
        .map(|i| replicas.iter().filter(|r| r.contains(i)).count())
        .collect();
    eprintln!("groups per node: {per:?}");
    // Every group has exactly one leader.
    let t0 = Instant::now();
    loop {
        let l = c.leaders_per_node(0);
        let sum: u64 = l.values().sum();
        if sum == groups as u64 && l.len() == 5 {
            eprintln!("leaders per node: {l:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "leaders.per_node does not add up to {groups}: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let sessions = session_ids("five", 10);
    create_sessions(&c.ports(), &sessions);
    let load = Load::start(LoadOpts::new("five", sessions.len(), &sessions, &c.ports()));
    std::thread::sleep(Duration::from_secs(6));
    let mut report = load.stop();
    report.print("five write nodes");
    report.assert_no_errors();
    let mut acks = report.acks.clone();
    acks.extend(resolve_pending(
        &c.ports(),
        &mut report.producers,
        Duration::from_secs(30),
    ));
    let v = verify(&c, &c.all(), &sessions, &acks, true);
    assert!(v.events > 0);
    c.assert_no_panics();
}

#[test]
fn router_node_in_front_of_three_writers() {
    let c = Cluster::start(ClusterOpts {
        writers: 3,
        routers: 1,
        ..Default::default()
    });
    let r = 3;
    let rport = c.http_port(r);
    let (code, body) = c.ready(r).unwrap();
    assert_eq!(
        (code, body.clone()),
        (200, json!({"status": "ok", "mode": "router_node"})),
        "router /health/ready"
    );
    for i in 0..3 {
        let (code, body) = c.ready(i).unwrap();
        assert_eq!(
            (code, body.clone()),
            (200, json!({"status": "ok", "mode": "write_node"})),
            "{} /health/ready",
            c.name(i)
        );
    }
    let st = c.status(r);
    assert_eq!(st["local_write_node"], false, "{st}");
    assert_eq!(st["local_mode"], "router_node", "{st}");
    assert_eq!(
        st["local_groups"],
        json!([]),
        "a router replicates no group: {st}"
    );
    let o = c.ops_full(r, &["drain"]);
    assert_ne!(o.code, 0, "draining a router node must fail: {o:?}");
    assert!(
        o.stderr.contains("write node") || o.stderr.contains("invalid_write_node"),
        "drain on router: {o:?}"
    );
    // The router learns the writers' readiness by gossip: right after they
    // report ready it may not have heard from one of them yet.
    c.wait_ready_set(r, &[0, 1, 2], Duration::from_secs(10))
        .expect("router's ready set");

    // Everything through the router.
    let sessions = session_ids("routed", 5);
    for s in &sessions {
        let (st, v) = common::post_json(
            rport,
            "/v1/sessions",
            &json!({"id": s, "title": "via router", "metadata": {"k": "v"}}),
        );
        assert_eq!(st, 201, "create {s} via router: {v}");
        assert_eq!(v["id"], json!(s));
    }
    let (st, v) = common::post_json(rport, "/v1/sessions", &json!({"id": sessions[0]}));
    common::assert_error(st, &v, 409, "session_exists");
    let (st, v) = common::append(rport, "routed-nope", &load_body("x", 1, 0));
    common::assert_error(st, &v, 404, "session_not_found");
    // A live tail on the router, open before any append.
    let mut live = Tail::connect(rport, &sessions[0], "cursor=0");
    let load = Load::start(LoadOpts::new("rt", 10, &sessions, &[rport]));
    let watcher = std::thread::spawn(move || {
        let mut got: Vec<Value> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            match live.next_frame(Duration::from_secs(1)) {
                Frame::Json(Value::Array(a)) => got.extend(a),
                Frame::Json(v) => got.push(v),
                Frame::Timeout => {}
                Frame::Closed(c) => {
                    eprintln!("live tail on the router closed: {c:?}");
                    break;
                }
                Frame::Other(o) => panic!("live tail on the router: {o}"),
            }
            if got.last().and_then(|e| e["payload"]["stop"].as_bool()) == Some(true) {
                break;
            }
        }
        got
    });
    std::thread::sleep(Duration::from_secs(6));
    let mut report = load.stop();
    report.print("through the router");
    report.assert_no_errors();
    let mut acks = report.acks.clone();
    acks.extend(resolve_pending(
        &[rport],
        &mut report.producers,
        Duration::from_secs(30),
    ));
    // A final marker event tells the watcher to stop.
    let (st, v) = common::append(
        rport,
        &sessions[0],
        &json!({"type": "marker", "payload": {"stop": true}, "producer_id": "marker", "producer_seq": 1}),
    );
    assert_eq!(st, 201, "{v}");
    let marker_seq = v["seq"].as_u64().unwrap();
    acks.push(Ack {
        session: sessions[0].clone(),
        seq: marker_seq,
        producer_id: "marker".into(),
        producer_seq: 1,
        at: Duration::ZERO,
        latency: Duration::ZERO,
        attempts: 1,
        port: 0,
    });
    let rows = try_list(rport).expect("list via router");
    for s in &sessions {
        let row = rows
            .iter()
            .find(|x| x["id"] == json!(s))
            .unwrap_or_else(|| panic!("{s} not listed via the router"));
        let n = acks.iter().filter(|a| &a.session == s).count() as u64;
        assert_eq!(row["last_seq"], json!(n), "{s} list row via router: {row}");
        assert_eq!(row["title"], "via router");
    }
    let seen = watcher.join().expect("watcher");
    let got: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        got,
        (1..=marker_seq).collect::<Vec<_>>(),
        "live tail of {} on the router: not every event, in order, exactly once",
        sessions[0]
    );
    verify(&c, &c.all(), &sessions, &acks, true);
    c.assert_no_panics();
}
