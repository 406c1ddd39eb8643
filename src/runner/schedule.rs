//! When the daemon runs: a cron expression matched against the wall clock of an IANA time zone.
//! The zone database is compiled into the binary (jiff's bundled tzdb), because the image is built
//! FROM scratch and has no /usr/share/zoneinfo.
//!
//! DST rule, so that a nightly job runs exactly once per night, never skipped, never doubled:
//! - a local time that a spring-forward change skips (02:30 on the last Sunday of March in
//!   Europe/Berlin) runs at the corresponding instant after the gap (03:30 CEST), as jiff's
//!   "compatible" disambiguation does;
//! - a local time that a fall-back change repeats (02:30 on the last Sunday of October) runs only
//!   at its first occurrence (02:30 CEST); the second 02:30 (CET) is not a run.
//!
//! Two local times that land on the same instant (02:30 pushed past the gap and a real 03:30) are
//! one run. The search walks candidate days and only the hours, minutes and seconds the fields
//! allow, and gives up 8 years ahead.

use std::time::{Duration, SystemTime};

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Span, Timestamp};

/// How far ahead a run is looked for: 8 years, so that `0 0 29 2 *` still finds Feb 29 across
/// 2100, which is not a leap year.
const HORIZON_YEARS: i16 = 8;
/// The same horizon as a duration, for the search over zone transitions and for `period`.
const HORIZON: Duration = Duration::from_secs(HORIZON_YEARS as u64 * 366 * 86_400);
/// How many runs `period` looks at.
const PERIOD_RUNS: usize = 100;
/// Longer than any gap a zone has ever had (Samoa skipped a whole day in 2011): a gap that began
/// this long before `after` can no longer hold a run after it.
const MAX_GAP: SignedDuration = SignedDuration::from_hours(48);

/// A parsed cron expression and the zone its wall clock is read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Bit n set: n is allowed. Seconds and minutes 0-59, hours 0-23, days 1-31, months 1-12,
    /// weekdays 0-6 with 0 = Sunday.
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches when either does (Vixie cron).
    either_day: bool,
    zone: TimeZone,
    cron: String,
    zone_name: String,
}

/// One cron field: its name in messages, its range, and the names it accepts for its values.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `first_named`, `first_named + 1`, ...
    names: &'static [&'static str],
    first_named: u32,
}

const SECOND: Field = Field { name: "second", min: 0, max: 59, names: &[], first_named: 0 };
const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[], first_named: 0 };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[], first_named: 0 };
const DAY_OF_MONTH: Field = Field { name: "day-of-month", min: 1, max: 31, names: &[], first_named: 0 };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    first_named: 1,
};
/// 0-7: both 0 and 7 are Sunday.
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    first_named: 0,
};

impl Schedule {
    /// `cron`: 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, or
    /// one of `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`.
    /// A field is `*`, a number or name, a range `a-b`, any of those with a step `/n` (`a/n` runs
    /// from a to the end), or a comma-separated list of them. When both day fields are
    /// restricted (neither starts with `*`), a day matches if either matches, as in Vixie cron;
    /// `*/2` counts as unrestricted there, as it does in Vixie cron.
    /// `timezone`: an IANA name ("Europe/Berlin") or "UTC".
    pub fn parse(cron: &str, timezone: &str) -> Result<Schedule, String> {
        let cron = cron.trim();
        let expanded = match cron.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "unknown shorthand {cron:?}: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                ))
            }
            _ => cron,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let specs: &[&Field] = match fields.len() {
            5 => &[&MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK],
            6 => &[&SECOND, &MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK],
            n => {
                return Err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), got {n} in {cron:?}"
                ))
            }
        };
        let mut masks = specs
            .iter()
            .zip(&fields)
            .enumerate()
            .map(|(position, (spec, text))| parse_field(text, spec, position + 1))
            .collect::<Result<Vec<u64>, String>>()?;
        // Five fields: second 0.
        if masks.len() == 5 {
            masks.insert(0, 1);
        }
        let unrestricted = |text: &str| text.starts_with('*');
        let (dom_text, dow_text) = (fields[fields.len() - 3], fields[fields.len() - 1]);
        let zone = jiff::tz::db().get(timezone).map_err(|_| format!("unknown time zone {timezone:?}"))?;
        // Sunday is 0 and 7; keep it as 0 only.
        let weekdays = (masks[5] | masks[5] >> 7) & 0x7f;
        Ok(Schedule {
            seconds: masks[0],
            minutes: masks[1],
            hours: masks[2],
            days: masks[3],
            months: masks[4],
            weekdays,
            either_day: !unrestricted(dom_text) && !unrestricted(dow_text),
            zone,
            cron: cron.to_string(),
            zone_name: timezone.to_string(),
        })
    }

    /// The first run strictly after `after`, or None when the expression does not match within
    /// 8 years (e.g. Feb 30).
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let after = Timestamp::try_from(after).ok()?;
        let real = self.next_real(after);
        let limit = real.unwrap_or_else(|| after.checked_add(HORIZON).unwrap_or(Timestamp::MAX));
        let shifted = self.next_in_gap(after, limit);
        let next = match (real, shifted) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(next.into())
    }

    /// The longest gap between consecutive runs among the next 100 runs after `from`, counting
    /// `from` as the start of the first gap so that a schedule with a single run ahead still has
    /// a period. A schedule with no run ahead gets the search horizon: finite, because the
    /// health check adds a grace to it.
    pub fn period(&self, from: SystemTime) -> Duration {
        let mut longest = Duration::ZERO;
        let mut last = from;
        for _ in 0..PERIOD_RUNS {
            let Some(next) = self.next_after(last) else { break };
            longest = longest.max(next.duration_since(last).unwrap_or_default());
            last = next;
        }
        if last == from {
            HORIZON
        } else {
            longest
        }
    }

    /// The expression and zone as given, for messages: `"0 2 * * *" in Europe/Berlin`.
    pub fn describe(&self) -> String {
        format!("\"{}\" in {}", self.cron, self.zone_name)
    }

    /// The first run after `after` among local times that exist (a repeated one at its first
    /// occurrence). Times inside a gap are left to `next_in_gap`: pushed past the gap they can
    /// come after later real times, so they are not in wall-clock order with them.
    fn next_real(&self, after: Timestamp) -> Option<Timestamp> {
        let start = self.zone.to_datetime(after);
        let last_day = start.date().checked_add(Span::new().years(HORIZON_YEARS)).unwrap_or(Date::MAX);
        for local in self.locals(whole_second(start), last_day) {
            let offset = match self.zone.to_ambiguous_timestamp(local).offset() {
                AmbiguousOffset::Unambiguous { offset } => Some(offset),
                AmbiguousOffset::Fold { before, .. } => Some(before),
                AmbiguousOffset::Gap { .. } => None,
            };
            if let Some(offset) = offset {
                let at = offset.to_timestamp(local).ok()?;
                // Not after: the start's own second, or a repeated time whose first occurrence
                // has passed.
                if at > after {
                    return Some(at);
                }
            }
        }
        None
    }

    /// The first run after `after` and before `limit` from a local time that a forward change
    /// skips: it runs at the instant the clock would show it had it not jumped (offset before).
    fn next_in_gap(&self, after: Timestamp, limit: Timestamp) -> Option<Timestamp> {
        let mut best: Option<Timestamp> = None;
        let since = after.checked_sub(MAX_GAP).unwrap_or(Timestamp::MIN);
        for transition in self.zone.following(since) {
            let at = transition.timestamp();
            if at >= limit || best.is_some_and(|best| at >= best) {
                break;
            }
            let before = self.zone.to_offset(at.checked_sub(SignedDuration::from_nanos(1)).ok()?);
            if transition.offset() > before {
                if let Some(run) = self.first_in_gap(after, at, before, transition.offset()) {
                    best = Some(best.map_or(run, |best| best.min(run)));
                }
            }
        }
        best
    }

    /// The earliest run after `after` from the gap the clock jumps over at `at`, from `before`
    /// to `after_offset`.
    fn first_in_gap(&self, after: Timestamp, at: Timestamp, before: Offset, after_offset: Offset) -> Option<Timestamp> {
        let (gap_start, gap_end) = (before.to_datetime(at), after_offset.to_datetime(at));
        let from = gap_start.max(whole_second(before.to_datetime(after)));
        for local in self.locals(from, gap_end.date()) {
            if local >= gap_end {
                return None;
            }
            let run = before.to_timestamp(local).ok()?;
            if run > after {
                return Some(run);
            }
        }
        None
    }

    /// Every local date and time from `from` on, to `last_day`, that the fields match, in order.
    fn locals(&self, from: DateTime, last_day: Date) -> impl Iterator<Item = DateTime> + '_ {
        let next_after = move |local: &DateTime| local.checked_add(Span::new().seconds(1)).ok().and_then(|from| self.next_local(from, last_day));
        std::iter::successors(self.next_local(from, last_day), next_after)
    }

    /// The first local date and time at or after `from` (whole seconds) that the fields match,
    /// on or before `last_day`; whether it exists in the zone is the caller's concern.
    fn next_local(&self, from: DateTime, last_day: Date) -> Option<DateTime> {
        let mut date = from.date();
        let mut time = (from.hour() as u32, from.minute() as u32, from.second() as u32);
        while date <= last_day {
            if !has(self.months, date.month() as u32) {
                // Skip the whole month instead of testing each of its days.
                date = date.last_of_month().tomorrow().ok()?;
                time = (0, 0, 0);
                continue;
            }
            if self.day_matches(date) {
                if let Some((h, m, s)) = self.next_time(time) {
                    // The values come from masks that only hold valid hours, minutes, seconds.
                    return Some(date.at(h as i8, m as i8, s as i8, 0));
                }
            }
            date = date.tomorrow().ok()?;
            time = (0, 0, 0);
        }
        None
    }

    /// The day-of-month and day-of-week fields together, month aside.
    fn day_matches(&self, date: Date) -> bool {
        let by_day = has(self.days, date.day() as u32);
        let by_weekday = has(self.weekdays, date.weekday().to_sunday_zero_offset() as u32);
        if self.either_day {
            by_day || by_weekday
        } else {
            by_day && by_weekday
        }
    }

    /// The first (hour, minute, second) at or after `from` on one day that the fields match.
    fn next_time(&self, from: (u32, u32, u32)) -> Option<(u32, u32, u32)> {
        let (from_h, from_m, from_s) = from;
        for h in bits_from(self.hours, from_h) {
            let first_m = if h == from_h { from_m } else { 0 };
            for m in bits_from(self.minutes, first_m) {
                let first_s = if h == from_h && m == from_m { from_s } else { 0 };
                if let Some(s) = bits_from(self.seconds, first_s).next() {
                    return Some((h, m, s));
                }
            }
        }
        None
    }
}

/// Parses one field into a mask of allowed values; `position` counts from 1 as written.
fn parse_field(text: &str, spec: &Field, position: usize) -> Result<u64, String> {
    let mut mask = 0u64;
    for item in text.split(',') {
        let fail = |what: String| format!("field {position} ({}) \"{item}\": {what}", spec.name);
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let step = match step {
            None => None,
            Some(text) => match number(text) {
                Some(0) => return Err(fail("step must be at least 1".into())),
                Some(n) => Some(n),
                None => return Err(fail(format!("step {text:?} is not a number"))),
            },
        };
        let value = |token: &str| value(token, spec, token == item).map_err(fail);
        let (low, high) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((low, high)) = range.split_once('-') {
            (value(low)?, value(high)?)
        } else {
            let low = value(range)?;
            // `a/n` steps from a to the end of the range.
            (low, if step.is_some() { spec.max } else { low })
        };
        if low > high {
            return Err(fail(format!("range {low}-{high} runs backwards")));
        }
        for v in (low..=high).step_by(step.unwrap_or(1) as usize) {
            mask |= 1 << v;
        }
    }
    Ok(mask)
}

/// One value of a field, as a number or (case-insensitive) name. `whole`: the token is the whole
/// item, so a lone number reads `"25": out of range 0-23` and a range `"20-25": 25 is out of ...`.
fn value(token: &str, spec: &Field, whole: bool) -> Result<u32, String> {
    let (min, max) = (spec.min, spec.max);
    if token.is_empty() {
        return Err("a value is missing".into());
    }
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return match number(token) {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ if whole => Err(format!("out of range {min}-{max}")),
            _ => Err(format!("{token} is out of range {min}-{max}")),
        };
    }
    if let Some(index) = spec.names.iter().position(|name| name.eq_ignore_ascii_case(token)) {
        return Ok(spec.first_named + index as u32);
    }
    Err(match spec.names {
        [first, .., last] => format!("{token:?} is not a number or name ({}-{})", first.to_uppercase(), last.to_uppercase()),
        _ => format!("{token:?} is not a number"),
    })
}

/// A plain decimal number (no sign); None when it is not one or does not fit.
fn number(text: &str) -> Option<u32> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `value` is allowed by `mask`.
fn has(mask: u64, value: u32) -> bool {
    mask >> value & 1 == 1
}

/// The set bits of `mask` from `from` upwards.
fn bits_from(mask: u64, from: u32) -> impl Iterator<Item = u32> {
    (from..64).filter(move |&bit| has(mask, bit))
}

/// `local` without its fraction of a second: cron runs fall on whole seconds.
fn whole_second(local: DateTime) -> DateTime {
    local.date().at(local.hour(), local.minute(), local.second(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        text.parse::<Timestamp>().expect("test instant").into()
    }

    fn show(time: SystemTime) -> String {
        Timestamp::try_from(time).expect("in range").to_string()
    }

    fn schedule(cron: &str, zone: &str) -> Schedule {
        Schedule::parse(cron, zone).expect("valid schedule")
    }

    /// Every run in [from, until), walking `next_after`.
    fn runs(schedule: &Schedule, from: &str, until: &str) -> Vec<SystemTime> {
        let (mut last, until) = (at(from) - Duration::from_nanos(1), at(until));
        let mut runs = Vec::new();
        while let Some(next) = schedule.next_after(last) {
            if next >= until {
                break;
            }
            assert!(next > last, "{} not after {}", show(next), show(last));
            runs.push(next);
            last = next;
        }
        runs
    }

    fn local_date(time: SystemTime, zone: &str) -> Date {
        Timestamp::try_from(time).expect("in range").in_tz(zone).expect("zone").date()
    }

    fn next(schedule: &Schedule, after: &str) -> Option<String> {
        schedule.next_after(at(after)).map(show)
    }

    #[test]
    fn daily_in_utc_is_strictly_after() {
        let s = schedule("0 2 * * *", "UTC");
        assert_eq!(next(&s, "2026-12-02T01:00:00Z").as_deref(), Some("2026-12-02T02:00:00Z"));
        assert_eq!(next(&s, "2026-12-02T02:00:00Z").as_deref(), Some("2026-12-03T02:00:00Z"));
        assert_eq!(next(&s, "2026-12-02T02:00:00.5Z").as_deref(), Some("2026-12-03T02:00:00Z"));
        assert_eq!(next(&s, "2026-12-02T01:59:59.9Z").as_deref(), Some("2026-12-02T02:00:00Z"));
    }

    /// "30 2 * * *" in Berlin over three weeks: one run per local day, and `transition_day_run`
    /// on the day the clocks change.
    fn one_run_per_day(from: &str, until: &str, transition_day: Date, transition_day_run: &str) {
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let runs = runs(&s, from, until);
        assert_eq!(runs.len(), 21);
        let first = local_date(runs[0], "Europe/Berlin");
        for (i, run) in runs.iter().enumerate() {
            let day = local_date(*run, "Europe/Berlin");
            assert_eq!(day, first.checked_add(Span::new().days(i as i64)).expect("date"), "run {}", show(*run));
            if day == transition_day {
                assert_eq!(show(*run), transition_day_run);
            }
        }
    }

    #[test]
    fn spring_forward_runs_after_the_gap_once() {
        one_run_per_day(
            "2027-03-17T23:00:00Z",
            "2027-04-07T22:00:00Z",
            jiff::civil::date(2027, 3, 28),
            "2027-03-28T01:30:00Z", // 03:30 CEST
        );
    }

    #[test]
    fn fall_back_runs_at_the_first_occurrence_once() {
        one_run_per_day(
            "2026-10-14T22:00:00Z",
            "2026-11-04T23:00:00Z",
            jiff::civil::date(2026, 10, 25),
            "2026-10-25T00:30:00Z", // the first 02:30, CEST
        );
    }

    #[test]
    fn inside_the_fold_the_second_occurrence_is_not_a_run() {
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let next_night = Some("2026-10-26T01:30:00Z"); // 02:30 CET the day after
        // 02:10 CEST: the first 02:30 is still ahead.
        assert_eq!(next(&s, "2026-10-25T00:10:00Z").as_deref(), Some("2026-10-25T00:30:00Z"));
        assert_eq!(next(&s, "2026-10-25T00:30:00Z").as_deref(), next_night);
        // 02:45 CEST, 02:10 CET and 02:40 CET: all after the first 02:30.
        assert_eq!(next(&s, "2026-10-25T00:45:00Z").as_deref(), next_night);
        assert_eq!(next(&s, "2026-10-25T01:10:00Z").as_deref(), next_night);
        assert_eq!(next(&s, "2026-10-25T01:40:00Z").as_deref(), next_night);
    }

    #[test]
    fn inside_the_gap_the_shifted_run_is_still_ahead() {
        let s = schedule("30 2 * * *", "Europe/Berlin");
        // 03:10 CEST, just after the jump: the skipped 02:30 runs at 03:30 CEST.
        assert_eq!(next(&s, "2027-03-28T01:10:00Z").as_deref(), Some("2027-03-28T01:30:00Z"));
        assert_eq!(next(&s, "2027-03-28T01:30:00Z").as_deref(), Some("2027-03-29T00:30:00Z"));
    }

    /// Runs on a local day, walking through it.
    fn runs_on(cron: &str, from: &str, until: &str) -> Vec<String> {
        runs(&schedule(cron, "Europe/Berlin"), from, until).into_iter().map(show).collect()
    }

    #[test]
    fn hourly_and_quarter_hourly_through_both_changes() {
        // Whole local days: the March one has 23 hours, the October one 25.
        let spring = ("2027-03-27T23:00:00Z", "2027-03-28T22:00:00Z");
        let fall = ("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z");
        let hourly = runs_on("0 * * * *", spring.0, spring.1);
        assert_eq!(hourly.len(), 23);
        assert_eq!(hourly[..3], ["2027-03-27T23:00:00Z", "2027-03-28T00:00:00Z", "2027-03-28T01:00:00Z"]);
        let hourly = runs_on("0 * * * *", fall.0, fall.1);
        // 02:00 runs once, in CEST; the next run is 03:00 CET.
        assert_eq!(hourly.len(), 24);
        assert_eq!(hourly[2..5], ["2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"]);
        assert_eq!(runs_on("*/15 * * * *", spring.0, spring.1).len(), 23 * 4);
        assert_eq!(runs_on("*/15 * * * *", fall.0, fall.1).len(), 24 * 4);
        // Over three weeks each: strictly increasing (checked by `runs`), no two the same.
        for (from, until) in [("2027-03-18T00:00:00Z", "2027-04-08T00:00:00Z"), ("2026-10-15T00:00:00Z", "2026-11-05T00:00:00Z")] {
            for cron in ["0 * * * *", "*/15 * * * *"] {
                let all = runs_on(cron, from, until);
                let mut unique = all.clone();
                unique.dedup();
                assert_eq!(unique.len(), all.len(), "{cron}");
            }
        }
    }

    #[test]
    fn a_skipped_time_can_run_after_a_later_real_one() {
        // Lord Howe Island moves from +10:30 to +11 at 02:00 on 2026-10-04: 02:15 does not exist
        // and runs at 02:45 (+11), after the real 02:40.
        let s = schedule("15,40 2 * * *", "Australia/Lord_Howe");
        let runs: Vec<String> = runs(&s, "2026-10-03T14:00:00Z", "2026-10-04T00:00:00Z").into_iter().map(show).collect();
        assert_eq!(runs, ["2026-10-03T15:40:00Z", "2026-10-03T15:45:00Z"]);
    }

    #[test]
    fn a_skipped_day_still_runs_once() {
        // Samoa skipped 2011-12-30: its noon runs at the instant after the gap, the noon of the
        // 31st, and that is one run, not two.
        let s = schedule("0 12 * * *", "Pacific/Apia");
        let runs: Vec<String> = runs(&s, "2011-12-28T00:00:00Z", "2011-12-31T12:00:00Z").into_iter().map(show).collect();
        assert_eq!(runs, ["2011-12-28T22:00:00Z", "2011-12-29T22:00:00Z", "2011-12-30T22:00:00Z"]);
    }

    #[test]
    fn six_fields_run_every_five_seconds() {
        let s = schedule("*/5 * * * * *", "UTC");
        let runs = runs(&s, "2026-12-02T23:59:41Z", "2026-12-03T00:00:41Z");
        assert_eq!(runs.len(), 12);
        assert_eq!(show(runs[0]), "2026-12-02T23:59:45Z");
        for pair in runs.windows(2) {
            assert_eq!(pair[1].duration_since(pair[0]).expect("increasing"), Duration::from_secs(5));
        }
        assert_eq!(s.period(at("2026-12-02T23:59:41Z")), Duration::from_secs(5));
    }

    #[test]
    fn period_is_the_longest_gap() {
        let day = Duration::from_secs(86_400);
        assert_eq!(schedule("0 2 * * *", "UTC").period(at("2026-12-02T01:00:00Z")), day);
        let berlin = schedule("0 2 * * *", "Europe/Berlin");
        // 100 nights from December: the March change makes one night 23 hours.
        assert_eq!(berlin.period(at("2026-12-02T01:00:00Z")), day);
        // Through the October change, one night is 25 hours.
        assert_eq!(berlin.period(at("2026-10-20T00:00:00Z")), day + Duration::from_secs(3600));
        assert_eq!(schedule("@hourly", "UTC").period(at("2026-12-02T01:00:00Z")), Duration::from_secs(3600));
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        // The 13th, or any Friday.
        let s = schedule("0 0 13 * FRI", "UTC");
        let days: Vec<String> = runs(&s, "2026-11-01T00:00:00Z", "2026-12-19T00:00:00Z").into_iter().map(show).collect();
        assert_eq!(
            days,
            [
                "2026-11-06T00:00:00Z",
                "2026-11-13T00:00:00Z",
                "2026-11-20T00:00:00Z",
                "2026-11-27T00:00:00Z",
                "2026-12-04T00:00:00Z",
                "2026-12-11T00:00:00Z",
                "2026-12-13T00:00:00Z",
                "2026-12-18T00:00:00Z",
            ]
        );
        // A day field starting with `*` is unrestricted: both must match (a Monday on 1, 11, 21, 31).
        let s = schedule("0 0 */10 * MON", "UTC");
        assert_eq!(next(&s, "2026-11-01T00:00:00Z").as_deref(), Some("2026-12-21T00:00:00Z"));
        // Only one restricted: only that one counts.
        assert_eq!(next(&schedule("0 0 * * MON", "UTC"), "2026-12-02T00:00:00Z").as_deref(), Some("2026-12-07T00:00:00Z"));
        assert_eq!(next(&schedule("0 0 1 * *", "UTC"), "2026-12-02T00:00:00Z").as_deref(), Some("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn names_ranges_and_steps() {
        let from = "2026-12-02T00:00:00Z"; // a Wednesday
        let sunday = Some("2026-12-06T00:00:00Z");
        for cron in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN", "0 0 * Dec Sun"] {
            assert_eq!(next(&schedule(cron, "UTC"), from).as_deref(), sunday, "{cron}");
        }
        // Fri-Sun through 7.
        let weekend = runs(&schedule("0 0 * * 5-7", "UTC"), from, "2026-12-09T00:00:00Z");
        assert_eq!(weekend.into_iter().map(show).collect::<Vec<_>>(), ["2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"]);
        assert_eq!(next(&schedule("0 9 * jan,JUL mon-fri", "UTC"), from).as_deref(), Some("2027-01-01T09:00:00Z"));
        let stepped = runs(&schedule("0-30/10 9-17/4 * * *", "UTC"), from, "2026-12-02T13:05:00Z");
        assert_eq!(
            stepped.into_iter().map(show).collect::<Vec<_>>(),
            ["2026-12-02T09:00:00Z", "2026-12-02T09:10:00Z", "2026-12-02T09:20:00Z", "2026-12-02T09:30:00Z", "2026-12-02T13:00:00Z"]
        );
        // `a/n` runs from a to the end.
        assert_eq!(next(&schedule("0 20/2 * * *", "UTC"), "2026-12-02T20:00:00Z").as_deref(), Some("2026-12-02T22:00:00Z"));
        assert_eq!(next(&schedule("0 0 * * mon,3", "UTC"), "2026-12-02T00:00:00Z").as_deref(), Some("2026-12-07T00:00:00Z"));
    }

    #[test]
    fn shorthands() {
        let from = "2026-12-02T10:30:00Z";
        for (cron, expected) in [
            ("@daily", "2026-12-03T00:00:00Z"),
            ("@midnight", "2026-12-03T00:00:00Z"),
            ("@hourly", "2026-12-02T11:00:00Z"),
            ("@weekly", "2026-12-06T00:00:00Z"),
            ("@monthly", "2027-01-01T00:00:00Z"),
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@Annually", "2027-01-01T00:00:00Z"),
            (" @DAILY ", "2026-12-03T00:00:00Z"),
        ] {
            assert_eq!(next(&schedule(cron, "UTC"), from).as_deref(), Some(expected), "{cron}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let error = |cron: &str| Schedule::parse(cron, "UTC").expect_err("an error");
        assert_eq!(error("0 25 * * *"), r#"field 2 (hour) "25": out of range 0-23"#);
        assert_eq!(error("0 0 25 * * *"), r#"field 3 (hour) "25": out of range 0-23"#);
        assert_eq!(error("0 20-25 * * *"), r#"field 2 (hour) "20-25": 25 is out of range 0-23"#);
        assert_eq!(error("60 * * * *"), r#"field 1 (minute) "60": out of range 0-59"#);
        assert_eq!(error("0 0 0 * *"), r#"field 3 (day-of-month) "0": out of range 1-31"#);
        assert_eq!(error("0 0 * 13 *"), r#"field 4 (month) "13": out of range 1-12"#);
        assert_eq!(error("0 0 * * 8"), r#"field 5 (day-of-week) "8": out of range 0-7"#);
        assert_eq!(error("99999999999 * * * *"), r#"field 1 (minute) "99999999999": out of range 0-59"#);
        assert_eq!(error("*/0 * * * *"), r#"field 1 (minute) "*/0": step must be at least 1"#);
        assert_eq!(error("*/x * * * *"), r#"field 1 (minute) "*/x": step "x" is not a number"#);
        assert_eq!(error("0 5-1 * * *"), r#"field 2 (hour) "5-1": range 5-1 runs backwards"#);
        assert_eq!(error("1,,2 * * * *"), r#"field 1 (minute) "": a value is missing"#);
        assert_eq!(error("0 0 * FOO *"), r#"field 4 (month) "FOO": "FOO" is not a number or name (JAN-DEC)"#);
        assert_eq!(error("0 0 * * MON-FUN"), r#"field 5 (day-of-week) "MON-FUN": "FUN" is not a number or name (SUN-SAT)"#);
        assert_eq!(error("0 -1 * * *"), r#"field 2 (hour) "-1": a value is missing"#);
        assert_eq!(error("+5 * * * *"), r#"field 1 (minute) "+5": "+5" is not a number"#);
        assert_eq!(
            error("0 0 * *"),
            r#"expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), got 4 in "0 0 * *""#
        );
        assert!(error("* * * * * * *").contains("got 7"));
        assert!(error("").contains("got 0"));
        assert!(error("@reboot").starts_with(r#"unknown shorthand "@reboot""#));
        assert_eq!(Schedule::parse("0 2 * * *", "Europe/Berln").err().as_deref(), Some(r#"unknown time zone "Europe/Berln""#));
        assert_eq!(Schedule::parse("0 2 * * *", "").err().as_deref(), Some(r#"unknown time zone """#));
    }

    #[test]
    fn an_expression_that_never_matches_has_no_run() {
        let s = schedule("0 0 30 2 *", "UTC");
        assert_eq!(s.next_after(at("2026-12-02T00:00:00Z")), None);
        assert_eq!(s.period(at("2026-12-02T00:00:00Z")), HORIZON);
        // Feb 29 is found, even across 2100, which is no leap year.
        let leap = schedule("0 0 29 2 *", "UTC");
        assert_eq!(next(&leap, "2026-12-02T00:00:00Z").as_deref(), Some("2028-02-29T00:00:00Z"));
        assert_eq!(next(&leap, "2096-03-01T00:00:00Z").as_deref(), Some("2104-02-29T00:00:00Z"));
        // The end of time: no run, no panic.
        assert_eq!(schedule("@yearly", "UTC").next_after(at("9999-06-01T00:00:00Z")), None);
    }

    #[test]
    fn describe_shows_what_was_given() {
        assert_eq!(schedule("0 2 * * *", "Europe/Berlin").describe(), r#""0 2 * * *" in Europe/Berlin"#);
        assert_eq!(schedule("@daily", "UTC").describe(), r#""@daily" in UTC"#);
    }
}
