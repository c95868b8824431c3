//! What the standby does with the owner and mode bits the primary sends
//! (`[standby] owners` and `strip_setid`).
//!
//! The standby enforces the policy when it applies metadata (`fsroot.rs`);
//! the primary learns it from the standby's `Welcome` and compares its own
//! tree through the same mapping, so a mapped owner or a stripped bit is
//! not seen as a difference and re-sent on every reconcile.

use serde::{Deserialize, Serialize};

use crate::wire::{Entry, Kind, Meta};

/// Whose owner a replicated entry gets on the standby.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Owners {
    /// The primary's uid and gid, as `rsync -a` run as root.
    #[default]
    Preserve,
    /// Never chown: an entry belongs to whoever created it on the standby
    /// (syncd's own user for what syncd creates). Owners are not compared.
    Standby,
    /// Every entry gets this uid and gid (rsync's `--chown`).
    Fixed { uid: u32, gid: u32 },
}

/// The standby's metadata policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MetaPolicy {
    pub owners: Owners,
    /// Clear set-user-ID and set-group-ID on regular files. Directories
    /// keep set-group-ID: there it only makes new entries inherit the
    /// directory's group, and shared directories rely on it.
    pub strip_setid: bool,
}

const SETID: u32 = 0o6000;

impl MetaPolicy {
    /// From the `[standby]` keys; errors name the key and the fix.
    pub fn from_config(owners: Option<&str>, strip_setid: Option<bool>) -> Result<Self, String> {
        let owners = match owners {
            None => Owners::Preserve,
            Some(s) => parse_owners(s)?,
        };
        // A mapped owner must not inherit the primary's setuid bit: with
        // `owners = "standby"` run as root, it would be a setuid-root file.
        let strip_setid = strip_setid.unwrap_or(owners != Owners::Preserve);
        Ok(MetaPolicy {
            owners,
            strip_setid,
        })
    }

    /// The policy as applied by a process that may (`as_root`) or may not
    /// change owners: without root nothing is chowned.
    pub fn effective(self, as_root: bool) -> Self {
        if as_root {
            self
        } else {
            MetaPolicy {
                owners: Owners::Standby,
                ..self
            }
        }
    }

    /// The owner to set for an entry sent with `meta`; `None`: leave it.
    pub fn owner(&self, meta: &Meta) -> Option<(u32, u32)> {
        match self.owners {
            Owners::Preserve => Some((meta.uid, meta.gid)),
            Owners::Standby => None,
            Owners::Fixed { uid, gid } => Some((uid, gid)),
        }
    }

    /// The permission bits to set on an entry sent with `mode`.
    pub fn mode(&self, mode: u32, regular_file: bool) -> u32 {
        if self.strip_setid && regular_file {
            mode & !SETID
        } else {
            mode
        }
    }

    /// Whether the standby's owners follow the primary's, so comparing them
    /// means something.
    pub fn compares_owners(&self) -> bool {
        self.owners != Owners::Standby
    }

    /// `meta` as the standby stores it.
    pub fn map(&self, meta: Meta, regular_file: bool) -> Meta {
        let (uid, gid) = self.owner(&meta).unwrap_or((meta.uid, meta.gid));
        Meta {
            mode: self.mode(meta.mode, regular_file),
            uid,
            gid,
            ..meta
        }
    }

    /// The primary's entries as the standby would store them.
    pub fn map_entries(&self, entries: &mut [Entry]) {
        if *self == MetaPolicy::default() {
            return;
        }
        for e in entries {
            e.meta = self.map(e.meta, matches!(e.kind, Kind::File { .. }));
        }
    }
}

/// `"preserve"`, `"standby"` or `"UID:GID"` (decimal).
fn parse_owners(s: &str) -> Result<Owners, String> {
    match s {
        "preserve" => return Ok(Owners::Preserve),
        "standby" => return Ok(Owners::Standby),
        _ => {}
    }
    let bad = || {
        format!(
            "standby.owners: {s:?} is not \"preserve\", \"standby\" or \"UID:GID\"; \
             write e.g. owners = \"standby\" or owners = \"65534:65534\" (numeric ids)"
        )
    };
    let id = |part: &str| -> Result<u32, String> {
        // `u32::from_str` takes a leading '+'; only digits are an id.
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        match part.parse::<u32>() {
            // chown(2) reads -1 as "leave unchanged".
            Ok(u32::MAX) | Err(_) => Err(format!(
                "standby.owners: {part} is out of range; ids are 0 to {}",
                u32::MAX - 1
            )),
            Ok(v) => Ok(v),
        }
    };
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok(Owners::Fixed {
        uid: id(u)?,
        gid: id(g)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd_proto::path::RelPath;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 1000,
            gid: 100,
            mtime_sec: 5,
            mtime_nsec: 6,
        }
    }

    #[test]
    fn owners_parse_and_bad_values_name_the_key() {
        let p = |s: &str| MetaPolicy::from_config(Some(s), None);
        assert_eq!(p("preserve").unwrap().owners, Owners::Preserve);
        assert_eq!(p("standby").unwrap().owners, Owners::Standby);
        assert_eq!(
            p("65534:0").unwrap().owners,
            Owners::Fixed { uid: 65534, gid: 0 }
        );
        for bad in [
            "",
            "root",
            "Preserve",
            "1000",
            "1000:",
            ":1000",
            "+5:5",
            "-1:0",
            "1:2:3",
            " 1:2",
            "1 :2",
            "0x10:1",
            "4294967295:0",
            "0:4294967296",
            "1:２",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.starts_with("standby.owners: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn strip_setid_defaults_on_only_when_owners_are_mapped() {
        let p = |o: Option<&str>, s| MetaPolicy::from_config(o, s).unwrap().strip_setid;
        assert!(!p(None, None));
        assert!(!p(Some("preserve"), None));
        assert!(p(Some("standby"), None));
        assert!(p(Some("0:0"), None));
        assert!(p(None, Some(true)));
        assert!(!p(Some("standby"), Some(false)));
    }

    #[test]
    fn mapping_strips_setid_on_files_and_sets_owners() {
        let pol = MetaPolicy {
            owners: Owners::Fixed { uid: 7, gid: 8 },
            strip_setid: true,
        };
        let m = pol.map(meta(0o6755), true);
        assert_eq!((m.mode, m.uid, m.gid), (0o755, 7, 8));
        assert_eq!((m.mtime_sec, m.mtime_nsec), (5, 6));
        // A directory keeps set-group-ID (group inheritance), and sticky
        // and other bits are never touched.
        assert_eq!(pol.map(meta(0o3775), false).mode, 0o3775);
        assert_eq!(pol.map(meta(0o1777), true).mode, 0o1777);
        // Mapping what is already mapped changes nothing: the primary's
        // compare and the standby's apply agree.
        assert_eq!(pol.map(m, true), m);

        let keep = MetaPolicy {
            owners: Owners::Standby,
            strip_setid: false,
        };
        assert_eq!(keep.owner(&meta(0o644)), None);
        assert_eq!(keep.map(meta(0o4755), true), meta(0o4755));
        assert!(!keep.compares_owners());
        let pres = MetaPolicy::default();
        assert_eq!(pres.owner(&meta(0o644)), Some((1000, 100)));
        assert_eq!(pres.map(meta(0o4755), true), meta(0o4755));
        assert!(pres.compares_owners());
    }

    #[test]
    fn without_root_nothing_is_chowned() {
        let pol = MetaPolicy {
            owners: Owners::Fixed { uid: 7, gid: 8 },
            strip_setid: true,
        };
        assert_eq!(pol.effective(true), pol);
        let e = pol.effective(false);
        assert_eq!(e.owners, Owners::Standby);
        assert!(e.strip_setid);
    }

    #[test]
    fn entries_are_mapped_by_kind() {
        let pol = MetaPolicy {
            owners: Owners::Standby,
            strip_setid: true,
        };
        let e = |kind| Entry {
            path: RelPath::new(b"x".to_vec()).unwrap(),
            kind,
            meta: meta(0o6755),
            ino: 1,
        };
        let mut v = vec![
            e(Kind::File {
                size: 1,
                hash: None,
            }),
            e(Kind::Dir),
        ];
        pol.map_entries(&mut v);
        assert_eq!(v[0].meta.mode, 0o755);
        assert_eq!(v[1].meta.mode, 0o6755);
        assert_eq!(v[0].meta.uid, 1000);
    }
}
