//! The node's generation record, kept durably in the state directory.
//!
//! The rules (which data is newer, who wins after a heal) are in
//! `syncd_proto::pair::lineage`; this module only stores them: the lineage
//! this node last led or followed and the newest generation it heard from
//! its peer, written to a temporary file, fsync'd, renamed over `lineage`,
//! and the directory fsync'd, so a crash leaves the old record or the new.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use syncd_proto::pair::lineage::{Generation, Lineage, NodeId, Relation};

use crate::config::Config;
use crate::tls::{Fingerprint, Identity};

const FILE: &str = "lineage";
/// `MAGIC`, the format version (u32, little endian), then postcard.
/// Version 1 was the bare postcard record; read and migrated.
const MAGIC: &[u8; 8] = b"SYNCDGEN";
pub const VERSION: u32 = 2;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub lineage: Lineage,
    /// The newest generation heard from the peer.
    pub peer_seen: Option<Generation>,
}

/// A node's identity in generations: the first 8 bytes of its
/// certificate's SHA-256 (two nodes never share a key).
pub fn node_id(id: &Identity) -> NodeId {
    let f = Fingerprint::of(&id.cert);
    let mut b = [0u8; 8];
    b.copy_from_slice(&f.0[..8]);
    NodeId(u64::from_be_bytes(b))
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("generation record {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("generation record {path} is damaged ({err}); move it away to start this node as never synced")]
    Damaged { path: PathBuf, err: postcard::Error },
    #[error(
        "generation record {path} has format version {version}, newer than this release's {VERSION} \
         (written by a newer syncd); run that release"
    )]
    Newer { path: PathBuf, version: u32 },
}

/// Where the record lives.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The stored record; a node that never stored one has never synced.
    pub fn load(&self) -> Result<Record, RecordError> {
        Ok(self.read()?.0)
    }

    /// Rewrites a record of an older format in the current one; whether
    /// there was one.
    pub fn migrate(&self) -> Result<bool, RecordError> {
        match self.read()? {
            (r, true) => self.save(&r).map(|()| true),
            _ => Ok(false),
        }
    }

    /// The record and whether it is in an older format.
    fn read(&self) -> Result<(Record, bool), RecordError> {
        let path = self.path();
        let bytes = match crate::state::read_private(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Record::default(), false)),
            Err(err) => return Err(RecordError::Io { path, err }),
        };
        let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
            let r =
                postcard::from_bytes(&bytes).map_err(|err| RecordError::Damaged { path, err })?;
            return Ok((r, true));
        };
        let (version, body) = match rest.split_first_chunk::<4>() {
            Some((v, body)) => (u32::from_le_bytes(*v), body),
            None => (0, rest),
        };
        if version > VERSION {
            return Err(RecordError::Newer { path, version });
        }
        let r = postcard::from_bytes(body).map_err(|err| RecordError::Damaged { path, err })?;
        Ok((r, false))
    }

    /// Writes `r` durably (see the module comment).
    pub fn save(&self, r: &Record) -> Result<(), RecordError> {
        self.write(r, true)
    }

    /// Writes `r` atomically, leaving the flush to a `syncfs` that follows.
    pub fn save_unsynced(&self, r: &Record) -> Result<(), RecordError> {
        self.write(r, false)
    }

    fn write(&self, r: &Record, sync: bool) -> Result<(), RecordError> {
        let io = |err| RecordError::Io {
            path: self.path(),
            err,
        };
        crate::state::private_dir(&self.dir).map_err(io)?;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        let bytes = postcard::to_extend(r, bytes).map_err(|e| io(io::Error::other(e)))?;
        // A name of its own per write: two writers (the standby and the
        // source of one node) must not rename each other's file away.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{FILE}.{}.{n}.tmp", std::process::id()));
        let mut f = crate::state::create_private(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        if sync {
            f.sync_all().map_err(io)?;
        }
        drop(f);
        std::fs::rename(&tmp, self.path()).map_err(io)?;
        if sync {
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

/// The sending side's record: who we are and the generation we lead.
pub struct Leading {
    store: Store,
    pub node: NodeId,
    pub record: Record,
    /// Whether [`Leading::save`] writes (not when another owner keeps the
    /// record, as the `--role auto` driver does).
    pub persist: bool,
}

impl Leading {
    /// Loads the record and, unless this node already leads the current
    /// generation, starts a new one (durably, before anything is sent):
    /// a node that followed another, or never synced, leads a generation of
    /// its own from now on. `take_over` starts a new one regardless, above
    /// every generation seen from the peer.
    pub fn start(cfg: &Config, take_over: bool) -> Result<Leading, RecordError> {
        let id = Identity::from_config(cfg).map_err(|e| RecordError::Io {
            path: cfg.cert.clone(),
            err: io::Error::other(e),
        })?;
        let node = node_id(&id);
        let store = Store::new(&cfg.state_dir);
        let mut record = store.load()?;
        let l = &record.lineage;
        if take_over || !l.synced() || l.gen.node != node {
            let gen = record.lineage.promote(node, record.peer_seen);
            store.save(&record)?;
            tracing::info!(generation = %gen, "leading a new generation");
        }
        Ok(Leading {
            store,
            node,
            record,
            persist: true,
        })
    }

    /// Read-only use (verify): the record as it is.
    pub fn current(cfg: &Config) -> Result<Leading, RecordError> {
        let id = Identity::from_config(cfg).map_err(|e| RecordError::Io {
            path: cfg.cert.clone(),
            err: io::Error::other(e),
        })?;
        let store = Store::new(&cfg.state_dir);
        let record = store.load()?;
        Ok(Leading {
            store,
            node: node_id(&id),
            record,
            persist: true,
        })
    }

    /// The peer told us its generation; a newer one is remembered durably.
    pub fn saw_peer(&mut self, peer: &Lineage) {
        if peer.synced() && self.record.peer_seen.is_none_or(|g| peer.gen > g) {
            self.record.peer_seen = Some(peer.gen);
            self.save();
        }
    }

    /// The standby acknowledged batch `id` durably.
    pub fn committed(&mut self, id: u64) {
        self.record.lineage.commit = self.record.lineage.commit.max(id);
    }

    pub fn save(&self) {
        if !self.persist {
            return;
        }
        if let Err(e) = self.store.save(&self.record) {
            tracing::warn!("{e}");
        }
    }
}

/// `syncd promote --force`: a new generation led by this node, saved.
pub fn promote_here(cfg: &Config) -> Result<Generation, RecordError> {
    let id = Identity::from_config(cfg).map_err(|e| RecordError::Io {
        path: cfg.cert.clone(),
        err: io::Error::other(e),
    })?;
    let store = Store::new(&cfg.state_dir);
    let mut r = store.load()?;
    let gen = r.lineage.promote(node_id(&id), r.peer_seen);
    store.save(&r)?;
    Ok(gen)
}

/// How a standby answers a primary, from its own record and the primary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Follow it; `preserve`: keep every local file the catch-up would
    /// overwrite or delete in the conflicts area (this node may hold writes
    /// the primary never received).
    Follow { preserve: bool },
    /// Refuse: this node's data is newer; following would lose it.
    Refuse(String),
}

/// The standby's rule for a writing session from `primary`.
pub fn judge(me: NodeId, ours: &Lineage, primary: &Lineage) -> Verdict {
    match ours.relation(me, primary) {
        Relation::Same => Verdict::Follow { preserve: false },
        Relation::Behind { preserve } => Verdict::Follow { preserve },
        Relation::Diverged { we_win: false } => Verdict::Follow { preserve: true },
        Relation::Ahead | Relation::Diverged { we_win: true } => Verdict::Refuse(format!(
            "this standby holds newer data (generation {} batch {}) than the primary (generation {} batch {}); \
             following it would overwrite that data. Make this node the primary, or start a new generation \
             on the primary with `syncd resync --take-over`",
            ours.gen, ours.commit, primary.gen, primary.commit
        )),
    }
}

/// One line for status and logs: "3-00ab…cd batch 17".
pub fn describe(l: &Lineage) -> String {
    if l.synced() {
        format!("{} batch {}", l.gen, l.commit)
    } else {
        "none (never synced)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_a_reload_and_damage_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(&d.path().join("state"));
        assert_eq!(s.load().unwrap(), Record::default());
        let mut r = Record::default();
        r.lineage.promote(NodeId(7), None);
        r.lineage.commit = 42;
        r.peer_seen = Some(r.lineage.gen);
        s.save(&r).unwrap();
        assert_eq!(s.load().unwrap(), r);
        std::fs::write(d.path().join("state/lineage"), b"\xff\xff\xff").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn the_unversioned_record_is_migrated_and_a_newer_one_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let mut r = Record::default();
        r.lineage.promote(NodeId(0x1234_5678_9abc_def0), None);
        r.lineage.commit = 9;
        // What releases before the version header wrote.
        std::fs::write(d.path().join(FILE), postcard::to_stdvec(&r).unwrap()).unwrap();
        assert_eq!(s.load().unwrap(), r);
        assert!(s.migrate().unwrap());
        let b = std::fs::read(d.path().join(FILE)).unwrap();
        assert_eq!(&b[..8], MAGIC);
        assert!(!s.migrate().unwrap(), "already current");
        assert_eq!(s.load().unwrap(), r);

        let mut newer = MAGIC.to_vec();
        newer.extend_from_slice(&(VERSION + 1).to_le_bytes());
        std::fs::write(d.path().join(FILE), &newer).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
        assert!(s.migrate().is_err());
        assert_eq!(std::fs::read(d.path().join(FILE)).unwrap(), newer);
    }

    #[test]
    fn a_standby_refuses_older_data_and_preserves_when_it_may_hold_writes() {
        let (a, b) = (NodeId(0xa), NodeId(0xb));
        let mut la = Lineage::default();
        la.promote(a, None);
        let mut lb = Lineage::default();
        // a fresh standby follows, keeping what its export held
        assert_eq!(judge(b, &lb, &la), Verdict::Follow { preserve: true });
        lb.follow(&la);
        assert_eq!(judge(b, &lb, &la), Verdict::Follow { preserve: false });
        // b took over; a comes back as the primary with its old data
        lb.promote(b, Some(la.gen));
        assert!(matches!(judge(b, &lb, &la), Verdict::Refuse(m) if m.contains("newer data")));
        // a as the standby of b: it led, it may hold writes b never got
        assert_eq!(judge(a, &la, &lb), Verdict::Follow { preserve: true });
    }
}
