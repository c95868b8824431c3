//! The parallel walk against the sequential one on real trees.

use super::super::{scan_on, Scan};
use crate::index::Index;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use syncd_proto::path::RelPath;

/// Two top directories of 20 × 20 subdirectories (the walk fans out at
/// the third level), files, hard links across the two, symlinks,
/// non-UTF-8 names, a FIFO, a temporary name, the state directory and a
/// path too long for the wire.
fn seed(r: &Path) {
    for top in ["a", "z"] {
        for i in 0..20 {
            for j in 0..20 {
                let d = r.join(format!("{top}/s{i:02}/t{j:02}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("f"), format!("{top}{i}{j}")).unwrap();
            }
        }
    }
    let odd = OsStr::from_bytes(b"caf\xe9");
    std::fs::create_dir(r.join("a/s03").join(odd)).unwrap();
    std::fs::write(r.join("a/s03").join(odd).join(odd), b"latin-1").unwrap();
    // Linked from a later subtree first in name order: the leader is the
    // first name in walk order, whichever thread meets it first.
    std::fs::write(r.join("z/s19/t19/lead"), b"linked").unwrap();
    std::fs::hard_link(r.join("z/s19/t19/lead"), r.join("a/s00/t00/second")).unwrap();
    std::fs::hard_link(r.join("z/s19/t19/lead"), r.join("z/s00/t05/third")).unwrap();
    std::os::unix::fs::symlink("../../z", r.join("a/s01/t01/up")).unwrap();
    std::os::unix::fs::symlink("nowhere", r.join("top-link")).unwrap();
    std::fs::write(r.join("a/s02/.syncd-9.9.tmp"), b"half").unwrap();
    std::fs::create_dir(r.join(".syncd")).unwrap();
    std::fs::write(r.join(".syncd/index"), b"not listed").unwrap();
    let fifo = r.join("a/s04/t04/fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o644),
        0,
    )
    .unwrap();
    // Deep: 100-byte names down to PATH_MAX for the test's own calls.
    let mut deep = r.join("z/s07");
    for i in 0..40 {
        deep = deep.join(format!("{i:02}{}", "d".repeat(98)));
        if std::fs::create_dir(&deep).is_err() {
            break; // PATH_MAX for this process's own calls: deep enough
        }
    }
}

fn both(r: &Path, hash: bool) -> (Scan, Scan) {
    let one = scan_on(r, &mut Index::default(), hash, false, None, 1).unwrap();
    let four = scan_on(r, &mut Index::default(), hash, false, None, 4).unwrap();
    (one, four)
}

fn same(a: &Scan, b: &Scan) {
    assert_eq!(a.entries, b.entries);
    assert_eq!(a.skipped, b.skipped);
    assert_eq!(a.unreadable, b.unreadable);
    assert_eq!(a.partial_links, b.partial_links);
    assert_eq!(a.hashed_bytes, b.hashed_bytes);
}

#[test]
fn parallel_walk_lists_what_the_sequential_walk_lists() {
    let d = tempfile::tempdir().unwrap();
    seed(d.path());
    for hash in [false, true] {
        let (one, four) = both(d.path(), hash);
        same(&one, &four);
        assert!(one.entries.len() > 1600, "{}", one.entries.len());
    }
    let (s, _) = both(d.path(), false);
    let find = |p: &str| s.entries.iter().find(|e| e.path.to_string() == p).unwrap();
    let leader = RelPath::new(b"a/s00/t00/second".to_vec()).unwrap();
    assert!(
        matches!(&find("z/s19/t19/lead").kind, crate::wire::Kind::HardLink { leader: l } if *l == leader)
    );
    assert!(s.skipped.iter().any(|x| x.contains("FIFO")));
    let longest = s.entries.iter().map(|e| e.path.as_bytes().len()).max();
    assert!(longest > Some(3000), "{longest:?}");
    assert!(!s
        .entries
        .iter()
        .any(|e| e.path.as_bytes().starts_with(b".syncd")));
}

/// Every directory a walk reads, in the order its hook saw them.
fn hooked(r: &Path, threads: usize) -> Vec<String> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let hook: super::DirHook = Box::new(move |p: &RelPath| s2.lock().unwrap().push(p.to_string()));
    scan_on(r, &mut Index::default(), false, false, Some(hook), threads).unwrap();
    let v = seen.lock().unwrap().clone();
    v
}

#[test]
fn the_hook_sees_every_directory_once_before_it_is_read() {
    let d = tempfile::tempdir().unwrap();
    seed(d.path());
    let mut one = hooked(d.path(), 1);
    let mut four = hooked(d.path(), 4);
    assert_eq!(one.len(), four.len());
    one.sort();
    four.sort();
    assert_eq!(one, four);
    four.dedup();
    assert_eq!(one.len(), four.len());
}

/// A directory removed while the walk runs: gone from the listing or
/// listed as it was, never an error or "unreadable" (as sequentially).
#[test]
fn a_directory_removed_mid_walk_is_skipped_quietly() {
    for threads in [1, 4] {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().to_path_buf();
        seed(&r);
        let before = scan_on(&r, &mut Index::default(), false, false, None, 1).unwrap();
        let r2 = r.clone();
        // Entering a/s01/t00 removes a sibling already listed (z/s05, a
        // whole subtree) and one of its own parent's (a/s01/t05).
        let hook: super::DirHook = Box::new(move |p: &RelPath| {
            if p.as_bytes() == b"a/s01/t00" {
                let _ = std::fs::remove_dir_all(r2.join("z/s05"));
                let _ = std::fs::remove_dir_all(r2.join("a/s01/t05"));
            }
        });
        let s = scan_on(&r, &mut Index::default(), false, false, Some(hook), threads).unwrap();
        let after = scan_on(&r, &mut Index::default(), false, false, None, 1).unwrap();
        assert!(s.unreadable.is_empty(), "{threads}: {:?}", s.unreadable);
        assert_eq!(s.skipped, after.skipped);
        let paths = |x: &Scan| x.entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        let (got, lo, hi) = (paths(&s), paths(&after), paths(&before));
        assert!(
            lo.iter().all(|p| got.contains(p)),
            "{threads}: lost an entry"
        );
        assert!(
            got.iter().all(|p| hi.contains(p)),
            "{threads}: listed a stranger"
        );
        if threads == 1 {
            assert!(got.len() < hi.len(), "nothing was removed");
        }
        let mut sorted = got.clone();
        sorted.sort_by(syncd_proto::path::walk_order);
        assert_eq!(got, sorted, "{threads}: out of walk order");
    }
}
