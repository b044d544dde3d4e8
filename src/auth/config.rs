//! JWT-mode settings from the environment (§12.2, decision 12: fail fast).

use std::time::Duration;

/// Everything JWT mode needs; built once at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Required `iss`, byte-equal.
    pub issuer: String,
    /// Required audience (`aud` string or array member).
    pub audience: String,
    pub jwks_url: String,
    /// Clock leeway for `exp`, `nbf`, `iat`.
    pub leeway_secs: u64,
    /// How long fetched keys are used, from the moment of fetch.
    pub jwks_refresh: Duration,
}

const DEFAULT_LEEWAY_SECS: u64 = 1;
const DEFAULT_JWKS_REFRESH_MS: u64 = 60_000;

/// Reads JWT-mode settings through `get` (the environment, or a table in tests).
///
/// Issuer, audience and JWKS URL are trimmed and required: unset or blank is an error
/// naming the variable (decision 12 replaces the reference's silent placeholders).
/// Integers follow §12.1: trimmed, fully parsed, optional sign; set-but-blank is an
/// error, unset keeps the default. The error is `(variable, reason)`.
pub fn auth_config_from_env(
    get: impl Fn(&str) -> Option<String>,
) -> Result<AuthConfig, (&'static str, String)> {
    let required = |var: &'static str| {
        get(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or((var, "required when STARCITE_AUTH_MODE=jwt".to_owned()))
    };
    let issuer = required("STARCITE_AUTH_JWT_ISSUER")?;
    let audience = required("STARCITE_AUTH_JWT_AUDIENCE")?;
    let jwks_url = required("STARCITE_AUTH_JWKS_URL")?;
    let leeway_secs = int(
        &get,
        "STARCITE_AUTH_JWT_LEEWAY_SECONDS",
        DEFAULT_LEEWAY_SECS,
        0,
    )?;
    let refresh_ms = int(
        &get,
        "STARCITE_AUTH_JWKS_REFRESH_MS",
        DEFAULT_JWKS_REFRESH_MS,
        1,
    )?;
    Ok(AuthConfig {
        issuer,
        audience,
        jwks_url,
        leeway_secs,
        jwks_refresh: Duration::from_millis(refresh_ms),
    })
}

/// §12.1 integer, at least `min`.
fn int(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    min: u64,
) -> Result<u64, (&'static str, String)> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    let v: i128 = raw
        .trim()
        .parse()
        .map_err(|_| (var, format!("not an integer: {raw:?}")))?;
    if v < i128::from(min) || v > i128::from(u64::MAX) {
        let what = if min == 0 {
            "a non-negative"
        } else {
            "a positive"
        };
        return Err((var, format!("must be {what} integer, got {v}")));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<AuthConfig, (&'static str, String)> {
        auth_config_from_env(|k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    const BASE: [(&str, &str); 3] = [
        ("STARCITE_AUTH_JWT_ISSUER", " https://issuer.test "),
        ("STARCITE_AUTH_JWT_AUDIENCE", "starcite-api"),
        ("STARCITE_AUTH_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<AuthConfig, (&'static str, String)> {
        let mut all = BASE.to_vec();
        all.extend_from_slice(extra);
        from(&all)
    }

    #[test]
    fn defaults_and_trimming() {
        let c = with(&[]).unwrap();
        assert_eq!(c.issuer, "https://issuer.test");
        assert_eq!(c.audience, "starcite-api");
        assert_eq!(c.jwks_url, "http://127.0.0.1:9/jwks.json");
        assert_eq!(c.leeway_secs, 1);
        assert_eq!(c.jwks_refresh, Duration::from_millis(60_000));
    }

    #[test]
    fn each_required_variable_is_named_when_missing_or_blank() {
        for (i, (var, _)) in BASE.iter().enumerate() {
            let mut missing = BASE.to_vec();
            missing.remove(i);
            assert_eq!(from(&missing).unwrap_err().0, *var);
            let mut blank = BASE.to_vec();
            blank[i].1 = "  \t";
            assert_eq!(from(&blank).unwrap_err().0, *var);
        }
    }

    #[test]
    fn integers_follow_the_grammar() {
        let leeway = "STARCITE_AUTH_JWT_LEEWAY_SECONDS";
        let refresh = "STARCITE_AUTH_JWKS_REFRESH_MS";
        assert_eq!(with(&[(leeway, " 0 ")]).unwrap().leeway_secs, 0);
        assert_eq!(with(&[(leeway, "+30")]).unwrap().leeway_secs, 30);
        assert_eq!(
            with(&[(refresh, "007")]).unwrap().jwks_refresh,
            Duration::from_millis(7)
        );
        for (var, bad) in [
            (leeway, "-1"),
            (leeway, "1.5"),
            (leeway, ""),
            (leeway, "x"),
            (refresh, "0"),
            (refresh, "-5"),
            (refresh, "1e3"),
            (refresh, "99999999999999999999999"),
        ] {
            assert_eq!(with(&[(var, bad)]).unwrap_err().0, var, "{var}={bad:?}");
        }
    }
}
