//! One read of a source file, whatever carries it (whole on the control
//! stream, whole or delta on a file stream): the size it announced bounds
//! what is sent, and how the read ended decides between `FileEnd` and
//! `FileAbort`.

/// How a file's content travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Whole,
    /// Instructions against the standby's copy (its signature).
    Delta,
}

/// What the Sender tells the shell to put on the wire for a file; the shell
/// adds what it holds (path, metadata, bytes, hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMsg {
    Begin {
        id: u64,
        size: u64,
        encoding: Encoding,
    },
    End {
        id: u64,
    },
    /// Drop what was sent of it: the read did not produce the file.
    Abort {
        id: u64,
    },
}

/// How a read ended, as a value the file's [`super::FileJob`] decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// Every announced byte went out, then `FileEnd`.
    Sent,
    /// Gone before it was opened (or not a regular file any more).
    Vanished,
    /// Another process has it open for writing: send it once closed.
    Busy,
    /// It changed while being read (size or stamp): not sent.
    Changed,
    /// No delta could be made (the standby's signature was unusable).
    NoDelta,
    /// Reading failed.
    Failed(String),
}

/// What the reader saw once it stopped reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finish {
    /// The file's stamp (size, mtime, ctime, inode) differs from when it was opened.
    pub changed: bool,
    /// A writer opened or truncated it meanwhile (its read lease broke).
    pub touched: bool,
}

/// One read in progress, between `FileBegin` and its end.
#[derive(Debug)]
pub struct Reading {
    id: u64,
    size: u64,
    read: u64,
    over: bool,
}

impl Reading {
    /// The source is open and `size` bytes long: announce it.
    pub fn begin(id: u64, size: u64, encoding: Encoding) -> (Reading, FileMsg) {
        let r = Reading {
            id,
            size,
            read: 0,
            over: false,
        };
        (r, FileMsg::Begin { id, size, encoding })
    }

    /// `len` more bytes read. True when they may be sent; false once the
    /// file grew past what was announced, and the reader stops there (a
    /// writer that keeps appending is not followed).
    pub fn chunk(&mut self, len: u64) -> bool {
        match self.read.checked_add(len).filter(|&n| n <= self.size) {
            Some(n) if !self.over => {
                self.read = n;
                true
            }
            _ => {
                self.over = true;
                false
            }
        }
    }

    /// Bytes read and sent so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The reader stopped: `FileEnd` only for exactly the announced bytes
    /// of a file nobody touched meanwhile.
    pub fn finish(self, f: Finish) -> (FileMsg, ReadEnd) {
        let id = self.id;
        if f.touched {
            return (FileMsg::Abort { id }, ReadEnd::Busy);
        }
        if f.changed || self.over || self.read != self.size {
            return (FileMsg::Abort { id }, ReadEnd::Changed);
        }
        (FileMsg::End { id }, ReadEnd::Sent)
    }

    /// The read broke off (I/O error, or no delta could be made).
    pub fn fail(self, end: ReadEnd) -> (FileMsg, ReadEnd) {
        (FileMsg::Abort { id: self.id }, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Finish = Finish {
        changed: false,
        touched: false,
    };

    #[test]
    fn exactly_the_announced_bytes_end_the_file() {
        let (mut r, b) = Reading::begin(4, 10, Encoding::Whole);
        assert_eq!(
            b,
            FileMsg::Begin {
                id: 4,
                size: 10,
                encoding: Encoding::Whole
            }
        );
        assert!(r.chunk(6) && r.chunk(4));
        assert_eq!(r.finish(QUIET), (FileMsg::End { id: 4 }, ReadEnd::Sent));
    }

    #[test]
    fn a_file_that_grew_is_never_sent_past_its_size() {
        let (mut r, _) = Reading::begin(1, 10, Encoding::Whole);
        assert!(r.chunk(8));
        assert!(!r.chunk(3), "more than announced went out");
        // Nothing after the overflow either, even if it would fit.
        assert!(!r.chunk(1));
        assert_eq!(r.read(), 8);
        assert_eq!(
            r.finish(QUIET),
            (FileMsg::Abort { id: 1 }, ReadEnd::Changed)
        );
        let (mut r, _) = Reading::begin(1, 5, Encoding::Whole);
        assert!(!r.chunk(u64::MAX));
    }

    #[test]
    fn shrunk_changed_or_touched_files_are_aborted() {
        let (mut r, _) = Reading::begin(2, 10, Encoding::Delta);
        r.chunk(9);
        assert_eq!(r.finish(QUIET).1, ReadEnd::Changed);
        let (mut r, _) = Reading::begin(2, 3, Encoding::Whole);
        r.chunk(3);
        let changed = Finish {
            changed: true,
            touched: false,
        };
        assert_eq!(r.finish(changed).1, ReadEnd::Changed);
        let (mut r, _) = Reading::begin(2, 3, Encoding::Whole);
        r.chunk(3);
        let touched = Finish {
            changed: true,
            touched: true,
        };
        // A writer is at work: wait for its close, do not count a failure.
        assert_eq!(r.finish(touched), (FileMsg::Abort { id: 2 }, ReadEnd::Busy));
    }
}
