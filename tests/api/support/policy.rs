//! Access-policy files on disk, as `--policy-file` reads them.

use std::path::PathBuf;

/// A scratch file holding `text`.
pub fn policy_file(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ratchet-policy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}
