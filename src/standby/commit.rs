//! The committer: verified files become visible in batches, flushed first
//! (see `durable.rs`) and renamed after; and what a commit means for this
//! node's generation record.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::stage::Synced;
use super::{lock, Shared, StandbyEvent};
use crate::conflicts::Keeper;
use crate::fsroot::Staged;
use crate::index::Stamp;
use crate::wire::{Hash, Meta};
use syncd_proto::pair::lineage::Lineage;
use syncd_proto::path::RelPath;

/// Verified files held back before one `syncfs` + rename pass.
const BATCH_FILES: usize = 4096;
pub(super) const BATCH_BYTES: u64 = 256 << 20;

/// Each verified-but-uncommitted file holds a descriptor until its batch is
/// committed, so the batch size also respects the descriptor limit (raised
/// to the hard limit at start; the usual soft default of 1024 is too small):
/// a lane holds two batches, one staging and one being placed.
pub(super) fn batch_files(workers: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(max) = lim.maximum {
        if lim.current.is_some_and(|c| c < max) {
            lim.current = Some(max.min(1 << 20));
            let _ = setrlimit(Resource::Nofile, lim);
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20) as usize;
    (soft.saturating_sub(256) / (2 * workers.max(1))).clamp(16, BATCH_FILES)
}

/// A staged file whose size and hash checked out, waiting for its batch.
pub(super) struct Verified<'r> {
    pub(super) staged: Staged<'r>,
    pub(super) path: RelPath,
    pub(super) meta: Meta,
    pub(super) hash: Hash,
    pub(super) sig: Option<(u32, u32, Vec<u8>)>,
    /// The delta base (the file being replaced), held open until the rename
    /// so that freeing its blocks happens off the reply path.
    pub(super) base: Option<std::fs::File>,
    /// Write-back errors counted when it was begun (`Shared::sync_export`).
    pub(super) wb_errors: u64,
}

/// While catching up with a primary whose data may overwrite writes of this
/// node's own (see `generation::judge`), what the catch-up replaces or
/// deletes is kept here first. Control-stream workers read the slot per
/// operation; a file stream takes the keeper it had when it began.
pub(super) type Preserve = Arc<Mutex<Option<Arc<Keeper>>>>;

pub(super) fn keeper(p: &Preserve) -> Option<Arc<Keeper>> {
    lock(p).clone()
}

/// Makes a batch of verified files durable (unless `synced` says that is
/// done, or failed), then renames them into place in order.
pub(super) fn commit_batch(
    sh: &Shared,
    pending: &mut Vec<Verified<'_>>,
    synced: Synced,
    fail: &impl Fn(&RelPath, String, bool),
    keep: &impl Fn(&RelPath, bool) -> bool,
) {
    if pending.is_empty() {
        return;
    }
    let flushed = match synced {
        Synced::Yes(n) => Ok(Some(n)),
        Synced::Failed(e) => Err(e),
        Synced::No if sh.durable => {
            let t = std::time::Instant::now();
            let r = sh.sync_export().map(Some).map_err(|e| e.to_string());
            let (files, ms) = (pending.len(), super::stage::ms(t));
            tracing::debug!(
                files,
                ms,
                "durable flush before rename (syncfs, a lane's full batch)"
            );
            r
        }
        Synced::No => Ok(None),
    };
    let errors = match flushed {
        Ok(n) => n,
        Err(e) => {
            for v in pending.drain(..) {
                fail(&v.path, format!("syncfs: {e}"), false);
            }
            return;
        }
    };
    if let Some(n) = errors {
        // A flush since a file was begun reported a write-back error: its
        // pages may be what failed (reported there, not here).
        let (ok, suspect): (Vec<_>, Vec<_>) = pending.drain(..).partition(|v| v.wb_errors == n);
        for v in suspect {
            let e = "a write-back error was reported (syncfs) while it was written; not placed";
            fail(&v.path, e.into(), false);
        }
        *pending = ok;
    }
    // Metadata first, then what each file will be is written ahead of the
    // renames (one write for the batch): a crash among them leaves none
    // looking like a local write after the restart.
    let mut ready = Vec::with_capacity(pending.len());
    let mut expected = Vec::with_capacity(pending.len());
    for v in pending.drain(..) {
        let Verified {
            staged,
            path,
            meta,
            hash,
            sig,
            base,
            wb_errors: _,
        } = v;
        match sh.root.prepare(staged, &meta) {
            Ok(prepared) => {
                // Taken whether the ledger expects or not: `expect` decides
                // under its lock (a rebase may end meanwhile).
                let ahead = prepared.file().metadata().ok().map(|m| Stamp::of(&m));
                if let Some(st) = ahead {
                    expected.push((path.clone(), st));
                }
                ready.push((prepared, path, hash, sig, base, ahead));
            }
            Err(e) => fail(&path, format!("commit: {e}"), false),
        }
    }
    super::local::expect(sh, expected);
    let mut done = Vec::with_capacity(ready.len());
    let mut replaced = Vec::new();
    for (prepared, path, hash, sig, base, ahead) in ready {
        replaced.extend(base);
        // Kept (conflicts area, a follower's own write) only if a name is
        // replaced: no lookup per new file.
        let placed = sh
            .root
            .commit_keeping(prepared, &path, || keep(&path, false));
        if let (Ok(None) | Err(_), Some(st)) = (&placed, ahead) {
            super::local::unexpect(sh, &path, st);
        }
        match placed {
            Ok(None) => {}
            Ok(Some(m)) => {
                let stamp = Stamp::of(&m);
                // A stale entry for a small file is harmless: its stamp no longer matches.
                if let Some((b, st, sig)) = &sig {
                    sh.sigs.put(&path, &stamp, *b, *st, sig);
                }
                done.push((path, stamp, hash));
            }
            Err(e) => fail(&path, format!("commit: {e}"), false),
        }
    }
    if !replaced.is_empty() {
        // The last close of a replaced big file frees all its blocks (a
        // quarter second per GiB on ext4); the reply need not wait for it.
        let _ = std::thread::Builder::new()
            .name("syncd-release".into())
            .spawn(move || drop(replaced));
    }
    let n = done.len() as u64;
    sh.committed.fetch_add(n, Ordering::Relaxed);
    sh.stats.committed.fetch_add(n, Ordering::Relaxed);
    super::local::record_batch(sh, done.iter().map(|(p, st, _)| (p, *st)));
    let mut ix = lock(&sh.index);
    for (p, st, h) in done {
        ix.insert(p.as_bytes().to_vec(), st, h);
    }
}

/// What a writing session's commits and catch-up mean for this node's
/// generation record.
pub(super) struct Follow {
    pub(super) shared: Arc<Shared>,
    /// A writing session (a verify session records nothing).
    pub(super) writing: bool,
    /// The primary's generation, until `CaughtUp` makes it ours.
    pub(super) lineage: Option<Lineage>,
    pub(super) preserve: Preserve,
}

impl Follow {
    /// The primary says the catch-up is complete (`CaughtUp`, after every
    /// file of it is durable here): this node's generation becomes the
    /// primary's, saved durably, and nothing more is kept.
    pub(super) fn caught_up(&mut self) {
        let sh = &self.shared;
        let mut r = lock(&sh.record);
        let Some(l) = self.lineage.take() else {
            return;
        };
        let commit = r.lineage.commit;
        r.lineage.follow(&l);
        r.lineage.commit = r.lineage.commit.max(commit.min(l.commit));
        if let Err(e) = sh.store.save(&r) {
            tracing::error!("{e}");
        }
        sh.stats.set_generation(&r.lineage, None);
        sh.emit(StandbyEvent::Adopted(l.clone()));
        tracing::info!(generation = %r.lineage.gen, "caught up; following the primary's generation");
        if let Some(k) = lock(&self.preserve).take() {
            if k.kept() > 0 {
                tracing::warn!(kept = k.kept(), area = %k.path().display(), "diverged entries kept; list them with `syncd conflicts list`");
            }
        }
    }

    /// A durable commit of the generation this node follows records its
    /// batch (written before the commit's flush, which covers the state
    /// directory's filesystem too). During a catch-up nothing is recorded:
    /// the data is not the primary's yet.
    pub(super) fn record_commit(&mut self, id: u64) {
        if self.lineage.is_some() || !self.writing {
            return;
        }
        let sh = &self.shared;
        let mut r = lock(&sh.record);
        r.lineage.commit = r.lineage.commit.max(id);
        sh.emit(StandbyEvent::Committed(id));
        if let Err(e) = sh.store.save_unsynced(&r) {
            tracing::warn!("{e}");
        }
        sh.stats.set_generation(&r.lineage, None);
    }
}
