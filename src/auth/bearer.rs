//! Finding the bearer token in a request (§2.2).

use super::AuthFailure;

/// §2.2: the token from the `Authorization` header, or — on WebSocket upgrades only —
/// from the `access_token` query parameter.
///
/// * `headers`: every request header as `(name, value)`; names are compared
///   case-insensitively, so lower-cased names are fine. Repeated headers must appear
///   once per occurrence (two `Authorization` headers are malformed).
/// * `query_token`: the **URL-decoded** `access_token` value, as returned by
///   [`crate::api::query::access_token`] (untrimmed; `Some("")` for a present but empty
///   or non-string value). It is ignored unless `is_upgrade`.
/// * `is_upgrade`: some `Upgrade` header value, split on commas and trimmed, equals
///   `websocket` case-insensitively.
pub fn find_token(
    headers: &[(String, String)],
    query_token: Option<&str>,
    is_upgrade: bool,
) -> Result<String, AuthFailure> {
    let mut authorization = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.as_str());
    let header = authorization.next();
    if authorization.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let query = if is_upgrade { query_token } else { None };
    match (header, query) {
        (Some(_), Some(_)) => Err(AuthFailure::Malformed),
        (Some(value), None) => header_token(value),
        (None, Some(value)) => checked(value.trim()),
        (None, None) => Err(AuthFailure::Missing),
    }
}

/// `Bearer <token>`: trimmed, split at the first space, scheme case-insensitive.
fn header_token(value: &str) -> Result<String, AuthFailure> {
    let (scheme, rest) = value.trim().split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    checked(rest.trim())
}

/// Non-empty, at most [`AUTH_TOKEN`](starcite_wire::limits::AUTH_TOKEN) bytes, and
/// neither `,` nor a space (a list of credentials, or junk).
fn checked(token: &str) -> Result<String, AuthFailure> {
    if token.is_empty()
        || token.len() > starcite_wire::limits::AUTH_TOKEN
        || token.contains([',', ' '])
    {
        return Err(AuthFailure::Malformed);
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthFailure::{Malformed, Missing};

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn auth(v: &str) -> Vec<(String, String)> {
        h(&[("host", "x"), ("authorization", v)])
    }

    #[test]
    fn tokens_over_the_limit_are_malformed() {
        let max = starcite_wire::limits::AUTH_TOKEN;
        let ok = "a".repeat(max);
        assert_eq!(
            find_token(&auth(&format!("Bearer {ok}")), None, false),
            Ok(ok.clone())
        );
        let long = "a".repeat(max + 1);
        assert_eq!(
            find_token(&auth(&format!("Bearer {long}")), None, false),
            Err(Malformed)
        );
        assert_eq!(find_token(&h(&[]), Some(&long), true), Err(Malformed));
    }

    #[test]
    fn header_forms() {
        let table: &[(&str, Result<&str, AuthFailure>)] = &[
            ("Bearer abc.def.ghi", Ok("abc.def.ghi")),
            ("bearer abc", Ok("abc")),
            ("BEARER abc", Ok("abc")),
            ("  Bearer   abc  ", Ok("abc")),
            ("Bearer\tabc", Err(Malformed)),
            ("Bearer", Err(Malformed)),
            ("Bearer ", Err(Malformed)),
            ("Bearer    ", Err(Malformed)),
            ("", Err(Malformed)),
            ("   ", Err(Malformed)),
            ("Basic abc", Err(Malformed)),
            ("Token abc", Err(Malformed)),
            ("Bearerabc", Err(Malformed)),
            ("Bearer abc def", Err(Malformed)),
            ("Bearer abc,def", Err(Malformed)),
            ("Bearer abc, Bearer def", Err(Malformed)),
            ("Bearer ,", Err(Malformed)),
        ];
        for (value, want) in table {
            let got = find_token(&auth(value), None, false);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{value:?}");
            // Upgrades read the header the same way.
            let got = find_token(&auth(value), None, true);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{value:?} (upgrade)");
        }
    }

    #[test]
    fn header_name_is_case_insensitive_and_counted() {
        assert_eq!(
            find_token(&h(&[("Authorization", "Bearer t")]), None, false),
            Ok("t".into())
        );
        let two = h(&[("authorization", "Bearer t"), ("authorization", "Bearer t")]);
        assert_eq!(find_token(&two, None, false), Err(Malformed));
        let two_mixed = h(&[("authorization", "Bearer t"), ("AUTHORIZATION", "Basic x")]);
        assert_eq!(find_token(&two_mixed, None, true), Err(Malformed));
    }

    #[test]
    fn nothing_is_missing() {
        assert_eq!(find_token(&[], None, false), Err(Missing));
        assert_eq!(find_token(&h(&[("host", "x")]), None, true), Err(Missing));
    }

    #[test]
    fn query_token_only_on_upgrades() {
        assert_eq!(find_token(&[], Some("tok"), true), Ok("tok".into()));
        assert_eq!(find_token(&[], Some("  tok \n"), true), Ok("tok".into()));
        // A plain request ignores it entirely.
        assert_eq!(find_token(&[], Some("tok"), false), Err(Missing));
        assert_eq!(find_token(&[], Some(""), false), Err(Missing));
        assert_eq!(
            find_token(&auth("Bearer h"), Some("q"), false),
            Ok("h".into())
        );
        for bad in ["", "   ", "a b", "a,b", ","] {
            assert_eq!(find_token(&[], Some(bad), true), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn header_and_query_together_are_malformed_on_upgrades() {
        assert_eq!(
            find_token(&auth("Bearer t"), Some("t"), true),
            Err(Malformed)
        );
        assert_eq!(
            find_token(&auth("Bearer t"), Some("other"), true),
            Err(Malformed)
        );
        assert_eq!(
            find_token(&auth("Basic t"), Some("t"), true),
            Err(Malformed)
        );
        assert_eq!(
            find_token(&auth("Bearer t"), Some(""), true),
            Err(Malformed)
        );
    }
}
