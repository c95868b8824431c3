//! `syncd verify`: both trees listed with full content hashes and
//! compared; a verify session changes nothing on the standby.

use std::collections::HashMap;

use super::session::{record_error, ClientError, Session};
use crate::config::Config;
use crate::generation::Leading;
use crate::index::Index;
use crate::scan;
use crate::wire::{Entry, Kind, Purpose};
use syncd_proto::path::RelPath;

/// One difference found by `verify`.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    pub path: RelPath,
    pub what: String,
}

/// Compares both trees with full content hashes; changes nothing.
pub async fn verify(cfg: &Config) -> Result<Vec<Difference>, ClientError> {
    let me = Leading::current(cfg).map_err(record_error)?;
    let mut s = Session::connect(cfg, Purpose::Verify, &me).await?;
    let c2 = cfg.clone();
    let local = tokio::task::spawn_blocking(move || {
        let mut ix = Index::load(&c2.state_dir.join("index.bin"));
        scan::scan(&c2.export, &mut ix, true, true)
    });
    let remote = s.list(true).await?;
    let mut local = local
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
    let owners = s.as_standby_stores(&mut local.entries);
    let _ = s.finish().await;
    Ok(compare(&local.entries, &remote, owners))
}

/// `syncd verify --quick`: both trees stat'ed, not read; equal directory
/// digests (protocol 8) stand for equal subtrees, and only what differs
/// is listed and compared (size, type, mtime, mode, owners: no content).
pub async fn verify_quick(cfg: &Config) -> Result<Vec<Difference>, ClientError> {
    let me = Leading::current(cfg).map_err(record_error)?;
    let mut s = Session::connect(cfg, Purpose::Verify, &me).await?;
    if !s.digests() {
        return Err(ClientError::Protocol(format!(
            "the standby speaks protocol {}, which has no directory digests; run `syncd verify` without --quick",
            s.peer_version.0
        )));
    }
    let c2 = cfg.clone();
    let view = s.standby_view();
    let local = tokio::task::spawn_blocking(move || {
        // Stat only: the index is neither needed nor updated.
        let mut sc = scan::scan(&c2.export, &mut Index::default(), false, false)?;
        let ours = super::digests::prepare(&mut sc, view);
        Ok::<_, std::io::Error>((sc, ours))
    });
    let owners = s.as_standby_stores(&mut []);
    // The standby builds its digests while we scan and build ours.
    s.ask_digests(owners, Vec::new()).await?;
    let (mut local, (owners, ours)) = local
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
    let remote = super::digests::differing(&mut s, &mut local, owners, ours).await?;
    let _ = s.finish().await;
    Ok(compare(&local.entries, &remote, owners))
}

pub fn compare(local: &[Entry], remote: &[Entry], owners: bool) -> Vec<Difference> {
    let rmap: HashMap<&RelPath, &Entry> = remote.iter().map(|e| (&e.path, e)).collect();
    let lset: std::collections::HashSet<&RelPath> = local.iter().map(|e| &e.path).collect();
    let mut out = Vec::new();
    let d = |p: &RelPath, w: String| Difference {
        path: p.clone(),
        what: w,
    };
    for l in local {
        let Some(r) = rmap.get(&l.path) else {
            out.push(d(&l.path, "missing on standby".into()));
            continue;
        };
        let what = match (&l.kind, &r.kind) {
            (Kind::File { size: a, hash: ha }, Kind::File { size: b, hash: hb }) => {
                if a != b {
                    Some(format!("size {a} vs {b}"))
                } else if ha != hb {
                    Some("content differs".into())
                } else {
                    None
                }
            }
            (Kind::Dir, Kind::Dir) => None,
            (Kind::Symlink { target: a }, Kind::Symlink { target: b }) => (a != b).then(|| {
                format!(
                    "symlink target {:?} vs {:?}",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b)
                )
            }),
            (Kind::HardLink { leader: a }, Kind::HardLink { leader: b }) => {
                (a != b).then(|| format!("hard link to {a} vs {b}"))
            }
            (a, b) => Some(format!("type {} vs {}", kind_name(a), kind_name(b))),
        };
        if let Some(w) = what {
            out.push(d(&l.path, w));
            continue;
        }
        let (a, b) = (&l.meta, &r.meta);
        let is_link = matches!(l.kind, Kind::Symlink { .. });
        let is_hard = matches!(l.kind, Kind::HardLink { .. });
        if is_hard {
            continue;
        }
        if !is_link && a.mode != b.mode {
            out.push(d(&l.path, format!("mode {:o} vs {:o}", a.mode, b.mode)));
        } else if (a.mtime_sec, a.mtime_nsec) != (b.mtime_sec, b.mtime_nsec) {
            out.push(d(
                &l.path,
                format!(
                    "mtime {}.{:09} vs {}.{:09}",
                    a.mtime_sec, a.mtime_nsec, b.mtime_sec, b.mtime_nsec
                ),
            ));
        } else if owners && (a.uid, a.gid) != (b.uid, b.gid) {
            out.push(d(
                &l.path,
                format!("owner {}:{} vs {}:{}", a.uid, a.gid, b.uid, b.gid),
            ));
        }
    }
    for r in remote {
        if !lset.contains(&r.path) {
            out.push(d(&r.path, "only on standby".into()));
        }
    }
    out
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::File { .. } => "file",
        Kind::Dir => "directory",
        Kind::Symlink { .. } => "symlink",
        Kind::HardLink { .. } => "hard link",
    }
}
