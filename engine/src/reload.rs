//! Rule hot reload: notices a changed rule set (its files' contents, or SIGHUP) and loads it.
//!
//! The watch compares a hash of every rule file's path and content, checked every
//! [`CHECK_INTERVAL`] on the engine's own loop: rule sets are a few dozen small files, so
//! reading them costs well under a millisecond, and a content hash sees every way a file can
//! change (editors that rename over the file, Kubernetes swapping a ConfigMap's `..data`
//! symlink, clocks that do not move mtimes). SIGHUP forces a reload even when nothing changed.
//! A set that fails to load is reported once per distinct content; the running rules stay.

use cordon_rules::{RuleSet, load_paths};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// How often the rule files are compared with the running set.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Watches the configured rule paths.
#[derive(Debug)]
pub struct RuleWatch {
    paths: Vec<PathBuf>,
    hup: Arc<AtomicBool>,
    seen: u64,
    last_check: Instant,
}

impl RuleWatch {
    /// Watches `paths`, taking their current content as the running set's. Registers SIGHUP.
    pub fn new(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
            .map_err(|e| anyhow::anyhow!("installing the SIGHUP handler: {e}"))?;
        Ok(Self::with_flag(paths, hup))
    }

    /// A watch whose "SIGHUP" is `hup` (for tests).
    pub fn with_flag(paths: &[PathBuf], hup: Arc<AtomicBool>) -> Self {
        Self {
            paths: paths.to_vec(),
            hup,
            seen: fingerprint(paths),
            last_check: Instant::now(),
        }
    }

    /// A new rule set to try, or the reason it cannot load; `None` when nothing changed (or
    /// it is not yet time to look). Returns a failing set only once per content.
    pub fn poll(&mut self) -> Option<Result<RuleSet, String>> {
        let forced = self.hup.swap(false, Ordering::Relaxed);
        if !forced && self.last_check.elapsed() < CHECK_INTERVAL {
            return None;
        }
        self.last_check = Instant::now();
        let now = fingerprint(&self.paths);
        if !forced && now == self.seen {
            return None;
        }
        self.seen = now;
        if forced {
            tracing::info!("SIGHUP: reloading rules");
        }
        Some(load_paths(&self.paths).map_err(|e| e.to_string()))
    }
}

/// A hash of the rule files' paths and contents (and of any error reading them).
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut h = Xxh3::new();
    let mut diags = Vec::new();
    for file in cordon_rules::load::rule_files(paths, &mut diags) {
        h.update(file.as_os_str().as_encoded_bytes());
        h.update(&[0]);
        match std::fs::read(&file) {
            Ok(bytes) => h.update(&bytes),
            Err(e) => h.update(e.to_string().as_bytes()),
        }
        h.update(&[0]);
    }
    for d in diags {
        h.update(d.to_string().as_bytes());
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "id: t.a\nversion: 1\ntitle: a\nseverity: low\nentity: account_id\n\
                        window: 1h\nevery: 5m\nfeatures: {n: count()}\ncondition: n > 10\n";

    fn watch(dir: &std::path::Path) -> (RuleWatch, Arc<AtomicBool>) {
        let hup = Arc::new(AtomicBool::new(false));
        let mut w = RuleWatch::with_flag(&[dir.to_path_buf()], hup.clone());
        // Tests do not wait out the interval.
        w.last_check = Instant::now() - CHECK_INTERVAL;
        (w, hup)
    }

    #[test]
    fn unchanged_files_do_not_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), RULE).expect("write");
        let (mut w, _) = watch(dir.path());
        assert!(w.poll().is_none());
    }

    #[test]
    fn a_changed_file_reloads_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), RULE).expect("write");
        let (mut w, _) = watch(dir.path());
        std::fs::write(dir.path().join("a.yaml"), RULE.replace("n > 10", "n > 20")).expect("write");
        let set = w.poll().expect("a change").expect("valid");
        assert_eq!(set.rules[0].rule.condition.text, "n > 20");
        w.last_check = Instant::now() - CHECK_INTERVAL;
        assert!(w.poll().is_none(), "the same content is not reloaded twice");
    }

    #[test]
    fn a_broken_set_is_reported_once_with_its_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), RULE).expect("write");
        let (mut w, _) = watch(dir.path());
        std::fs::write(dir.path().join("b.yaml"), "id: t.b\nversoin: 1\n").expect("write");
        let err = w.poll().expect("a change").expect_err("invalid");
        assert!(err.contains("b.yaml:2:1"), "{err}");
        assert!(err.contains("did you mean `version`"), "{err}");
        w.last_check = Instant::now() - CHECK_INTERVAL;
        assert!(w.poll().is_none());
    }

    #[test]
    fn sighup_reloads_even_without_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), RULE).expect("write");
        let (mut w, hup) = watch(dir.path());
        w.last_check = Instant::now();
        hup.store(true, Ordering::Relaxed);
        assert!(w.poll().expect("forced").is_ok());
        assert!(!hup.load(Ordering::Relaxed));
    }
}
