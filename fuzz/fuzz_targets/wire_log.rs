//! Raft log segments (wire/src/log.rs): the input is decoded as a whole segment, and
//! also wrapped as frames with valid checksums (so the fuzzer gets past the CRCs),
//! then some bytes are flipped as the input directs; every decoded payload goes
//! through the record decoder as recovery does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starcite_wire::log::{decode_segment, encode_frame, encode_segment_header};
use starcite_wire::record::decode_command;

fn check(bytes: &[u8]) {
    if let Ok(seg) = decode_segment(bytes) {
        assert!(seg.valid_len as usize <= bytes.len());
        for (offset, payload) in seg.frames {
            assert!((offset as usize) < bytes.len());
            let _ = decode_command(payload);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Split the input into payloads on 0xFF bytes and frame them properly.
    let mut seg = Vec::new();
    encode_segment_header(data.first().copied().unwrap_or(0) as u32, &mut seg);
    for payload in data.split(|b| *b == 0xFF) {
        let _ = encode_frame(payload, &mut seg);
    }
    check(&seg);
    // Corrupt it at positions/values taken from the input's tail.
    if data.len() >= 4 && !seg.is_empty() {
        let mut torn = seg.clone();
        let at = u16::from_le_bytes([data[data.len() - 2], data[data.len() - 1]]) as usize;
        let at = at % torn.len();
        torn[at] ^= data[data.len() - 3] | 1;
        check(&torn);
        torn.truncate(at);
        check(&torn);
    }
});
