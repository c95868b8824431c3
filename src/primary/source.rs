//! The one reader of a source file, used by every send path (small files
//! on the control stream, large files and deltas on their own streams):
//! open it safely, announce it, read it chunk by chunk with its BLAKE3, and
//! end it with `FileEnd` or `FileAbort` as the sans-IO [`Reading`] decides
//! (never more than announced; a file a writer touched is "busy", one that
//! changed is "changed": values, not side channels).

use std::os::fd::OwnedFd;
use std::path::Path;

use syncd_proto::sender::{Encoding, FileMsg, Finish, ReadEnd, Reading};

use crate::index::Stamp;
use crate::lease::Settle;
use crate::scan;
use crate::wire::{self, Request};
use syncd_proto::path::RelPath;

/// Where a read's requests go.
pub(crate) trait Sink {
    /// A request (FileBegin, FileEnd, FileAbort); false once the other side is gone.
    fn send(&mut self, r: Request) -> bool;
    /// A piece of content, in order; false stops the read.
    fn content(&mut self, id: u64, data: Vec<u8>) -> bool;
}

/// How a read ended, and for a file sent what the index records.
pub(crate) struct Read {
    pub end: ReadEnd,
    pub done: Option<(Stamp, wire::Hash)>,
}

impl Read {
    fn ended(end: ReadEnd) -> Read {
        Read { end, done: None }
    }
}

fn wire_encoding(e: Encoding) -> wire::Encoding {
    match e {
        Encoding::Whole => wire::Encoding::Whole,
        Encoding::Delta => wire::Encoding::Delta,
    }
}

/// Reads `rel` beneath `root` (from [`open_export`]; many small files share
/// one) for sending as file `id` in pieces of `chunk` bytes.
pub(crate) fn read_in(
    root: &OwnedFd,
    rel: &RelPath,
    settle: Option<&Settle>,
    id: u64,
    encoding: Encoding,
    chunk: usize,
    sink: &mut dyn Sink,
) -> std::io::Result<Read> {
    let (mut file, before, leased) = match open_source_in(root, rel, settle)? {
        Opened::Gone => return Ok(Read::ended(ReadEnd::Vanished)),
        Opened::Busy => {
            tracing::trace!(path = %rel, "read: busy");
            return Ok(Read::ended(ReadEnd::Busy));
        }
        Opened::File(f, m, leased) => (f, m, leased),
    };
    let (mut reading, _) = Reading::begin(id, before.len(), encoding);
    let begin = Request::FileBegin {
        id,
        path: rel.clone(),
        meta: scan::meta_of(&before),
        size: before.len(),
        encoding: wire_encoding(encoding),
    };
    if !sink.send(begin) {
        return Ok(Read::ended(ReadEnd::Vanished));
    }
    let mut h = blake3::Hasher::new();
    // A small file is read in one piece; one byte more than the scan saw
    // tells "grew" without reading on behind a writer that keeps appending.
    let chunk = chunk.min(before.len() as usize + 1).max(1);
    loop {
        // Read into spare capacity: zeroing each piece first cost a
        // large file's reader as much as a third of its BLAKE3.
        let mut buf = Vec::with_capacity(chunk);
        let mut piece = std::io::Read::take(&mut file, chunk as u64);
        let n = std::io::Read::read_to_end(&mut piece, &mut buf)?;
        if n == 0 || !reading.chunk(n as u64) {
            break;
        }
        h.update(&buf);
        // Short of a full piece only at the end of the file.
        if !sink.content(id, buf) || n < chunk {
            break;
        }
    }
    let after = file.metadata()?;
    let fin = Finish {
        changed: changed(&before, &after),
        touched: !untouched(&file, leased),
    };
    let (msg, end) = reading.finish(fin);
    let hash = *h.finalize().as_bytes();
    match msg {
        FileMsg::End { id } => sink.send(Request::FileEnd { id, hash }),
        FileMsg::Abort { id } | FileMsg::Begin { id, .. } => sink.send(Request::FileAbort { id }),
    };
    // With the watch's trace: when each file was read (benches/nfs_tail.py).
    tracing::trace!(path = %rel, ?end, "read");
    let done = (end == ReadEnd::Sent).then(|| (Stamp::of(&after), hash));
    Ok(Read { end, done })
}

pub(crate) fn changed(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    Stamp::of(a) != Stamp::of(b)
}

/// A source file opened for sending.
pub(crate) enum Opened {
    Gone,
    /// Open for writing elsewhere and not quiet: send it once closed.
    Busy,
    /// `leased`: a read lease is held and must still be intact after reading.
    File(std::fs::File, std::fs::Metadata, bool),
}

/// [`open_source_in`] beneath `export`, opened for this one file.
#[cfg(test)]
pub(crate) fn open_source(
    export: &Path,
    rel: &RelPath,
    settle: Option<&Settle>,
) -> std::io::Result<Opened> {
    open_source_in(&open_export(export)?, rel, settle)
}

/// The export's root, for [`read_in`] and [`open_source_in`].
pub(crate) fn open_export(export: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        export,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a file to send: `rel` beneath `root` (from [`open_export`]),
/// never through a symlink (neither the file nor a parent swapped for one
/// since the scan), never a FIFO or device (a FIFO would hang the reader, `/dev/zero` never ends).
/// Either counts as gone: the compare that follows sees what is there now.
/// With `settle` (live replication), a file another process has open for
/// writing is held back unless quiet that long or unchanged since a writer
/// closed it, with every event up to its stamps handled (see
/// [`crate::lease::Closed`]; may wait briefly for the watch thread).
pub(crate) fn open_source_in(
    root: &OwnedFd,
    rel: &RelPath,
    settle: Option<&Settle>,
) -> std::io::Result<Opened> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let gone = |e: &rustix::io::Errno| {
        matches!(
            *e,
            rustix::io::Errno::NOENT
                | rustix::io::Errno::LOOP
                | rustix::io::Errno::NOTDIR
                | rustix::io::Errno::XDEV
        )
    };
    let fd = match rustix::fs::openat2(
        root,
        rel.as_path(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(e) if gone(&e) => return Ok(Opened::Gone),
        Err(e) => return Err(e.into()),
    };
    let f = std::fs::File::from(fd);
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Ok(Opened::Gone);
    }
    let leased = match settle {
        Some(settle) => match crate::lease::take(&f) {
            crate::lease::Lease::Busy => {
                // Still open for writing, but unchanged since a writer
                // closed it (proven, not just recorded): a server's cached
                // descriptor, not a writer.
                if settle.closed.unchanged(rel, &f, &m) {
                    tracing::trace!(path = %rel, "held open, unchanged since its writer closed it");
                    return Ok(Opened::File(f, m, false));
                }
                // Quiet for `settle_ms` (by its ctime): shipped as it is.
                // While writes are fenced it can no longer change at all.
                if settle.quiet_left(&m) != Some(std::time::Duration::ZERO) {
                    return Ok(Opened::Busy);
                }
                tracing::debug!(path = %rel, size = m.len(), "held open for writing but quiet for settle_ms: shipped as it is");
                false
            }
            l => l == crate::lease::Lease::Held,
        },
        None => false,
    };
    Ok(Opened::File(f, m, leased))
}

/// No writer opened or truncated the file since [`open_source`].
pub(crate) fn untouched(f: &std::fs::File, leased: bool) -> bool {
    !leased || crate::lease::intact(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn is_file(o: Opened) -> bool {
        matches!(o, Opened::File(..))
    }

    #[test]
    fn a_source_is_read_only_through_no_symlink_and_only_if_regular() {
        let d = tempfile::tempdir().unwrap();
        let export = d.path().join("export");
        std::fs::create_dir_all(export.join("dir")).unwrap();
        std::fs::write(d.path().join("secret"), b"root only").unwrap();
        std::fs::write(export.join("dir/ok"), b"fine").unwrap();
        assert!(is_file(open_source(&export, &rel("dir/ok"), None).unwrap()));

        // swapped for a symlink to a file outside the export
        std::os::unix::fs::symlink(d.path().join("secret"), export.join("link")).unwrap();
        assert!(matches!(
            open_source(&export, &rel("link"), None).unwrap(),
            Opened::Gone
        ));
        // a parent swapped for a symlink
        std::os::unix::fs::symlink(d.path(), export.join("up")).unwrap();
        assert!(matches!(
            open_source(&export, &rel("up/secret"), None).unwrap(),
            Opened::Gone
        ));
        // a FIFO: opening must not hang, and it is not sent
        rustix::fs::mknodat(
            rustix::fs::CWD,
            export.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            open_source(&export, &rel("fifo"), None).unwrap(),
            Opened::Gone
        ));
        // a device
        std::os::unix::fs::symlink("/dev/zero", export.join("zero")).unwrap();
        assert!(matches!(
            open_source(&export, &rel("zero"), None).unwrap(),
            Opened::Gone
        ));
        assert!(matches!(
            open_source(&export, &rel("missing"), None).unwrap(),
            Opened::Gone
        ));
    }

    /// A writer cut off mid-file (a switchover's fence between an NFSv4
    /// OPEN and its WRITE) leaves it held open for writing, with the create
    /// verifier as its mtime, decades ahead: it is sent once quiet for
    /// `settle` by its ctime, as it is, not held back for ever.
    #[test]
    fn a_file_held_open_goes_once_quiet_whatever_its_mtime() {
        use std::io::Write;
        use std::time::{Duration, UNIX_EPOCH};
        crate::lease::ignore_break_signal();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut w = std::fs::File::create(&p).unwrap();
        w.write_all(b"half of it").unwrap();
        w.set_modified(UNIX_EPOCH + Duration::from_secs(3_500_000_000))
            .unwrap();
        if crate::lease::take(&std::fs::File::open(&p).unwrap()) != crate::lease::Lease::Busy {
            syncd_testkit::skip::skip(
                "a_file_held_open_goes_once_quiet_whatever_its_mtime",
                "file leases are not supported here",
            );
            return;
        }
        let settle = |ms| Settle {
            quiet: Duration::from_millis(ms),
            closed: std::sync::Arc::default(),
        };
        let opened = |ms| open_source(d.path(), &rel("f"), Some(&settle(ms))).unwrap();
        assert!(
            matches!(opened(60_000), Opened::Busy),
            "not quiet for a minute"
        );
        std::thread::sleep(Duration::from_millis(150));
        match opened(100) {
            Opened::File(_, m, leased) => assert_eq!((m.len(), leased), (10, false)),
            _ => panic!("quiet for settle but held back"),
        }
        drop(w);
    }

    /// Records what a read sends; `grow` appends to the file at the first piece.
    struct Tape {
        reqs: Vec<Request>,
        grow: Option<std::path::PathBuf>,
    }

    impl Sink for Tape {
        fn send(&mut self, r: Request) -> bool {
            self.reqs.push(r);
            true
        }

        fn content(&mut self, id: u64, data: Vec<u8>) -> bool {
            if let Some(p) = self.grow.take() {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(&[7u8; 100_000]).unwrap();
            }
            self.reqs.push(Request::FileData { id, data });
            true
        }
    }

    fn data_bytes(t: &Tape) -> usize {
        t.reqs
            .iter()
            .map(|r| match r {
                Request::FileData { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn the_reader_sends_a_quiet_file_with_its_hash_and_stamp() {
        let d = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        std::fs::write(d.path().join("f"), &content).unwrap();
        let mut t = Tape {
            reqs: vec![],
            grow: None,
        };
        let r = read_in(
            &open_export(d.path()).unwrap(),
            &rel("f"),
            None,
            5,
            Encoding::Whole,
            256 << 10,
            &mut t,
        )
        .unwrap();
        assert_eq!(r.end, ReadEnd::Sent);
        let want = *blake3::hash(&content).as_bytes();
        assert_eq!(r.done.map(|(_, h)| h), Some(want));
        assert!(matches!(
            t.reqs.first(),
            Some(Request::FileBegin {
                id: 5,
                size: 600_000,
                ..
            })
        ));
        assert!(matches!(t.reqs.last(), Some(Request::FileEnd { id: 5, hash }) if *hash == want));
        assert_eq!(data_bytes(&t), content.len());
        // Gone: nothing is announced.
        let mut t = Tape {
            reqs: vec![],
            grow: None,
        };
        let r = read_in(
            &open_export(d.path()).unwrap(),
            &rel("nope"),
            None,
            6,
            Encoding::Whole,
            1024,
            &mut t,
        )
        .unwrap();
        assert_eq!((r.end, t.reqs.len()), (ReadEnd::Vanished, 0));
    }

    #[test]
    fn a_file_growing_under_the_reader_is_aborted_within_its_announced_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        for chunk in [256 << 10, 1 << 20] {
            // In pieces (a large file) and in one (a small one).
            std::fs::write(&p, vec![1u8; 300_000]).unwrap();
            let mut t = Tape {
                reqs: vec![],
                grow: Some(p.clone()),
            };
            let r = read_in(
                &open_export(d.path()).unwrap(),
                &rel("f"),
                None,
                1,
                Encoding::Whole,
                chunk,
                &mut t,
            )
            .unwrap();
            assert_eq!(r.end, ReadEnd::Changed);
            assert!(r.done.is_none());
            assert!(matches!(t.reqs.last(), Some(Request::FileAbort { id: 1 })));
            assert!(data_bytes(&t) <= 300_000, "sent past the announced size");
        }
    }
}
