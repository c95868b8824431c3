//! A whole-tree compare by directory digests (protocol 8): the standby
//! answers for the directories whose digests differ, top-down, and only
//! the paths and subtrees that differ are listed. The walk's rules are
//! `syncd_proto::digest`'s; this is its I/O.

use std::collections::HashSet;
use std::time::Instant;

use syncd_proto::digest::{Differs, Walk};

use super::session::{ClientError, Session};
use crate::scan::digest::{tree, Side};
use crate::scan::Scan;
use crate::wire::{Entry, Scope};
use syncd_proto::path::RelPath;

/// Directories asked about in one round trip.
const QUERIES_PER_ROUND: usize = 4096;

/// The standby's entries where they may differ from ours; `local` is cut
/// to the same paths. Equal trees cost one round trip and no listing.
pub(super) async fn differing(
    s: &mut Session,
    local: &mut Scan,
    owners: bool,
) -> Result<Vec<Entry>, ClientError> {
    if !local.unreadable.is_empty() {
        // What is under them is unknown here: compare everything else the
        // old way rather than reason about digests of a partial tree.
        tracing::info!("part of the export is unreadable; the standby lists the whole tree");
        return s.list(false).await;
    }
    let t0 = Instant::now();
    let entries = std::mem::take(&mut local.entries);
    let (entries, ours) = tokio::task::spawn_blocking(move || {
        let t = tree(&entries, owners, Side::Primary);
        (entries, t)
    })
    .await
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    local.entries = entries;
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
    let mut scopes = Vec::with_capacity(found.len());
    let (mut paths, mut subtrees) = (HashSet::new(), HashSet::new());
    for d in found {
        let (p, recursive) = match d {
            Differs::Entry(p) => (p, false),
            Differs::Subtree(p) => (p, true),
        };
        // The root is never one path; its subtree is everything.
        let path = match RelPath::new(p) {
            Ok(p) => p,
            Err(_) => return s.list(false).await,
        };
        if recursive {
            subtrees.insert(path.clone());
        } else {
            paths.insert(path.clone());
        }
        scopes.push(Scope { path, recursive });
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
