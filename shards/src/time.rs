//! Timestamp rendering. Time itself is an input of the engine (injectable clock).

/// Renders Unix microseconds as RFC 3339 UTC with exactly six fractional digits
/// and `Z`, e.g. `2026-03-01T10:15:31.004518Z` (decision 3).
pub fn format_micros(us: i64) -> String {
    let mut out = String::with_capacity(27);
    push_micros(&mut out, us);
    out
}

/// Appends what [`format_micros`] returns to `out`. Years 0000–9999 are written
/// digit by digit (this runs once per applied event on every replica); any other
/// year goes through `format!`, which pads and signs it the same way.
pub fn push_micros(out: &mut String, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}Z"
        );
        return;
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut b[0..4], y as u32);
    digits(&mut b[5..7], m);
    digits(&mut b[8..10], d);
    digits(&mut b[11..13], hh);
    digits(&mut b[14..16], mm);
    digits(&mut b[17..19], ss);
    digits(&mut b[20..26], micros);
    // Only ASCII digits were written into an ASCII template.
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

/// Writes `v` zero-padded into `slot` (its low digits when `v` is wider).
fn digits(slot: &mut [u8], mut v: u32) {
    for c in slot.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::format_micros;

    #[test]
    fn renders_known_instants() {
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            format_micros(1_772_360_131_004_518),
            "2026-03-01T10:15:31.004518Z"
        );
        assert_eq!(format_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn push_appends_and_falls_back_outside_four_digit_years() {
        let mut out = String::from("at ");
        super::push_micros(&mut out, 1_772_360_131_004_518);
        assert_eq!(out, "at 2026-03-01T10:15:31.004518Z");
        // Year 10000 and year -1 take the `format!` path, padded and signed alike.
        assert_eq!(
            format_micros(253_402_300_800_000_000),
            "10000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            format_micros(-62_198_755_200_000_000),
            "-001-01-01T00:00:00.000000Z"
        );
    }
}
