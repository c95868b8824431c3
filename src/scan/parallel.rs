//! The whole-tree walk on a few threads, with the sequential walk's result.
//!
//! The top of the tree is walked shallowly (level by level, on the caller's
//! thread) until there are enough directories not yet entered ("holes");
//! each hole's subtree is then walked by the sequential walk on one of a
//! few scoped threads, taking holes in order from a shared counter. The
//! pieces are spliced back in walk order, and hard links are grouped only
//! then, over the whole list in order: the result is the sequential walk's
//! entry for entry (`parallel_walk_lists_what_the_sequential_walk_lists`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::collect::{Collector, Frame, Hole, Link, Marks};
use super::DirHook;
use crate::wire::Kind;

/// Holes wanted before the walk fans out, and how many levels it may walk
/// shallowly to find them (a level is walked on one thread).
const ENOUGH_HOLES: usize = 256;
const MAX_LEVELS: usize = 4;

/// Threads for a walk: it waits on the disk as much as on the CPU (a cold
/// cache reads one directory inode at a time per thread), so a few more
/// than the cores, bounded. `SYNCD_SCAN_THREADS` sets it (1: the
/// sequential walk), for measuring.
pub(super) fn threads() -> usize {
    if let Some(n) = std::env::var("SYNCD_SCAN_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.clamp(1, 64);
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 2).clamp(2, 8)
}

/// What a shallow walk left: its collector and, per hole, what became of it.
struct Piece {
    c: Collector,
    subs: Vec<(Marks, Sub)>,
}

enum Sub {
    /// Not entered yet (the collector's [`Hole`]).
    Pending(Hole),
    /// Walked shallowly in turn.
    Walked(Box<Piece>),
    /// The n-th job of the parallel phase.
    Job(usize),
}

/// Walks `root` (the export root's frame) on `threads` threads, calling
/// `on_dir` (from any of them, one at a time) before reading a directory.
pub(super) fn walk(
    root: Frame,
    hash: bool,
    on_dir: Option<DirHook>,
    threads: usize,
) -> std::io::Result<Collector> {
    let hook = on_dir.map(|h| Arc::new(Mutex::new(h)));
    let mk = || Collector::deferring(hash, hook.clone().map(shared));
    let mut top = shallow(mk(), root)?;
    for _ in 0..MAX_LEVELS {
        let n = pending(&top);
        if n == 0 || n >= ENOUGH_HOLES {
            break;
        }
        expand(&mut top, &mk)?;
    }
    let mut jobs = Vec::new();
    number_jobs(&mut top, &mut jobs);
    let mut done = run_jobs(jobs, threads, &mk);
    let mut out = Collector::deferring(hash, None);
    splice(top, &mut done, &mut out);
    group_links(&mut out);
    Ok(out)
}

/// The hook behind a lock, as each walker's own hook.
fn shared(h: Arc<Mutex<DirHook>>) -> DirHook {
    Box::new(move |p| {
        // A panicked hook has poisoned it; the watch is then best effort,
        // as at the watch limit, and the walk goes on.
        let mut g = h.lock().unwrap_or_else(|e| e.into_inner());
        g(p)
    })
}

fn shallow(mut c: Collector, frame: Frame) -> std::io::Result<Piece> {
    c.walk_shallow(frame)?;
    let subs = std::mem::take(&mut c.holes)
        .into_iter()
        .map(|h| (h.at, Sub::Pending(h)))
        .collect();
    Ok(Piece { c, subs })
}

fn pending(p: &Piece) -> usize {
    p.subs
        .iter()
        .map(|(_, s)| match s {
            Sub::Pending(_) => 1,
            Sub::Walked(q) => pending(q),
            Sub::Job(_) => 0,
        })
        .sum()
}

/// Walks every pending hole one level down.
fn expand(p: &mut Piece, mk: &dyn Fn() -> Collector) -> std::io::Result<()> {
    for (_, sub) in &mut p.subs {
        match sub {
            Sub::Walked(q) => expand(q, mk)?,
            Sub::Job(_) => {}
            Sub::Pending(h) => {
                let mut c = mk();
                let q = match c.open_hole(h) {
                    Some(frame) => shallow(c, frame)?,
                    None => Piece { c, subs: vec![] },
                };
                *sub = Sub::Walked(Box::new(q));
            }
        }
    }
    Ok(())
}

/// Replaces each pending hole by its job number, in walk order.
fn number_jobs(p: &mut Piece, jobs: &mut Vec<Hole>) {
    for (_, sub) in &mut p.subs {
        match sub {
            Sub::Walked(q) => number_jobs(q, jobs),
            Sub::Job(_) => {}
            Sub::Pending(_) => {
                if let Sub::Pending(h) = std::mem::replace(sub, Sub::Job(jobs.len())) {
                    jobs.push(h);
                }
            }
        }
    }
}

/// Walks each hole's subtree sequentially, the holes on `threads` threads.
fn run_jobs(
    jobs: Vec<Hole>,
    threads: usize,
    mk: &(dyn Fn() -> Collector + Sync),
) -> Vec<Option<Collector>> {
    let one = |h: &Hole| {
        let mut c = mk();
        if let Some(frame) = c.open_hole(h) {
            c.walk(vec![frame]);
        }
        c
    };
    let results: Vec<Mutex<Option<Collector>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(h) = jobs.get(i) else { break };
        let c = one(h);
        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    };
    let n = threads.min(jobs.len());
    if n <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 1..n {
                s.spawn(work);
            }
            work();
        });
    }
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// Moves a collector's lists into `out` piece by piece (each list is
/// consumed from its front once: no shifting).
struct Cursor {
    entries: std::vec::IntoIter<crate::wire::Entry>,
    skipped: std::vec::IntoIter<String>,
    unreadable: std::vec::IntoIter<syncd_proto::path::RelPath>,
    stamps: std::vec::IntoIter<Option<crate::index::Stamp>>,
    links: std::vec::IntoIter<Link>,
    done: Marks,
}

impl Cursor {
    fn new(c: Collector) -> Cursor {
        Cursor {
            entries: c.out.entries.into_iter(),
            skipped: c.out.skipped.into_iter(),
            unreadable: c.out.unreadable.into_iter(),
            stamps: c.stamps.into_iter(),
            links: c.links.unwrap_or_default().into_iter(),
            done: Marks::default(),
        }
    }

    /// Moves what was gathered up to `to` (from where the last move ended).
    fn take(&mut self, to: Marks, out: &mut Collector) {
        let d = self.done;
        let base = out.out.entries.len();
        let o = &mut out.out;
        o.entries
            .extend(self.entries.by_ref().take(to.entries - d.entries));
        o.skipped
            .extend(self.skipped.by_ref().take(to.skipped - d.skipped));
        o.unreadable
            .extend(self.unreadable.by_ref().take(to.unreadable - d.unreadable));
        out.stamps
            .extend(self.stamps.by_ref().take(to.stamps - d.stamps));
        let links = self.links.by_ref().take(to.links - d.links);
        if let Some(into) = &mut out.links {
            into.extend(links.map(|l| Link {
                at: l.at - d.entries + base,
                ..l
            }));
        }
        self.done = to;
    }
}

/// Appends `p`'s entries to `out` with each hole's subtree in its place.
fn splice(p: Piece, done: &mut [Option<Collector>], out: &mut Collector) {
    let end = p.c.marks();
    let mut cur = Cursor::new(p.c);
    for (at, sub) in p.subs {
        cur.take(at, out);
        match sub {
            Sub::Walked(q) => splice(*q, done, out),
            Sub::Job(i) => {
                if let Some(c) = done.get_mut(i).and_then(Option::take) {
                    let end = c.marks();
                    Cursor::new(c).take(end, out);
                }
            }
            Sub::Pending(_) => {} // none left: all were numbered
        }
    }
    cur.take(end, out);
}

/// Groups hard links over the whole list in walk order: the first name
/// leads, the later ones become [`Kind::HardLink`] (as the sequential
/// walk does as it goes).
fn group_links(c: &mut Collector) {
    let Some(links) = c.links.take() else { return };
    let hashing = c.hashing();
    for l in links {
        let Some(path) = c.out.entries.get(l.at).map(|e| e.path.clone()) else {
            continue;
        };
        let leader = c.add_to_group(l.key, l.nlink, path.clone());
        if leader != path {
            c.out.entries[l.at].kind = Kind::HardLink { leader };
            if hashing {
                if let Some(s) = c.stamps.get_mut(l.at) {
                    *s = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
