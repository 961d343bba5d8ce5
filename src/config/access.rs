//! Who may call what and how hard: the caller policy file (loaded once here, so that a broken one
//! is a configuration problem), `--require-auth` and reflection. (The per-family Rotate limit is
//! the issuer's: `issuer.rs`.)

use std::sync::Arc;

use super::bounds::POLICY_RELOAD_INTERVAL;
use super::problems::Problems;
use crate::cli::AccessArgs;
use crate::policy::AccessSettings;
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
    AccessSettings {
        policy,
        reload_interval,
        reflection: args.reflection,
    }
}
