//! End-to-end: the standby's `[standby]` owner mapping and set-ID
//! stripping, and that the primary compares through them (nothing is
//! re-sent on the next reconcile, `verify` finds nothing).

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::Pair;

fn chown(p: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        p,
        Some(unsafe { rustix::fs::Uid::from_raw(uid) }),
        Some(unsafe { rustix::fs::Gid::from_raw(gid) }),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// A tree a hostile (or careless) primary might send: setuid and setgid
/// executables owned by someone the standby may not know, a setgid
/// shared directory, a symlink and a hard link.
fn setid_tree(root: &Path) {
    std::fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    std::fs::write(root.join("sgid"), b"#!/bin/sh\n").unwrap();
    std::fs::write(root.join("plain"), b"x").unwrap();
    std::fs::create_dir(root.join("shared")).unwrap();
    std::fs::write(root.join("shared/inner"), vec![7u8; 100_000]).unwrap();
    symlink("suid", root.join("link")).unwrap();
    std::fs::hard_link(root.join("suid"), root.join("shared/suid-again")).unwrap();
    for p in ["suid", "sgid", "plain", "shared", "shared/inner", "link"] {
        chown(&root.join(p), 12345, 23456);
    }
    // After chown, which clears set-ID bits.
    let set = |p: &str, m: u32| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    set("suid", 0o4755);
    set("sgid", 0o2711);
    set("shared", 0o2775);
}

fn pair_with(standby: &str) -> Pair {
    let p = Pair::new();
    let cfg = std::fs::read_to_string(p.path("standby.toml")).unwrap();
    std::fs::write(p.path("standby.toml"), format!("{cfg}[standby]\n{standby}")).unwrap();
    p
}

/// The second run of an unchanged tree sends nothing and `verify` agrees.
fn assert_nothing_to_do(p: &Pair) {
    let out = p.resync(&[]);
    assert!(
        out.contains("sent whole 0, sent as delta 0, deleted 0"),
        "{out}"
    );
    assert!(out.contains("metadata-only 0"), "{out}");
    assert!(out.contains("symlinks 0"), "{out}");
    let (ok, out) = p.verify();
    assert!(ok, "verify found differences:\n{out}");
}

#[test]
fn mapped_owners_and_stripped_setid_land_and_are_not_resent() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: not root, ownership cannot be exercised");
        return;
    }
    let mut p = pair_with("owners = \"4242:4343\"\n");
    setid_tree(&p.primary());
    p.start_standby();
    p.resync(&[]);
    let sb = p.standby_dir();
    assert_eq!(mode(&sb.join("suid")), 0o755);
    assert_eq!(mode(&sb.join("sgid")), 0o711);
    assert_eq!(mode(&sb.join("plain")), mode(&p.primary().join("plain")));
    assert_eq!(mode(&sb.join("shared")), 0o2775, "directories keep setgid");
    for e in ["suid", "sgid", "plain", "shared", "shared/inner", "link"] {
        assert_eq!(owner(&sb.join(e)), (4242, 4343), "{e}");
    }
    assert_eq!(
        std::fs::metadata(sb.join("suid")).unwrap().ino(),
        std::fs::metadata(sb.join("shared/suid-again"))
            .unwrap()
            .ino()
    );
    assert_nothing_to_do(&p);

    // Owners are still compared: a local change on the standby is undone.
    chown(&sb.join("plain"), 1, 1);
    let out = p.resync(&[]);
    assert!(out.contains("metadata-only 1"), "{out}");
    assert_eq!(owner(&sb.join("plain")), (4242, 4343));

    // Live: a new setuid file arrives mapped, and the full compare of a
    // restarted primary finds nothing to send.
    p.start_primary();
    p.wait_live();
    let f = p.primary().join("new-suid");
    std::fs::write(&f, b"y").unwrap();
    chown(&f, 12345, 23456);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let t = Instant::now();
    while !(sb.join("new-suid").exists() && mode(&sb.join("new-suid")) == 0o755) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not replicated: {}",
            p.primary_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(owner(&sb.join("new-suid")), (4242, 4343));
    assert!(p.stop_primary());
    p.start_primary();
    p.wait_live();
    let log = p.primary_log();
    let full = log
        .lines()
        .find(|l| l.contains("replicated") && l.contains("full=true"))
        .unwrap_or_else(|| panic!("no full reconcile logged:\n{log}"));
    for zero in ["whole=0", "delta=0", "deleted=0", "meta=0", "symlinks=0"] {
        assert!(full.contains(zero), "{zero}: {full}");
    }
    assert!(p.stop_primary());
    let (ok, out) = p.verify();
    assert!(ok, "verify found differences:\n{out}");
}

#[test]
fn standby_owners_are_left_alone_and_not_compared() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: not root, ownership cannot be exercised");
        return;
    }
    let mut p = pair_with("owners = \"standby\"\n");
    setid_tree(&p.primary());
    p.start_standby();
    p.resync(&[]);
    let sb = p.standby_dir();
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    // strip_setid defaults on with mapped owners: these would otherwise
    // be setuid files of syncd's own user (root).
    assert_eq!(mode(&sb.join("suid")), 0o755);
    assert_eq!(mode(&sb.join("sgid")), 0o711);
    for e in ["suid", "sgid", "plain", "shared", "shared/inner", "link"] {
        assert_eq!(owner(&sb.join(e)), me, "{e}");
    }
    assert_nothing_to_do(&p);
    // A local owner on the standby is not a difference.
    chown(&sb.join("plain"), 777, 778);
    assert_nothing_to_do(&p);
    assert_eq!(owner(&sb.join("plain")), (777, 778));
}

#[test]
fn bad_standby_options_are_refused_at_start_with_the_key_named() {
    let p = pair_with("owners = \"nobody:nogroup\"\n");
    let o = p.syncd(&[
        "--role",
        "standby",
        "--check",
        "--config",
        p.path("standby.toml").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("standby.owners") && err.contains("UID:GID"),
        "{err}"
    );
}

/// A hostile primary (right certificate) sends setuid-root content and
/// metadata directly: the standby's policy holds whatever it is sent, and
/// the standby announces that policy.
#[test]
fn a_hostile_primary_cannot_plant_a_setuid_root_file() {
    use syncd::meta_policy::{MetaPolicy, Owners};
    use syncd::primary::Session;
    use syncd::wire::{Encoding, Meta, Purpose, Request};
    use syncd_proto::path::RelPath;
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: not root, ownership cannot be exercised");
        return;
    }
    let mut p = pair_with("owners = \"4242:4343\"\n");
    p.start_standby();
    let cfg = syncd::config::Config::load(&p.path("primary.toml")).unwrap();
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let evil = Meta {
        mode: 0o6755,
        uid: 0,
        gid: 0,
        mtime_sec: 1,
        mtime_nsec: 0,
    };
    let rp = |s: &str| RelPath::new(s.as_bytes().to_vec()).unwrap();
    rt.block_on(async {
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        assert_eq!(
            s.standby_policy,
            Some(MetaPolicy {
                owners: Owners::Fixed {
                    uid: 4242,
                    gid: 4343
                },
                strip_setid: true
            })
        );
        let body = b"#!/bin/sh\nid\n";
        s.send(&Request::FileBegin {
            id: 1,
            path: rp("rootshell"),
            meta: evil,
            size: body.len() as u64,
            encoding: Encoding::Whole,
        })
        .await
        .unwrap();
        s.send(&Request::FileData {
            id: 1,
            data: body.to_vec(),
        })
        .await
        .unwrap();
        s.send(&Request::FileEnd {
            id: 1,
            hash: *blake3::hash(body).as_bytes(),
        })
        .await
        .unwrap();
        assert_eq!(s.barrier(1).await.unwrap(), vec![]);
        s.send(&Request::Symlink {
            path: rp("link"),
            target: b"rootshell".to_vec(),
            meta: evil,
        })
        .await
        .unwrap();
        // Metadata alone, on a file already there (from a local user).
        std::fs::write(p.standby_dir().join("local"), b"x").unwrap();
        for path in ["rootshell", "local"] {
            s.send(&Request::SetMeta {
                path: rp(path),
                meta: Meta {
                    mode: 0o4711,
                    ..evil
                },
            })
            .await
            .unwrap();
        }
        assert_eq!(s.barrier(2).await.unwrap(), vec![]);
        s.finish().await.unwrap();
    });
    let sb = p.standby_dir();
    assert_eq!(
        std::fs::read(sb.join("rootshell")).unwrap(),
        b"#!/bin/sh\nid\n"
    );
    for (e, m) in [("rootshell", 0o711), ("local", 0o711)] {
        assert_eq!(mode(&sb.join(e)), m, "{e}");
        assert_eq!(owner(&sb.join(e)), (4242, 4343), "{e}");
    }
    assert_eq!(owner(&sb.join("link")), (4242, 4343));
}
