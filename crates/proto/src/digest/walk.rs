//! The primary's top-down walk over two directory-digest trees: which
//! directories to ask about, and what differs from the answers.

use std::collections::{BTreeMap, VecDeque};

use super::{Answer, Digest, Dir, Query, State, Tree};

/// What a scoped comparison must look at: one path, or a whole subtree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Differs {
    Entry(Vec<u8>),
    Subtree(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalkError {
    #[error("the standby answered about {0:?}, which was not asked")]
    Unasked(String),
}

/// The primary's walk: ask about the root; each answer either closes a
/// directory or names the differences in it and the subdirectories to ask
/// about next. Driven by the shell, one round trip per level.
pub struct Walk<'a> {
    ours: &'a Tree,
    asked: VecDeque<Vec<u8>>,
    next: Vec<Query>,
    found: Vec<Differs>,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl<'a> Walk<'a> {
    pub fn new(ours: &'a Tree) -> Walk<'a> {
        let root = ours.root();
        Walk {
            ours,
            asked: VecDeque::new(),
            next: vec![Query {
                path: Vec::new(),
                own: root.own,
                tree: root.tree,
            }],
            found: Vec::new(),
        }
    }

    /// The next round's queries (empty when the walk is over); at most
    /// `max` at once, the rest in later rounds.
    pub fn poll_queries(&mut self, max: usize) -> Vec<Query> {
        if !self.asked.is_empty() {
            return Vec::new();
        }
        let n = self.next.len().min(max.max(1));
        let round: Vec<Query> = self.next.drain(..n).collect();
        self.asked = round.iter().map(|q| q.path.clone()).collect();
        round
    }

    /// Queries of the current round not answered yet.
    pub fn unanswered(&self) -> usize {
        self.asked.len()
    }

    /// True once every directory that differs was answered.
    pub fn done(&self) -> bool {
        self.asked.is_empty() && self.next.is_empty()
    }

    pub fn handle_answer(&mut self, a: Answer) -> Result<(), WalkError> {
        match self.asked.front() {
            Some(p) if *p == a.path => {
                self.asked.pop_front();
            }
            _ => {
                return Err(WalkError::Unasked(
                    String::from_utf8_lossy(&a.path).into_owned(),
                ))
            }
        }
        let Some(mine) = self.ours.dir(&a.path) else {
            self.found.push(Differs::Subtree(a.path));
            return Ok(());
        };
        match a.state {
            State::Same => {}
            State::Missing | State::Large => self.found.push(Differs::Subtree(a.path)),
            State::Differs { subdirs, leaves } => {
                self.subdirs(&a.path, mine, &subdirs);
                if let Some(theirs) = leaves {
                    self.leaves(&a.path, mine, &theirs);
                }
            }
        }
        Ok(())
    }

    fn subdirs(&mut self, dir: &[u8], mine: &Dir, theirs: &[(Vec<u8>, Digest)]) {
        let theirs: BTreeMap<&[u8], &Digest> =
            theirs.iter().map(|(n, d)| (n.as_slice(), d)).collect();
        for (name, tree) in &mine.subdirs {
            let path = join(dir, name);
            match theirs.get(name.as_slice()) {
                Some(t) if *t == tree => {}
                Some(_) => {
                    if let Some(d) = self.ours.dir(&path) {
                        self.next.push(Query {
                            path,
                            own: d.own,
                            tree: d.tree,
                        });
                    }
                }
                None => self.found.push(Differs::Subtree(path)),
            }
        }
        let mine: BTreeMap<&[u8], &Digest> = mine
            .subdirs
            .iter()
            .map(|(n, d)| (n.as_slice(), d))
            .collect();
        for name in theirs.keys().filter(|n| !mine.contains_key(*n)) {
            self.found.push(Differs::Subtree(join(dir, name)));
        }
    }

    fn leaves(&mut self, dir: &[u8], mine: &Dir, theirs: &[(Vec<u8>, Digest)]) {
        // A subdirectory's contents were compared above (by its own query,
        // or as a subtree on one side); its leaf is its own entry only.
        let theirs: BTreeMap<&[u8], &Digest> =
            theirs.iter().map(|(n, d)| (n.as_slice(), d)).collect();
        let mine_l: BTreeMap<&[u8], &Digest> = mine.leaves().collect();
        for (name, d) in &mine_l {
            if theirs.get(name) != Some(d) {
                self.found.push(Differs::Entry(join(dir, name)));
            }
        }
        for name in theirs.keys().filter(|n| !mine_l.contains_key(*n)) {
            self.found.push(Differs::Entry(join(dir, name)));
        }
        if !dir.is_empty() {
            // The directory's own entry is in its parent; its contents
            // changed, so its mtime may need setting again.
            self.found.push(Differs::Entry(dir.to_vec()));
        }
    }

    /// What differs, sorted and without paths inside a subtree already named.
    pub fn into_differences(mut self) -> Vec<Differs> {
        // A subtree sorts before an entry at the same path, which it covers.
        let key = |d: &Differs| (path_of(d).clone(), matches!(d, Differs::Entry(_)));
        self.found.sort_by_key(key);
        self.found.dedup();
        let mut out: Vec<Differs> = Vec::new();
        let mut subtree: Option<Vec<u8>> = None;
        for d in self.found {
            let p = path_of(&d);
            if subtree.as_ref().is_some_and(|s| under(p, s)) {
                continue;
            }
            if let Differs::Subtree(s) = &d {
                subtree = Some(s.clone());
            }
            out.push(d);
        }
        out
    }
}

fn path_of(d: &Differs) -> &Vec<u8> {
    match d {
        Differs::Entry(p) | Differs::Subtree(p) => p,
    }
}

fn under(p: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || p == dir
        || (p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
}
