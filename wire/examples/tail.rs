//! Follows a session over the binary protocol: replay from a cursor, then live.
//!
//! ```text
//! cargo run -p starcite-wire --example tail -- 127.0.0.1:4001 ses_demo 0
//! ```

use starcite_wire::client::{Client, ClientConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nodes: Vec<String> = args
        .get(1)
        .map_or("127.0.0.1:4001", String::as_str)
        .split(',')
        .map(str::to_owned)
        .collect();
    let session = args.get(2).cloned().unwrap_or_else(|| "ses_demo".into());
    let cursor: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut cfg = ClientConfig::new(nodes);
    if let Ok(t) = std::env::var("STARCITE_TOKEN") {
        cfg = cfg.token(t);
    }
    let client = Client::connect(cfg).expect("connect");
    let sub = client.subscribe(&session, cursor, 100).expect("subscribe");
    while let Some(batch) = sub.next() {
        match batch {
            Ok(events) => {
                for e in events {
                    println!("{}", String::from_utf8_lossy(&e.json));
                }
            }
            Err(e) => {
                eprintln!("subscription ended: {e}");
                break;
            }
        }
    }
}
