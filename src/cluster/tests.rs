//! End-to-end tests: real transports on a monoio runtime talking over 127.0.0.1.
//! Every test runs under an overall time limit, and every wait is bounded.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use starcite_wire::peer::{
    encode_peer_frame, PeerDecoder, PeerFrame, RaftEnvelope, CLUSTER_VERSION,
};

use super::handshake::test_proof;
use super::io::FrameReader;
use super::sync::Latch;
use super::*;

/// Upper bound on any one test.
const TEST_LIMIT: Duration = Duration::from_secs(40);
/// Upper bound on any one condition we wait for.
const WAIT: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"test secret key base";

fn run<F: Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        monoio::time::timeout(TEST_LIMIT, f)
            .await
            .expect("test exceeded its time limit")
    })
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Records everything delivered; answers requests according to their body.
#[derive(Default)]
struct Recorder {
    raft: RefCell<Vec<(String, Vec<(u32, Vec<u8>)>)>>,
    control: RefCell<Vec<(String, Vec<u8>)>>,
    requests: RefCell<Vec<String>>,
    states: RefCell<Vec<(String, bool)>>,
    held: RefCell<Vec<Replier>>,
}

impl Recorder {
    fn raft_messages(&self, from: &str) -> Vec<(u32, Vec<u8>)> {
        self.raft
            .borrow()
            .iter()
            .filter(|(f, _)| f == from)
            .flat_map(|(_, m)| m.clone())
            .collect()
    }

    fn raft_calls(&self) -> usize {
        self.raft.borrow().len()
    }

    fn states_of(&self, peer: &str) -> Vec<bool> {
        self.states
            .borrow()
            .iter()
            .filter(|(p, _)| p == peer)
            .map(|(_, s)| *s)
            .collect()
    }

    fn nothing_delivered(&self) -> bool {
        self.raft.borrow().is_empty()
            && self.control.borrow().is_empty()
            && self.requests.borrow().is_empty()
    }
}

impl Inbound for Recorder {
    fn on_raft(&self, from: &str, messages: Vec<(u32, Vec<u8>)>) {
        self.raft.borrow_mut().push((from.to_owned(), messages));
    }

    fn on_request(&self, from: &str, body: Vec<u8>, reply: Replier) {
        self.requests.borrow_mut().push(from.to_owned());
        match body.as_slice() {
            b"hang" => self.held.borrow_mut().push(reply),
            b"drop" => drop(reply),
            b"later" => {
                monoio::spawn(async move {
                    monoio::time::sleep(Duration::from_millis(30)).await;
                    reply.send(b"later done".to_vec());
                });
            }
            b"thread" => {
                // The replier is Send: another core (thread) may answer.
                std::thread::spawn(move || reply.send(b"from another thread".to_vec()));
            }
            _ => {
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(&body);
                reply.send(answer);
            }
        }
    }

    fn on_control(&self, from: &str, body: Vec<u8>) {
        self.control.borrow_mut().push((from.to_owned(), body));
    }

    fn on_peer_state(&self, peer: &str, connected: bool) {
        self.states.borrow_mut().push((peer.to_owned(), connected));
    }
}

fn test_config(me: &str, http_port: u16, peers: Vec<NodeAddr>, secret: &[u8]) -> TransportConfig {
    TransportConfig {
        request_timeout: Duration::from_secs(3),
        reconnect_backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        heartbeat_interval: Duration::from_millis(100),
        peer_timeout: Duration::from_secs(1),
        ..TransportConfig::new(me, http_port, peers, secret.to_vec())
    }
}

fn bind_local() -> (TcpListener, SocketAddr) {
    let listener = bind_cluster(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// A node: a transport, its accept loop, and what it received.
struct Node {
    addr: SocketAddr,
    transport: Rc<Transport>,
    rec: Rc<Recorder>,
    /// Stops the outbound side.
    stop: Latch,
    /// Stops the accept loop (and its connections).
    stop_serve: Latch,
}

impl Node {
    fn start(cfg: TransportConfig, listener: TcpListener) -> Node {
        let addr = listener.local_addr().expect("local addr");
        let rec = Rc::new(Recorder::default());
        let inbound: Rc<dyn Inbound> = rec.clone();
        let transport = Transport::new(cfg, inbound);
        let (stop, stop_serve) = (Latch::new(), Latch::new());
        let s = stop.clone();
        transport.start(async move { s.wait().await });
        let node = Node {
            addr,
            transport,
            rec,
            stop,
            stop_serve,
        };
        node.serve(listener);
        node
    }

    fn serve(&self, listener: TcpListener) {
        let (t, s) = (Rc::clone(&self.transport), self.stop_serve.clone());
        monoio::spawn(async move { t.serve(listener, async move { s.wait().await }).await });
    }

    fn stop_all(&self) {
        self.stop.fire();
        self.stop_serve.fire();
    }
}

/// `n` nodes named a, b, c... that all know each other.
fn cluster(n: usize, tweak: impl Fn(&mut TransportConfig)) -> Vec<Node> {
    let names: Vec<String> = (0..n)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let bound: Vec<(TcpListener, SocketAddr)> = (0..n).map(|_| bind_local()).collect();
    let addrs: Vec<NodeAddr> = names
        .iter()
        .zip(&bound)
        .map(|(name, (_, addr))| NodeAddr {
            name: name.clone(),
            addr: *addr,
        })
        .collect();
    bound
        .into_iter()
        .enumerate()
        .map(|(i, (listener, _))| {
            let peers = addrs
                .iter()
                .filter(|a| a.name != names[i])
                .cloned()
                .collect();
            let mut cfg = test_config(&names[i], 4000 + i as u16, peers, SECRET);
            tweak(&mut cfg);
            Node::start(cfg, listener)
        })
        .collect()
}

async fn wait_connected(nodes: &[Node]) {
    wait_until("every transport connected", WAIT, || {
        nodes.iter().all(|n| {
            n.transport
                .peer_names()
                .all(|p| n.transport.is_connected(p))
        })
    })
    .await;
}

#[test]
fn raft_batches_control_and_peer_state() {
    run(async {
        let nodes = cluster(3, |_| {});
        wait_connected(&nodes).await;
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        assert_eq!(a.transport.peer_http_port("b"), Some(4001));
        assert_eq!(b.transport.peer_http_port("c"), Some(4002));
        assert_eq!(a.rec.states_of("b"), vec![true]);
        assert_eq!(a.rec.states_of("c"), vec![true]);

        // Many small sends in one turn of the runtime become one Raft frame per peer.
        let before = a.transport.stats();
        let expected: Vec<(u32, Vec<u8>)> = (0..1000u32)
            .map(|i| (i % 7, i.to_le_bytes().to_vec()))
            .collect();
        for m in &expected {
            a.transport.send_raft("b", vec![m.clone()]);
            a.transport.send_raft("c", vec![m.clone()]);
        }
        wait_until("1000 raft messages at b and c", WAIT, || {
            b.rec.raft_messages("a").len() == 1000 && c.rec.raft_messages("a").len() == 1000
        })
        .await;
        assert_eq!(
            b.rec.raft_messages("a"),
            expected,
            "order and contents kept"
        );
        assert_eq!(c.rec.raft_messages("a"), expected);
        let after = a.transport.stats();
        assert_eq!(
            after.raft_frames_sent - before.raft_frames_sent,
            2,
            "one frame per peer"
        );
        assert_eq!(after.raft_messages_sent - before.raft_messages_sent, 2000);
        assert_eq!(b.rec.raft_calls(), 1);
        assert_eq!(c.rec.raft_calls(), 1);
        assert_eq!(b.transport.stats().raft_messages_received, 1000);

        // A batch sent in one call, and traffic the other way.
        b.transport.send_raft(
            "a",
            vec![(1, vec![1; 300]), (2, vec![]), (3, vec![3; 10_000])],
        );
        wait_until("raft at a", WAIT, || a.rec.raft_messages("b").len() == 3).await;
        assert_eq!(a.rec.raft_messages("b")[2], (3, vec![3; 10_000]));

        // Control messages, in order.
        a.transport.send_control("b", b"drain".to_vec());
        a.transport.send_control("b", b"undrain".to_vec());
        wait_until("control at b", WAIT, || b.rec.control.borrow().len() == 2).await;
        assert_eq!(
            *b.rec.control.borrow(),
            vec![
                ("a".to_owned(), b"drain".to_vec()),
                ("a".to_owned(), b"undrain".to_vec())
            ]
        );

        // Unknown peers are dropped and counted.
        let dropped = a.transport.stats().raft_messages_dropped;
        a.transport.send_raft("nobody", vec![(1, vec![])]);
        assert_eq!(a.transport.stats().raft_messages_dropped, dropped + 1);

        // A message too large for one frame (a snapshot) crosses in chunks and
        // arrives whole, even past the queue's byte bound, while small messages
        // keep flowing; a second large one while it is in flight is dropped.
        let big: Vec<u8> = (0..40 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        assert!(big.len() > MAX_UNCHUNKED_RAFT_MESSAGE);
        a.transport.send_raft(
            "b",
            vec![
                (7, big.clone()),
                (8, vec![8; MAX_UNCHUNKED_RAFT_MESSAGE + 1]),
                (9, vec![9; 5]),
            ],
        );
        assert_eq!(a.transport.stats().raft_messages_dropped, dropped + 2);
        let arrived = |g: u32| b.rec.raft_messages("a").iter().any(|(x, _)| *x == g);
        wait_until("chunked message at b", WAIT, || arrived(7)).await;
        let got = b.rec.raft_messages("a");
        assert!(got.iter().any(|m| *m == (9, vec![9; 5])));
        assert!(!got.iter().any(|(g, _)| *g == 8));
        assert_eq!(got.iter().filter(|(g, _)| *g == 7).count(), 1);
        assert!(got.iter().any(|(g, m)| *g == 7 && *m == big));

        // Stopping a node: its peers see it go.
        a.stop_all();
        wait_until("b and c see a down", WAIT, || {
            b.rec.states_of("a") == vec![true, false] && c.rec.states_of("a") == vec![true, false]
        })
        .await;
        wait_until("a disconnected", WAIT, || {
            !a.transport.is_connected("b") && !a.transport.is_connected("c")
        })
        .await;
        let dropped = b.transport.stats().raft_messages_dropped;
        b.transport.send_raft("a", vec![(1, vec![1])]);
        assert_eq!(
            b.transport.stats().raft_messages_dropped,
            dropped + 1,
            "peer down: dropped"
        );
        for n in &nodes {
            n.stop_all();
        }
    });
}

#[test]
fn raft_queue_is_bounded() {
    run(async {
        let nodes = cluster(2, |cfg| cfg.max_queued_raft_bytes_per_peer = 10_000);
        wait_connected(&nodes).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        // 100 messages of ~1 KiB without yielding: only what fits the bound is queued.
        for i in 0..100u32 {
            a.transport.send_raft("b", vec![(i, vec![7; 1000])]);
        }
        let stats = a.transport.stats();
        assert!(stats.raft_messages_dropped >= 90, "{stats:?}");
        let queued = 100 - stats.raft_messages_dropped as usize;
        wait_until("queued messages delivered", WAIT, || {
            b.rec.raft_messages("a").len() == queued
        })
        .await;
        // The queue drains, so later sends fit again.
        a.transport.send_raft("b", vec![(1000, vec![1; 1000])]);
        wait_until("later message delivered", WAIT, || {
            b.rec.raft_messages("a").len() == queued + 1
        })
        .await;
        for n in &nodes {
            n.stop_all();
        }
    });
}

#[test]
fn requests_responses_and_timeouts() {
    run(async {
        let nodes = cluster(2, |cfg| cfg.request_timeout = Duration::from_millis(500));
        wait_connected(&nodes).await;
        let (a, b) = (&nodes[0], &nodes[1]);

        assert_eq!(
            a.transport.request("b", b"hi".to_vec()).await,
            Ok(b"re:hi".to_vec())
        );
        assert_eq!(
            b.transport.request("a", b"yo".to_vec()).await,
            Ok(b"re:yo".to_vec())
        );
        assert_eq!(
            a.transport.request("b", b"later".to_vec()).await,
            Ok(b"later done".to_vec())
        );
        assert_eq!(
            a.transport.request("b", b"thread".to_vec()).await,
            Ok(b"from another thread".to_vec())
        );
        let big = vec![5u8; 3 * 1024 * 1024];
        let answer = a
            .transport
            .request("b", big.clone())
            .await
            .expect("big request");
        assert_eq!(&answer[3..], big.as_slice());

        // Many concurrent requests, answered out of order by a mix of handlers.
        let handles: Vec<_> = (0..300)
            .map(|i| {
                let t = Rc::clone(&a.transport);
                let body = if i % 10 == 0 {
                    b"later".to_vec()
                } else {
                    format!("req {i}").into_bytes()
                };
                monoio::spawn(async move { (i, t.request("b", body).await) })
            })
            .collect();
        for h in handles {
            let (i, res) = h.await;
            let want = if i % 10 == 0 {
                b"later done".to_vec()
            } else {
                format!("re:req {i}").into_bytes()
            };
            assert_eq!(res, Ok(want), "request {i}");
        }

        // A handler that never replies (or drops its replier): the requester times out.
        let started = Instant::now();
        assert_eq!(
            a.transport.request("b", b"hang".to_vec()).await,
            Err(TransportError::Timeout)
        );
        assert!(started.elapsed() >= Duration::from_millis(450));
        assert_eq!(
            a.transport.request("b", b"drop".to_vec()).await,
            Err(TransportError::Timeout)
        );
        assert_eq!(a.transport.stats().request_timeouts, 2);
        // A late answer to a timed-out request is ignored; the connection stays usable.
        let held = b.rec.held.borrow_mut().pop().expect("held replier");
        held.send(b"too late".to_vec());
        assert_eq!(
            a.transport.request("b", b"again".to_vec()).await,
            Ok(b"re:again".to_vec())
        );

        // Requests that fail at once.
        assert_eq!(
            a.transport.request("nobody", vec![]).await,
            Err(TransportError::UnknownPeer)
        );
        assert_eq!(
            a.transport.request("b", vec![0; MAX_BODY + 1]).await,
            Err(TransportError::TooLarge)
        );

        // Dropping a request future forgets it.
        let fut = a.transport.request("b", b"hang".to_vec());
        let _ = monoio::time::timeout(Duration::from_millis(10), fut).await;
        assert_eq!(
            a.transport.request("b", b"ok".to_vec()).await,
            Ok(b"re:ok".to_vec())
        );

        for n in &nodes {
            n.stop_all();
        }
    });
}

#[test]
fn request_to_a_down_peer_fails_fast() {
    run(async {
        // "b" is configured but nothing listens there.
        let (_, dead) = bind_local();
        let (listener, _) = bind_local();
        let cfg = test_config(
            "a",
            4000,
            vec![NodeAddr {
                name: "b".into(),
                addr: dead,
            }],
            SECRET,
        );
        let a = Node::start(cfg, listener);
        monoio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        assert_eq!(
            a.transport.request("b", b"x".to_vec()).await,
            Err(TransportError::NotConnected)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(!a.transport.is_connected("b"));
        assert!(a.transport.stats().connect_failures >= 1);
        assert!(a.rec.states.borrow().is_empty());
        a.stop_all();
    });
}

#[test]
fn wrong_secret_is_refused() {
    run(async {
        let (la, addr_a) = bind_local();
        let (lb, addr_b) = bind_local();
        let a = Node::start(
            test_config(
                "a",
                4000,
                vec![NodeAddr {
                    name: "b".into(),
                    addr: addr_b,
                }],
                b"secret one",
            ),
            la,
        );
        let b = Node::start(
            test_config(
                "b",
                4001,
                vec![NodeAddr {
                    name: "a".into(),
                    addr: addr_a,
                }],
                b"secret two",
            ),
            lb,
        );
        wait_until("auth failures on both sides", WAIT, || {
            a.transport.stats().auth_failures >= 2 && b.transport.stats().auth_failures >= 2
        })
        .await;
        a.transport.send_raft("b", vec![(1, vec![1])]);
        a.transport.send_control("b", vec![1]);
        assert_eq!(
            a.transport.request("b", vec![1]).await,
            Err(TransportError::NotConnected)
        );
        monoio::time::sleep(Duration::from_millis(300)).await;
        for n in [&a, &b] {
            assert!(
                n.rec.states.borrow().is_empty(),
                "on_peer_state must never fire"
            );
            assert!(n.rec.nothing_delivered());
            assert_eq!(n.transport.stats().connects, 0);
        }
        assert!(!a.transport.is_connected("b") && !b.transport.is_connected("a"));
        a.stop_all();
        b.stop_all();
    });
}

async fn raw_connect(addr: SocketAddr) -> TcpStream {
    monoio::time::timeout(Duration::from_secs(2), TcpStream::connect_addr(addr))
        .await
        .expect("connect timeout")
        .expect("connect")
}

async fn raw_write(s: &mut TcpStream, bytes: Vec<u8>) {
    // The server may already have closed: a failed write is fine.
    let _ = s.write_all(bytes).await;
}

fn frame_bytes(frame: &PeerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_peer_frame(frame, &mut out).expect("encode");
    out
}

/// Whether the server closes the connection within `limit` (all input discarded).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match monoio::time::timeout_at(deadline, s.read(vec![0u8; 4096])).await {
            Err(_) => return false,
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return true,
            Ok((Ok(_), _)) => {}
        }
    }
}

async fn raw_read_frame(s: &mut TcpStream, dec: &mut PeerDecoder) -> PeerFrame {
    loop {
        if let Some(f) = dec.next_frame().expect("valid frame") {
            return f;
        }
        let (res, buf) =
            monoio::time::timeout(Duration::from_secs(3), s.read(Vec::with_capacity(4096)))
                .await
                .expect("read timeout");
        assert!(res.expect("read") > 0, "unexpected EOF");
        dec.push(&buf);
    }
}

fn hello(node: &str, nonce: [u8; 32]) -> PeerFrame {
    PeerFrame::Hello {
        cluster_version: CLUSTER_VERSION,
        node: node.into(),
        http_port: 1,
        nonce,
    }
}

/// Node "b" whose only peer is "a" (not running).
fn lone_b() -> Node {
    let (_, dead) = bind_local();
    let (listener, _) = bind_local();
    Node::start(
        test_config(
            "b",
            4001,
            vec![NodeAddr {
                name: "a".into(),
                addr: dead,
            }],
            SECRET,
        ),
        listener,
    )
}

#[test]
fn raw_clients_are_disconnected() {
    run(async {
        let b = lone_b();
        let limit = Duration::from_secs(3);

        // Positive control: a raw client that knows the secret gets its frames through.
        let mut s = raw_connect(b.addr).await;
        let mut dec = PeerDecoder::new();
        let nonce_c = [9u8; 32];
        raw_write(&mut s, frame_bytes(&hello("a", nonce_c))).await;
        let PeerFrame::Challenge {
            node,
            http_port,
            nonce: nonce_s,
            mac,
        } = raw_read_frame(&mut s, &mut dec).await
        else {
            panic!("expected a challenge");
        };
        assert_eq!((node.as_str(), http_port), ("b", 4001));
        assert_eq!(mac, test_proof(SECRET, true, &nonce_c, &nonce_s));
        let mut bytes = frame_bytes(&PeerFrame::Auth {
            mac: test_proof(SECRET, false, &nonce_s, &nonce_c),
        });
        bytes.extend(frame_bytes(&PeerFrame::Raft {
            messages: vec![RaftEnvelope {
                group: 3,
                data: vec![1, 2],
            }],
        }));
        bytes.extend(frame_bytes(&PeerFrame::Ping { at: 77 }));
        raw_write(&mut s, bytes).await;
        assert_eq!(
            raw_read_frame(&mut s, &mut dec).await,
            PeerFrame::Pong { at: 77 }
        );
        wait_until("raw raft delivered", WAIT, || {
            b.rec.raft_messages("a") == vec![(3, vec![1, 2])]
        })
        .await;
        drop(s);
        b.rec.raft.borrow_mut().clear();

        // Garbage.
        let mut s = raw_connect(b.addr).await;
        raw_write(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3)).await;
        assert!(closed_within(&mut s, limit).await, "garbage");

        // A frame header announcing more than the pre-auth limit.
        let mut s = raw_connect(b.addr).await;
        raw_write(
            &mut s,
            frame_bytes(&PeerFrame::Control {
                body: vec![0; 10_000],
            }),
        )
        .await;
        assert!(
            closed_within(&mut s, limit).await,
            "oversized pre-auth frame"
        );

        // A valid frame, but not a Hello.
        let mut s = raw_connect(b.addr).await;
        raw_write(
            &mut s,
            frame_bytes(&PeerFrame::Raft {
                messages: vec![RaftEnvelope {
                    group: 1,
                    data: vec![],
                }],
            }),
        )
        .await;
        assert!(closed_within(&mut s, limit).await, "raft before hello");

        // A Hello from a node that is not in the cluster, or with another version.
        let mut s = raw_connect(b.addr).await;
        raw_write(&mut s, frame_bytes(&hello("mallory", [1; 32]))).await;
        assert!(closed_within(&mut s, limit).await, "unknown node");
        let mut s = raw_connect(b.addr).await;
        let old = PeerFrame::Hello {
            cluster_version: CLUSTER_VERSION + 1,
            node: "a".into(),
            http_port: 1,
            nonce: [1; 32],
        };
        raw_write(&mut s, frame_bytes(&old)).await;
        assert!(closed_within(&mut s, limit).await, "wrong version");

        // A fake Hello from a member name, then a forged Auth.
        let mut s = raw_connect(b.addr).await;
        let mut dec = PeerDecoder::new();
        raw_write(&mut s, frame_bytes(&hello("a", [2; 32]))).await;
        assert!(matches!(
            raw_read_frame(&mut s, &mut dec).await,
            PeerFrame::Challenge { .. }
        ));
        raw_write(&mut s, frame_bytes(&PeerFrame::Auth { mac: [0; 32] })).await;
        assert!(closed_within(&mut s, limit).await, "forged auth");

        // A fake Hello, then a Raft frame instead of Auth.
        let mut s = raw_connect(b.addr).await;
        let mut dec = PeerDecoder::new();
        raw_write(&mut s, frame_bytes(&hello("a", [3; 32]))).await;
        assert!(matches!(
            raw_read_frame(&mut s, &mut dec).await,
            PeerFrame::Challenge { .. }
        ));
        raw_write(
            &mut s,
            frame_bytes(&PeerFrame::Raft {
                messages: vec![RaftEnvelope {
                    group: 1,
                    data: vec![],
                }],
            }),
        )
        .await;
        assert!(closed_within(&mut s, limit).await, "raft instead of auth");

        // An authenticated peer that sends garbage is disconnected too.
        let mut s = raw_connect(b.addr).await;
        let mut dec = PeerDecoder::new();
        raw_write(&mut s, frame_bytes(&hello("a", nonce_c))).await;
        let PeerFrame::Challenge { nonce: nonce_s, .. } = raw_read_frame(&mut s, &mut dec).await
        else {
            panic!("expected a challenge");
        };
        let mut bytes = frame_bytes(&PeerFrame::Auth {
            mac: test_proof(SECRET, false, &nonce_s, &nonce_c),
        });
        bytes.extend_from_slice(&[0xAB; 64]);
        raw_write(&mut s, bytes).await;
        assert!(closed_within(&mut s, limit).await, "garbage after auth");

        assert!(
            b.rec.nothing_delivered(),
            "nothing from the refused clients reached the handler"
        );
        assert!(b.rec.states.borrow().is_empty());
        let stats = b.transport.stats();
        assert!(stats.auth_failures >= 7, "{stats:?}");
        assert_eq!(stats.protocol_errors, 1, "{stats:?}");
        b.stop_all();
    });
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    run(async {
        let b = lone_b();
        let started = Instant::now();
        let mut s = raw_connect(b.addr).await;
        assert!(closed_within(&mut s, HANDSHAKE_TIMEOUT + Duration::from_secs(3)).await);
        assert!(started.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(100));
        assert_eq!(b.transport.stats().auth_failures, 1);
        b.stop_all();
    });
}

#[test]
fn reconnects_after_the_acceptor_restarts() {
    run(async {
        let nodes = cluster(2, |_| {});
        wait_connected(&nodes).await;
        let (a, b) = (&nodes[0], &nodes[1]);

        // B's accept loop goes away (its connections close): A sees B down.
        b.stop_serve.fire();
        wait_until("a sees b down", WAIT, || {
            a.rec.states_of("b") == vec![true, false]
        })
        .await;
        assert!(!a.transport.is_connected("b"));
        assert_eq!(
            a.transport.request("b", vec![1]).await,
            Err(TransportError::NotConnected)
        );
        monoio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            a.transport.stats().connect_failures >= 1,
            "refused while b is down"
        );

        // B listens again on the same port: A reconnects by itself.
        let restarted = Latch::new();
        let listener = bind_cluster(b.addr).expect("rebind");
        let (t, s) = (Rc::clone(&b.transport), restarted.clone());
        monoio::spawn(async move { t.serve(listener, async move { s.wait().await }).await });
        wait_until("a reconnects to b", WAIT, || a.transport.is_connected("b")).await;
        assert_eq!(a.rec.states_of("b"), vec![true, false, true]);
        assert_eq!(
            a.transport.request("b", b"back".to_vec()).await,
            Ok(b"re:back".to_vec())
        );
        a.transport.send_raft("b", vec![(9, vec![9])]);
        wait_until("raft after reconnect", WAIT, || {
            b.rec.raft_messages("a") == vec![(9, vec![9])]
        })
        .await;
        let stats = a.transport.stats();
        assert_eq!(stats.reconnects, 1, "{stats:?}");
        assert_eq!(stats.disconnects, 1, "{stats:?}");
        restarted.fire();
        for n in &nodes {
            n.stop_all();
        }
    });
}

#[test]
fn silent_peer_is_detected_as_down() {
    run(async {
        // A fake "b" that authenticates, answers the first ping, then goes silent
        // while keeping the socket open.
        let (fake, fake_addr) = bind_local();
        let (la, addr_a) = bind_local();
        let b_cfg = Rc::new(test_config(
            "b",
            4001,
            vec![NodeAddr {
                name: "a".into(),
                addr: addr_a,
            }],
            SECRET,
        ));
        let silent_since = Rc::new(RefCell::new(None));
        let since = Rc::clone(&silent_since);
        let fake_task = monoio::spawn(async move {
            let (stream, _) = fake.accept().await.expect("accept");
            let (rd, mut wr) = monoio::io::Splitable::into_split(stream);
            let mut rd = FrameReader::new(rd, 1 << 20);
            handshake::acceptor(&mut rd, &mut wr, &b_cfg)
                .await
                .expect("handshake");
            let PeerFrame::Ping { at } = rd.next().await.expect("ping") else {
                panic!("expected a ping")
            };
            let (res, _) = wr.write_all(frame_bytes(&PeerFrame::Pong { at })).await;
            res.expect("pong");
            *since.borrow_mut() = Some(Instant::now());
            // Hold the connection open without reading or writing.
            monoio::time::sleep(Duration::from_secs(8)).await;
            drop((rd, wr));
        });
        let a = Node::start(
            test_config(
                "a",
                4000,
                vec![NodeAddr {
                    name: "b".into(),
                    addr: fake_addr,
                }],
                SECRET,
            ),
            la,
        );
        wait_until("a connected to the fake b", WAIT, || {
            a.transport.is_connected("b")
        })
        .await;
        assert_eq!(a.transport.peer_http_port("b"), Some(4001));

        // A request in flight when the peer goes quiet fails with Closed once the
        // peer is declared dead (peer_timeout 1 s < request_timeout 3 s).
        let res = a.transport.request("b", b"anyone?".to_vec()).await;
        assert_eq!(res, Err(TransportError::Closed));
        assert_eq!(a.rec.states_of("b"), vec![true, false]);
        assert!(!a.transport.is_connected("b"));
        let silent_for = silent_since.borrow().expect("fake answered").elapsed();
        assert!(
            silent_for >= Duration::from_millis(900),
            "declared dead too early: {silent_for:?}"
        );
        assert!(
            silent_for < Duration::from_millis(2500),
            "declared dead too late: {silent_for:?}"
        );
        a.stop_all();
        drop(fake_task);
    });
}

#[test]
fn chunk_assembly_rejects_what_breaks_the_protocol() {
    use super::inbound::ChunkAssembly;
    let total = (MAX_UNCHUNKED_RAFT_MESSAGE + 10) as u64;
    let first = vec![1u8; RAFT_CHUNK];
    let rest = vec![2u8; total as usize - RAFT_CHUNK];
    // In order: whole message.
    let mut a = ChunkAssembly::default();
    assert_eq!(a.push(3, 1, total, 0, first.clone()), Ok(None));
    let (g, m) = a
        .push(3, 1, total, RAFT_CHUNK as u64, rest.clone())
        .unwrap()
        .unwrap();
    assert_eq!((g, m.len() as u64), (3, total));
    assert_eq!(&m[..RAFT_CHUNK], &first[..]);
    // A new message replaces an abandoned one.
    assert_eq!(a.push(3, 2, total, 0, first.clone()), Ok(None));
    assert_eq!(a.push(3, 3, total, 0, first.clone()), Ok(None));
    assert!(a
        .push(3, 2, total, RAFT_CHUNK as u64, rest.clone())
        .is_err());
    // Gaps, overruns, a middle without a start, sizes that need no chunking.
    let mut a = ChunkAssembly::default();
    assert!(a.push(3, 1, total, 5, vec![1]).is_err());
    assert_eq!(a.push(3, 1, total, 0, first.clone()), Ok(None));
    assert!(a.push(3, 1, total, RAFT_CHUNK as u64 + 1, vec![1]).is_err());
    let mut a = ChunkAssembly::default();
    assert_eq!(a.push(3, 1, total, 0, first.clone()), Ok(None));
    assert!(a
        .push(3, 1, total, RAFT_CHUNK as u64, vec![0; total as usize])
        .is_err());
    assert!(ChunkAssembly::default()
        .push(3, 1, 100, 0, vec![1])
        .is_err());
    assert!(ChunkAssembly::default()
        .push(3, 1, MAX_RAFT_MESSAGE as u64 + 1, 0, vec![1])
        .is_err());
}
