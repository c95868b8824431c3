//! The units' capability bounding sets are enough, and each one counts: a
//! standby and a primary run as root under exactly the bounding set their
//! unit in `contrib/systemd/` declares (via `setpriv`, as systemd would),
//! and replicate a tree of other users' files (private directories and
//! files, setuid/setgid, hard links, mode 0000, then updates inside a
//! private directory) until `verify` and an independent comparison agree.
//! A standby short of any one of its capabilities does not get there. Needs root and setpriv (util-linux); skips visibly
//! otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{snapshot, Pair, BIN};

/// `CapabilityBoundingSet=` of `unit`, as setpriv's `-all,+cap,...`.
fn bounding_set(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/systemd")
            .join(unit),
    )
    .unwrap();
    let caps: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| v.split_whitespace())
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    assert!(!caps.is_empty(), "{unit} has no CapabilityBoundingSet");
    caps
}

fn setpriv(caps: &[String]) -> Command {
    let mut c = Command::new("setpriv");
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    c.arg(format!("--bounding-set=-all,{}", set.join(",")));
    c.arg(BIN);
    c
}

fn can_run(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        syncd_testkit::skip::skip(test, "needs root (replicating other users' files)");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        syncd_testkit::skip::skip(test, "setpriv is not installed (Debian: util-linux)");
        return false;
    }
    true
}

/// Files of other users, as a root-run NFS export has them.
fn populate(root: &Path) {
    use std::os::unix::fs::{chown, symlink};
    let set = |p: &Path, mode: u32, uid: u32, gid: u32| {
        chown(p, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let private = root.join("alice");
    std::fs::create_dir(&private).unwrap();
    std::fs::write(private.join("secret"), b"alice's").unwrap();
    std::fs::hard_link(private.join("secret"), private.join("secret-link")).unwrap();
    symlink("secret", private.join("link")).unwrap();
    set(&private.join("secret"), 0o600, 1234, 1234);
    std::os::unix::fs::lchown(private.join("link"), Some(1234), Some(1234)).unwrap();
    let shared = root.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("tool"), b"#!/bin/sh\n").unwrap();
    set(&shared.join("tool"), 0o6755, 1235, 1236);
    std::fs::write(shared.join("locked"), b"nobody may read").unwrap();
    set(&shared.join("locked"), 0o000, 1237, 1237);
    set(&shared, 0o2775, 1235, 1236);
    set(&private, 0o700, 1234, 1234);
}

fn start_standby(p: &Pair, caps: &[String], log: &str) -> Child {
    let c = setpriv(caps)
        .args(["--role", "standby", "--config"])
        .arg(p.path("standby.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.path(log)).unwrap())
        .spawn()
        .unwrap();
    common::wait_standby_listening(&p.path(log), 30);
    c
}

/// Resync and verify as the primary unit would run them; `(equal, output)`.
fn replicate(p: &Pair) -> (bool, String) {
    let caps = bounding_set("syncd-primary.service");
    let r = setpriv(&caps)
        .args(["resync", "--config", "primary.toml"])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    // A second round: updates inside another user's private (0700) directory.
    let alice = p.primary().join("alice");
    std::fs::write(alice.join("secret"), b"alice's, changed").unwrap();
    std::fs::write(alice.join("new"), b"new").unwrap();
    std::os::unix::fs::chown(alice.join("new"), Some(1234), Some(1234)).unwrap();
    let r2 = setpriv(&caps)
        .args(["resync", "--config", "primary.toml"])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    let v = setpriv(&caps)
        .args(["verify", "--config", "primary.toml"])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    let text = [
        &r.stdout, &r.stderr, &r2.stdout, &r2.stderr, &v.stdout, &v.stderr,
    ]
    .iter()
    .map(|b| String::from_utf8_lossy(b).into_owned())
    .collect::<Vec<_>>()
    .join("\n");
    (
        r.status.success()
            && r2.status.success()
            && v.status.success()
            && snapshot(&p.primary()) == snapshot(&p.standby_dir()),
        text,
    )
}

#[test]
fn the_units_capabilities_replicate_other_users_files() {
    if !can_run("the_units_capabilities_replicate_other_users_files") {
        return;
    }
    let p = Pair::new();
    populate(&p.primary());
    let mut s = start_standby(&p, &bounding_set("syncd-standby.service"), "standby.log");
    let (ok, out) = replicate(&p);
    let _ = s.kill();
    let _ = s.wait();
    assert!(
        ok,
        "not replicated under the units' capabilities:\n{out}\nstandby:\n{}",
        std::fs::read_to_string(p.path("standby.log")).unwrap_or_default()
    );
    assert_eq!(
        snapshot(&p.primary()),
        snapshot(&p.standby_dir()),
        "independent comparison"
    );
}

#[test]
fn every_capability_of_the_standby_unit_is_needed() {
    if !can_run("every_capability_of_the_standby_unit_is_needed") {
        return;
    }
    let all = bounding_set("syncd-standby.service");
    for drop in &all {
        let p = Pair::new();
        populate(&p.primary());
        let caps: Vec<String> = all.iter().filter(|c| *c != drop).cloned().collect();
        let mut s = start_standby(&p, &caps, "standby.log");
        let (ok, out) = replicate(&p);
        let _ = s.kill();
        let _ = s.wait();
        assert!(
            !ok,
            "replicated without CAP_{}: the unit grants more than the standby needs:\n{out}",
            drop.to_ascii_uppercase()
        );
    }
}
