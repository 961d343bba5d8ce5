//! What the tokens say and how long sessions live: `iss`, the default `aud`, the lifetimes, the
//! reuse grace window, the clock leeway, the session cap and the per-family Rotate limit, as the
//! issuer's [`Policy`].

use std::num::NonZeroU32;

use super::bounds::{ACCESS_TTL, LEEWAY, MAX_SESSIONS, NAME_BYTES, REUSE_GRACE, ROTATE_RATE, SESSION_TTL};
use super::problems::Problems;
use crate::cli::ServeArgs;
use crate::domain::RotateLimit;
use crate::issuer::Policy;

pub(super) fn collect(args: &ServeArgs, problems: &mut Problems) -> Policy {
    let access_ttl = problems.time_duration("access-ttl", &args.access_ttl, &ACCESS_TTL);
    let refresh_ttl = problems.time_duration("refresh-ttl", &args.refresh_ttl, &SESSION_TTL);
    let family_ttl = problems.time_duration("family-ttl", &args.family_ttl, &SESSION_TTL);
    let reuse_grace = problems.time_duration("reuse-grace", &args.reuse_grace, &REUSE_GRACE);
    let leeway = problems.time_duration("leeway", &args.leeway, &LEEWAY);
    problems.check(reuse_grace < refresh_ttl, || {
        "reuse-grace: must be shorter than refresh-ttl".into()
    });
    let max_sessions = problems.count("max-sessions", args.max_sessions, &MAX_SESSIONS);
    let mut rate =
        |name: &str, value: u32| NonZeroU32::new(problems.count(name, value, &ROTATE_RATE)).unwrap_or(NonZeroU32::MIN);
    let rotate_limit = RotateLimit {
        per_second: rate("rotate-per-second", args.access.rotate_per_second),
        burst: rate("rotate-burst", args.access.rotate_burst),
    };
    problems.length("issuer", &args.issuer, &NAME_BYTES);
    problems.length("audience", &args.audience, &NAME_BYTES);
    Policy {
        issuer: args.issuer.clone(),
        default_audience: args.audience.clone(),
        access_ttl,
        refresh_ttl,
        family_ttl,
        reuse_grace,
        leeway,
        max_sessions,
        audit_rotations: args.audit_rotations,
        rotate_limit,
    }
}
