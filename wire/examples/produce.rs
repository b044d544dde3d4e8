//! Pipelined producer over the binary protocol.
//!
//! ```text
//! cargo run -p starcite-wire --example produce -- 127.0.0.1:4001 ses_demo 1000
//! ```
//! Creates the session if needed, sends N appends with up to 64 in flight,
//! and prints the last seq. Set STARCITE_TOKEN for a JWT-mode server.

use std::collections::VecDeque;

use starcite_wire::client::{Client, ClientConfig};
use starcite_wire::proto::AppendFields;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nodes: Vec<String> = args
        .get(1)
        .map_or("127.0.0.1:4001", String::as_str)
        .split(',')
        .map(str::to_owned)
        .collect();
    let session = args.get(2).cloned().unwrap_or_else(|| "ses_demo".into());
    let n: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut cfg = ClientConfig::new(nodes).max_inflight(64);
    if let Ok(t) = std::env::var("STARCITE_TOKEN") {
        cfg = cfg.token(t);
    }
    let client = Client::connect(cfg).expect("connect");
    match client.create_session(Some(&session), Some("demo"), None) {
        Ok(_) => {}
        Err(e) if e.code() == "session_exists" => {}
        Err(e) => panic!("create: {e}"),
    }
    let producer = format!("example-{}", std::process::id());
    let started = std::time::Instant::now();
    let mut inflight = VecDeque::new();
    let mut last = 0;
    for i in 1..=n {
        let fields = AppendFields {
            event_type: "message".into(),
            payload: format!(r#"{{"n":{i}}}"#).into_bytes(),
            producer_id: producer.clone(),
            producer_seq: i,
            ..Default::default()
        };
        inflight.push_back(client.append_async(&session, fields));
        if inflight.len() >= 64 {
            last = inflight.pop_front().unwrap().wait().expect("append").seq;
        }
    }
    for p in inflight {
        last = p.wait().expect("append").seq;
    }
    println!("{n} appends in {:?}; last seq {last}", started.elapsed());
}
