//! The walk itself: entries in walk order, hard links grouped.

use super::fs::{hash_entries, open_entry, read_names, read_names_typed, vanished};
use super::{leftovers, meta_of, DirHook, PartialLink, Scan};
use crate::index::{Index, Stamp};
use crate::wire::{Entry, Kind, Meta};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use syncd_proto::path::{RelPath, STATE_DIR_NAME};

/// A directory being walked: its descriptor, path (`None` for the export
/// root) and the names not yet visited.
pub(super) struct Frame {
    pub(super) dir: File,
    pub(super) rel: Option<RelPath>,
    pub(super) names: Vec<Vec<u8>>,
}

/// What the walk keeps of a regular file's status (from std's metadata
/// or a stat by name).
struct Seen {
    dev: u64,
    nlink: u64,
    meta: Meta,
    stamp: Stamp,
}

impl Seen {
    fn of(m: &std::fs::Metadata) -> Seen {
        Seen {
            dev: m.dev(),
            nlink: m.nlink(),
            meta: meta_of(m),
            stamp: Stamp::of(m),
        }
    }
}

/// The regular file `name` in `dir` (not following a symlink); `None`
/// when it is something else.
fn file_at(dir: &File, name: &[u8]) -> std::io::Result<Option<Seen>> {
    use std::os::unix::ffi::OsStrExt;
    let st = rustix::fs::statat(
        dir,
        std::ffi::OsStr::from_bytes(name),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    Ok(Some(Seen {
        dev: st.st_dev as u64,
        nlink: st.st_nlink as u64,
        meta: Meta {
            mode: st.st_mode as u32 & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as u32,
        },
        stamp: Stamp {
            size: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as u32),
            ino: st.st_ino as u64,
        },
    }))
}

/// Accumulates entries in walk order, grouping hard links.
#[derive(Default)]
pub(super) struct Collector {
    pub(super) out: Scan,
    /// Per entry: the stamp of a regular file, to hash it.
    /// Kept only for a scan that hashes (56 bytes an entry, 60 MB at a
    /// million files otherwise held for nothing).
    stamps: Vec<Option<Stamp>>,
    hashing: bool,
    /// Per hard-linked inode: its names seen so far (the first leads) and its link count.
    groups: HashMap<(u64, u64), (Vec<RelPath>, u64)>,
    /// A daemon's walk removes the temporary files of its earlier runs.
    sweep: Option<leftovers::Sweep>,
    /// Shared by the collectors of a walk on several threads.
    on_dir: Option<DirHook>,
}

impl Collector {
    /// A scan's; `hash`: it hashes files (their stamps are kept).
    pub(super) fn new(hash: bool) -> Collector {
        Collector {
            hashing: hash,
            ..Collector::default()
        }
    }

    /// A whole-tree walk's: sweeping leftovers, calling `on_dir`.
    pub(super) fn sweeping(hash: bool, on_dir: Option<DirHook>) -> Collector {
        Collector {
            sweep: leftovers::current(),
            on_dir,
            ..Collector::new(hash)
        }
    }

    /// An empty collector for another part of the same walk: it hashes,
    /// sweeps and calls the hook as this one does.
    pub(super) fn sibling(&self) -> Collector {
        Collector {
            hashing: self.hashing,
            sweep: self.sweep,
            on_dir: self.on_dir.clone(),
            ..Collector::default()
        }
    }

    /// Entries collected so far.
    pub(super) fn len(&self) -> usize {
        self.out.entries.len()
    }

    /// Room for `more` entries.
    pub(super) fn reserve(&mut self, more: usize) {
        self.out.entries.reserve(more);
        if self.hashing {
            self.stamps.reserve(more);
        }
    }

    /// Appends what `next` collected, which follows everything here in
    /// walk order. A hard-linked inode both have seen keeps the leader
    /// named here (the first in walk order, as one walk would have it):
    /// `next`'s own leader becomes a link to it, and so do its links.
    pub(super) fn absorb(&mut self, mut next: Collector) {
        let mut releads: HashMap<RelPath, RelPath> = HashMap::new();
        for (key, (names, nlink)) in next.groups.drain() {
            match self.groups.get_mut(&key) {
                Some(g) => {
                    if let (Some(local), Some(lead)) = (names.first(), g.0.first()) {
                        releads.insert(local.clone(), lead.clone());
                    }
                    g.0.extend(names);
                }
                None => {
                    self.groups.insert(key, (names, nlink));
                }
            }
        }
        if !releads.is_empty() {
            for (i, e) in next.out.entries.iter_mut().enumerate() {
                let lead = match &e.kind {
                    Kind::File { .. } => releads.get(&e.path),
                    Kind::HardLink { leader } => releads.get(leader),
                    _ => None,
                };
                if let Some(lead) = lead {
                    e.kind = Kind::HardLink {
                        leader: lead.clone(),
                    };
                    if let Some(st) = next.stamps.get_mut(i) {
                        *st = None; // a link is not hashed
                    }
                }
            }
        }
        let out = &mut self.out;
        out.entries.append(&mut next.out.entries);
        out.skipped.append(&mut next.out.skipped);
        out.unreadable.append(&mut next.out.unreadable);
        self.stamps.append(&mut next.stamps);
    }

    /// Adds one entry (`f` is an `O_PATH` descriptor for it); `Ok(false)`
    /// when it vanished meanwhile or is not replicated.
    pub(super) fn visit(
        &mut self,
        f: &File,
        path: RelPath,
        m: &std::fs::Metadata,
    ) -> std::io::Result<bool> {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            match rustix::fs::readlinkat(f, "", Vec::new()) {
                Ok(t) => Kind::Symlink {
                    target: t.into_bytes(),
                },
                Err(rustix::io::Errno::NOENT) => return Ok(false),
                Err(err) => return Err(err.into()),
            }
        } else if ft.is_file() {
            self.add_file(path, &Seen::of(m));
            return Ok(true);
        } else {
            let what = if ft.is_fifo() {
                "FIFO"
            } else if ft.is_socket() {
                "socket"
            } else {
                "device"
            };
            tracing::warn!(path = %path, "skipping {what}: special files are not replicated");
            self.out.skipped.push(format!("{path}: {what}"));
            return Ok(false);
        };
        if self.hashing {
            self.stamps.push(None); // only regular files are hashed
        }
        self.out.entries.push(Entry {
            path,
            kind,
            meta: meta_of(m),
            ino: m.ino(),
        });
        Ok(true)
    }

    /// Adds a regular file (or a later name of a hard-linked one).
    fn add_file(&mut self, path: RelPath, m: &Seen) {
        let leader = (m.nlink > 1).then(|| {
            let g = self
                .groups
                .entry((m.dev, m.stamp.ino))
                .or_insert_with(|| (Vec::new(), m.nlink));
            g.0.push(path.clone());
            g.0[0].clone()
        });
        let kind = match leader {
            Some(l) if l != path => Kind::HardLink { leader: l },
            _ => Kind::File {
                size: m.stamp.size,
                hash: None,
            },
        };
        if self.hashing {
            let is_file = matches!(kind, Kind::File { .. });
            self.stamps.push(is_file.then_some(m.stamp));
        }
        self.out.entries.push(Entry {
            path,
            kind,
            meta: m.meta,
            ino: m.stamp.ino,
        });
    }

    /// Records an entry that could not be read; the walk goes on without it.
    pub(super) fn unreadable(&mut self, path: RelPath, err: &dyn std::fmt::Display) {
        tracing::warn!(path = %path, "skipping an entry that cannot be read: {err}");
        self.out.skipped.push(format!("{path}: {err}"));
        self.out.unreadable.push(path);
    }

    /// Visits the entry `f` at `path` and, for a directory, queues its
    /// children on `stack`.
    pub(super) fn enter(&mut self, stack: &mut Vec<Frame>, f: File, path: RelPath) {
        let mut m = match f.metadata() {
            Ok(m) => m,
            Err(e) if vanished(&e) => return,
            Err(e) => return self.unreadable(path, &e),
        };
        if m.is_dir() && self.on_dir.is_some() {
            // Watched first, then its status taken: a change between the
            // two would otherwise be in the listing (names are read later)
            // but neither in the directory's listed mtime nor in an event,
            // and the standby's copy would keep the older mtime for good.
            self.call_hook(&path);
            m = match f.metadata() {
                Ok(m) => m,
                Err(e) if vanished(&e) => return,
                Err(e) => return self.unreadable(path, &e),
            };
        }
        match self.visit(&f, path.clone(), &m) {
            Ok(true) if m.is_dir() => match self.read_dir(&f, Some(&path)) {
                Ok(names) => stack.push(Frame {
                    dir: f,
                    rel: Some(path),
                    names,
                }),
                Err(e) if vanished(&e) => {}
                Err(e) => self.unreadable(path, &e),
            },
            Ok(_) => {}
            Err(e) if vanished(&e) => {}
            Err(e) => self.unreadable(path, &e),
        }
    }

    /// The names in the directory `f` at `path` (`None`: the export root),
    /// its leftovers swept; the hook is told of its subdirectories before
    /// any of them is read.
    pub(super) fn read_dir(
        &mut self,
        f: &File,
        path: Option<&RelPath>,
    ) -> std::io::Result<Vec<Vec<u8>>> {
        let Some(h) = self.on_dir.clone() else {
            let mut names = read_names(f)?;
            if let Some(path) = path {
                self.sweep_leftovers(f, path, &mut names);
            }
            return Ok(names);
        };
        let mut dirs = Vec::new();
        let mut names = read_names_typed(f, Some(&mut dirs))?;
        if let Some(path) = path {
            self.sweep_leftovers(f, path, &mut names);
        }
        // Those the walk skips (the state directory, temporary names) or
        // cannot name are never read: not announced.
        let dirs: Vec<RelPath> = dirs
            .into_iter()
            .filter(|n| {
                let state_dir = path.is_none() && n.as_slice() == STATE_DIR_NAME;
                !state_dir && !syncd_proto::path::is_temp_name(n)
            })
            .filter_map(|n| {
                RelPath::new(match path {
                    Some(p) => [p.as_bytes(), b"/", &n].concat(),
                    None => n,
                })
                .ok()
            })
            .collect();
        if !dirs.is_empty() {
            h.before_subdirs(dirs);
        }
        Ok(names)
    }

    /// Removes the leftovers of earlier runs among `names` (a whole-tree
    /// walk's sweep) and from `names`. Each removal changes the directory's
    /// mtime, so its entry, just pushed, takes the new one: listed with the
    /// old, it would look unchanged to a compare while differing for good.
    fn sweep_leftovers(&mut self, dir: &File, path: &RelPath, names: &mut Vec<Vec<u8>>) {
        let Some(s) = self.sweep else {
            return;
        };
        let before = names.len();
        names.retain(|n| {
            if !syncd_proto::path::is_temp_name(n) {
                return true;
            }
            match leftovers::remove_if_leftover(dir, n, &s) {
                Ok(removed) => !removed,
                Err(e) => {
                    tracing::debug!("a temporary file left by a crash: {e}");
                    true
                }
            }
        });
        if names.len() == before {
            return;
        }
        let Ok(m) = dir.metadata() else {
            return;
        };
        if let Some(e) = self.out.entries.last_mut() {
            if &e.path == path && e.kind == Kind::Dir {
                e.meta = meta_of(&m);
            }
        }
    }

    /// Shows the hook the directory at `path`, before it is listed.
    fn call_hook(&self, path: &RelPath) {
        if let Some(h) = &self.on_dir {
            h.before_read(path);
        }
    }

    /// Walks depth-first, names sorted per directory, until `stack` is empty.
    pub(super) fn walk(&mut self, mut stack: Vec<Frame>) {
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                stack.pop();
                continue;
            };
            if let Some((name, path)) = self.name_in(&top.dir, top.rel.as_ref(), name) {
                let opened = open_entry(&top.dir, &name);
                self.enter_opened(&mut stack, opened, path);
            }
        }
    }

    /// Enters the entry at `path` that `opened` opened.
    pub(super) fn enter_opened(
        &mut self,
        stack: &mut Vec<Frame>,
        opened: std::io::Result<File>,
        path: RelPath,
    ) {
        match opened {
            Ok(f) => self.enter(stack, f, path),
            Err(e) if vanished(&e) => {}
            Err(e) => self.unreadable(path, &e),
        }
    }

    /// Lists `name` of the directory `dir` (at `rel`, `None` for the root)
    /// when it is a regular file, or leaves it out; anything else is
    /// returned with its path, to be opened and entered.
    pub(super) fn name_in(
        &mut self,
        dir: &File,
        rel: Option<&RelPath>,
        name: Vec<u8>,
    ) -> Option<(Vec<u8>, RelPath)> {
        if rel.is_none() && name == STATE_DIR_NAME {
            return None;
        }
        if syncd_proto::path::is_temp_name(&name) {
            // Never replicated: content a crash left half-placed.
            if let Some(s) = &self.sweep {
                if let Err(e) = leftovers::remove_if_leftover(dir, &name, s) {
                    tracing::debug!("a temporary file left by a crash: {e}");
                }
            }
            return None;
        }
        let full = match rel {
            Some(r) => [r.as_bytes(), b"/", &name].concat(),
            None => name.clone(),
        };
        let path = match RelPath::new(full) {
            Ok(p) => p,
            Err(err) => {
                // Too long or otherwise unrepresentable on the wire: the
                // entry (and anything beneath) cannot be replicated.
                let shown = match rel {
                    Some(r) => format!("{r}/{}", String::from_utf8_lossy(&name)),
                    None => String::from_utf8_lossy(&name).into_owned(),
                };
                tracing::warn!(path = %shown, "skipping: {err}");
                self.out.skipped.push(format!("{shown}: {err}"));
                return None;
            }
        };
        // A regular file costs one stat by name; anything else is
        // opened (a directory is read through its descriptor).
        match file_at(dir, &name) {
            Ok(Some(m)) => {
                self.add_file(path, &m);
                return None;
            }
            Ok(None) => {}
            Err(e) if vanished(&e) => return None,
            Err(e) => {
                self.unreadable(path, &e);
                return None;
            }
        }
        Some((name, path))
    }

    pub(super) fn finish(
        mut self,
        root: &File,
        index: &mut Index,
        force: bool,
    ) -> std::io::Result<Scan> {
        let mut partial: Vec<PartialLink> = self
            .groups
            .drain()
            .filter(|(_, (names, nlink))| (names.len() as u64) < *nlink)
            .map(|(key, (names, _))| PartialLink { key, names })
            .collect();
        partial.sort_by_key(|a| a.key);
        self.out.partial_links = partial;
        if self.hashing {
            index.ready();
            hash_entries(root, &mut self.out, &self.stamps, index, force);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A leftover removed inside a directory changes its mtime: the walk
    /// lists the directory as it is after the removal, not before.
    #[test]
    fn a_directory_swept_of_a_leftover_is_listed_with_its_new_mtime() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("f"), b"x").unwrap();
        std::fs::write(sub.join(".syncd-7.1.tmp"), b"half-placed").unwrap();
        // Older than any removal can make it.
        let old = std::fs::FileTimes::new()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        std::fs::File::open(&sub).unwrap().set_times(old).unwrap();
        let me = std::fs::metadata(&sub).unwrap().uid();
        let mut c = Collector::new(false);
        c.sweep = Some(leftovers::Sweep::new(
            me,
            SystemTime::now() + Duration::from_secs(5),
        ));
        let root = File::open(d.path()).unwrap();
        let names = super::super::fs::read_names(&root).unwrap();
        c.walk(vec![Frame {
            dir: root,
            rel: None,
            names,
        }]);
        assert!(
            sub.join(".syncd-7.1.tmp").symlink_metadata().is_err(),
            "not swept"
        );
        let listed = c
            .out
            .entries
            .iter()
            .find(|e| e.path.as_bytes() == b"d")
            .unwrap();
        let now = meta_of(&std::fs::metadata(&sub).unwrap());
        assert_ne!(now.mtime_sec, 1000, "the removal did not change the mtime");
        assert_eq!(
            (listed.meta.mtime_sec, listed.meta.mtime_nsec),
            (now.mtime_sec, now.mtime_nsec)
        );
        let files: Vec<_> = c.out.entries.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(files, ["d", "d/f"]);
    }
}
