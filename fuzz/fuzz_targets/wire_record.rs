//! rkyv records (wire/src/record.rs): commands and group snapshots from untrusted
//! bytes must be validated (bytecheck), never trusted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starcite_wire::record::{decode_command, decode_snapshot, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = decode_command(data) {
        // What decodes must re-encode and decode to the same value.
        let again = decode_command(&encode(&cmd)).expect("re-decode a valid command");
        assert_eq!(again, cmd);
    }
    let _ = decode_snapshot(data);
});
