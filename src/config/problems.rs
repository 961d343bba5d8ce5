//! Collecting configuration problems instead of stopping at the first, so that an operator fixes
//! them all in one go (the CLI prints each and exits 64, EX_USAGE). Every message starts with the
//! flag's name (without `--`), then says what is wrong; none repeats a value that may be secret.

use std::fmt;
use std::time::Duration;

use super::bounds::{Bounds, Count};

/// Every problem found so far, one message each.
#[derive(Default)]
pub(super) struct Problems(Vec<String>);

impl Problems {
    /// Records `problem` unless `ok`.
    pub(super) fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    pub(super) fn push(&mut self, problem: String) {
        self.0.push(problem);
    }

    /// `value` if nothing was found, else every problem.
    pub(super) fn into_result<T>(self, value: Option<T>) -> Result<T, Vec<String>> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(self.0),
        }
    }

    /// `value` as a humantime duration within `bounds`. A problem is recorded and the nearest
    /// bound stands in, so that checks relating two settings do not report it a second time.
    pub(super) fn duration(&mut self, name: &str, value: &str, bounds: &Bounds) -> Duration {
        let parsed = match humantime::parse_duration(value) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.0.push(format!(
                    "{name}: {value:?} is not a duration such as 90s, 15m or 7d ({e})"
                ));
                return bounds.min;
            }
        };
        if parsed < bounds.min {
            self.0.push(format!("{name}: must be at least {}", human(bounds.min)));
            bounds.min
        } else if parsed > bounds.max {
            self.0.push(format!(
                "{name}: must be at most {} ({})",
                human(bounds.max),
                bounds.why
            ));
            bounds.max
        } else {
            parsed
        }
    }

    /// As [`Problems::duration`], for the domain's `time::Duration`.
    pub(super) fn time_duration(&mut self, name: &str, value: &str, bounds: &Bounds) -> time::Duration {
        // Cannot fail: every bound is far below time::Duration::MAX.
        time::Duration::try_from(self.duration(name, value, bounds)).unwrap_or(time::Duration::MAX)
    }

    /// `value` within `bounds`, as the type the setting is used as (`u32`, `usize`). Out of range
    /// (or too large for that type on this platform), a problem is recorded and a stand-in
    /// returned: no two counts are checked against each other, and with a problem recorded the
    /// configuration is refused, so the stand-in is never used.
    pub(super) fn count<T: TryFrom<u64> + Default>(&mut self, name: &str, value: impl Into<u64>, bounds: &Count) -> T {
        let value = value.into();
        match T::try_from(value) {
            Ok(fits) if (bounds.min..=bounds.max).contains(&value) => fits,
            _ => {
                self.0.push(format!("{name}: must be {bounds}"));
                T::default()
            }
        }
    }

    /// As [`Problems::count`], for a text's length in bytes.
    pub(super) fn length(&mut self, name: &str, value: &str, bounds: &Count) {
        if !(bounds.min..=bounds.max).contains(&(value.len() as u64)) {
            self.0.push(format!("{name}: must be {bounds} bytes"));
        }
    }
}

/// "1 to 100000", "at least 1", "at most 4294967296 (4 GiB)".
impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (min, u64::MAX) => write!(f, "at least {min}")?,
            (0, max) => write!(f, "at most {max}")?,
            (min, max) => write!(f, "{min} to {max}")?,
        }
        if !self.shown.is_empty() {
            write!(f, " ({})", self.shown)?;
        }
        Ok(())
    }
}

/// `d` the way an operator writes it: the largest unit that divides it (`400d`, `10m`, `100ms`).
pub(super) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 { "0s".into() } else { format!("{ms}ms") }
}
