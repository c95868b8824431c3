use super::*;
use std::io::Write;

fn meta() -> Meta {
    Meta {
        mode: 0o640,
        uid: 0,
        gid: 0,
        mtime_sec: 1_000_000_000,
        mtime_nsec: 123_456_789,
    }
}

fn rp(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

/// Content is staged beside its destination and `Commit` syncs the
/// export's filesystem: a file under another filesystem mounted inside
/// the export would be acknowledged unflushed. Refused instead.
#[test]
fn paths_below_a_nested_mount_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir(&ex).unwrap();
    let Some(t) = crate::testmount::Tmpfs::new() else {
        syncd_testkit::skip::skip(
            "paths_below_a_nested_mount_are_refused",
            "cannot mount a tmpfs (not root)",
        );
        return;
    };
    let root = Root::open(&ex).unwrap();
    std::fs::create_dir(ex.join("mnt")).unwrap();
    let bind = std::process::Command::new("mount")
        .args(["--bind"])
        .arg(t.path())
        .arg(ex.join("mnt"))
        .status()
        .unwrap();
    assert!(bind.success());
    let r = root.stage_for(&rp("mnt/f")).map(|_| ());
    let _ = std::process::Command::new("umount")
        .arg(ex.join("mnt"))
        .status();
    assert!(r.is_err(), "a file below a nested mount must not be staged");
    root.stage_for(&rp("f")).unwrap();
}

#[test]
fn staged_write_commit_and_cleanup() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir(&ex).unwrap();
    let root = Root::open(&ex).unwrap();
    root.mkdir(&rp("a")).unwrap();
    let mut s = root.stage().unwrap();
    s.file.write_all(b"data").unwrap();
    root.commit(s, &rp("a/f"), &meta()).unwrap();
    let m = std::fs::metadata(ex.join("a/f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(m.mtime_nsec(), 123_456_789);
    // A dropped stage leaves nothing behind.
    drop(root.stage().unwrap());
    assert_eq!(
        std::fs::read_dir(ex.join(".syncd/staging"))
            .unwrap()
            .count(),
        0
    );
    // Leftovers from a "crash" are removed at open.
    std::fs::write(ex.join(".syncd/staging/old.tmp"), b"x").unwrap();
    Root::open(&ex).unwrap();
    assert_eq!(
        std::fs::read_dir(ex.join(".syncd/staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn writing_through_o_tmpfile_leaves_nothing_of_syncds_in_the_export() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir(&ex).unwrap();
    let root = Root::open(&ex).unwrap();
    root.mkdir(&rp("a")).unwrap();
    for content in [&b"one"[..], b"two"] {
        // New, then replacing an existing file.
        let mut s = root.stage_for(&rp("a/f")).unwrap();
        s.file.write_all(content).unwrap();
        root.commit(s, &rp("a/f"), &meta()).unwrap();
        assert_eq!(std::fs::read(ex.join("a/f")).unwrap(), content);
        root.symlink(&rp("a/l"), content, &meta()).unwrap();
        assert_eq!(
            std::fs::read_link(ex.join("a/l"))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            content
        );
        root.link(&rp("a/h"), &rp("a/f")).unwrap();
    }
    drop(root.stage_for(&rp("a/g")).unwrap());
    root.sync().unwrap();
    let all = crate::relocate::walk(&ex).unwrap();
    let names: Vec<_> = all.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        names,
        ["a", "a/f", "a/h", "a/l"],
        "only data, no staging or temporaries"
    );
}

#[test]
fn planted_symlink_in_parent_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    let outside = d.path().join("outside");
    std::fs::create_dir(&ex).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let root = Root::open(&ex).unwrap();
    root.symlink(&rp("evil"), outside.as_os_str().as_bytes(), &meta())
        .unwrap();
    let s = root.stage().unwrap();
    assert!(root.commit(s, &rp("evil/pwned"), &meta()).is_err());
    assert!(root.mkdir(&rp("evil/dir")).is_err());
    assert!(root.open_file(&rp("evil")).is_err());
    assert!(root.delete(&rp("evil/x")).is_err());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // Replacing the symlink itself is fine and does not touch its target.
    root.delete(&rp("evil")).unwrap();
    assert!(outside.exists());
}

/// An outside file and a symlink to it planted in the export.
fn outside_target(d: &Path) -> (PathBuf, PathBuf, Root) {
    let ex = d.join("ex");
    std::fs::create_dir(&ex).unwrap();
    let outside = d.join("secret");
    std::fs::write(&outside, b"root-owned").unwrap();
    std::fs::set_permissions(
        &outside,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let root = Root::open(&ex).unwrap();
    (ex, outside, root)
}

fn evil_meta() -> Meta {
    Meta {
        mode: 0o4777,
        uid: 12345,
        gid: 12345,
        mtime_sec: 7,
        mtime_nsec: 0,
    }
}

#[test]
fn set_meta_on_a_symlink_leaves_its_target_alone() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let (ex, outside, root) = outside_target(d.path());
    let before = std::fs::metadata(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, ex.join("l")).unwrap();
    root.set_meta(&rp("l"), &evil_meta()).unwrap();
    let link = std::fs::symlink_metadata(ex.join("l")).unwrap();
    assert_eq!(link.mtime(), 7);
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(after.mtime(), before.mtime());
    assert!(std::fs::symlink_metadata(ex.join("l"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A local user swaps a replicated file for a symlink to an outside file
/// while metadata is being applied: no interleaving may reach the target.
#[test]
fn set_meta_racing_a_symlink_swap_never_reaches_outside() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::AtomicBool;
    let d = tempfile::tempdir().unwrap();
    let (ex, outside, root) = outside_target(d.path());
    let before = std::fs::metadata(&outside).unwrap();
    std::fs::write(ex.join("f"), b"x").unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let (ex, outside, stop) = (ex.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(ex.join("tl"));
                std::os::unix::fs::symlink(&outside, ex.join("tl")).unwrap();
                std::fs::rename(ex.join("tl"), ex.join("f")).unwrap();
                std::fs::write(ex.join("tf"), b"x").unwrap();
                std::fs::rename(ex.join("tf"), ex.join("f")).unwrap();
            }
        })
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut applied = 0;
    while std::time::Instant::now() < end {
        if root.set_meta(&rp("f"), &evil_meta()).is_ok() {
            applied += 1;
        }
        let m = std::fs::metadata(&outside).unwrap();
        if m.mode() != before.mode() || m.uid() != before.uid() || m.mtime() != before.mtime() {
            stop.store(true, Ordering::Relaxed);
            let _ = swapper.join();
            panic!("metadata reached the outside file after {applied} applies");
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(applied > 0, "the race never let an apply through");
}

#[test]
fn the_policy_maps_owners_and_strips_setid_on_every_apply() {
    use crate::meta_policy::Owners;
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir(&ex).unwrap();
    let root = Root::open(&ex)
        .unwrap()
        .with_policy(crate::meta_policy::MetaPolicy {
            owners: Owners::Fixed {
                uid: 4242,
                gid: 4343,
            },
            strip_setid: true,
        });
    let as_root = rustix::process::geteuid().is_root();
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(ex.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    let mode = |p: &str| std::fs::symlink_metadata(ex.join(p)).unwrap().mode() & 0o7777;
    // Content commit.
    let s = root.stage().unwrap();
    root.commit(s, &rp("f"), &evil_meta()).unwrap();
    assert_eq!(mode("f"), 0o777);
    // Metadata on an existing file, a directory and a symlink.
    std::fs::write(ex.join("g"), b"x").unwrap();
    root.set_meta(&rp("g"), &evil_meta()).unwrap();
    assert_eq!(mode("g"), 0o777);
    root.mkdir(&rp("d")).unwrap();
    let dir_meta = Meta {
        mode: 0o2775,
        ..evil_meta()
    };
    root.set_meta(&rp("d"), &dir_meta).unwrap();
    assert_eq!(mode("d"), 0o2775, "a directory keeps set-group-ID");
    root.symlink(&rp("l"), b"f", &evil_meta()).unwrap();
    if as_root {
        for p in ["f", "g", "d", "l"] {
            assert_eq!(owner(p), (4242, 4343), "{p}");
        }
    }
    // "standby": owners are left as created, whatever is sent.
    let root = Root::open(&ex)
        .unwrap()
        .with_policy(crate::meta_policy::MetaPolicy {
            owners: Owners::Standby,
            strip_setid: true,
        });
    let s = root.stage().unwrap();
    root.commit(s, &rp("h"), &evil_meta()).unwrap();
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    assert_eq!(owner("h"), me);
    assert_eq!(mode("h"), 0o777);
    root.set_meta(&rp("g"), &evil_meta()).unwrap();
    if as_root {
        assert_eq!(owner("g"), (4242, 4343));
    }
    // The default keeps both, as rsync -a does.
    let root = Root::open(&ex).unwrap();
    root.set_meta(&rp("g"), &evil_meta()).unwrap();
    assert_eq!(mode("g"), 0o4777);
    if as_root {
        assert_eq!(owner("g"), (12345, 12345));
    }
}

#[test]
fn a_fifo_as_delta_base_is_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir(&ex).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ex.join("fifo"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let root = Root::open(&ex).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(root.open_file(&rp("fifo")).is_err());
    });
    let refused = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("open_file blocked on a FIFO");
    assert!(refused);
}

#[test]
fn type_changes_replace() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir_all(ex.join("x/y")).unwrap();
    std::fs::write(ex.join("x/y/z"), b"1").unwrap();
    let root = Root::open(&ex).unwrap();
    let s = root.stage().unwrap();
    root.commit(s, &rp("x"), &meta()).unwrap();
    assert!(std::fs::metadata(ex.join("x")).unwrap().is_file());
    root.mkdir(&rp("x")).unwrap();
    assert!(std::fs::metadata(ex.join("x")).unwrap().is_dir());
    root.link(&rp("x2"), &rp("x")).unwrap_err();
}

/// Both ways of naming an unnamed file place the same content and
/// metadata: from the descriptor (as root) and through /proc (without
/// CAP_DAC_READ_SEARCH).
#[test]
fn unnamed_files_are_named_from_the_descriptor_or_through_proc() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir(&ex).unwrap();
    let root = Root::open(&ex).unwrap();
    for (name, refuse) in [("direct", false), ("proc", true)] {
        if refuse {
            root.links.refuse();
        }
        let mut s = root.stage_for(&rp(name)).unwrap();
        s.file.write_all(name.as_bytes()).unwrap();
        let m = root.commit(s, &rp(name), &meta()).unwrap();
        assert_eq!(std::fs::read(ex.join(name)).unwrap(), name.as_bytes());
        let on_disk = std::fs::symlink_metadata(ex.join(name)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&m),
            std::os::unix::fs::MetadataExt::ino(&on_disk)
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime_nsec(&on_disk),
            123_456_789
        );
        if !refuse && rustix::process::geteuid().is_root() {
            assert!(root.links.works(), "root links from the descriptor");
        }
    }
    // Over an existing name too (a temporary name, then a rename).
    let mut s = root.stage_for(&rp("direct")).unwrap();
    s.file.write_all(b"again").unwrap();
    root.commit(s, &rp("direct"), &meta()).unwrap();
    assert_eq!(std::fs::read(ex.join("direct")).unwrap(), b"again");
    let names: Vec<_> = std::fs::read_dir(&ex)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary name left: {names:?}");
}

/// The keeper is asked only when a name is replaced, before anything is
/// replaced; when it says no, what was there stays and nothing of the
/// staged file is left.
#[test]
fn the_keeper_is_asked_only_when_a_name_is_taken() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("ex");
    std::fs::create_dir(&ex).unwrap();
    let root = Root::open(&ex).unwrap();
    root.mkdir(&rp("a")).unwrap();
    let asked = std::cell::Cell::new(0);
    let commit = |staged: &str, p: &str, yes: bool| {
        let mut s = if staged == "named" {
            root.stage().unwrap()
        } else {
            root.stage_for(&rp(p)).unwrap()
        };
        s.file.write_all(p.as_bytes()).unwrap();
        let s = root.prepare(s, &meta()).unwrap();
        root.commit_keeping(s, &rp(p), || {
            asked.set(asked.get() + 1);
            yes
        })
        .unwrap()
        .is_some()
    };
    assert!(
        commit("tmpfile", "a/new", false),
        "a new name needs no keeper"
    );
    assert_eq!(asked.get(), 0);
    std::fs::write(ex.join("a/mine"), b"mine").unwrap();
    std::fs::create_dir(ex.join("a/dir")).unwrap();
    for (staged, p) in [
        ("tmpfile", "a/mine"),
        ("tmpfile", "a/dir"),
        ("named", "a/mine"),
    ] {
        let before = asked.get();
        assert!(!commit(staged, p, false), "{staged} {p}: refused");
        assert_eq!(asked.get(), before + 1, "{staged} {p}: asked once");
    }
    assert_eq!(std::fs::read(ex.join("a/mine")).unwrap(), b"mine");
    assert!(ex.join("a/dir").is_dir());
    assert!(commit("tmpfile", "a/mine", true));
    assert_eq!(std::fs::read(ex.join("a/mine")).unwrap(), b"a/mine");
    let names: Vec<_> = std::fs::read_dir(ex.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "nothing staged left beside them: {names:?}");
    assert_eq!(
        std::fs::read_dir(ex.join(".syncd/staging"))
            .unwrap()
            .count(),
        0
    );
}
