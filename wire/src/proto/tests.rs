use super::*;

fn clients() -> Vec<ClientMsg> {
    vec![
        ClientMsg::Hello {
            request_id: 1,
            token: Some("eyJ.x.y".into()),
            client: "test/1".into(),
        },
        ClientMsg::Hello {
            request_id: 1,
            token: None,
            client: String::new(),
        },
        ClientMsg::CreateSession {
            request_id: 2,
            id: Some("ses_a".into()),
            title: None,
            metadata: Some(b"{\"k\":1}".to_vec()),
        },
        ClientMsg::Append {
            request_id: u64::MAX,
            session: "a-long-session-identifier-beyond-inline".into(),
            fields: AppendFields {
                event_type: "message".into(),
                payload: b"{\"text\":\"hi\"}".to_vec(),
                producer_id: "p".into(),
                producer_seq: 7,
                actor: None,
                source: Some("agent".into()),
                metadata: None,
                refs: Some(b"{}".to_vec()),
                idempotency_key: None,
                expected_seq: Some(0),
            },
        },
        ClientMsg::Subscribe {
            request_id: 4,
            session: "s".into(),
            cursor: 10,
            max_batch: 100,
        },
        ClientMsg::Unsubscribe {
            request_id: 5,
            subscription: 4,
        },
        ClientMsg::Ping {
            request_id: 6,
            payload: 99,
        },
    ]
}

fn servers() -> Vec<ServerMsg> {
    vec![
        ServerMsg::HelloOk {
            request_id: 1,
            version: 1,
            node: "n1@127.0.0.1:4370".into(),
            max_frame: MAX_FRAME as u32,
            max_inflight: 1024,
            max_subscriptions: 64,
            max_batch: 1000,
        },
        ServerMsg::SessionCreated {
            request_id: 2,
            id: "s".into(),
            json: b"{}".to_vec(),
        },
        ServerMsg::AppendAck {
            request_id: 3,
            seq: 1,
            last_seq: 1,
            deduped: false,
            leader: Some("n2@h:1".into()),
        },
        ServerMsg::Error {
            request_id: 3,
            code: "producer_seq_conflict".into(),
            message: "Producer p expected seq 2, got 3".into(),
            status: 409,
            leader: None,
        },
        ServerMsg::Events {
            subscription: 4,
            events: vec![
                Event {
                    seq: 1,
                    json: b"{\"seq\":1}".to_vec(),
                },
                Event {
                    seq: 2,
                    json: b"{\"seq\":2}".to_vec(),
                },
            ],
        },
        ServerMsg::Unsubscribed {
            request_id: 5,
            subscription: 4,
        },
        ServerMsg::Pong {
            request_id: 6,
            payload: 99,
        },
        ServerMsg::Goaway {
            code: codes::DRAINING.into(),
            message: "node is draining".into(),
        },
    ]
}

#[test]
fn every_message_round_trips_in_pieces_of_any_size() {
    let mut out = Vec::new();
    for m in clients() {
        encode(&m, MAX_FRAME, &mut out).unwrap();
    }
    for step in [1, 3, 7, 64, out.len()] {
        let mut d = Decoder::new(MAX_FRAME);
        let mut got = Vec::new();
        for chunk in out.chunks(step) {
            d.push(chunk);
            while let Some(m) = d.next::<ClientMsg>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, clients());
        assert_eq!(d.buffered(), 0);
    }
    let mut out = Vec::new();
    for m in servers() {
        encode(&m, MAX_FRAME, &mut out).unwrap();
    }
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&out);
    let mut got = Vec::new();
    while let Some(m) = d.next::<ServerMsg>().unwrap() {
        got.push(m);
    }
    assert_eq!(got, servers());
}

#[test]
fn truncated_frame_waits_for_more() {
    let mut out = Vec::new();
    encode(&clients()[3], MAX_FRAME, &mut out).unwrap();
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&out[..out.len() - 1]);
    assert_eq!(d.next::<ClientMsg>(), Ok(None));
    d.push(&out[out.len() - 1..]);
    assert_eq!(d.next::<ClientMsg>(), Ok(Some(clients()[3].clone())));
}

#[test]
fn bad_checksum_is_sticky() {
    let mut out = Vec::new();
    encode(&clients()[0], MAX_FRAME, &mut out).unwrap();
    let last = out.len() - 1;
    out[last] ^= 0x40;
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&out);
    assert_eq!(d.next::<ClientMsg>(), Err(FrameError::Checksum));
    d.push(&out);
    assert_eq!(d.next::<ClientMsg>(), Err(FrameError::Checksum));
}

#[test]
fn oversized_length_is_refused_before_the_payload_arrives() {
    let mut d = Decoder::new(1024);
    let mut hdr = (1025u32).to_le_bytes().to_vec();
    hdr.extend_from_slice(&[0; 4]);
    d.push(&hdr);
    assert!(matches!(
        d.next::<ClientMsg>(),
        Err(FrameError::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
    let big = ClientMsg::Ping {
        request_id: 1,
        payload: 1,
    };
    assert!(matches!(
        encode(&big, 4, &mut Vec::new()),
        Err(FrameError::TooLarge { .. })
    ));
}

/// Well-checksummed garbage (unknown variant, bad pointers, random bytes) is
/// refused by validation, never a panic.
#[test]
fn invalid_payloads_are_refused() {
    let frame = |payload: &[u8]| {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        f.extend_from_slice(payload);
        f
    };
    // Unknown kind: a valid Ping with its tag byte changed to 200.
    let ping = ClientMsg::Ping {
        request_id: 1,
        payload: 2,
    };
    let mut out = Vec::new();
    encode(&ping, MAX_FRAME, &mut out).unwrap();
    let mut payload = out[FRAME_HEADER_LEN..].to_vec();
    let tag = payload.len() - std::mem::size_of::<ArchivedClientMsg>();
    assert_eq!(payload[tag], 5, "Ping is kind 5 at the start of the root");
    payload[tag] = 200;
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&frame(&payload));
    assert!(matches!(d.next::<ClientMsg>(), Err(FrameError::Invalid(_))));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..2000usize {
        let len = n % 97;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut d = Decoder::new(MAX_FRAME);
        d.push(&frame(&bytes));
        let _ = d.next::<ClientMsg>();
        let mut d = Decoder::new(MAX_FRAME);
        d.push(&frame(&bytes));
        let _ = d.next::<ServerMsg>();
    }
}

#[test]
fn preface_negotiation() {
    let p = Preface::OURS.to_bytes();
    assert_eq!(&p, b"STCW\x01\x00\x01\x00");
    assert_eq!(Preface::parse(&p), Ok(Preface::OURS));
    assert_eq!(Preface::parse(b"GET / HT"), Err(PrefaceError::BadMagic));
    let theirs = Preface { min: 1, max: 9 };
    assert_eq!(Preface::OURS.negotiate(theirs), Ok(1));
    let future = Preface { min: 2, max: 3 };
    assert!(Preface::OURS.negotiate(future).is_err());
    assert!(Preface::OURS.negotiate(Preface { min: 0, max: 0 }).is_err());
}

/// The example frames of docs/wire-protocol.md are the bytes the encoder writes
/// (so the byte-level documentation cannot drift from the code).
#[test]
fn documented_example_frames_match_the_encoder() {
    let mut ping = Vec::new();
    encode(
        &ClientMsg::Ping {
            request_id: 2,
            payload: 7,
        },
        MAX_FRAME,
        &mut ping,
    )
    .unwrap();
    let mut want = hex("88 00 00 00 15 ea 98 89 05 00 00 00 00 00 00 00
         02 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00");
    want.resize(8 + 136, 0);
    assert_eq!(ping, want, "Ping example of docs/wire-protocol.md");

    let mut ack = Vec::new();
    encode(
        &ServerMsg::AppendAck {
            request_id: 3,
            seq: 5,
            last_seq: 5,
            deduped: false,
            leader: None,
        },
        MAX_FRAME,
        &mut ack,
    )
    .unwrap();
    let want = hex("30 00 00 00 8e ff e7 e0 02 00 00 00 00 00 00 00
         03 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00
         05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
         00 00 00 00 00 00 00 00");
    assert_eq!(ack, want, "AppendAck example of docs/wire-protocol.md");
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}
