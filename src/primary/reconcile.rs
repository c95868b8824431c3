//! The one comparison behind `syncd resync`, reconnects and live
//! replication: both sides list (the scope), `plan.rs` compares, and what
//! differs is sent in order: deletes, directories, content (small files on
//! the control stream, large ones and deltas on their own), symlinks, hard
//! links, metadata; each step closed by a barrier.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::session::{record_error, ClientError, Session};
use super::small::{send_small, Small};
use super::summary::{NoProgress, Progress, ResyncOptions, Summary};
use crate::config::Config;
use crate::generation::Leading;
use crate::index::Index;
use crate::plan::{self, FileOp, Plan, PlanOptions};
use crate::scan::{self, Scan};
use crate::wire::{self, Entry, Purpose, Request, Scope};
use syncd_proto::path::RelPath;

/// One-shot: make the standby equal to this primary.
pub async fn resync(cfg: &Config, o: &ResyncOptions) -> Result<Summary, ClientError> {
    resync_with(cfg, o, Arc::new(NoProgress)).await
}

/// [`resync`], reporting the content's progress to `progress`.
pub async fn resync_with(
    cfg: &Config,
    o: &ResyncOptions,
    progress: Arc<dyn Progress>,
) -> Result<Summary, ClientError> {
    let t0 = Instant::now();
    // Decoded while the handshake runs and the scan walks.
    let mut index = Index::load_behind(&cfg.state_dir.join("index.bin"));
    let (mut s, mut me) = connect(cfg, o).await?;
    if let Some((_, theirs)) = &s.peer {
        me.saw_peer(&theirs.clone());
    }
    let run = Run::new(&mut s, cfg, o, &mut index, progress);
    let mut sum = reconcile_with(run, None).await?;
    sum.failures_dropped = s.take_failures_dropped();
    if !o.dry_run && sum.failures.is_empty() && sum.failures_dropped == 0 {
        // All of it is on the standby: it follows our generation from now.
        s.send(&Request::CaughtUp).await?;
    }
    let (_committed, stats, tx, rx) = s.finish().await?;
    tracing::debug!(
        datagrams_sent = stats.udp_tx.datagrams,
        datagrams_received = stats.udp_rx.datagrams,
        mtu = stats.path.current_mtu,
        lost_packets = stats.path.lost_packets,
        rtt = ?stats.path.rtt,
        "connection"
    );
    if !o.dry_run {
        me.save();
        if let Err(e) = index.save() {
            tracing::warn!("could not save the primary's index: {e}");
        }
    }
    sum.wire_tx = tx;
    sum.wire_rx = rx;
    sum.udp_bytes = stats.udp_tx.bytes + stats.udp_rx.bytes;
    sum.elapsed = t0.elapsed();
    Ok(sum)
}

/// A resync's session, taking over from a standby with newer data when asked.
async fn connect(cfg: &Config, o: &ResyncOptions) -> Result<(Session, Leading), ClientError> {
    // A dry run changes nothing, neither the generations: it only lists.
    let (purpose, mut me) = if o.dry_run {
        (
            Purpose::Verify,
            Leading::current(cfg).map_err(record_error)?,
        )
    } else {
        (
            Purpose::Resync,
            Leading::start(cfg, o.take_over).map_err(record_error)?,
        )
    };
    let s = match Session::connect(cfg, purpose.clone(), &me).await {
        Err(ClientError::Refused(reason, Some(theirs))) => {
            me.saw_peer(&theirs);
            if !o.take_over {
                return Err(ClientError::Refused(reason, Some(theirs)));
            }
            // Taking over: start a generation above the one that refused us.
            me = Leading::start(cfg, true).map_err(record_error)?;
            Session::connect(cfg, purpose, &me).await?
        }
        r => r?,
    };
    Ok((s, me))
}

/// Compares this primary with the standby, over the whole tree or just
/// `scope`, and sends what differs; ends with a barrier (not yet durable),
/// except with `o.commit_follows`, where the caller's `Commit` closes it.
pub async fn reconcile(
    s: &mut Session,
    cfg: &Config,
    o: &ResyncOptions,
    index: &mut Index,
    scope: Option<Vec<Scope>>,
) -> Result<Summary, ClientError> {
    let run = Run::new(s, cfg, o, index, Arc::new(NoProgress));
    reconcile_with(run, scope).await
}

/// What one reconcile works with, from the compare to its last barrier.
struct Run<'a> {
    s: &'a mut Session,
    cfg: &'a Config,
    o: &'a ResyncOptions,
    index: &'a mut Index,
    progress: Arc<dyn Progress>,
    /// The last barrier's id: each step ends with the next one.
    barrier_id: u64,
}

impl<'a> Run<'a> {
    fn new(
        s: &'a mut Session,
        cfg: &'a Config,
        o: &'a ResyncOptions,
        index: &'a mut Index,
        progress: Arc<dyn Progress>,
    ) -> Self {
        Run {
            s,
            cfg,
            o,
            index,
            progress,
            barrier_id: 0,
        }
    }

    /// Closes a step: the failures the standby reports up to here.
    async fn barrier(&mut self) -> Result<Vec<wire::Failure>, ClientError> {
        self.barrier_id += 1;
        self.s.barrier(self.barrier_id).await
    }
}

async fn reconcile_with(
    mut run: Run<'_>,
    scope: Option<Vec<Scope>>,
) -> Result<Summary, ClientError> {
    let t0 = Instant::now();
    let (cfg, o) = (run.cfg, run.o);
    let scoped = scope.is_some();
    let (mut local, mut remote, owners, scanned) = both_sides(&mut run, scope).await?;
    let mut deferred_links = 0;
    let mut links_outside = HashSet::new();
    if !scoped {
        links_outside = local.partial_links.iter().map(|g| g.key).collect();
    } else if let Some(outside) = &o.defer_links {
        deferred_links = defer_links(&mut local, &mut remote, outside);
    }
    if !local.unreadable.is_empty() {
        // What is there locally is unknown: leave the standby's copy alone
        // rather than delete it as if it were gone here.
        let unknown: HashSet<&RelPath> = local.unreadable.iter().collect();
        remote.retain(|e| {
            !std::iter::successors(Some(e.path.clone()), |p| p.parent())
                .any(|p| unknown.contains(&p))
        });
    }
    let p = plan::plan(
        &local.entries,
        &remote,
        &PlanOptions {
            delete: o.delete,
            checksum: o.checksum,
            delta_min_size: cfg.sync.delta_min_size,
            owners,
        },
    );
    // Past the plan the listings are not needed: at a first sync of a
    // million files they were the largest thing held while content went.
    let skipped = std::mem::take(&mut local.skipped);
    drop((local, remote));
    if !scoped {
        // Before the content fills the index, not only after.
        scan::give_back_freed_heap();
    }
    let mut p = p;
    let bytes_delta = p.files.iter().filter(|f| f.delta).map(|f| f.size).sum();
    let mut sum = Summary {
        scanned,
        unchanged: p.unchanged,
        skipped,
        content_bytes: p.content_bytes,
        bytes_whole: p.content_bytes - bytes_delta,
        bytes_delta,
        deferred_links,
        links_outside,
        dry_run: o.dry_run,
        ..Default::default()
    };
    if o.dry_run {
        dry_run(&p, &mut sum);
    } else {
        run.progress.start(p.content_bytes, p.files.len());
        execute(&mut run, &mut p, &mut sum).await?;
        run.progress.finish();
    }
    sum.elapsed = t0.elapsed();
    if !scoped {
        drop(p);
        scan::give_back_freed_heap();
    }
    Ok(sum)
}

/// Our scan (on a blocking thread, with the index) and the standby's list,
/// at once; our entries as the standby stores them, whether owners count,
/// and how many entries we scanned. A whole-tree compare with a standby
/// that speaks digests lists only the subtrees whose digests differ (and
/// our entries are cut to those).
async fn both_sides(
    run: &mut Run<'_>,
    scope: Option<Vec<Scope>>,
) -> Result<(Scan, Vec<Entry>, bool, u64), ClientError> {
    let (s, cfg, o, index) = (&mut *run.s, run.cfg, run.o, &mut *run.index);
    let checksum = o.checksum;
    let root = cfg.export.clone();
    if scope.is_none() {
        // A filesystem unmounted under a running primary leaves the empty
        // directory beneath: compared, it would delete every file. Checked
        // before the standby is asked to walk its tree.
        let (dir, export) = (cfg.state_dir.clone(), root.clone());
        tokio::task::spawn_blocking(move || crate::state::check_mounted(&dir, &export))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .map_err(std::io::Error::other)?;
    }
    let mut ix = std::mem::take(index);
    let local_scope = scope.clone();
    // A whole-tree scan watches each directory before reading it.
    let hook = o.watch_dirs.clone().map(|w| w.hook());
    let by_digests = scope.is_none() && !checksum && s.digests();
    let view = s.standby_view();
    let local = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let r = match &local_scope {
            None => scan::scan_with(&root, &mut ix, checksum, checksum, hook),
            Some(sc) => scan::scan_scoped(&root, &mut ix, sc, checksum),
        };
        let r = r.map(|mut sc| {
            tracing::debug!(entries = sc.entries.len(), elapsed = ?t0.elapsed(), "scanned");
            let (owners, ours) = match by_digests {
                true => super::digests::prepare(&mut sc, view),
                false => (view.apply(&mut sc.entries), None),
            };
            (sc, owners, ours)
        });
        (r, ix)
    });
    let owners = s.as_standby_stores(&mut []);
    // The standby lists (or builds its digests) while we scan.
    let remote = match scope {
        None if by_digests => s.ask_digests(owners, Vec::new()).await.map(|_| Vec::new()),
        None => s.list(o.checksum).await,
        Some(sc) => s.list_scope(sc).await,
    };
    let (local, ix) = local
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    *index = ix;
    let ((mut local, owners, ours), mut remote) = (local?, remote?);
    let scanned = local.entries.len() as u64;
    if by_digests {
        remote = super::digests::differing(s, &mut local, owners, ours).await?;
        // The digest tree (~100 MB at a million entries) was built and
        // freed on another thread, whose arena the plan does not use:
        // give it back before the plan, the primary's peak otherwise.
        scan::give_back_freed_heap();
    }
    Ok((local, remote, owners, scanned))
}

/// Leaves out of both sides' lists (neither sent nor deleted now) the
/// hard-linked files with names outside a scoped reconcile; returns how many.
fn defer_links(local: &mut Scan, remote: &mut Vec<Entry>, outside: &HashSet<(u64, u64)>) -> u64 {
    let defer: HashSet<RelPath> = local
        .partial_links
        .iter()
        .filter(|g| !outside.contains(&g.key))
        .flat_map(|g| &g.names)
        .cloned()
        .collect();
    if !defer.is_empty() {
        local.entries.retain(|e| !defer.contains(&e.path));
        remote.retain(|e| !defer.contains(&e.path));
    }
    defer.len() as u64
}

/// What a dry run would do, as lines of the summary.
fn dry_run(p: &Plan, sum: &mut Summary) {
    let lines = &mut sum.planned;
    lines.extend(p.deletes.iter().map(|d| format!("delete {d}")));
    lines.extend(p.mkdirs.iter().map(|d| format!("mkdir  {d}")));
    for f in &p.files {
        let how = if f.delta { "delta " } else { "send  " };
        lines.push(format!("{how} {} ({} bytes)", f.path, f.size));
    }
    lines.extend(p.symlinks.iter().map(|(l, _, _)| format!("link   {l}")));
    lines.extend(p.links.iter().map(|(l, t)| format!("hard   {l} => {t}")));
    sum.sent_whole = p.files.iter().filter(|f| !f.delta).count() as u64;
    sum.sent_delta = p.files.len() as u64 - sum.sent_whole;
    sum.deleted = p.deletes.len() as u64;
}

async fn execute(run: &mut Run<'_>, p: &mut Plan, sum: &mut Summary) -> Result<(), ClientError> {
    let s = &mut *run.s;
    // 1. Deletes, then directories, parents first (worker 0 keeps the order).
    for d in &p.deletes {
        s.send(&Request::Delete { path: d.clone() }).await?;
    }
    sum.deleted = p.deletes.len() as u64;
    for d in &p.mkdirs {
        let meta = wire::Meta {
            mode: 0o700,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
        };
        s.send(&Request::Mkdir {
            path: d.clone(),
            meta,
        })
        .await?;
    }
    sum.dirs_created = p.mkdirs.len() as u64;
    // Files wait for their directories (and deletes) only when there are
    // any: a live batch of new files in existing directories has neither.
    if !p.deletes.is_empty() || !p.mkdirs.is_empty() {
        sum.failures.extend(run.barrier().await?);
    }
    // 2. Content, and symlinks.
    let files = std::mem::take(&mut p.files);
    content(run, p, files, sum).await?;
    let s = &mut *run.s;
    // 3. Hard links (their leaders are now in place), then metadata, deepest first.
    for (path, leader) in &p.links {
        s.send(&Request::Link {
            path: path.clone(),
            leader: leader.clone(),
        })
        .await?;
    }
    sum.hard_links = p.links.len() as u64;
    for (path, meta) in &p.metas {
        s.send(&Request::SetMeta {
            path: path.clone(),
            meta: *meta,
        })
        .await?;
    }
    sum.meta_only = p.meta_changes;
    if !run.o.commit_follows {
        sum.failures.extend(run.barrier().await?);
    }
    Ok(())
}

/// `files` (taken out of `p`) are sent: large files and deltas start on
/// their own streams first, so they run while the small files stream in
/// order on the control stream; a small file that failed its content check
/// is resent whole.
async fn content(
    run: &mut Run<'_>,
    p: &Plan,
    files: Vec<FileOp>,
    sum: &mut Summary,
) -> Result<(), ClientError> {
    let (s, o, index, progress) = (&mut *run.s, run.o, &mut *run.index, run.progress.clone());
    let settle = o.settle.clone();
    // Owned, not cloned: each file's path moves on into its job.
    let (large, small): (Vec<FileOp>, Vec<FileOp>) = files
        .into_iter()
        .partition(|f| f.delta || f.size > syncd_proto::sender::SMALL);
    for f in large {
        if s.transfers().busy(&f.path) {
            // Still going from an earlier batch; its end re-checks the path.
            continue;
        }
        // One that ends meanwhile (to free a stream) is not accounted here:
        // detached, it ends like the others, through the live loop, which
        // compares its path again (placed after this batch listed its
        // directory, or written again while it ran); else the drain below
        // takes it.
        s.start_transfer(f, settle.clone(), progress.clone()).await;
    }
    let mut small = Small::new(run.cfg.export.clone(), settle, progress, small);
    send_small(s, &mut small, sum, index).await?;
    for (path, target, meta) in &p.symlinks {
        s.send(&Request::Symlink {
            path: path.clone(),
            target: target.clone(),
            meta: *meta,
        })
        .await?;
    }
    sum.symlinks = p.symlinks.len() as u64;
    if !o.detach_transfers {
        s.drain_transfers(sum, index).await;
    }
    let mut failures = run.barrier().await?;
    // Failures of the small files go back to them: one worth resending
    // goes again and waits for the next barrier.
    while small.verdicts(failures, sum) {
        send_small(run.s, &mut small, sum, run.index).await?;
        failures = run.barrier().await?;
    }
    Ok(())
}
