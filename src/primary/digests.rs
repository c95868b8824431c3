//! A whole-tree compare by directory digests (protocol 8): the standby
//! answers for the directories whose digests differ, top-down, and only
//! the paths and subtrees that differ are listed. The walk's rules are
//! `syncd_proto::digest`'s; this is its I/O.

use std::collections::HashSet;
use std::time::Instant;

use syncd_proto::digest::{Differs, Tree, Walk};

use super::session::{ClientError, Session, StandbyView};
use crate::scan::digest::{tree, Side};
use crate::scan::Scan;
use crate::wire::{Entry, Scope};
use syncd_proto::path::RelPath;

/// Directories asked about in one round trip: each query is at most a
/// path (4 KiB) and its digest, so a round stays under the frame limit.
const QUERIES_PER_ROUND: usize = 1024;

/// What differs is listed in one `ListScope`; past this many bytes of
/// paths it would not fit a frame, and the standby lists the whole tree.
const SCOPE_BYTES: usize = crate::wire::MAX_FRAME / 2;

// Each query: a path of at most 4 KiB, a 32-byte digest, framing.
const _: () = assert!(QUERIES_PER_ROUND * (4096 + 64) < crate::wire::MAX_FRAME);

/// Our side of a digest walk, made on the scan's thread right after the
/// scan (so while the standby is still listing its side): our entries as
/// the standby stores them, whether owners count, and our tree (none when
/// part of the export is unreadable: then the standby lists it all).
pub(super) fn prepare(local: &mut Scan, view: StandbyView) -> (bool, Option<Tree>) {
    let owners = view.apply(&mut local.entries);
    let ours = local
        .unreadable
        .is_empty()
        .then(|| tree(&local.entries, owners, Side::Primary));
    (owners, ours)
}

/// The standby's entries where they may differ from ours; `local` is cut
/// to the same paths. Equal trees cost one round trip and no listing.
/// `ours` is [`prepare`]'s tree.
pub(super) async fn differing(
    s: &mut Session,
    local: &mut Scan,
    owners: bool,
    ours: Option<Tree>,
) -> Result<Vec<Entry>, ClientError> {
    let Some(ours) = ours.filter(|_| local.unreadable.is_empty()) else {
        // What is under them is unknown here: compare everything else the
        // old way rather than reason about digests of a partial tree.
        tracing::info!("part of the export is unreadable; the standby lists the whole tree");
        return s.list(false).await;
    };
    let t0 = Instant::now();
    let mut walk = Walk::new(&ours);
    let mut rounds = 0u32;
    while !walk.done() {
        let queries = walk.poll_queries(QUERIES_PER_ROUND);
        rounds += 1;
        for a in s.ask_digests(owners, queries).await? {
            walk.handle_answer(a)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
        if walk.unanswered() > 0 {
            return Err(ClientError::Protocol(format!(
                "the standby left {} digest queries unanswered",
                walk.unanswered()
            )));
        }
    }
    let found = walk.into_differences();
    tracing::info!(
        rounds,
        differing = found.len(),
        elapsed = ?t0.elapsed(),
        "directory digests compared; listing what differs"
    );
    if found.is_empty() {
        local.entries.clear();
        return Ok(Vec::new());
    }
    let Some(scopes) = scopes(found, SCOPE_BYTES) else {
        tracing::info!("too much differs to list by scope; the standby lists the whole tree");
        return s.list(false).await;
    };
    let (mut paths, mut subtrees) = (HashSet::new(), HashSet::new());
    for sc in &scopes {
        if sc.recursive {
            subtrees.insert(sc.path.clone());
        } else {
            paths.insert(sc.path.clone());
        }
    }
    // By prefixes of the bytes, without allocating per entry.
    let subtrees: HashSet<&[u8]> = subtrees.iter().map(|p| p.as_bytes()).collect();
    local.entries.retain(|e| {
        let b = e.path.as_bytes();
        paths.contains(&e.path)
            || subtrees.contains(b)
            || b.iter()
                .enumerate()
                .any(|(i, &c)| c == b'/' && subtrees.contains(&b[..i]))
    });
    s.list_scope(scopes).await
}

/// The scopes to list, or `None` when they would not fit one request
/// (`budget` bytes of paths) or name the root (then everything differs).
fn scopes(found: Vec<Differs>, budget: usize) -> Option<Vec<Scope>> {
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(found.len());
    for d in found {
        let (p, recursive) = match d {
            Differs::Entry(p) => (p, false),
            Differs::Subtree(p) => (p, true),
        };
        // A scope costs its path and a few bytes of framing.
        bytes = bytes.saturating_add(p.len() + 8);
        if bytes > budget {
            return None;
        }
        out.push(Scope {
            path: RelPath::new(p).ok()?,
            recursive,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_past_the_budget_mean_a_whole_listing() {
        let found = |n: usize| -> Vec<Differs> {
            (0..n)
                .map(|i| Differs::Entry(format!("d/f{i:05}").into_bytes()))
                .collect()
        };
        // 100 paths of 8 bytes cost 1,600 bytes with framing.
        let fit = scopes(found(100), 1_600).unwrap();
        assert_eq!(fit.len(), 100);
        assert!(fit.iter().all(|s| !s.recursive));
        assert!(scopes(found(101), 1_600).is_none());
        assert!(scopes(vec![Differs::Subtree(Vec::new())], 1_600).is_none());
        let sub = scopes(vec![Differs::Subtree(b"d".to_vec())], 1_600).unwrap();
        assert!(sub[0].recursive);
    }
}
