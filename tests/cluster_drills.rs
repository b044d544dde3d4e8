//! Operator drills on a 3-write-node cluster (contract §5.5, §10, §14.15):
//! rolling restart under load, drain/undrain, and the readiness gate of a
//! node that restarts behind the others.

mod common;

use common::cluster::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Drain moves leadership before the node goes away (§14.15), so a drilled
/// restart should not stall any session for long.
const MAX_DRILL_WINDOW: Duration = Duration::from_secs(5);

/// Polls `/health/ready` of node `i` until the first HTTP answer; returns it.
fn first_ready_answer(c: &Cluster, i: usize, timeout: Duration) -> (u16, Value) {
    let t0 = Instant::now();
    loop {
        if let Ok(a) = c.ready(i) {
            return a;
        }
        assert!(
            t0.elapsed() < timeout,
            "{} did not answer HTTP within {timeout:?}",
            c.name(i)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `ops status` until the admin socket answers.
fn wait_admin(c: &Cluster, i: usize, timeout: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_status(i) {
            return s;
        }
        assert!(
            t0.elapsed() < timeout,
            "admin socket of {} not answering within {timeout:?}",
            c.name(i)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One append through each node (single attempt, must be 201).
fn append_through_every_node(c: &Cluster, sessions: &[String], tag: &str, acks: &mut Vec<Ack>) {
    let mut next = vec![1u64; sessions.len()];
    for i in c.all() {
        for (k, s) in sessions.iter().enumerate() {
            let producer = format!("{tag}-{k}");
            let pseq = next[k];
            let (st, v) = common::append(c.http_port(i), s, &load_body(&producer, pseq, 16));
            assert_eq!(
                st,
                201,
                "append to {s} through {} ({tag}): {st} {v}",
                c.name(i)
            );
            assert_eq!(
                v["deduped"],
                false,
                "append to {s} through {}: {v}",
                c.name(i)
            );
            acks.push(Ack {
                session: s.clone(),
                seq: v["seq"].as_u64().unwrap(),
                producer_id: producer,
                producer_seq: pseq,
                at: Duration::ZERO,
                latency: Duration::ZERO,
                attempts: 1,
                port: 0,
            });
            next[k] += 1;
        }
    }
}

#[test]
fn rolling_restart_drill_under_load() {
    let mut c = Cluster::start(ClusterOpts::default());
    let sessions = session_ids("rolling", 9);
    create_sessions(&c.ports(), &sessions);
    let load = Load::start(LoadOpts::new("roll", sessions.len(), &sessions, &c.ports()));
    std::thread::sleep(Duration::from_secs(2));
    let all = c.all();
    let mut phases = Vec::new();

    for i in c.all() {
        let t_start = load.now();
        // Node index 1 goes through the literal runbook `rpc` forms; the others through `ops`.
        let runbook = i == 1;
        let name = c.name(i).to_string();
        if runbook {
            let o = c.rpc(i, "Starcite.ControlPlane.Ops.drain_node()");
            assert_eq!(o.code, 0, "{name}: rpc drain_node(): {o:?}");
            let o = c.rpc(i, "Starcite.ControlPlane.Ops.wait_local_drained(30000)");
            assert_eq!(o.code, 0, "{name}: rpc wait_local_drained(30000): {o:?}");
        } else {
            let out = c.ops_ok(i, &["drain"]);
            assert_eq!(out.trim(), "ok", "{name}: drain printed {out:?}");
            let out = c.ops_ok(i, &["wait-drained", "--timeout-ms", "30000"]);
            assert_eq!(
                out.trim(),
                "local_drained=true",
                "{name}: wait-drained printed {out:?}"
            );
        }
        let drained_at = load.now();
        let st = c.status(i);
        assert_eq!(st["local_drained"], true, "{name} after wait-drained: {st}");
        let own = c.leaders_per_node(i).get(&i).copied();
        assert_eq!(
            own,
            Some(0),
            "{name} is drained but still leads groups: {}",
            st["leaders"]
        );
        let (code, body) = c.ready(i).expect("ready probe");
        assert_eq!(
            (code, body["reason"].as_str()),
            (503, Some("draining")),
            "{name} /health/ready while drained: {body}"
        );

        let exit = c.sigterm(i, Duration::from_secs(30));
        eprintln!(
            "{name}: drained in {} ms; SIGTERM exit: {exit:?}",
            (drained_at - t_start).as_millis()
        );
        assert!(exit.is_some(), "{name} did not exit within 30 s of SIGTERM");
        c.spawn(i);
        // The drain mark is sticky across the restart: not ready until undrain.
        let (code, body) = first_ready_answer(&c, i, Duration::from_secs(30));
        assert_eq!(
            code, 503,
            "{name} restarted while drained answered /health/ready {code} {body}"
        );
        wait_admin(&c, i, Duration::from_secs(30));
        let st = c.status(i);
        assert_eq!(
            st["observer"]["node_statuses"][c.id(i)]["status"],
            "draining",
            "{name}: drain mark lost across the restart: {}",
            st["observer"]
        );
        if runbook {
            let o = c.rpc(i, "Starcite.ControlPlane.Ops.undrain_node()");
            assert_eq!(o.code, 0, "{name}: rpc undrain_node(): {o:?}");
            let o = c.rpc(i, "Starcite.ControlPlane.Ops.wait_local_ready(60000)");
            assert_eq!(o.code, 0, "{name}: rpc wait_local_ready(60000): {o:?}");
        } else {
            assert_eq!(c.ops_ok(i, &["undrain"]).trim(), "ok");
            let out = c.ops_ok(i, &["wait-ready", "--timeout-ms", "60000"]);
            assert_eq!(
                out.trim(),
                "local_ready=true",
                "{name}: wait-ready printed {out:?}"
            );
        }
        for j in c.all() {
            let took = c
                .wait_ready_set(j, &all, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("after drilling {name}: {e}"));
            eprintln!(
                "  ready set on {} has all nodes again ({} ms)",
                c.name(j),
                took.as_millis()
            );
        }
        if runbook {
            let o = c.rpc(i, "Starcite.ControlPlane.Ops.ready_nodes()");
            assert_eq!(o.code, 0, "{o:?}");
            for j in c.all() {
                assert!(
                    o.stdout.contains(c.id(j)),
                    "rpc ready_nodes() lacks {}: {:?}",
                    c.id(j),
                    o.stdout
                );
            }
        }
        c.wait_ready(i, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let t_end = load.now();
        eprintln!("{name}: drill done in {} ms", (t_end - t_start).as_millis());
        phases.push((name, t_start, t_end));
    }
    std::thread::sleep(Duration::from_secs(2));
    let end = load.now();
    let mut report = load.stop();
    report.print("rolling restart");
    report.assert_no_errors();
    let mut worst = (Duration::ZERO, String::new());
    for (name, a, b) in &phases {
        let g = gaps(&report.acks, &sessions, *a, *b);
        g.print(&format!("drilled restart of {name}"));
        if g.worst > worst.0 {
            worst = (g.worst, format!("{name}: session {}", g.worst_session));
        }
    }
    gaps(&report.acks, &sessions, Duration::from_secs(1), end).print("whole rolling restart");
    let extra = resolve_pending(&c.ports(), &mut report.producers, Duration::from_secs(30));
    let mut acks = report.acks.clone();
    acks.extend(extra);
    verify(&c, &c.all(), &sessions, &acks, true);
    c.assert_no_panics();
    assert!(
        worst.0 <= MAX_DRILL_WINDOW,
        "a drilled restart stalled appends for {} ms ({}); limit {} ms",
        worst.0.as_millis(),
        worst.1,
        MAX_DRILL_WINDOW.as_millis()
    );
}

#[test]
fn drain_undrain_drill() {
    let mut c = Cluster::start(ClusterOpts::default());
    let sessions = session_ids("drain", 6);
    create_sessions(&c.ports(), &sessions);
    let load = Load::start(LoadOpts::new("dr", sessions.len(), &sessions, &c.ports()));
    std::thread::sleep(Duration::from_secs(2));
    let mut manual = Vec::new();

    let d = 1;
    let name = c.name(d).to_string();
    let others: Vec<usize> = c.all().into_iter().filter(|i| *i != d).collect();
    let before = c.leaders_per_node(0);
    eprintln!("leaders per node before the drain: {before:?}");
    let drain_at = load.now();
    // Drain another node by name, from the first node (broadcast to all).
    assert_eq!(c.ops_ok(0, &["drain", c.id(d)]).trim(), "ok");
    let t0 = Instant::now();
    let out = c.ops_ok(d, &["wait-drained", "--timeout-ms", "30000"]);
    assert_eq!(out.trim(), "local_drained=true");
    eprintln!("{name} drained in {} ms", t0.elapsed().as_millis());

    for j in c.all() {
        c.wait_ready_set(j, &others, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("drain of {name}: {e}"));
    }
    let st = c.status(d);
    assert_eq!(st["local_drained"], true, "{st}");
    assert_eq!(
        c.leaders_per_node(d).get(&d).copied(),
        Some(0),
        "{name} drained but leads groups: {}",
        st["leaders"]
    );
    for &j in &others {
        let t0 = Instant::now();
        loop {
            let s = c.status(j);
            let mark = s["observer"]["node_statuses"][c.id(d)]["status"].clone();
            let lead = c.leaders_per_node(j).get(&d).copied();
            if mark == "draining" && lead == Some(0) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} does not see {name} as draining with 0 leaders: status {mark}, leaders {}",
                c.name(j),
                s["leaders"]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let (code, body) = c.ready(d).expect("ready probe");
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("draining")),
        "{name} /health/ready while drained: {body}"
    );
    assert_eq!(body["status"], "starting", "{body}");
    // Appends keep working through every node, the drained one included.
    append_through_every_node(&c, &sessions, "drained", &mut manual);
    let drained_for = load.now();

    // Undrain from the third node.
    assert_eq!(c.ops_ok(2, &["undrain", c.id(d)]).trim(), "ok");
    let t0 = Instant::now();
    for j in c.all() {
        c.wait_ready_set(j, &c.all(), Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("undrain of {name}: {e}"));
    }
    c.wait_ready(d, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{name} after undrain: {e}"));
    eprintln!(
        "{name} back in every ready set and ready {} ms after undrain",
        t0.elapsed().as_millis()
    );
    let st = c.status(d);
    assert_eq!(st["local_drained"], false, "{st}");
    assert_eq!(st["local_ready"], true, "{st}");
    append_through_every_node(&c, &sessions, "undrained", &mut manual);
    std::thread::sleep(Duration::from_secs(2));
    let end = load.now();
    eprintln!(
        "leaders per node after the undrain: {:?}",
        c.leaders_per_node(0)
    );

    let mut report = load.stop();
    report.print("drain/undrain");
    report.assert_no_errors();
    let g = gaps(&report.acks, &sessions, drain_at, drained_for);
    g.print(&format!("drain of {name}"));
    gaps(&report.acks, &sessions, drained_for, end).print(&format!("undrain of {name}"));
    let mut acks = report.acks.clone();
    acks.extend(resolve_pending(
        &c.ports(),
        &mut report.producers,
        Duration::from_secs(30),
    ));
    acks.extend(manual);
    verify(&c, &c.all(), &sessions, &acks, true);
    c.assert_no_panics();
    assert!(
        g.worst <= MAX_DRILL_WINDOW,
        "draining {name} stalled session {} for {} ms",
        g.worst_session,
        g.worst.as_millis()
    );
}

#[test]
fn readiness_gate_after_restart_behind() {
    let mut c = Cluster::start(ClusterOpts::default());
    let sessions = session_ids("gate", 8);
    create_sessions(&c.ports(), &sessions);
    let k = 2;
    let name = c.name(k).to_string();
    let exit = c.sigterm(k, Duration::from_secs(30));
    eprintln!("{name} stopped: {exit:?}");
    // Append a lot while it is down.
    let survivors = c.ports_of(&[0, 1]);
    let mut o = LoadOpts::new("gate", 16, &sessions, &survivors);
    o.think = Duration::ZERO;
    o.pad = 2048;
    let load = Load::start(o);
    std::thread::sleep(Duration::from_secs(8));
    let mut report = load.stop();
    report.print("appends while one node is down");
    report.assert_no_errors();
    let mut acks = report.acks.clone();
    acks.extend(resolve_pending(
        &survivors,
        &mut report.producers,
        Duration::from_secs(30),
    ));
    let per_session: Vec<u64> = sessions
        .iter()
        .map(|s| acks.iter().filter(|a| &a.session == s).count() as u64)
        .collect();
    eprintln!("{} events appended while {name} was down", acks.len());

    // Restart it and watch its readiness from the first HTTP answer on.
    let t0 = Instant::now();
    c.spawn(k);
    let mut seen: Vec<(u128, u16, String)> = Vec::new();
    let ready_after = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{name} not ready within 60 s; answers {seen:?}"
        );
        if let Ok((code, v)) = c.ready(k) {
            let what = format!(
                "{} {}",
                v["status"].as_str().unwrap_or("?"),
                v["reason"].as_str().unwrap_or("")
            );
            if seen.last().map(|l| (l.1, &l.2)) != Some((code, &what)) {
                eprintln!(
                    "  t={} ms /health/ready {code} {v}",
                    t0.elapsed().as_millis()
                );
                seen.push((t0.elapsed().as_millis(), code, what));
            }
            if code == 200 {
                break t0.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    eprintln!(
        "{name} ready {} ms after its restart; transitions {seen:?}",
        ready_after.as_millis()
    );
    // "Ready" means caught up: kill both peers at once, so whatever it serves
    // now comes from its own replica (a lone node still replays, see
    // cluster_quorum), and it must have every event.
    c.kill9(0);
    c.kill9(1);
    let port = c.http_port(k);
    let readers: Vec<_> = sessions
        .iter()
        .cloned()
        .zip(per_session.iter().copied())
        .map(|(s, n)| {
            std::thread::spawn(move || {
                (
                    s.clone(),
                    n,
                    read_session(port, &s, n, Duration::from_secs(10)),
                )
            })
        })
        .collect();
    let mut behind = Vec::new();
    for r in readers {
        let (s, n, res) = r.join().unwrap();
        match res {
            Ok(evs) => assert_eq!(evs.len() as u64, n, "{s}"),
            Err(e) => behind.push(format!("{s} (expected {n} events): {e}")),
        }
    }
    c.spawn(0);
    c.spawn(1);
    c.wait_all_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("restoring the peers: {e}"));
    // Ready stays ready.
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(2) {
        let (code, v) = c.ready(k).expect("ready probe");
        assert_eq!(code, 200, "{name} flapped back to not-ready: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    verify(&c, &c.all(), &sessions, &acks, true);
    c.assert_no_panics();
    assert!(
        behind.is_empty(),
        "{name} answered /health/ready 200 before it had caught up: with its peers killed right after, it lacks events:\n{}",
        behind.join("\n")
    );
    let first = &seen[0];
    assert_eq!(
        (first.1, first.2.as_str()),
        (503, "starting raft_sync"),
        "{name}'s first /health/ready answer after the restart should be 503 starting/raft_sync; answers {seen:?}"
    );
}
