//! A thread's last parent directory, reused for the next file in it: small
//! files arrive a directory at a time, and resolving the same parent again
//! per file (`openat2` + `close`, twice: to stage and to name) was a
//! quarter of the standby's non-filesystem syscalls.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::Root;

/// The cached parent. Valid while syncd itself has changed no names in the
/// export ([`Root::names_changed`]); the holder also drops it at each batch
/// commit, so a directory renamed by someone else on this node is used
/// at most until the end of the batch (as if the rename came after it).
#[derive(Default)]
pub struct Dirs {
    last: Option<Cached>,
}

struct Cached {
    parent: Vec<u8>,
    fd: OwnedFd,
    /// `Root::names` when it was opened.
    names: u64,
    /// The owner a new file created in it gets: our ids, or the
    /// directory's group when it is set-group-ID.
    new_owner: (u32, u32),
}

impl Dirs {
    /// Forgets the cached directory (at a batch's end).
    pub fn clear(&mut self) {
        self.last = None;
    }
}

impl Root {
    /// Called after syncd renames, removes or replaces anything in the
    /// export (or hands a parent out to code that may): cached parents are
    /// opened again.
    pub(super) fn names_changed(&self) {
        self.names.fetch_add(1, Ordering::AcqRel);
    }

    /// The directory `parent` (resolved beneath the root, see `open_dir`),
    /// from `dirs` when still valid; and the owner a file created in it
    /// gets.
    pub(super) fn parent_in<'c>(
        &self,
        dirs: &'c mut Dirs,
        parent: &[u8],
    ) -> io::Result<(&'c OwnedFd, (u32, u32))> {
        let names = self.names.load(Ordering::Acquire);
        let fresh = match &dirs.last {
            Some(c) => c.names != names || c.parent != parent,
            None => true,
        };
        if fresh {
            dirs.last = None;
            let fd = self.open_dir(parent)?;
            let st = rustix::fs::fstat(&fd)?;
            let (uid, gid) = self.ids;
            let setgid = st.st_mode & rustix::fs::Mode::SGID.bits() != 0;
            dirs.last = Some(Cached {
                parent: parent.to_vec(),
                fd,
                names,
                new_owner: (uid, if setgid { st.st_gid } else { gid }),
            });
        }
        match &dirs.last {
            Some(c) => Ok((&c.fd, c.new_owner)),
            None => Err(io::Error::other("directory cache empty")),
        }
    }
}
