//! The binary client protocol (wire/src/proto): the preface parser, and the frame
//! decoder for both directions fed raw bytes in input-directed pieces, plus input
//! payloads wrapped in valid frame headers (length + CRC32C) so the rkyv
//! validation of `ClientMsg`/`ServerMsg` is reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starcite_wire::proto::{checksum, ClientMsg, Decoder, Preface, ServerMsg};

fn drain<M: starcite_wire::proto::Message>(dec: &mut Decoder) {
    // Bounded: each Ok(Some) consumes at least one frame header.
    for _ in 0..10_000 {
        match dec.next::<M>() {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
    panic!("decoder did not make progress");
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let mut p = [0u8; 8];
        p.copy_from_slice(&data[..8]);
        if let Ok(theirs) = Preface::parse(&p) {
            let _ = Preface::OURS.negotiate(theirs);
        }
    }
    let step = (data.first().copied().unwrap_or(1) as usize % 64).max(1);
    let mut client = Decoder::new(1 << 20);
    let mut server = Decoder::new(1 << 20);
    for piece in data.chunks(step) {
        client.push(piece);
        drain::<ClientMsg>(&mut client);
        server.push(piece);
        drain::<ServerMsg>(&mut server);
    }
    let mut stream = Vec::new();
    for payload in data.split(|b| *b == 0xFE) {
        stream.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        stream.extend_from_slice(&checksum(payload).to_le_bytes());
        stream.extend_from_slice(payload);
    }
    let mut client = Decoder::new(1 << 20);
    client.push(&stream);
    drain::<ClientMsg>(&mut client);
    let mut server = Decoder::new(1 << 20);
    server.push(&stream);
    drain::<ServerMsg>(&mut server);
});
