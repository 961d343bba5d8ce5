//! `ratchet events`: which store, and which audit events to print (the filters, validated: a
//! family id that is a UUID, a known kind, a time, a bounded count).

use std::path::PathBuf;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::bounds::{AUDIT_RETENTION, EVENTS_LIMIT};
use super::database;
use super::problems::Problems;
use crate::cli::EventsArgs;
use crate::domain::FamilyId;
use crate::store::{EventFilter, EventKind, Target};

/// What `ratchet events` needs.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    pub database: Target,
    pub filter: EventFilter,
}

impl EventsConfig {
    /// `--since` as a duration is taken back from `now`.
    ///
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: &EventsArgs, now: OffsetDateTime) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let database = database::collect(&args.database, &args.data_dir, &mut problems);
        let family = args
            .family
            .as_deref()
            .and_then(|id| match FamilyId::parse("family", id) {
                Ok(id) => Some(id),
                Err(error) => {
                    problems.push(error.to_string());
                    None
                }
            });
        let kind = args.kind.as_deref().and_then(|kind| match kind.parse::<EventKind>() {
            Ok(kind) => Some(kind),
            Err(error) => {
                problems.push(format!("kind: {error}"));
                None
            }
        });
        let since = args.since.as_deref().and_then(|since| match self::since(since, now) {
            Ok(since) => Some(since),
            Err(problem) => {
                problems.push(problem);
                None
            }
        });
        let limit = problems.count("limit", args.limit, &EVENTS_LIMIT);
        let config = database.map(|database| Self {
            database,
            filter: EventFilter {
                family,
                subject: args.subject.clone(),
                kind,
                since,
                limit,
            },
        });
        problems.into_result(config)
    }

    /// The database file, for SQLite, and so whether there is one to read.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.database {
            Target::Sqlite(target) => Some(target.path.clone()),
            Target::Postgres(_) => None,
        }
    }
}

/// An RFC 3339 time, or a duration (`24h`, `7d`) before `now`: as far back as events are kept
/// at most.
fn since(value: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(at);
    }
    let problem =
        || format!("since: {value:?} is neither an RFC 3339 time (2026-12-07T09:00:00Z) nor a duration ago (24h, 7d)");
    let ago = humantime::parse_duration(value).map_err(|_| problem())?;
    if ago > AUDIT_RETENTION.max {
        return Err(format!(
            "since: must be at most {} ago ({})",
            super::problems::human(AUDIT_RETENTION.max),
            AUDIT_RETENTION.why
        ));
    }
    time::Duration::try_from(ago)
        .ok()
        .and_then(|ago| now.checked_sub(ago))
        .ok_or_else(problem)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn events(extra: &[&str]) -> Result<EventsConfig, Vec<String>> {
        let mut argv = vec!["ratchet", "events"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Events(args) => EventsConfig::from_args(&args, now()),
            _ => unreachable!(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn by_default_the_newest_hundred_events_of_any_kind() {
        let config = events(&[]).unwrap();
        assert_eq!(config.filter, EventFilter::latest(100));
    }

    #[test]
    fn since_is_a_time_or_a_duration_ago() {
        let since = |value: &str| events(&[&format!("--since={value}")]).map(|config| config.filter.since);
        assert_eq!(since("24h").unwrap(), Some(now() - time::Duration::hours(24)));
        assert_eq!(
            since("2026-12-07T09:00:00Z").unwrap(),
            Some(OffsetDateTime::parse("2026-12-07T09:00:00Z", &Rfc3339).unwrap())
        );
        assert_eq!(
            since("2026-12-07T10:00:00+01:00").unwrap(),
            since("2026-12-07T09:00:00Z").unwrap()
        );
        for bad in ["yesterday", "2026-12-07", "-5h", "11y"] {
            let problems = since(bad).unwrap_err();
            assert!(
                problems.len() == 1 && problems[0].starts_with("since: "),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_bad_filter_is_reported_at_once_naming_its_flag() {
        let problems = events(&[
            "--family",
            "not-a-uuid",
            "--kind",
            "stolen",
            "--limit",
            "0",
            "--since",
            "soon",
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        for (problem, flag) in problems.iter().zip(["family: ", "kind: ", "since: ", "limit: "]) {
            assert!(problem.starts_with(flag), "{problems:?}");
        }
        assert_eq!(
            events(&["--limit", "10001"]).unwrap_err(),
            ["limit: must be 1 to 10000"]
        );
        let config = events(&["--limit", "10000", "--kind", "reuse_detected"]).unwrap();
        assert_eq!(config.filter.limit, 10_000);
        assert_eq!(config.filter.kind, Some(EventKind::ReuseDetected));
    }
}
