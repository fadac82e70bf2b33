//! Bandwidth limiting for the sender (`--bwlimit`): a token bucket shared by every connection of
//! a job, whose rate follows an rclone-style timetable such as `"08:00,512K 19:00,off"` (or one
//! constant rate such as `2M`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::units;

/// A `--bwlimit` value that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{text}' is not a bandwidth limit: {reason} (examples: 2M, 512K, \"08:00,512K 19:00,off\")")]
pub struct ThrottleError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The limit in force at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// No limit.
    Off,
    /// At most this many bytes per second.
    Rate(u64),
}

impl Limit {
    fn parse(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Limit::Off);
        }
        match units::parse_size(text) {
            Ok(0) => Err("a rate of 0 would never finish; use 'off' for no limit".into()),
            Ok(n) => Ok(Limit::Rate(n)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Limits by time of day (local time): each entry holds from its minute until the next entry's;
/// the last entry of the day holds past midnight until the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timetable {
    /// `(minute of the day, limit)`, sorted by minute, never empty.
    entries: Vec<(u32, Limit)>,
}

impl Timetable {
    /// One limit all day.
    pub fn constant(limit: Limit) -> Self {
        Timetable {
            entries: vec![(0, limit)],
        }
    }

    /// Parses `2M`, `off`, or `"HH:MM,RATE HH:MM,RATE …"`.
    pub fn parse(text: &str) -> Result<Self, ThrottleError> {
        let err = |reason: String| ThrottleError {
            text: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.is_empty() {
            return Err(err("empty".into()));
        }
        if parts.len() == 1 && !parts[0].contains(',') {
            return Limit::parse(parts[0]).map(Self::constant).map_err(err);
        }
        let mut entries = Vec::with_capacity(parts.len());
        for part in parts {
            let (time, rate) = part
                .split_once(',')
                .ok_or_else(|| err(format!("'{part}' is not 'HH:MM,RATE'")))?;
            let (h, m) = time
                .split_once(':')
                .ok_or_else(|| err(format!("'{time}' is not HH:MM")))?;
            let (h, m): (u32, u32) = match (h.parse(), m.parse()) {
                (Ok(h), Ok(m)) if h < 24 && m < 60 => (h, m),
                _ => return Err(err(format!("'{time}' is not a time of day HH:MM"))),
            };
            entries.push((h * 60 + m, Limit::parse(rate).map_err(err)?));
        }
        entries.sort_by_key(|e| e.0);
        if entries.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(err("a time appears twice".into()));
        }
        Ok(Timetable { entries })
    }

    /// The limit at `minute` of the day (0..1440).
    pub fn limit_at(&self, minute: u32) -> Limit {
        self.entries
            .iter()
            .rev()
            .find(|(start, _)| *start <= minute)
            .or(self.entries.last())
            .map_or(Limit::Off, |(_, limit)| *limit)
    }
}

/// The current local minute of the day.
fn local_minute_of_day() -> u32 {
    let now: libc::time_t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack frame; both pointers
    // are valid for the call. A null return means failure, handled below.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        (tm.tm_hour.clamp(0, 23) * 60 + tm.tm_min.clamp(0, 59)) as u32
    } else {
        ((now / 60) % 1440) as u32
    }
}

struct Bucket {
    /// May go negative: debt that callers sleep off.
    tokens: f64,
    last: Instant,
}

/// A token bucket shared by all connections of a job. The bucket starts empty and holds at most
/// an eighth of a second's worth of bytes (at least 16 KiB), so the average rate over any few
/// seconds stays close to the limit.
pub struct Throttle {
    table: Timetable,
    bucket: Mutex<Bucket>,
}

impl Throttle {
    /// A throttle following `table`.
    pub fn new(table: Timetable) -> Self {
        Throttle {
            table,
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Takes `n` bytes' worth of tokens and returns how long the caller must wait before sending
    /// them (zero when unlimited or when the bucket had them).
    pub fn reserve(&self, n: u64) -> Duration {
        let Limit::Rate(rate) = self.table.limit_at(local_minute_of_day()) else {
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let capacity = (rate / 8.0).max(16.0 * 1024.0);
        let Ok(mut b) = self.bucket.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(capacity);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_timetables() {
        assert_eq!(Timetable::parse("2M").unwrap().limit_at(0), Limit::Rate(2 << 20));
        assert_eq!(Timetable::parse("off").unwrap().limit_at(700), Limit::Off);
        let t = Timetable::parse("08:00,512K 19:00,off").unwrap();
        assert_eq!(t.limit_at(0), Limit::Off, "before 08:00 the 19:00 entry still holds");
        assert_eq!(t.limit_at(8 * 60), Limit::Rate(512 << 10));
        assert_eq!(t.limit_at(18 * 60 + 59), Limit::Rate(512 << 10));
        assert_eq!(t.limit_at(19 * 60), Limit::Off);
        for bad in ["", "0", "fast", "25:00,1M", "08:00", "08:00,1M 08:00,2M", "8-00,1M"] {
            assert!(Timetable::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_paces_to_the_rate() {
        let t = Throttle::new(Timetable::constant(Limit::Rate(1 << 20)));
        let mut waited = Duration::ZERO;
        for _ in 0..16 {
            waited = t.reserve(64 << 10);
        }
        // 1 MiB reserved at once from an empty bucket: about one second of debt.
        assert!(
            waited > Duration::from_millis(900) && waited <= Duration::from_millis(1001),
            "{waited:?}"
        );
        let off = Throttle::new(Timetable::constant(Limit::Off));
        assert_eq!(off.reserve(1 << 30), Duration::ZERO);
    }
}
