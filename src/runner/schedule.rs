//! When the daemon runs: a cron expression read on the wall clock of an IANA time zone (the zone
//! database is built into the binary: the image has no /usr/share/zoneinfo).
//!
//! DST rule: a local time that a change skips (02:30 on the night clocks go forward) runs at the
//! instant just after the gap (03:30), and a local time that happens twice (the night they go back)
//! runs once, at its first occurrence. A nightly job runs exactly once per night.

use std::time::{Duration, SystemTime};

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

pub struct Schedule {
    seconds: Vec<i8>,
    minutes: Vec<i8>,
    hours: Vec<i8>,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches when either does (Vixie cron).
    either_day: bool,
    zone: TimeZone,
    shown: String,
}

const FIELDS: [(&str, u32, u32); 6] = [("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];
const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field as a bit set of its allowed values.
fn field(text: &str, index: usize, number: usize) -> Result<u64, String> {
    let (name, low, high) = FIELDS[index];
    let bad = |why: String| format!("field {number} ({name}) {text:?}: {why}");
    let value = |v: &str| -> Result<u32, String> {
        let lower = v.to_ascii_lowercase();
        let named = match index {
            4 => MONTHS.iter().position(|m| *m == lower).map(|i| i as u32 + 1),
            5 => WEEKDAYS.iter().position(|d| *d == lower).map(|i| i as u32),
            _ => None,
        };
        let n = named.or_else(|| v.parse().ok()).ok_or_else(|| bad(format!("{v:?} is not a number")))?;
        if n < low || n > high {
            return Err(bad(format!("out of range {low}-{high}")));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| bad(format!("step {step:?} must be a whole number above 0")))?),
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (low, high),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(range)?, high),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return Err(bad(format!("range {from}-{to} runs backwards")));
        }
        for v in (from..=to).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    if index == 5 && set & (1 << 7) != 0 {
        set = (set | 1) & !(1 << 7); // 7 is Sunday too
    }
    Ok(set)
}

fn values(set: u64) -> Vec<i8> {
    (0..64).filter(|v| set & (1 << v) != 0).map(|v| v as i8).collect()
}

impl Schedule {
    /// `cron`: 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, or
    /// `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`. `timezone`: an IANA name or `UTC`.
    pub fn parse(cron: &str, timezone: &str) -> Result<Schedule, String> {
        let expanded = match cron.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let mut parts: Vec<&str> = expanded.split_whitespace().collect();
        let offset = match parts.len() {
            5 => {
                parts.insert(0, "0");
                1
            }
            6 => 0,
            n => return Err(format!("{n} fields: a schedule has 5 (minute hour day month weekday) or 6 (seconds first)")),
        };
        let mut sets = [0u64; 6];
        for (i, part) in parts.iter().enumerate() {
            sets[i] = field(part, i, i + 1 - offset)?;
        }
        let zone = TimeZone::get(timezone).map_err(|_| format!("unknown time zone {timezone:?}: use an IANA name such as Europe/Berlin, or UTC"))?;
        Ok(Schedule {
            seconds: values(sets[0]),
            minutes: values(sets[1]),
            hours: values(sets[2]),
            days: sets[3],
            months: sets[4],
            weekdays: sets[5],
            either_day: parts[3] != "*" && parts[5] != "*",
            zone,
            shown: format!("\"{cron}\" in {timezone}"),
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        let day = if self.either_day { dom || dow } else { dom && dow };
        day && self.months & (1 << date.month()) != 0
    }

    /// The first run strictly after `after`; `None` when the expression matches no day in 5 years.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let after = Timestamp::try_from(after).ok()?;
        let local = after.to_zoned(self.zone.clone());
        // From the day before: a fold can put a time of yesterday's civil date after `after`.
        let mut date = local.date().yesterday().ok()?;
        for _ in 0..(5 * 366 + 2) {
            if self.day_matches(date) {
                let mut best: Option<Timestamp> = None;
                for &h in &self.hours {
                    for &m in &self.minutes {
                        for &s in &self.seconds {
                            let civil = DateTime::new(date.year(), date.month(), date.day(), h, m, s, 0).ok()?;
                            // `compatible`: the earlier instant in a fold, the later one past a gap.
                            let Ok(at) = self.zone.to_ambiguous_zoned(civil).compatible() else { continue };
                            let at = at.timestamp();
                            if at > after && best.is_none_or(|b| at < b) {
                                best = Some(at);
                            }
                        }
                        if best.is_some() && self.seconds.len() > 1 {
                            break;
                        }
                    }
                    if best.is_some() {
                        break;
                    }
                }
                if let Some(at) = best {
                    return Some(SystemTime::from(at));
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The longest gap between consecutive runs among the next 100 after `from`.
    pub fn period(&self, from: SystemTime) -> Duration {
        let mut longest = Duration::ZERO;
        let mut at = from;
        let Some(mut previous) = self.next_after(at) else { return Duration::from_secs(86_400) };
        for _ in 0..100 {
            at = previous;
            let Some(next) = self.next_after(at) else { break };
            longest = longest.max(next.duration_since(previous).unwrap_or_default());
            previous = next;
        }
        longest
    }

    pub fn describe(&self) -> String {
        self.shown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        SystemTime::from(text.parse::<Timestamp>().unwrap())
    }

    fn show(t: SystemTime) -> String {
        Timestamp::try_from(t).unwrap().to_string()
    }

    #[test]
    fn nightly_in_utc() {
        let s = Schedule::parse("0 2 * * *", "UTC").unwrap();
        assert_eq!(show(s.next_after(at("2026-12-02T01:00:00Z")).unwrap()), "2026-12-02T02:00:00Z");
        assert_eq!(show(s.next_after(at("2026-12-02T02:00:00Z")).unwrap()), "2026-12-03T02:00:00Z");
        assert_eq!(s.period(at("2026-12-02T00:00:00Z")), Duration::from_secs(86_400));
    }

    /// One run per local night across both changes of 2026/27 in Berlin, with a fixed clock.
    #[test]
    fn exactly_one_run_per_night_across_dst_changes() {
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        for (start, gap_day, expected) in [
            ("2026-10-15T00:00:00Z", "2026-10-25", "2026-10-25T00:30:00Z"), // fold: the first 02:30 (CEST)
            ("2027-03-18T00:00:00Z", "2027-03-28", "2027-03-28T01:30:00Z"), // gap: 03:30 CEST
        ] {
            let mut t = at(start);
            let mut nights = Vec::new();
            for _ in 0..20 {
                t = s.next_after(t).unwrap();
                let local = Timestamp::try_from(t).unwrap().to_zoned(TimeZone::get("Europe/Berlin").unwrap());
                nights.push(local.date().to_string());
                if local.date().to_string() == gap_day {
                    assert_eq!(show(t), expected);
                }
            }
            let mut unique = nights.clone();
            unique.dedup();
            assert_eq!(unique, nights, "a night ran twice: {nights:?}");
            let first = nights[0].parse::<Date>().unwrap();
            for (i, night) in nights.iter().enumerate() {
                assert_eq!(*night, first.checked_add(jiff::Span::new().days(i as i64)).unwrap().to_string(), "a night was skipped: {nights:?}");
            }
        }
        // Asked from inside the fold, after the first 02:30 (00:45Z is 02:45 CEST; 01:10Z is 02:10 CET).
        for inside in ["2026-10-25T00:45:00Z", "2026-10-25T01:10:00Z"] {
            assert_eq!(show(s.next_after(at(inside)).unwrap()), "2026-10-26T01:30:00Z");
        }
    }

    #[test]
    fn frequent_schedules_increase_strictly_through_changes() {
        for cron in ["0 * * * *", "*/15 * * * *"] {
            let s = Schedule::parse(cron, "Europe/Berlin").unwrap();
            for start in ["2026-10-24T20:00:00Z", "2027-03-27T20:00:00Z"] {
                let mut t = at(start);
                for _ in 0..40 {
                    let next = s.next_after(t).unwrap();
                    assert!(next > t);
                    t = next;
                }
            }
        }
    }

    #[test]
    fn seconds_first_and_period() {
        let s = Schedule::parse("*/5 * * * * *", "UTC").unwrap();
        assert_eq!(show(s.next_after(at("2026-12-02T10:00:01Z")).unwrap()), "2026-12-02T10:00:05Z");
        assert_eq!(s.period(at("2026-12-02T10:00:01Z")), Duration::from_secs(5));
    }

    #[test]
    fn names_ranges_steps_and_the_either_day_rule() {
        let s = Schedule::parse("0 3 1 * MON", "UTC").unwrap();
        // 2026-12-01 is a Tuesday (the 1st), 2026-12-07 a Monday.
        assert_eq!(show(s.next_after(at("2026-11-30T04:00:00Z")).unwrap()), "2026-12-01T03:00:00Z");
        assert_eq!(show(s.next_after(at("2026-12-01T04:00:00Z")).unwrap()), "2026-12-07T03:00:00Z");
        let s = Schedule::parse("0 9-17/4 * JAN-MAR sun,7", "UTC").unwrap();
        assert_eq!(s.hours, vec![9, 13, 17]);
        assert_eq!(s.weekdays, 1);
        assert_eq!(Schedule::parse("@daily", "UTC").unwrap().hours, vec![0]);
        assert!(Schedule::parse("0 0 30 2 *", "UTC").unwrap().next_after(at("2026-01-01T00:00:00Z")).is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = |cron: &str| Schedule::parse(cron, "UTC").err().unwrap();
        assert!(e("0 25 * * *").contains("field 2 (hour) \"25\": out of range 0-23"), "{}", e("0 25 * * *"));
        assert!(e("0 2 * *").contains("4 fields"));
        assert!(e("*/0 2 * * *").contains("step"));
        assert!(e("0 2 * foo *").contains("month"));
        assert!(Schedule::parse("0 2 * * *", "Europe/Berln").err().unwrap().contains("Europe/Berln"));
    }
}
