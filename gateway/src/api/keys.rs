//! The server API's keys: `--api-key`, and `--api-key-file` (one key per line, `#`
//! comments), read again whenever the file changes, so that a key is rotated by adding the
//! new one, moving the backend over, then removing the old one: no restart.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use subtle::ConstantTimeEq;

/// Shorter keys are refused at start: a key is a secret, not a password.
const MIN_KEY_BYTES: usize = 24;

pub struct ApiKeys {
    fixed: Option<String>,
    file: Option<KeyFile>,
}

struct KeyFile {
    path: PathBuf,
    /// The keys read, and the file's modification time when they were.
    loaded: Mutex<(Option<SystemTime>, Vec<String>)>,
    /// When the file was last looked at: at most once a second.
    checked: Mutex<Option<std::time::Instant>>,
}

impl ApiKeys {
    /// Checks the keys given; at least one source is needed, and the file must be readable
    /// and hold at least one key now.
    pub fn new(fixed: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            fixed.is_some() || file.is_some(),
            "the server API needs a key: give --api-key or --api-key-file (or turn it off with --api-listen off)"
        );
        if let Some(key) = &fixed {
            check(key).context("--api-key")?;
        }
        let file = match file {
            Some(path) => {
                let (modified, keys) = read(&path)?;
                anyhow::ensure!(!keys.is_empty(), "--api-key-file {} holds no key", path.display());
                Some(KeyFile { path, loaded: Mutex::new((modified, keys)), checked: Mutex::default() })
            }
            None => None,
        };
        Ok(Self { fixed, file })
    }

    /// True when `presented` is one of the keys (compared in constant time).
    pub fn allows(&self, presented: &str) -> bool {
        let matches = |key: &str| bool::from(key.as_bytes().ct_eq(presented.as_bytes()));
        if self.fixed.as_deref().is_some_and(matches) {
            return true;
        }
        self.file.as_ref().is_some_and(|file| file.current().iter().any(|key| matches(key)))
    }
}

impl KeyFile {
    /// The file's keys, read again if it changed. A file that cannot be read now keeps the
    /// keys last read (a rotation in progress must not lock the backend out).
    fn current(&self) -> Vec<String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) {
                return loaded.1.clone();
            }
            *checked = Some(std::time::Instant::now());
        }
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified != loaded.0 {
            match read(&self.path) {
                Ok((modified, keys)) if !keys.is_empty() => {
                    tracing::info!(file = %self.path.display(), keys = keys.len(), "API keys read again");
                    *loaded = (modified, keys);
                }
                Ok(_) => {
                    tracing::warn!(file = %self.path.display(), "the API key file holds no key; keeping the last ones")
                }
                Err(err) => tracing::warn!(%err, "cannot read the API key file again; keeping the last keys"),
            }
        }
        loaded.1.clone()
    }
}

fn read(path: &PathBuf) -> anyhow::Result<(Option<SystemTime>, Vec<String>)> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read --api-key-file {}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for (n, key) in keys.iter().enumerate() {
        check(key).with_context(|| format!("--api-key-file {}: key {}", path.display(), n + 1))?;
    }
    Ok((modified, keys))
}

fn check(key: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        key.len() >= MIN_KEY_BYTES && key.bytes().all(|b| b.is_ascii_graphic()),
        "an API key must be at least {MIN_KEY_BYTES} printable ASCII characters, without spaces"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old-key-0123456789abcdefgh";
    const NEW: &str = "new-key-0123456789abcdefgh";

    #[test]
    fn a_key_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# the backend's key\n{OLD}\n")).expect("write");
        let keys = ApiKeys::new(None, Some(path.clone())).expect("keys");
        assert!(keys.allows(OLD) && !keys.allows(NEW) && !keys.allows(""));
        std::fs::write(&path, format!("{OLD}\n{NEW}\n")).expect("write");
        std::thread::sleep(std::time::Duration::from_millis(1100)); // looked at once a second
                                                                    // A later modification time (some filesystems keep whole seconds).
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(later)).expect("touch");
        assert!(keys.allows(OLD) && keys.allows(NEW), "both during the rotation");
        std::fs::write(&path, "").expect("empty");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let later = later + std::time::Duration::from_secs(2);
        std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(later)).expect("touch");
        assert!(keys.allows(NEW), "an emptied file keeps the last keys");
    }

    #[test]
    fn weak_or_missing_keys_are_refused_at_start() {
        assert!(ApiKeys::new(None, None).is_err());
        assert!(ApiKeys::new(Some("short".into()), None).is_err());
        assert!(ApiKeys::new(Some("has a space in it 0123456789".into()), None).is_err());
        assert!(ApiKeys::new(Some(OLD.into()), None).expect("fixed").allows(OLD));
    }
}
