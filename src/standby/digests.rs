//! The standby's side of a digest walk (protocol 8; the rules are
//! `syncd_proto::digest`'s): an empty round, sent while the primary scans,
//! builds this side's directory digests from a full listing; the rounds
//! after it are answered from them.

use std::sync::Arc;

use syncd_proto::digest::{Query, State, Tree};
use tokio::sync::mpsc;

use super::accept::SessionError;
use super::session::{blocking, list_all};
use super::Shared;
use crate::scan::digest::{tree_of, Side};
use crate::wire::Reply;

/// Answers `queries` from `cache` (built first when the round is empty or
/// nothing is cached), in chunks of about 1 MiB, then `ListEnd`.
pub(super) async fn answer(
    sh: &Arc<Shared>,
    cache: &mut Option<Arc<Tree>>,
    owners: bool,
    queries: Vec<Query>,
    reply: &mpsc::Sender<Reply>,
) -> Result<(), SessionError> {
    let t = match (&*cache, queries.is_empty()) {
        (Some(t), false) => t.clone(),
        _ => {
            let sh = sh.clone();
            let t = blocking(move || {
                let t0 = std::time::Instant::now();
                let mut scanned = list_all(&sh, false)?;
                let listed = t0.elapsed();
                for e in &scanned.skipped {
                    tracing::warn!("standby scan skipped {e}");
                }
                let entries = std::mem::take(&mut scanned.entries);
                let n = entries.len();
                // The listing is freed as the tree grows (not both at once).
                let t = tree_of(entries, owners, Side::Standby);
                tracing::debug!(
                    entries = n,
                    ?listed,
                    elapsed = ?t0.elapsed(),
                    "listed and built the directory digests"
                );
                drop(scanned);
                // The listing was this side's peak; hold only the tree.
                crate::scan::give_back_freed_heap();
                Ok(t)
            })
            .await?;
            let t = Arc::new(t);
            *cache = Some(t.clone());
            t
        }
    };
    let mut chunk = Vec::new();
    let mut bytes = 0;
    // Kept while anything differs: a subtree that differs is asked about
    // again, and the primary's queries may span several rounds.
    let mut more = queries.is_empty();
    for q in &queries {
        let a = t.answer(q);
        more |= !matches!(a.state, State::Same);
        let (names, name_bytes) = a.size();
        bytes += a.path.len() + 64 + name_bytes as usize + 24 * names;
        chunk.push(a);
        // Well under the frame limit.
        if bytes > 1 << 20 {
            let answers = std::mem::take(&mut chunk);
            let _ = reply.send(Reply::Digests { answers }).await;
            bytes = 0;
        }
    }
    let _ = reply.send(Reply::Digests { answers: chunk }).await;
    let _ = reply.send(Reply::ListEnd).await;
    if !more {
        // The walk is over: the tree (a leaf per entry, ~100 MB at a
        // million) would otherwise be held as long as the session follows.
        // Freed off the runtime's threads: that takes tens of ms there.
        *cache = None;
        blocking(move || {
            drop(t);
            crate::scan::give_back_freed_heap();
            Ok(())
        })
        .await?;
    }
    Ok(())
}
