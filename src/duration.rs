//! Durations on the command line (`90s`, `10m`, `2h`, `7d`, `1h30m`) and how
//! lcrun prints them back (`5m00s`).

use std::time::Duration;

/// The longest duration any option takes. Deadlines are `Instant`s and
/// `SystemTime`s, which panic on overflow when a duration is added: `--timeout
/// 1e19` did. A century is longer than any run and far from any overflow.
/// (`100y`: humantime's year is 365.25 days.)
pub const MAX: Duration = Duration::from_secs(100 * 31_557_600);

/// Parses a humantime-style duration; a bare number means seconds. Anything
/// negative, not a number, or longer than [`MAX`] is an error.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        // `Duration::from_secs_f64` panics on what it cannot hold, so the
        // range is checked on the float first.
        Ok(secs) if secs.is_finite() && (0.0..=MAX.as_secs_f64()).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err(out_of_range(text)),
        Err(_) => humantime::parse_duration(text)
            .map_err(|err| format!("invalid duration '{text}': {err} ({EXAMPLES})"))?,
    };
    if duration > MAX {
        return Err(out_of_range(text));
    }
    Ok(duration)
}

const EXAMPLES: &str = "e.g. 90s, 10m, 2h, 7d";

fn out_of_range(text: &str) -> String {
    format!("invalid duration '{text}': must be from 0 to 100 years ({EXAMPLES})")
}

/// Renders a duration compactly for messages: `850ms`, `4.2s`, `5m00s`, `2h03m`.
pub fn short(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if d.as_millis() >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("100y").map(|d| d <= MAX), Ok(true));
        assert!(parse("soon").is_err());
        assert!(parse("-3").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn refuses_what_a_deadline_cannot_hold() {
        for bad in [
            "1e20",
            "1e19",
            "292277026596y",
            "101y",
            "-1",
            "-0.5",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "infinity",
            "99999999999999999999999999999",
            "18446744073709551615s",
            "1e308",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn renders_compactly() {
        assert_eq!(short(Duration::from_secs(300)), "5m00s");
        assert_eq!(short(Duration::from_millis(4200)), "4.2s");
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_secs(7380)), "2h03m");
    }
}
