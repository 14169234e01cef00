//! Durations as an SRE writes them on a command line, one syntax for every
//! flag: humantime's (`250ms`, `10s`, `2m`, `1h 30m`, `1min`), or a bare
//! number of seconds (`30`, `0.5`), as the integer-second flags took.
use std::time::Duration;

/// The longest duration any flag takes: longer outlasts any migration,
/// and far longer overflows the clocks it is added to.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration; more than zero.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let duration = parse_duration_or_zero(text)?;
    if duration.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(duration)
}

/// The same, where 0 means none (e.g. `--in-flight 0`).
pub fn parse_duration_or_zero(text: &str) -> std::result::Result<Duration, String> {
    let duration = parse_any(text.trim())?;
    if duration > MAX_DURATION {
        return Err(format!("{:?}: at most 30 days", text.trim()));
    }
    Ok(duration)
}

fn parse_any(text: &str) -> std::result::Result<Duration, String> {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let seconds: f64 = text
            .parse()
            .map_err(|_| format!("{text:?}: expected a duration such as 500ms, 10s or 2m"))?;
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("{text:?}: {e} (expected a duration such as 500ms, 10s, 2m or 1h 30m)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_bare_seconds_and_zero() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0").unwrap_err().contains("more than zero"));
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert!(
            parse_duration("10parsecs")
                .unwrap_err()
                .contains("unknown time unit")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("expected a duration")
        );
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("30d"), Ok(MAX_DURATION));
        assert!(
            parse_duration("31d")
                .unwrap_err()
                .contains("at most 30 days")
        );
        assert!(parse_duration("1e30").is_err());
        assert!(
            parse_duration_or_zero("100000000y")
                .unwrap_err()
                .contains("at most 30 days")
        );
    }
}
