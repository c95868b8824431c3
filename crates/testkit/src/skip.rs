//! Tests that cannot run here (not root, a tool missing, a read-only
//! `/proc/sys`) say so visibly, and fail where skipping is not allowed.
//!
//! `cargo test` swallows the output of passing tests, so a skip that only
//! printed would pass unseen. [`skip`] also appends the reason to the file
//! named by `SYNCD_SKIP_LOG` (`scripts/test.sh` prints it at the end), and
//! with `SYNCD_NO_SKIP=1` (set by `.ci/run`) it fails the test instead.

use std::io::Write;

/// Records that `test` cannot run here because `why`. Returns normally (the
/// caller then returns early) unless skipping is forbidden, then panics.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIP: {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("SYNCD_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    if forbidden() {
        panic!("{line} (SYNCD_NO_SKIP=1: every test must run here)");
    }
}

fn forbidden() -> bool {
    std::env::var("SYNCD_NO_SKIP").is_ok_and(|v| !v.is_empty() && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_logged_and_fails_when_forbidden() {
        let dir = std::env::temp_dir().join(format!("testkit-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        // Environment changes are process-wide: this crate has no other test.
        std::env::set_var("SYNCD_SKIP_LOG", &log);
        std::env::set_var("SYNCD_NO_SKIP", "0");
        skip("t1", "no tool");
        std::env::set_var("SYNCD_NO_SKIP", "1");
        let r = std::panic::catch_unwind(|| skip("t2", "not root"));
        assert!(r.is_err(), "a forbidden skip fails the test");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "SKIP: t1: no tool\nSKIP: t2: not root\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
