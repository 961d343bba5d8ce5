//! The policy in force, and reading it again: on SIGHUP and whenever the file's text changes
//! (checked every interval, like the key directory). A file that no longer parses is logged and
//! ignored: the server keeps the policy it has rather than lock every caller out, or let every
//! caller in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::CallerPolicy;
use super::file;
use crate::telemetry::metrics::{self, Reload};

/// The policy file and what it said when last read successfully.
#[derive(Debug)]
pub struct PolicyFile {
    path: PathBuf,
    current: ArcSwap<CallerPolicy>,
    /// The text `current` was parsed from, to tell a change.
    text: Mutex<String>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    Changed { callers: usize },
}

impl PolicyFile {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or every problem found in it.
    pub fn load(path: &Path) -> Result<Self, Vec<String>> {
        let text = read(path)?;
        let policy = file::parse(&text, None)?;
        Ok(Self {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(policy),
            text: Mutex::new(text),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<CallerPolicy> {
        self.current.load_full()
    }

    /// Reads the file again and, if its text changed and parses, puts it in force.
    ///
    /// # Errors
    /// The file cannot be read or no longer parses: the policy in force stays.
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let text = read(&self.path)?;
        // Poisoned only by a panic between two lines below that cannot panic; the text is
        // still a fine comparison point.
        let mut last = self.text.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == text {
            return Ok(Reloaded::Unchanged);
        }
        let policy = file::parse(&text, Some(&self.current.load()))?;
        let callers = policy.len();
        self.current.store(Arc::new(policy));
        *last = text;
        Ok(Reloaded::Changed { callers })
    }
}

fn read(path: &Path) -> Result<String, Vec<String>> {
    std::fs::read_to_string(path).map_err(|e| vec![format!("policy: cannot read {}: {e}", path.display())])
}

/// Reloads `file` on SIGHUP and every `interval` until stopped.
pub async fn watch(file: Arc<PolicyFile>, interval: Duration, stopped: watch::Receiver<bool>) {
    let mut trigger = crate::reload::ReloadTrigger::new("the policy file", interval, stopped);
    while trigger.next().await {
        let reloaded = file.reload();
        metrics::reloaded(Reload::Policy, reloaded.is_ok());
        log_reload(&file, reloaded);
    }
}

/// Logs what a reload did: a change on the security target, a failure as an error.
pub fn log_reload(file: &PolicyFile, result: Result<Reloaded, Vec<String>>) {
    let path = file.path().display();
    match result {
        Ok(Reloaded::Unchanged) => {}
        Ok(Reloaded::Changed { callers }) => {
            tracing::info!(target: "security", %path, callers, "caller policy reloaded");
        }
        Err(problems) => {
            tracing::error!(%path, problems = %problems.join("; "), "cannot load the caller policy; keeping the current one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_put_in_force_and_a_broken_file_keeps_the_old_policy() {
        let dir = std::env::temp_dir().join(format!("ratchet-policy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        let caller = |name: &str| format!("[[caller]]\nname = \"{name}\"\nid = \"spiffe://td/{name}\"\n");
        std::fs::write(&path, caller("a")).unwrap();
        let file = PolicyFile::load(&path).unwrap();
        assert_eq!(file.reload().unwrap(), Reloaded::Unchanged);

        std::fs::write(&path, caller("a") + &caller("b")).unwrap();
        assert_eq!(file.reload().unwrap(), Reloaded::Changed { callers: 2 });
        std::fs::write(&path, "[[caller]]\nname = ").unwrap();
        assert!(file.reload().is_err());
        let b = crate::transport::PeerIdentity::Spiffe(
            crate::transport::identity::SpiffeId::parse("spiffe://td/b").unwrap(),
        );
        assert!(file.current().resolve(Some(&b), None).is_ok(), "the old policy stays");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
