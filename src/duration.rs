//! Durations on the command line (`90s`, `10m`, `2h`, `7d`, `1h30m`) and how
//! lcrun prints them back (`5m00s`).

use std::time::Duration;

/// Parses a humantime-style duration; a bare number means seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("invalid duration '{text}': {err} (e.g. 90s, 10m, 2h, 7d)"))
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
        assert!(parse("soon").is_err());
        assert!(parse("-3").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn renders_compactly() {
        assert_eq!(short(Duration::from_secs(300)), "5m00s");
        assert_eq!(short(Duration::from_millis(4200)), "4.2s");
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_secs(7380)), "2h03m");
    }
}
