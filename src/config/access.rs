//! Who may call what and how hard: the caller policy file (loaded once here, so that a broken one
//! is a configuration problem), `--require-auth`, reflection, and the per-family Rotate limit.

use std::num::NonZeroU32;
use std::sync::Arc;

use super::bounds::{POLICY_RELOAD_INTERVAL, ROTATE_RATE};
use super::problems::Problems;
use crate::cli::AccessArgs;
use crate::policy::AccessSettings;
use crate::policy::limits::RotateLimit;
use crate::policy::reload::PolicyFile;

pub(super) fn collect(args: &AccessArgs, problems: &mut Problems) -> AccessSettings {
    let reload_interval = problems.duration(
        "policy-reload-interval",
        &args.policy_reload_interval,
        &POLICY_RELOAD_INTERVAL,
    );
    let policy = match &args.policy {
        Some(path) => match PolicyFile::load(path) {
            Ok(file) => Some(Arc::new(file)),
            Err(found) => {
                for problem in found {
                    problems.push(format!("policy {}: {problem}", path.display()));
                }
                None
            }
        },
        None => {
            problems.check(!args.require_auth, || {
                "require-auth: no caller policy; set --policy (RATCHET_POLICY) to a policy file".into()
            });
            None
        }
    };
    let mut rate =
        |name: &str, value: u32| NonZeroU32::new(problems.count(name, value, &ROTATE_RATE)).unwrap_or(NonZeroU32::MIN);
    let rotate_limit = RotateLimit {
        per_second: rate("rotate-per-second", args.rotate_per_second),
        burst: rate("rotate-burst", args.rotate_burst),
    };
    AccessSettings {
        policy,
        reload_interval,
        reflection: args.reflection,
        rotate_limit,
    }
}
