//! Where state lives, end to end: an upgraded standby finds its state where
//! older releases kept it (`<export>/.syncd`, unversioned formats), moves it
//! to `/var/lib/syncd/<export_id>` at start, and the pair is still in sync
//! without re-sending anything; a state file from a newer release stops the
//! daemon with a clear error; an export whose filesystem is no longer
//! mounted is refused. Needs root (writes under /var/lib/syncd, with
//! an export_id of its own, removed at the end); skips visibly otherwise.

mod common;

use std::path::{Path, PathBuf};

use common::Pair;

/// Removes the test's own state directory however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // /var/lib/syncd itself too, when this test made it (empty).
        if let Some(base) = self.0.parent() {
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// Rewrites a current state file as the release before the version header
/// wrote it: `new_magic` + u32 version replaced by `old_prefix`.
fn downgrade(p: &Path, new_magic: &[u8], old_prefix: &[u8]) {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(&b[..8], new_magic, "{}", p.display());
    std::fs::write(p, [old_prefix, &b[12..]].concat()).unwrap();
}

fn set_config(p: &Pair, file: &str, edit: impl Fn(&str) -> String) {
    let f = p.path(file);
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, edit(&text)).unwrap();
}

fn can_run(name: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        syncd_testkit::skip::skip(name, "needs root to write under /var/lib/syncd");
        return false;
    }
    true
}

#[test]
fn an_upgraded_standby_moves_its_state_out_of_the_export_and_stays_in_sync() {
    if !can_run("an_upgraded_standby_moves_its_state_out_of_the_export_and_stays_in_sync") {
        return;
    }
    let mut p = Pair::new();
    std::fs::create_dir(p.primary().join("dir")).unwrap();
    for i in 0..20 {
        std::fs::write(p.primary().join(format!("dir/f{i}")), vec![i as u8; 5000]).unwrap();
    }
    p.start_standby();
    let first = p.resync(&[]);
    assert!(first.contains("sent whole 20"), "{first}");
    p.kill_standby();

    // What an older release left: the standby's state inside its export,
    // index and generation record in the formats without a version.
    let old = p.standby_dir().join(".syncd");
    std::fs::rename(p.path("standby-state"), &old).unwrap();
    for dir in [old.clone(), p.path("primary-state")] {
        downgrade(&dir.join("index.bin"), b"SYNCDIDX", b"SYNCDIX1");
        downgrade(&dir.join("lineage"), b"SYNCDGEN", b"");
    }
    let before = syncd::generation::Store::new(&old).load().unwrap();
    assert!(before.lineage.synced());
    // Its config as it was: no state_dir (the default), and an export_id
    // of this test's own so that /var/lib/syncd/<id> is ours alone.
    let id = format!("test-upgrade-{}", std::process::id());
    let dest = Path::new(syncd::config::DEFAULT_STATE_BASE).join(&id);
    let _cleanup = RemoveOnDrop(dest.clone());
    set_config(&p, "standby.toml", |t| {
        t.replace(
            "state_dir = \"standby-state\"\n",
            &format!("export_id = \"{id}\"\n"),
        )
    });
    set_config(&p, "primary.toml", |t| format!("export_id = \"{id}\"\n{t}"));
    let cfg = syncd::config::Config::load(&p.path("standby.toml")).unwrap();
    assert!(
        cfg.legacy_state,
        "the old place is found: {}",
        cfg.state_dir.display()
    );

    p.start_standby();
    let log = p.log();
    assert!(
        log.contains("moved the state directory out of the export"),
        "{log}"
    );
    assert!(!old.exists(), "nothing of syncd's stays in the export");
    assert_eq!(syncd::generation::Store::new(&dest).load().unwrap(), before);
    assert_eq!(
        &std::fs::read(dest.join("index.bin")).unwrap()[..8],
        b"SYNCDIDX"
    );
    assert_eq!(
        &std::fs::read(dest.join("lineage")).unwrap()[..8],
        b"SYNCDGEN"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o700);

    // In sync at once: nothing re-sent, nothing kept as diverged.
    let again = p.resync(&[]);
    assert!(
        again.contains("sent whole 0, sent as delta 0, deleted 0"),
        "{again}"
    );
    assert!(!p.log().contains("diverged"), "{}", p.log());
    assert_eq!(
        &std::fs::read(p.path("primary-state/lineage")).unwrap()[..8],
        b"SYNCDGEN",
        "the primary's record migrated too"
    );
    // `snapshot` (in assert_equal) also fails on anything of syncd's.
    p.assert_equal();
}

#[test]
fn a_state_file_from_a_newer_release_stops_the_daemon() {
    let p = Pair::new();
    let state = p.path("standby-state");
    std::fs::create_dir(&state).unwrap();
    let mut b = b"SYNCDIDX".to_vec();
    b.extend_from_slice(&99u32.to_le_bytes());
    std::fs::write(state.join("index.bin"), &b).unwrap();
    let mut c = std::process::Command::new(common::BIN)
        .args(["--role", "standby", "--config", "standby.toml"])
        .current_dir(p.path(""))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must stop by itself; one that serves instead is killed, not waited on.
    let exited = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        c.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = c.kill();
    }
    let o = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(exited, "the standby started over a newer index: {err}");
    assert!(!o.status.success());
    assert!(
        err.contains("format version 99") && err.contains("newer"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(state.join("index.bin")).unwrap(),
        b,
        "left as it was"
    );
}

#[test]
fn an_upgraded_primary_moves_its_state_out_of_the_export_and_sends_nothing_again() {
    let name = "an_upgraded_primary_moves_its_state_out_of_the_export_and_sends_nothing_again";
    if !can_run(name) {
        return;
    }
    let mut p = Pair::new();
    for i in 0..20 {
        std::fs::write(p.primary().join(format!("f{i}")), vec![i as u8; 5000]).unwrap();
    }
    p.start_standby();
    let first = p.resync(&[]);
    assert!(first.contains("sent whole 20"), "{first}");

    // What an older release left on the primary: its state inside its
    // export, in the formats without a version.
    let old = p.primary().join(".syncd");
    std::fs::rename(p.path("primary-state"), &old).unwrap();
    downgrade(&old.join("index.bin"), b"SYNCDIDX", b"SYNCDIX1");
    downgrade(&old.join("lineage"), b"SYNCDGEN", b"");
    let before = syncd::generation::Store::new(&old).load().unwrap();
    assert!(before.lineage.synced());
    let id = format!("test-upgrade-primary-{}", std::process::id());
    let dest = Path::new(syncd::config::DEFAULT_STATE_BASE).join(&id);
    let _cleanup = RemoveOnDrop(dest.clone());
    set_config(&p, "primary.toml", |t| {
        t.replace(
            "state_dir = \"primary-state\"\n",
            &format!("export_id = \"{id}\"\n"),
        )
    });
    set_config(&p, "standby.toml", |t| format!("export_id = \"{id}\"\n{t}"));
    p.kill_standby();
    p.start_standby();

    // The live primary: moves its state at start, then finds nothing to send.
    p.start_primary();
    p.wait_live();
    let log = p.primary_log();
    assert!(
        log.contains("moved the state directory out of the export"),
        "{log}"
    );
    assert!(!old.exists(), "nothing of syncd's stays in the export");
    let after = syncd::generation::Store::new(&dest).load().unwrap();
    assert_eq!(after.lineage.gen, before.lineage.gen, "the same generation");
    assert_eq!(
        &std::fs::read(dest.join("lineage")).unwrap()[..8],
        b"SYNCDGEN"
    );
    let status = p.syncd(&["status", "--config", "primary.toml"]);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains("files_sent_whole: 0\n"), "{status}");
    assert!(status.contains("files_sent_delta: 0\n"), "{status}");
    assert!(!p.log().contains("refused"), "{}", p.log());
    assert!(!p.log().contains("diverged"), "{}", p.log());

    // And it goes on replicating.
    std::fs::write(p.primary().join("after.txt"), b"after").unwrap();
    p.wait_equal(std::time::Duration::from_secs(30));
    assert!(p.stop_primary());
    p.assert_equal();
}

/// Unmounts on drop (however the test ends).
struct Mounted(PathBuf);

impl Mounted {
    /// A small tmpfs mounted on `dir`; `None` (the test skipped) when that
    /// cannot be done.
    fn tmpfs(test: &str, dir: &Path) -> Option<Mounted> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "syncd-test"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            syncd_testkit::skip::skip(test, "cannot mount a tmpfs");
        }
        ok.then(|| Mounted(dir.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A pair with one side's export (`side`) on a tmpfs, 20 files resynced
/// onto it; `None` when the test cannot run here (skipped visibly).
fn synced_on_tmpfs(test: &str, side: fn(&Pair) -> PathBuf) -> Option<(Pair, Mounted)> {
    if !can_run(test) {
        return None;
    }
    let mut p = Pair::new();
    let mounted = Mounted::tmpfs(test, &side(&p))?;
    for i in 0..20 {
        std::fs::write(p.primary().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    p.start_standby();
    p.resync(&[]);
    Some((p, mounted))
}

/// The classic `rsync --delete` disaster: the primary's export is a mount
/// point whose filesystem did not come up (a failed disk at boot), and the
/// empty directory beneath it is taken for the data. Before, a start, a
/// `resync` or a running primary's next whole-tree compare then deleted the
/// standby's copy, the one left. Now each refuses, naming the export, and
/// the standby keeps every file.
#[test]
fn an_export_whose_filesystem_is_not_mounted_is_refused() {
    let name = "an_export_whose_filesystem_is_not_mounted_is_refused";
    let Some((mut p, mounted)) = synced_on_tmpfs(name, Pair::primary) else {
        return;
    };
    let export = mounted.0.clone();
    let standby = p.standby_dir();
    let count = || std::fs::read_dir(&standby).unwrap().count();
    assert_eq!(count(), 20);

    // Unmounted under a running primary: its next whole-tree compare (here
    // the periodic one, every second) refuses, and so does each reconnect.
    set_config(&p, "primary.toml", |t| {
        format!("{t}[sync]\nfull_reconcile_secs = 1\n")
    });
    p.start_primary();
    p.wait_live();
    assert!(std::process::Command::new("umount")
        .arg("-l")
        .arg(&export)
        .status()
        .unwrap()
        .success());
    let t = std::time::Instant::now();
    while p.primary_log().matches("is not one now").count() < 2 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "no refusal: {}",
            p.primary_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Refused again at each try, but backed off (0.2 s doubling), not a
    // loop of connects: a few in 3 s, where a loop would log hundreds.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let n = p.primary_log().matches("is not one now").count();
    assert!(n <= 8, "{n} refusals in ~3 s:\n{}", p.primary_log());
    assert!(
        p.primary_log().contains("retrying in"),
        "{}",
        p.primary_log()
    );
    assert_eq!(count(), 20, "the standby's copy was touched");
    assert!(p.stop_primary());
    set_config(&p, "primary.toml", |t| {
        t.replace("[sync]\nfull_reconcile_secs = 1\n", "")
    });

    drop(mounted);
    assert_eq!(std::fs::read_dir(&export).unwrap().count(), 0, "unmounted");
    let r = p.syncd(&["resync", "--config", "primary.toml"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success(),
        "resync ran on an unmounted export: {err}"
    );
    assert!(
        err.contains("was a mount point") && err.contains("is not one now"),
        "{err}"
    );
    let d = p.syncd(&["--role", "primary", "--config", "primary.toml"]);
    let err = String::from_utf8_lossy(&d.stderr);
    assert!(
        !d.status.success(),
        "the primary started on an unmounted export: {err}"
    );
    assert!(err.contains("is not one now"), "{err}");
    assert_eq!(count(), 20, "the standby's copy was touched");
}

/// The standby's side of it: its export unmounted under it, a full listing
/// (a resync) refuses instead of listing it empty and taking the whole
/// export again; a restart refuses too.
#[test]
fn a_standby_whose_export_is_not_mounted_refuses_to_list_it() {
    let name = "a_standby_whose_export_is_not_mounted_refuses_to_list_it";
    let Some((mut p, mounted)) = synced_on_tmpfs(name, Pair::standby_dir) else {
        return;
    };
    let export = mounted.0.clone();
    assert_eq!(std::fs::read_dir(&export).unwrap().count(), 20);

    assert!(std::process::Command::new("umount")
        .arg("-l")
        .arg(&export)
        .status()
        .unwrap()
        .success());
    let r = p.syncd(&["resync", "--config", "primary.toml"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        !r.status.success(),
        "a resync listed an unmounted standby: {out}"
    );
    assert!(out.contains("is not one now"), "{out}\n{}", p.log());
    p.kill_standby();
    let d = p.syncd(&["--role", "standby", "--config", "standby.toml"]);
    let err = String::from_utf8_lossy(&d.stderr);
    assert!(!d.status.success(), "the standby started: {err}");
    assert!(err.contains("is not one now"), "{err}");
    drop(mounted);
}
