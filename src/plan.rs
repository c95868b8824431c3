//! Compares the primary's manifest with the standby's and decides what to
//! send: pure logic, no I/O, so it is unit-tested directly.

use std::collections::{HashMap, HashSet};

use crate::wire::{Entry, Hash, Kind, Meta};
use syncd_proto::path::RelPath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOp {
    pub path: RelPath,
    pub meta: Meta,
    pub size: u64,
    /// Send as a delta against the standby's current file.
    pub delta: bool,
    /// Size of the standby's current file (the delta base), if any.
    pub base_size: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Top-most paths to remove (recursive), deepest first.
    pub deletes: Vec<RelPath>,
    /// Directories to create, parents first.
    pub mkdirs: Vec<RelPath>,
    pub files: Vec<FileOp>,
    pub symlinks: Vec<(RelPath, Vec<u8>, Meta)>,
    pub links: Vec<(RelPath, RelPath)>,
    /// Metadata to (re)apply: changed files and all created/changed
    /// directories, deepest first so a child's arrival does not disturb a
    /// parent's mtime afterwards.
    pub metas: Vec<(RelPath, Meta)>,
    pub unchanged: u64,
    /// Entries whose content is current but whose metadata is not.
    pub meta_changes: u64,
    pub content_bytes: u64,
}

pub struct PlanOptions {
    pub delete: bool,
    pub checksum: bool,
    pub delta_min_size: u64,
    /// Compare owners (only meaningful when the standby runs as root).
    pub owners: bool,
}

fn same_meta(a: &Meta, b: &Meta, owners: bool, mode: bool) -> bool {
    a.mtime_sec == b.mtime_sec
        && a.mtime_nsec == b.mtime_nsec
        && (!mode || a.mode == b.mode)
        && (!owners || (a.uid == b.uid && a.gid == b.gid))
}

/// The standby's entries by path, as indices into its listing.
type Index<'a> = HashMap<&'a RelPath, usize>;

pub fn plan(local: &[Entry], remote: &[Entry], o: &PlanOptions) -> Plan {
    // Maps of the standby's side only (empty at a first sync, a few
    // entries after a digest compare) and of our directories: a map of
    // every local path cost ~36 MB at a million files, and which remote
    // paths we have is known from the walk over ours (`matched`).
    let rmap: Index = remote
        .iter()
        .enumerate()
        .map(|(i, e)| (&e.path, i))
        .collect();
    let mut matched = vec![false; remote.len()];
    // Only leaders that some local name links to need to be remembered
    // as re-sent (a set of every re-sent file was ~18 MB at a first sync).
    let leaders: HashSet<&RelPath> = local
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::HardLink { leader } => Some(leader),
            _ => None,
        })
        .collect();
    let mut p = Plan::default();
    // Leaders whose content is re-sent get a new inode on the standby, so
    // their followers must be re-linked.
    let mut resent: HashSet<&RelPath> = HashSet::new();
    let mut dir_metas = Vec::new();
    for e in local {
        let r = rmap.get(&e.path).map(|&i| {
            matched[i] = true;
            &remote[i]
        });
        match &e.kind {
            Kind::Dir => plan_dir(&mut p, &mut dir_metas, e, r, o),
            Kind::File { size, hash } => {
                if plan_file(&mut p, e, r, *size, hash, o) && leaders.contains(&e.path) {
                    resent.insert(&e.path);
                }
            }
            Kind::Symlink { target } => plan_symlink(&mut p, e, r, target, o),
            Kind::HardLink { leader } => {
                let linked = !resent.contains(leader)
                    && match (r, rmap.get(leader).map(|&i| &remote[i])) {
                        (Some(r), Some(rl)) => {
                            matches!(r.kind, Kind::File { .. } | Kind::HardLink { .. })
                                && r.ino == rl.ino
                        }
                        _ => false,
                    };
                if linked {
                    p.unchanged += 1;
                } else {
                    p.links.push((e.path.clone(), leader.clone()));
                }
            }
        }
    }
    if o.delete {
        // A remote path we have is matched at the index `rmap` gives it
        // (the one a duplicated path maps to), so look it up there.
        let ours = |path: &RelPath| rmap.get(path).is_some_and(|&i| matched[i]);
        p.deletes = deletes(remote, ours);
    }
    drop((rmap, matched, leaders, resent));
    let dirs: HashMap<&RelPath, &Meta> = local
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| (&e.path, &e.meta))
        .collect();
    touched_parents(&p, &dirs, &mut dir_metas);
    dir_metas.sort_by_key(|(path, _)| std::cmp::Reverse(path.depth()));
    p.metas.extend(dir_metas);
    p
}

/// The top-most standby paths the primary lacks (`ours` is false),
/// deepest first.
fn deletes(remote: &[Entry], ours: impl Fn(&RelPath) -> bool) -> Vec<RelPath> {
    let mut out = Vec::new();
    let mut last: Option<&RelPath> = None;
    for e in remote {
        if ours(&e.path) || last.is_some_and(|d| e.path.starts_with(d)) {
            continue;
        }
        out.push(e.path.clone());
        last = Some(&e.path);
    }
    out.reverse();
    out
}

fn plan_dir(
    p: &mut Plan,
    dir_metas: &mut Vec<(RelPath, Meta)>,
    e: &Entry,
    r: Option<&Entry>,
    o: &PlanOptions,
) {
    match r {
        Some(r) if r.kind == Kind::Dir => {
            if !same_meta(&e.meta, &r.meta, o.owners, true) {
                p.meta_changes += 1;
                dir_metas.push((e.path.clone(), e.meta));
            } else {
                p.unchanged += 1;
            }
        }
        _ => {
            p.mkdirs.push(e.path.clone());
            dir_metas.push((e.path.clone(), e.meta));
        }
    }
}

/// `true` if the file's content is sent.
fn plan_file(
    p: &mut Plan,
    e: &Entry,
    r: Option<&Entry>,
    size: u64,
    hash: &Option<Hash>,
    o: &PlanOptions,
) -> bool {
    let content_same = match r.map(|r| (&r.kind, r)) {
        Some((Kind::File { size: rs, hash: rh }, r)) if *rs == size => {
            if o.checksum {
                hash.is_some() && hash == rh
            } else {
                r.meta.mtime_sec == e.meta.mtime_sec && r.meta.mtime_nsec == e.meta.mtime_nsec
            }
        }
        _ => false,
    };
    if content_same {
        if same_meta(
            &e.meta,
            &r.map(|r| r.meta).unwrap_or(e.meta),
            o.owners,
            true,
        ) {
            p.unchanged += 1;
        } else {
            p.meta_changes += 1;
            p.metas.push((e.path.clone(), e.meta));
        }
        return false;
    }
    let base_size = match r.map(|r| &r.kind) {
        Some(Kind::File { size, .. }) => Some(*size),
        _ => None,
    };
    let base = base_size.is_some_and(|b| b >= o.delta_min_size);
    p.files.push(FileOp {
        path: e.path.clone(),
        meta: e.meta,
        size,
        delta: base && size >= o.delta_min_size,
        base_size: base_size.unwrap_or(0),
    });
    p.content_bytes += size;
    true
}

fn plan_symlink(p: &mut Plan, e: &Entry, r: Option<&Entry>, target: &[u8], o: &PlanOptions) {
    match r.map(|r| (&r.kind, r.meta)) {
        Some((Kind::Symlink { target: rt }, rm)) if rt.as_slice() == target => {
            if same_meta(&e.meta, &rm, o.owners, false) {
                p.unchanged += 1;
            } else {
                p.meta_changes += 1;
                p.metas.push((e.path.clone(), e.meta));
            }
        }
        _ => p.symlinks.push((e.path.clone(), target.to_vec(), e.meta)),
    }
}

/// Creating, replacing or removing an entry changes its parent's mtime on
/// the standby, so every touched parent gets its metadata re-applied.
fn touched_parents(
    p: &Plan,
    dirs: &HashMap<&RelPath, &Meta>,
    dir_metas: &mut Vec<(RelPath, Meta)>,
) {
    // Walked, not collected: a first sync touches every path.
    let touched = (p.files.iter().map(|f| &f.path))
        .chain(p.symlinks.iter().map(|(x, _, _)| x))
        .chain(p.links.iter().map(|(x, _)| x))
        .chain(p.deletes.iter())
        .chain(p.mkdirs.iter());
    let mut seen: HashSet<RelPath> = dir_metas.iter().map(|(x, _)| x.clone()).collect();
    for t in touched {
        if let Some(parent) = t.parent() {
            if seen.contains(&parent) {
                continue;
            }
            if let Some(&meta) = dirs.get(&parent) {
                seen.insert(parent.clone());
                dir_metas.push((parent, *meta));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }
    fn m(t: i64) -> Meta {
        Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: t,
            mtime_nsec: 0,
        }
    }
    fn file(p: &str, size: u64, t: i64, ino: u64) -> Entry {
        Entry {
            path: rp(p),
            kind: Kind::File { size, hash: None },
            meta: m(t),
            ino,
        }
    }
    fn dir(p: &str) -> Entry {
        Entry {
            path: rp(p),
            kind: Kind::Dir,
            meta: m(1),
            ino: 0,
        }
    }
    fn opts() -> PlanOptions {
        PlanOptions {
            delete: true,
            checksum: false,
            delta_min_size: 100,
            owners: false,
        }
    }

    #[test]
    fn identical_trees_plan_nothing() {
        let t = vec![dir("a"), file("a/f", 5, 1, 1)];
        let p = plan(&t, &t, &opts());
        assert_eq!(p.unchanged, 2);
        assert!(p.files.is_empty() && p.deletes.is_empty() && p.metas.is_empty());
    }

    #[test]
    fn new_changed_deleted_and_delta() {
        let local = vec![
            dir("a"),
            file("a/big", 1000, 2, 1),
            file("a/new", 5, 1, 2),
            file("small", 5, 2, 3),
        ];
        let remote = vec![
            dir("a"),
            file("a/big", 900, 1, 7),
            dir("gone"),
            file("gone/x", 1, 1, 8),
            file("small", 5, 1, 9),
        ];
        let p = plan(&local, &remote, &opts());
        assert_eq!(p.deletes, vec![rp("gone")]);
        let f: Vec<_> = p
            .files
            .iter()
            .map(|f| (f.path.to_string(), f.delta))
            .collect();
        assert_eq!(
            f,
            [
                ("a/big".to_string(), true),
                ("a/new".into(), false),
                ("small".into(), false)
            ]
        );
        assert_eq!(p.content_bytes, 1010);
        let p = plan(
            &local,
            &remote,
            &PlanOptions {
                delete: false,
                ..opts()
            },
        );
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn meta_only_and_checksum() {
        let mut l = file("f", 5, 1, 1);
        l.meta.mode = 0o600;
        let r = file("f", 5, 1, 2);
        let p = plan(std::slice::from_ref(&l), std::slice::from_ref(&r), &opts());
        assert!(p.files.is_empty());
        assert_eq!(p.metas.len(), 1);
        // --checksum: same size and mtime but different content is sent.
        let mut l2 = file("f", 5, 1, 1);
        l2.kind = Kind::File {
            size: 5,
            hash: Some([1; 32]),
        };
        let mut r2 = r;
        r2.kind = Kind::File {
            size: 5,
            hash: Some([2; 32]),
        };
        let p = plan(
            &[l2],
            &[r2],
            &PlanOptions {
                checksum: true,
                ..opts()
            },
        );
        assert_eq!(p.files.len(), 1);
    }

    #[test]
    fn hard_links_follow_their_leader() {
        let local = vec![
            file("a", 5, 1, 1),
            Entry {
                path: rp("b"),
                kind: Kind::HardLink { leader: rp("a") },
                meta: m(1),
                ino: 1,
            },
        ];
        let linked = vec![
            file("a", 5, 1, 9),
            Entry {
                path: rp("b"),
                kind: Kind::HardLink { leader: rp("a") },
                meta: m(1),
                ino: 9,
            },
        ];
        assert!(plan(&local, &linked, &opts()).links.is_empty());
        let separate = vec![file("a", 5, 1, 9), file("b", 5, 1, 10)];
        assert_eq!(
            plan(&local, &separate, &opts()).links,
            vec![(rp("b"), rp("a"))]
        );
        // Leader re-sent → follower re-linked.
        let changed = vec![
            file("a", 4, 1, 9),
            Entry {
                path: rp("b"),
                kind: Kind::HardLink { leader: rp("a") },
                meta: m(1),
                ino: 9,
            },
        ];
        assert_eq!(plan(&local, &changed, &opts()).links.len(), 1);
    }

    /// Removing or replacing an entry changes its directory's mtime on the
    /// standby, so the directory's metadata is applied again even when both
    /// sides' listings agree on it; after its children's, deepest first.
    #[test]
    fn a_delete_or_type_change_reapplies_the_parent_metadata() {
        let sym = |p: &str| Entry {
            path: rp(p),
            kind: Kind::Symlink {
                target: b"t".to_vec(),
            },
            meta: m(1),
            ino: 0,
        };
        let parent_meta = |p: &Plan, d: &str| {
            p.metas
                .iter()
                .position(|(x, meta)| *x == rp(d) && *meta == m(1))
        };
        // a delete
        let local = vec![dir("a"), file("a/keep", 5, 1, 1)];
        let remote = vec![dir("a"), file("a/gone", 5, 1, 8), file("a/keep", 5, 1, 9)];
        let p = plan(&local, &remote, &opts());
        assert_eq!(p.deletes, vec![rp("a/gone")]);
        assert!(parent_meta(&p, "a").is_some(), "{:?}", p.metas);
        // a file become a directory: made, then its metadata, then the parent's
        let local = vec![dir("a"), dir("a/x")];
        let remote = vec![dir("a"), file("a/x", 5, 1, 9)];
        let p = plan(&local, &remote, &opts());
        assert_eq!(p.mkdirs, vec![rp("a/x")]);
        let (x, a) = (parent_meta(&p, "a/x"), parent_meta(&p, "a"));
        assert!(x.is_some() && a.is_some() && x < a, "{:?}", p.metas);
        // a file become a symlink
        let local = vec![dir("a"), sym("a/x")];
        let p = plan(&local, &remote, &opts());
        assert_eq!(p.symlinks.len(), 1);
        assert!(parent_meta(&p, "a").is_some(), "{:?}", p.metas);
        // nothing removed or replaced: the agreed metadata is left alone
        let p = plan(&local, &local, &opts());
        assert_eq!(parent_meta(&p, "a"), None);
    }

    #[test]
    fn dir_metas_deepest_first() {
        let local = vec![dir("a"), dir("a/b"), dir("a/b/c")];
        let p = plan(&local, &[], &opts());
        assert_eq!(p.mkdirs, vec![rp("a"), rp("a/b"), rp("a/b/c")]);
        let order: Vec<_> = p.metas.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(order, ["a/b/c", "a/b", "a"]);
    }
}
