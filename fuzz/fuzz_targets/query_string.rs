//! Query-string parser: raw query bytes → `parse_query` → list and tail parameter
//! extraction and the WebSocket `access_token` lookup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starcite::api::query::{access_token, list_params, parse_query, tail_params};

fuzz_target!(|data: &[u8]| {
    let q = parse_query(data);
    let _ = list_params(&q);
    let _ = tail_params(&q);
    let _ = access_token(&q);
});
