//! Request validation path: raw body bytes → `parse_body` → `validate_create` and
//! `validate_append` (auth mode none, and a tenant-bound JWT principal), plus the
//! fingerprint of what validated. Any panic is a bug; errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starcite::api::principal::{AuthContext, Principal, PrincipalType};
use starcite::api::validate::{fingerprint, parse_body, validate_append, validate_create};

fn jwt_context() -> AuthContext {
    AuthContext {
        principal: Principal {
            tenant_id: "acme".into(),
            id: "u-1".into(),
            kind: PrincipalType::User,
        },
        session_lock: None,
        scopes: vec!["session:create".into(), "session:append".into()],
        none_mode: false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = parse_body(data) else { return };
    for auth in [AuthContext::none(), jwt_context()] {
        let _ = validate_create(&body, &auth);
        if let Ok(input) = validate_append(&body, &auth) {
            let _ = fingerprint(&input);
        }
    }
});
