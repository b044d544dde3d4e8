//! Inter-node frames (wire/src/peer.rs): the stream decoder fed raw bytes in
//! input-directed pieces, and input payloads wrapped in valid frame headers so the
//! rkyv validation of `PeerFrame` is reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starcite_wire::log::encode_frame;
use starcite_wire::peer::PeerDecoder;

fn drain(dec: &mut PeerDecoder) {
    // Bounded: each Ok(Some) consumes at least one frame header.
    for _ in 0..10_000 {
        match dec.next_frame() {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
    panic!("decoder did not make progress");
}

fuzz_target!(|data: &[u8]| {
    // Raw stream, pushed in pieces whose sizes come from the input.
    let mut dec = PeerDecoder::with_max_frame(1 << 20);
    let step = (data.first().copied().unwrap_or(1) as usize % 64).max(1);
    for piece in data.chunks(step) {
        dec.push(piece);
        drain(&mut dec);
    }
    // Well-framed payloads: reaches the rkyv validation of the frame body.
    let mut stream = Vec::new();
    for payload in data.split(|b| *b == 0xFE) {
        let _ = encode_frame(payload, &mut stream);
    }
    let mut dec = PeerDecoder::new();
    dec.push(&stream);
    drain(&mut dec);
});
