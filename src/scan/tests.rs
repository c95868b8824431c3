//! The walk on real trees: names, kinds, links, long paths.

use super::*;
use crate::wire::{Kind, Scope};
use rustix::fs::{Mode, OFlags};
use std::fs::File;

#[test]
fn syncds_temporary_names_are_never_listed() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::create_dir_all(r.join("a")).unwrap();
    for n in [
        ".syncd-7.1.tmp",
        "a/.syncd-7.2.tmp",
        "a/.syncd-7.2.tmp.mine",
        "a/f",
    ] {
        std::fs::write(r.join(n), b"x").unwrap();
    }
    let names =
        |s: &Scan| -> Vec<String> { s.entries.iter().map(|e| e.path.to_string()).collect() };
    let s = scan(r, &mut Index::default(), true, false).unwrap();
    assert_eq!(names(&s), ["a", "a/.syncd-7.2.tmp.mine", "a/f"]);
    let p = |x: &str| RelPath::new(x.as_bytes().to_vec()).unwrap();
    let scope = [
        Scope {
            path: p("a/.syncd-7.2.tmp"),
            recursive: false,
        },
        Scope {
            path: p(".syncd-7.1.tmp"),
            recursive: true,
        },
        Scope {
            path: p("a/f"),
            recursive: false,
        },
    ];
    let s = scan_scoped(r, &mut Index::default(), &scope, false).unwrap();
    assert_eq!(names(&s), ["a/f"]);
    // Listed or not, nothing was removed: no daemon set a sweep here.
    assert!(r.join("a/.syncd-7.2.tmp").exists());
}

#[test]
fn kinds_links_and_index_reuse() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::create_dir_all(r.join("a/empty")).unwrap();
    std::fs::write(r.join("a/f"), b"hello").unwrap();
    std::fs::hard_link(r.join("a/f"), r.join("g")).unwrap();
    std::os::unix::fs::symlink("../nowhere", r.join("a/l")).unwrap();
    std::fs::create_dir(r.join(".syncd")).unwrap();
    std::fs::write(r.join(".syncd/x"), b"no").unwrap();
    mkfifo(&r.join("fifo"));
    let mut ix = Index::default();
    let s = scan(r, &mut ix, true, false).unwrap();
    let names: Vec<_> = s.entries.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(names, ["a", "a/empty", "a/f", "a/l", "g"]);
    assert_eq!(s.skipped.len(), 1);
    assert!(matches!(&s.entries[4].kind, Kind::HardLink { leader } if leader.to_string() == "a/f"));
    assert!(matches!(&s.entries[3].kind, Kind::Symlink { target } if target == b"../nowhere"));
    assert_eq!(s.hashed_bytes, 5);
    // Second scan takes hashes from the index.
    let s2 = scan(r, &mut ix, true, false).unwrap();
    assert_eq!(s2.hashed_bytes, 0);
    assert_eq!(s2.entries, s.entries);
    // Forced re-hash reads again.
    assert_eq!(scan(r, &mut ix, true, true).unwrap().hashed_bytes, 5);
}

#[test]
fn hashing_refuses_symlinks_and_fifos_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().to_path_buf();
    std::fs::write(r.join("f"), b"x").unwrap();
    std::os::unix::fs::symlink(r.join("f"), r.join("l")).unwrap();
    mkfifo(&r.join("fifo"));
    assert!(hash_file(&r.join("f")).is_ok());
    assert!(hash_file(&r.join("l")).is_err());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(hash_file(&r.join("fifo")).is_err());
    });
    assert!(rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("hashing blocked on a FIFO"));
}

/// Creates `levels` nested directories of 250-byte names under `top`
/// (relative to descriptors, so the total may exceed PATH_MAX), with a
/// file `f` in each; returns the relative path of each level.
fn deep_chain(top: &Path, levels: usize) -> Vec<String> {
    let name = "d".repeat(250);
    let mut dir = File::from(
        rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap(),
    );
    let mut rels = Vec::new();
    let mut rel = String::new();
    for _ in 0..levels {
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = File::from(
            rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap(),
        );
        let f = rustix::fs::openat(
            &dir,
            "f",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"deep").unwrap();
        rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        rels.push(rel.clone());
    }
    rels
}

#[test]
fn a_path_longer_than_path_max_is_skipped_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::write(r.join("a"), b"1").unwrap();
    std::fs::create_dir(r.join("z")).unwrap();
    std::fs::write(r.join("z/b"), b"2").unwrap();
    // 20 levels: about 5,000 bytes, past both PATH_MAX and RelPath's limit.
    let rels = deep_chain(r, 20);
    let mut ix = Index::default();
    let s = scan(r, &mut ix, true, false).unwrap();
    let names: Vec<String> = s.entries.iter().map(|e| e.path.to_string()).collect();
    assert!(names.contains(&"a".to_string()) && names.contains(&"z/b".to_string()));
    // Everything representable is listed and hashed, however deep it is.
    let last_ok = rels.iter().rposition(|p| p.len() + 2 <= 4096).unwrap();
    assert!(names.contains(&format!("{}/f", rels[last_ok])));
    assert!(s
        .entries
        .iter()
        .all(|e| !matches!(e.kind, Kind::File { hash: None, .. })));
    // The first level too long for the wire is reported, not descended.
    assert!(!names.iter().any(|n| n.len() > 4096));
    assert!(
        s.skipped.iter().any(|x| x.contains("longer than")),
        "{:?}",
        s.skipped
    );
    assert!(s.unreadable.is_empty());
    // A scoped scan of the deep subtree works the same way.
    let scope = [Scope {
        path: RelPath::new(rels[0].clone()).unwrap(),
        recursive: true,
    }];
    let sc = scan_scoped(r, &mut ix, &scope, true).unwrap();
    assert!(sc.entries.len() > 2 * last_ok);
    assert!(!sc.skipped.is_empty());
}

#[test]
fn deep_entries_under_a_long_root_are_listed_and_hashed() {
    // The root's own path plus a representable relative path exceed
    // PATH_MAX: only a descriptor-relative walk can read them.
    let d = tempfile::tempdir().unwrap();
    let root_rels = deep_chain(d.path(), 2);
    let root = d.path().join(&root_rels[1]);
    let rels = deep_chain(&root, 15);
    let mut ix = Index::default();
    let s = scan(&root, &mut ix, true, false).unwrap();
    assert!(root.as_os_str().len() + rels[14].len() > 4096);
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    let deepest = format!("{}/f", rels[14]);
    let e = s
        .entries
        .iter()
        .find(|e| e.path.to_string() == deepest)
        .expect("deepest file listed");
    assert!(
        matches!(e.kind, Kind::File { hash: Some(h), .. } if h == *blake3::hash(b"deep").as_bytes())
    );
}

/// A FIFO at `p`: what a scan must list as skipped and never open.
fn mkfifo(p: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o644),
        0,
    )
    .unwrap();
}

/// Each of `dirs` is listed with the file `made` in it and with the
/// mtime it has now (the file's making changed it).
fn holds_as_now(s: &Scan, root: &std::path::Path, dirs: &[&str], made: &str) {
    for dir in dirs {
        let file = format!("{dir}/{made}");
        assert!(
            s.entries.iter().any(|e| e.path.to_string() == file),
            "{file} not listed"
        );
        let listed = s
            .entries
            .iter()
            .find(|e| e.path.to_string() == *dir)
            .unwrap();
        let now = meta_of(&std::fs::metadata(root.join(dir)).unwrap());
        assert_eq!(
            (listed.meta.mtime_sec, listed.meta.mtime_nsec),
            (now.mtime_sec, now.mtime_nsec),
            "{dir} listed with its mtime from before {made} was made"
        );
    }
}

/// The primary's watch of a directory must exist before the directory is
/// read, and before its own status is taken: a change between the two
/// would otherwise be in neither the listing (or its mtime) nor the events. Here the hook itself makes that change (a new
/// file in the directory it is called with): the listing must hold it,
/// which it cannot if the hook runs after the read.
#[test]
fn the_dir_hook_runs_before_its_directory_is_read() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().to_path_buf();
    for sub in ["a/b", "a/c", "d"] {
        std::fs::create_dir_all(r.join(sub)).unwrap();
    }
    std::fs::write(r.join("a/b/old"), b"x").unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (root, log) = (r.clone(), seen.clone());
    // Directories made to look old, so the hook's change moves their mtime.
    let old = std::fs::FileTimes::new()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000));
    for dir in ["a", "a/b", "a/c", "d"] {
        File::open(r.join(dir)).unwrap().set_times(old).unwrap();
    }
    let hook: DirHook = std::sync::Arc::new(move |rel: &RelPath| {
        std::fs::write(root.join(rel.as_path()).join("made-in-hook"), b"y").unwrap();
        log.lock().unwrap().push(rel.to_string());
    });
    let s = scan_with(&r, &mut Index::default(), false, false, Some(hook)).unwrap();
    // Listed as it is once watched: with the mtime from before the watch,
    // the listing would hold the new file but the old mtime, and no event
    // would ever say the directory changed.
    holds_as_now(&s, &r, &["a", "a/b", "a/c", "d"], "made-in-hook");
    // Every directory beneath the root once (in any order: subtrees are
    // walked on several threads).
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["a", "a/b", "a/c", "d"]);
}

/// A hook told of a directory's subdirectories as soon as it is listed
/// (the primary watches them in one batch there): each is announced
/// before it is read, so a change the hook makes in the batch is in the
/// listing, with the mtime it gives; and every directory is either
/// announced or shown to `before_read`, the state directory neither.
#[test]
fn subdirectories_are_announced_before_they_are_read() {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    struct Batching {
        root: std::path::PathBuf,
        announced: Mutex<BTreeSet<String>>,
        read: Mutex<BTreeSet<String>>,
    }
    impl WatchDirs for Batching {
        fn before_read(&self, dir: &RelPath) {
            self.read.lock().unwrap().insert(dir.to_string());
        }
        fn before_subdirs(&self, dirs: Vec<RelPath>) {
            for d in dirs {
                let read = self.read.lock().unwrap();
                assert!(!read.contains(&d.to_string()), "{d} read before announced");
                std::fs::write(self.root.join(d.as_path()).join("made-in-batch"), b"y").unwrap();
                self.announced.lock().unwrap().insert(d.to_string());
            }
        }
    }
    let d = tempfile::tempdir().unwrap();
    let r = d.path().to_path_buf();
    let dirs = ["a", "a/b", "a/b/c", "a/d", "e", "f/g/h/i"];
    for sub in dirs.iter().chain(&[".syncd/x"]) {
        std::fs::create_dir_all(r.join(sub)).unwrap();
    }
    let old = std::fs::FileTimes::new()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000));
    let all = [
        "a", "a/b", "a/b/c", "a/d", "e", "f", "f/g", "f/g/h", "f/g/h/i",
    ];
    for dir in all {
        File::open(r.join(dir)).unwrap().set_times(old).unwrap();
    }
    let hook = std::sync::Arc::new(Batching {
        root: r.clone(),
        announced: Mutex::default(),
        read: Mutex::default(),
    });
    let s = scan_with(&r, &mut Index::default(), false, false, Some(hook.clone())).unwrap();
    holds_as_now(&s, &r, &all, "made-in-batch");
    let announced = hook.announced.lock().unwrap().clone();
    assert_eq!(announced, all.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        *hook.read.lock().unwrap(),
        announced,
        "each read is still shown"
    );
}

/// A whole listing prunes the index only once it holds more entries than
/// the listing has files: an in-sync restart leaves it as read.
#[test]
fn the_index_is_pruned_only_when_it_outgrows_the_files() {
    use crate::index::Stamp;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("index.bin");
    let st = Stamp {
        size: 1,
        mtime: (2, 3),
        ctime: (4, 5),
        ino: 6,
    };
    let mut ix = Index::load(&p);
    for f in ["a", "b", "gone", "d"] {
        ix.insert(f.as_bytes().to_vec(), st, [7; 32]);
    }
    ix.save().unwrap();
    let file = |p: &str| super::digest::tests::file(p, 1, 0);
    let dir = |p: &str| Entry {
        kind: Kind::Dir,
        ..file(p)
    };
    // Four files listed (and a directory, which counts for nothing).
    let same_count = [file("a"), file("b"), file("new"), file("x"), dir("d")];
    let mut ix = Index::load_behind(&p);
    prune_index(&mut ix, &same_count);
    assert_eq!(ix.len(), 0, "not waited for: still being read");
    assert_eq!(ix.get(b"gone", &st), None);
    ix.ready();
    assert_eq!(ix.get(b"gone", &st), Some([7; 32]), "not pruned");
    // Two files listed: the index outgrew them. A path that is a
    // directory now goes too.
    let fewer = [file("a"), file("b"), dir("d")];
    let mut ix = Index::load_behind(&p);
    prune_index(&mut ix, &fewer);
    assert_eq!(ix.len(), 2);
    assert_eq!(ix.get(b"gone", &st), None);
    assert_eq!(ix.get(b"d", &st), None);
    assert_eq!(ix.get(b"a", &st), Some([7; 32]));
}
