//! The value syntax users write in environment variables: durations, percentages, booleans and
//! whole numbers — parsing and the inverse rendering used by [`Config::effective`].
//!
//! Every parser returns `Err((message, fix))` with a message that may quote the value (these
//! variables never hold secrets) and a fix that says what to write instead.
//!
//! [`Config::effective`]: super::Config::effective

use std::time::Duration;

/// A parse failure: what is wrong, and how to write it instead.
pub(crate) type ParseError = (String, String);

const DURATION_HINT: &str =
    "write a whole number of milliseconds (5000) or a number with a unit: ms, s, m or h (5s, 1.5s, 30m)";

/// Parses a duration: a plain whole number is milliseconds (`60000`); a number with a unit
/// `ms`, `s`, `m` or `h` may have a decimal fraction (`1.5s`, `0.5h`). Units are
/// case-insensitive and may be separated from the number by spaces. The result must be a whole
/// number of microseconds or coarser; negative values are rejected.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if s.starts_with('-') {
        return Err((
            format!("`{s}` is negative"),
            format!("a duration is never negative; {DURATION_HINT}"),
        ));
    }
    let nanos_per_unit: u128 = match unit.to_ascii_lowercase().as_str() {
        "" => 1_000_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err((
                format!("`{s}` has an unknown unit `{other}`"),
                DURATION_HINT.to_string(),
            ))
        }
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    if int_part.is_empty() && frac_part.is_none_or(str::is_empty) {
        return Err((
            format!("`{s}` is not a duration"),
            DURATION_HINT.to_string(),
        ));
    }
    if frac_part.is_some() && unit.is_empty() {
        return Err((
            format!("`{s}` is a fraction of a millisecond without a unit"),
            format!(
                "a plain number is milliseconds; write `{s}s` if you meant seconds, or a whole number of milliseconds"
            ),
        ));
    }
    let invalid = || {
        (
            format!("`{s}` is not a duration"),
            DURATION_HINT.to_string(),
        )
    };
    let mut nanos: u128 = 0;
    if !int_part.is_empty() {
        let i: u128 = int_part.parse().map_err(|_| invalid())?;
        nanos = i.checked_mul(nanos_per_unit).ok_or_else(invalid)?;
    }
    if let Some(frac) = frac_part {
        if frac.contains('.') || !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 12 {
            return Err(invalid());
        }
        let digits: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| invalid())?
        };
        let scale = 10u128.pow(frac.len() as u32);
        let part = digits * nanos_per_unit;
        if part % scale != 0 || (part / scale) % 1_000 != 0 {
            return Err((
                format!("`{s}` is finer than a microsecond"),
                DURATION_HINT.to_string(),
            ));
        }
        nanos += part / scale;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| {
        (
            format!("`{s}` is too long"),
            "use a duration shorter than a century".to_string(),
        )
    })?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Renders a duration in the syntax [`parse_duration`] reads back: the coarsest unit that is
/// exact and readable (`5s`, `100ms`, `30m`, `2h`; 60 s stays `60s` as DESIGN.md writes it).
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000 * MS;
    const M: u128 = 60 * S;
    const H: u128 = 60 * M;
    if nanos == 0 {
        "0ms".to_string()
    } else if nanos % H == 0 && nanos >= 2 * H {
        format!("{}h", nanos / H)
    } else if nanos % M == 0 && nanos >= 2 * M {
        format!("{}m", nanos / M)
    } else if nanos % S == 0 {
        format!("{}s", nanos / S)
    } else if nanos % MS == 0 {
        format!("{}ms", nanos / MS)
    } else {
        // Sub-millisecond precision: decimal milliseconds, trailing zeros trimmed.
        let frac = format!("{:06}", nanos % MS);
        format!("{}.{}ms", nanos / MS, frac.trim_end_matches('0'))
    }
}

/// Parses a percentage: `80` or `80%`. Fractions are rejected; `0.8` gets the hint
/// "write 80 for 80%". The range (1–100) is checked by validation, not here; values above 255
/// cannot be stored and are rejected here with the same message validation would give.
pub(crate) fn parse_percent(s: &str) -> Result<u8, ParseError> {
    let s = s.trim();
    let number = s.strip_suffix('%').unwrap_or(s).trim();
    if let Ok(f) = number.parse::<f64>() {
        if number.contains('.') && f.is_finite() {
            if f > 0.0 && f < 1.0 {
                let pct = (f * 100.0 * 1_000.0).round() / 1_000.0;
                return Err((
                    format!(
                        "`{s}` looks like a fraction, but percentages are written as whole numbers"
                    ),
                    format!("write {pct} for {pct}%"),
                ));
            }
            return Err((
                format!("`{s}` is not a whole percentage"),
                "write a whole number from 1 to 100, e.g. 80 or 80%".to_string(),
            ));
        }
    }
    match number.parse::<u64>() {
        Ok(n) if n <= u8::MAX as u64 => Ok(n as u8),
        Ok(_) => Err((
            format!("`{s}` is outside 1–100"),
            "write a whole number from 1 to 100, e.g. 80 or 80%".to_string(),
        )),
        Err(_) => Err((
            format!("`{s}` is not a percentage"),
            "write a whole number from 1 to 100, e.g. 80 or 80%".to_string(),
        )),
    }
}

/// Parses a boolean: true/false, 1/0, yes/no, on/off, case-insensitive.
pub(crate) fn parse_bool(s: &str) -> Result<bool, ParseError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err((
            format!("`{}` is not a boolean", s.trim()),
            "write true or false (1/0, yes/no and on/off work too)".to_string(),
        )),
    }
}

/// Parses a whole number that fits `T` (pool sizes, retry counts, cache sizes).
pub(crate) fn parse_count<T>(s: &str) -> Result<T, ParseError>
where
    T: std::str::FromStr + TryFrom<u128>,
{
    let s = s.trim();
    let max = std::any::type_name::<T>();
    if s.starts_with('-') && s[1..].bytes().all(|b| b.is_ascii_digit()) && s.len() > 1 {
        return Err((
            format!("`{s}` is negative"),
            "write a whole number, 0 or more".to_string(),
        ));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u128>().ok().and_then(|n| T::try_from(n).ok()) {
            Some(n) => Ok(n),
            None => Err((
                format!("`{s}` is too large"),
                format!("write a smaller whole number (it must fit a {max})"),
            )),
        };
    }
    Err((
        format!("`{s}` is not a whole number"),
        "write a whole number such as 10 (no units, no fraction)".to_string(),
    ))
}

/// Byte sizes as PostgreSQL writes them: a whole number with an optional unit `B`, `kB`, `MB`,
/// `GB` or `TB` (powers of 1024; case-insensitive, a space allowed). A bare number is bytes.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, ParseError> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return Err((
            format!("`{s}` is not a size"),
            "write a whole number of bytes with an optional unit B, kB, MB, GB or TB, e.g. 16MB"
                .to_string(),
        )),
    };
    if num.is_empty() {
        return Err((
            format!("`{s}` is not a size"),
            "write a whole number before the unit, e.g. 16MB".to_string(),
        ));
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            (
                format!("`{s}` is too large"),
                "write a size below 16 EB (e.g. in GB or TB)".to_string(),
            )
        })
}

/// A byte size in the largest unit that divides it exactly (`16MB`, `1536kB`, `0`); parses
/// back with [`parse_bytes`].
pub(crate) fn format_bytes(n: u64) -> String {
    if n == 0 {
        return "0".to_string();
    }
    for (unit, scale) in [
        ("TB", 1u64 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("kB", 1 << 10),
    ] {
        if n % scale == 0 {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn plain_number_is_milliseconds() {
        assert_eq!(parse_duration("60000"), Ok(ms(60_000)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        assert_eq!(parse_duration(" 250 "), Ok(ms(250)));
    }

    #[test]
    fn units_ms_s_m_h_case_insensitive_with_optional_space() {
        assert_eq!(parse_duration("100ms"), Ok(ms(100)));
        assert_eq!(parse_duration("5s"), Ok(ms(5_000)));
        assert_eq!(parse_duration("5 s"), Ok(ms(5_000)));
        assert_eq!(parse_duration("30m"), Ok(ms(1_800_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("5S"), Ok(ms(5_000)));
        assert_eq!(parse_duration("100MS"), Ok(ms(100)));
    }

    #[test]
    fn fractions_need_a_unit() {
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("0.5h"), Ok(ms(1_800_000)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        let (msg, fix) = parse_duration("1.5").unwrap_err();
        assert!(msg.contains("1.5"), "{msg}");
        assert!(fix.contains("1.5s"), "{fix}");
    }

    #[test]
    fn bad_durations_are_rejected_with_the_units_in_the_fix() {
        for bad in [
            "",
            "s",
            "5 sec",
            "5d",
            "-5s",
            "abc",
            "1.2.3s",
            "5s5",
            "1.0000001ms",
            ".",
        ] {
            let (_, fix) = parse_duration(bad).expect_err(bad);
            assert!(
                fix.contains("ms, s, m or h") || fix.contains("never negative"),
                "{bad}: {fix}"
            );
        }
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn durations_render_in_the_syntax_users_write_and_round_trip() {
        for (d, s) in [
            (ms(0), "0ms"),
            (ms(100), "100ms"),
            (ms(1_500), "1500ms"),
            (ms(5_000), "5s"),
            (ms(60_000), "60s"),
            (ms(120_000), "2m"),
            (ms(1_800_000), "30m"),
            (ms(3_600_000), "60m"),
            (ms(7_200_000), "2h"),
            (Duration::from_micros(250), "0.25ms"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
    }

    #[test]
    fn percent_with_or_without_sign() {
        assert_eq!(parse_percent("80"), Ok(80));
        assert_eq!(parse_percent("80%"), Ok(80));
        assert_eq!(parse_percent(" 100 % "), Ok(100));
        assert_eq!(parse_percent("0"), Ok(0)); // range is validation's job
        assert_eq!(parse_percent("255"), Ok(255));
    }

    #[test]
    fn fractional_percent_gets_the_hint() {
        let (msg, fix) = parse_percent("0.8").unwrap_err();
        assert!(msg.contains("0.8"));
        assert_eq!(fix, "write 80 for 80%");
        assert_eq!(parse_percent("0.75").unwrap_err().1, "write 75 for 75%");
        assert!(parse_percent("80.5").unwrap_err().1.contains("1 to 100"));
        assert!(parse_percent("256")
            .unwrap_err()
            .0
            .contains("outside 1–100"));
        assert!(parse_percent("eighty").is_err());
        assert!(parse_percent("-5").is_err());
        assert!(parse_percent("%").is_err());
    }

    #[test]
    fn booleans_all_spellings() {
        for t in ["true", "TRUE", "1", "yes", "Yes", "on", "ON"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["false", "False", "0", "no", "NO", "off", "Off"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "2", "y", "enabled", "tru"] {
            assert!(
                parse_bool(bad).unwrap_err().1.contains("true or false"),
                "{bad}"
            );
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count::<u32>("100"), Ok(100));
        assert_eq!(parse_count::<usize>("0"), Ok(0));
        assert!(parse_count::<u32>("-1").unwrap_err().0.contains("negative"));
        assert!(parse_count::<u32>("4294967296")
            .unwrap_err()
            .0
            .contains("too large"));
        assert!(parse_count::<u32>("1.5")
            .unwrap_err()
            .0
            .contains("not a whole number"));
        assert!(parse_count::<u32>("ten").is_err());
        assert!(parse_count::<u32>("10k").is_err());
        assert!(parse_count::<u32>("").is_err());
    }
}
