//! The contract's input conventions ("absent", "int-or-digits"), shared by query and
//! body validation so both read client fields exactly the same way.
//!
//! "Absent" means missing or JSON `null`: the reference never distinguished them.
//!
//! "Int-or-digits": the reference accepted form-encoded input, so integer fields also
//! take digit strings.
//! Accepted: a JSON integer, or a string that is entirely `[+-]?[0-9]+` (`"+7"`, `"007"`).
//! Rejected: JSON floats (`1.0`, `1e3`), whitespace, empty strings, any other type.
//! Range checks come after parsing, and nothing here can overflow or panic: values that do
//! not fit `i128` are simply unparsable, which is outside every range the API uses.

use serde_json::{Map, Value};

/// `obj[key]` unless it is absent (missing, `null`, or `obj` is not an object).
pub fn present<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// [`present`] for an already-unwrapped object.
pub fn present_in<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// Parses `v` as int-or-digits; `None` when it is not one (or does not fit in `i128`).
pub fn int_or_digits(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => parse_json_integer(n.as_str()),
        Value::String(s) => parse_digits(s),
        _ => None,
    }
}

/// Parses `v` as int-or-digits and checks `min ≤ value ≤ max`.
pub fn int_or_digits_in(v: &Value, min: u64, max: u64) -> Option<u64> {
    let n = int_or_digits(v)?;
    let n = u64::try_from(n).ok()?;
    (min..=max).contains(&n).then_some(n)
}

/// Parses `v` as int-or-digits of ANY size and checks `value ≥ min`. Values
/// beyond `u64::MAX` are valid per the contract (only the lower bound applies)
/// and saturate to `u64::MAX`: no seq, cursor or producer_seq can reach it, so
/// they behave exactly like the huge value (a conflict, or a silent cursor).
pub fn int_or_digits_at_least(v: &Value, min: u64) -> Option<u64> {
    let text = match v {
        Value::Number(n) if !n.as_str().bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => {
            n.as_str()
        }
        Value::String(s) => s.as_str(),
        _ => return None,
    };
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = digits.parse::<u64>().unwrap_or(u64::MAX);
    let zero = digits.bytes().all(|b| b == b'0');
    if negative && !zero {
        return None;
    }
    (value >= min).then_some(value)
}

/// A JSON number token counts only if it has no fraction and no exponent: the reference
/// decoded `1.0` and `1e3` as floats, which it rejects.
fn parse_json_integer(text: &str) -> Option<i128> {
    if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return None;
    }
    text.parse().ok()
}

/// `i128::from_str` accepts exactly `[+-]?[0-9]+`, which is the contract's digit-string
/// grammar (no whitespace, no `_`, not empty, not a lone sign).
fn parse_digits(s: &str) -> Option<i128> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON number")
    }

    #[test]
    fn unbounded_integers_saturate() {
        assert_eq!(
            int_or_digits_at_least(&num("99999999999999999999999"), 0),
            Some(u64::MAX)
        );
        assert_eq!(
            int_or_digits_at_least(&json!("99999999999999999999999"), 1),
            Some(u64::MAX)
        );
        assert_eq!(int_or_digits_at_least(&json!("+7"), 1), Some(7));
        assert_eq!(int_or_digits_at_least(&json!("-0"), 0), Some(0));
        assert_eq!(int_or_digits_at_least(&json!("-1"), 0), None);
        assert_eq!(
            int_or_digits_at_least(&json!("-99999999999999999999999"), 0),
            None
        );
        assert_eq!(int_or_digits_at_least(&num("0"), 1), None);
        assert_eq!(int_or_digits_at_least(&num("1.0"), 0), None);
        assert_eq!(int_or_digits_at_least(&json!(""), 0), None);
        assert_eq!(int_or_digits_at_least(&json!("+"), 0), None);
        assert_eq!(int_or_digits_at_least(&json!(" 7"), 0), None);
    }

    #[test]
    fn absent_means_missing_or_null() {
        let obj = json!({"a": null, "b": 0, "c": ""});
        assert_eq!(present(&obj, "a"), None);
        assert_eq!(present(&obj, "missing"), None);
        assert_eq!(present(&obj, "b"), Some(&json!(0)));
        assert_eq!(present(&obj, "c"), Some(&json!("")));
        assert_eq!(present(&json!([1]), "a"), None);
        let map = obj.as_object().expect("object");
        assert_eq!(present_in(map, "a"), None);
        assert_eq!(present_in(map, "b"), Some(&json!(0)));
    }

    #[test]
    fn accepted_forms() {
        let table: Vec<(Value, i128)> = vec![
            (json!(7), 7),
            (json!(0), 0),
            (json!(-1), -1),
            (num("-0"), 0),
            (json!("7"), 7),
            (json!("+7"), 7),
            (json!("007"), 7),
            (json!("-1"), -1),
            (json!("-0"), 0),
            (json!("18446744073709551616"), 1 << 64),
            (num("18446744073709551616"), 1 << 64),
            (json!(format!("{}7", "0".repeat(10_000))), 7),
        ];
        for (v, want) in table {
            assert_eq!(int_or_digits(&v), Some(want), "{v}");
        }
    }

    #[test]
    fn rejected_forms() {
        let table: Vec<Value> = vec![
            json!(1.0),
            num("1.0"),
            num("1e3"),
            num("1E3"),
            num("-0.0"),
            json!("1.0"),
            json!("1e3"),
            json!(""),
            json!(" 7"),
            json!("7 "),
            json!("+"),
            json!("-"),
            json!("++7"),
            json!("1_000"),
            json!("0x10"),
            json!("٣"),
            json!("9".repeat(100)),
            num(&"9".repeat(100)),
            json!(null),
            json!(true),
            json!([1]),
            json!({"a": 1}),
        ];
        for v in table {
            assert_eq!(int_or_digits(&v), None, "{v}");
        }
    }

    #[test]
    fn range_is_checked_after_parsing() {
        assert_eq!(int_or_digits_in(&json!("+7"), 1, 1000), Some(7));
        assert_eq!(int_or_digits_in(&json!("0001000"), 1, 1000), Some(1000));
        assert_eq!(int_or_digits_in(&json!(1001), 1, 1000), None);
        assert_eq!(int_or_digits_in(&json!(0), 1, 1000), None);
        assert_eq!(int_or_digits_in(&json!("-1"), 0, u64::MAX), None);
        assert_eq!(int_or_digits_in(&json!("-0"), 0, u64::MAX), Some(0));
        assert_eq!(
            int_or_digits_in(&json!(u64::MAX), 0, u64::MAX),
            Some(u64::MAX)
        );
        assert_eq!(
            int_or_digits_in(&json!("18446744073709551616"), 0, u64::MAX),
            None
        );
        assert_eq!(
            int_or_digits_in(&num("18446744073709551616"), 0, u64::MAX),
            None
        );
        assert_eq!(
            int_or_digits_in(&json!("9".repeat(1000)), 0, u64::MAX),
            None
        );
    }
}
