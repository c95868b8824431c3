//! Giving staged content its name, owner, mode and times.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{AtFlags, Mode};

use super::meta::{gid, times, uid};
use super::{os, Dirs, Root, Staged};
use crate::wire::Meta;
use syncd_proto::path::RelPath;

impl Root {
    /// Applies metadata to a staged file and gives it the name `p`
    /// (replacing what is there); its metadata as placed.
    pub fn commit(&self, s: Staged<'_>, p: &RelPath, meta: &Meta) -> io::Result<Metadata> {
        self.commit_keeping(&mut Dirs::default(), s, p, meta, || true)?
            .ok_or_else(|| io::Error::other("not placed"))
    }

    /// [`Root::commit`], asking `keep` first only when something is at
    /// `p` to be replaced (a new name needs no check: the link that makes
    /// it fails when the name is taken). `None`, nothing placed, when
    /// `keep` says no. `dirs`: the parent of the previous file committed,
    /// reused when it is this one's.
    pub fn commit_keeping(
        &self,
        dirs: &mut Dirs,
        mut s: Staged<'_>,
        p: &RelPath,
        meta: &Meta,
        keep: impl FnOnce() -> bool,
    ) -> io::Result<Option<Metadata>> {
        let owner = self.policy.owner(meta);
        // A new file is ours (or its set-group-ID directory's group): no
        // chown when that is the owner asked for.
        let chown = owner.filter(|o| s.owner != Some(*o));
        self.set_file_meta(&s.file, chown, meta)?;
        match &s.name {
            Some(n) => {
                if !keep() {
                    return Ok(None);
                }
                self.place(self.staging()?, n, p)?
            }
            None => {
                // Give the unnamed file a name: directly when the destination
                // is free (one syscall), else a temporary name beside it and
                // an atomic rename over it.
                let (parent, name) = p.split_last();
                let (pd, _) = self.parent_in(dirs, parent)?;
                match self.links.link(&s.file, pd, os(name)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        if !keep() {
                            return Ok(None);
                        }
                        // The keeper may have moved names: resolved afresh.
                        let (pd, _) = self.parent(p)?;
                        let tmp = self.tmp_name();
                        self.links.link(&s.file, &pd, OsStr::new(&tmp))?;
                        if let Err(e) = self.place(&pd, &tmp, p) {
                            let _ = rustix::fs::unlinkat(&pd, tmp.as_str(), AtFlags::empty());
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        s.done = true;
        // After the link: the stamp recorded includes its ctime.
        let m = s.file.metadata()?;
        match owner {
            // Created with another owner than foreseen (a filesystem's own
            // rules): set now, and the stamp read again.
            Some(o) if chown.is_none() && (m.uid(), m.gid()) != o => {
                self.set_file_meta(&s.file, Some(o), meta)?;
                s.file.metadata().map(Some)
            }
            _ => Ok(Some(m)),
        }
    }

    /// Owner (when given), mode and times of a file being committed.
    fn set_file_meta(&self, f: &File, owner: Option<(u32, u32)>, meta: &Meta) -> io::Result<()> {
        // chown before chmod: chown clears set-ID bits the mode may keep.
        if let Some((u, g)) = owner {
            rustix::fs::fchown(f, Some(uid(u)), Some(gid(g)))?;
        }
        rustix::fs::fchmod(f, Mode::from_raw_mode(self.policy.mode(meta.mode, true)))?;
        rustix::fs::futimens(f, &times(meta))?;
        Ok(())
    }
}
