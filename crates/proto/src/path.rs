//! `RelPath`: the one validated path type that crosses the trust boundary.
//!
//! Linux file names are bytes, not UTF-8, so a path is a byte string. A
//! `RelPath` is relative, non-empty, has no empty, `.` or `..` component and no
//! NUL byte, and never names the reserved state directory at the export root.
//! It is validated when constructed *and* when decoded from the wire, so the
//! standby can only ever be asked to touch something beneath its root (the
//! filesystem layer additionally refuses symlinks in parents via openat2).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Name of the reserved directory at the export root (staging, index, state).
pub const STATE_DIR_NAME: &[u8] = b".syncd";

/// The name the standby gives new content between linking it into its
/// directory and renaming it into place: `.syncd-<pid>.<n>.tmp`.
pub fn temp_name(pid: u32, n: u64) -> String {
    format!(".syncd-{pid}.{n}.tmp")
}

/// Whether `name` is exactly a [`temp_name`] (a crash between the link
/// and the rename leaves one). Never replicated; removed at start.
pub fn is_temp_name(name: &[u8]) -> bool {
    temp_name_pid(name).is_some()
}

/// The pid in a [`temp_name`] (as written: it may not fit a `u32` if
/// someone else made the name), or `None` for any other name.
pub fn temp_name_pid(name: &[u8]) -> Option<u64> {
    let mid = name.strip_prefix(b".syncd-")?.strip_suffix(b".tmp")?;
    let digits = |s: &[u8]| !s.is_empty() && s.len() <= 20 && s.iter().all(u8::is_ascii_digit);
    let mut parts = mid.split(|&b| b == b'.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(pid), Some(n), None) if digits(pid) && digits(n) => {
            // Up to 20 digits: at most u64::MAX's length, not its value.
            std::str::from_utf8(pid)
                .ok()?
                .parse()
                .ok()
                .or(Some(u64::MAX))
        }
        _ => None,
    }
}

/// Longest path we accept (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single component (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Order of a depth-first walk with names sorted per directory (what
/// the scan yields): parents first, each subtree contiguous.
pub fn walk_order(a: &RelPath, b: &RelPath) -> std::cmp::Ordering {
    a.components().cmp(b.components())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path has an empty, '.' or '..' component")]
    BadComponent,
    #[error("path longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path component longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("path is inside the reserved .syncd directory")]
    Reserved,
}

/// A validated path relative to the export root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        validate(&bytes)?;
        Ok(RelPath(bytes))
    }

    pub fn from_path(p: &Path) -> Result<Self, PathError> {
        Self::new(p.as_os_str().as_bytes().to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The components, each a single validated name.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/')
    }

    pub fn depth(&self) -> usize {
        self.0.iter().filter(|&&b| b == b'/').count() + 1
    }

    /// Parent directory, `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        let i = self.0.iter().rposition(|&b| b == b'/')?;
        Some(RelPath(self.0[..i].to_vec()))
    }

    /// Parent as bytes (empty for the root) and the final name.
    pub fn split_last(&self) -> (&[u8], &[u8]) {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (&[], &self.0),
        }
    }

    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(name);
        RelPath::new(v)
    }

    /// True if `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0[other.0.len()] == b'/')
    }
}

fn validate(b: &[u8]) -> Result<(), PathError> {
    if b.is_empty() {
        return Err(PathError::Empty);
    }
    if b.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if b[0] == b'/' {
        return Err(PathError::Absolute);
    }
    if b.contains(&0) {
        return Err(PathError::Nul);
    }
    for (i, c) in b.split(|&x| x == b'/').enumerate() {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(PathError::BadComponent);
        }
        if c.len() > MAX_NAME_LEN {
            return Err(PathError::NameTooLong);
        }
        if i == 0 && c == STATE_DIR_NAME {
            return Err(PathError::Reserved);
        }
    }
    Ok(())
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_path())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lossy only for display; the bytes themselves are never altered.
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes_compat::ByteBuf = Deserialize::deserialize(d)?;
        RelPath::new(bytes.0).map_err(serde::de::Error::custom)
    }
}

/// Minimal owned byte buffer deserializer (avoids a dependency for one type).
pub(crate) mod serde_bytes_compat {
    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
    use std::fmt;

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    if v.len() > super::MAX_PATH_LEN {
                        return Err(E::custom("path longer than PATH_MAX"));
                    }
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        if out.len() >= super::MAX_PATH_LEN {
                            return Err(A::Error::custom("path longer than PATH_MAX"));
                        }
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_and_non_utf8() {
        assert!(RelPath::new(b"a/b/c.txt".to_vec()).is_ok());
        assert!(RelPath::new(vec![b'a', 0xff, 0xfe, b'/', b'x']).is_ok());
        assert!(RelPath::new(b"...".to_vec()).is_ok());
        assert!(RelPath::new(b"a/.syncd".to_vec()).is_ok());
    }

    #[test]
    fn rejects_escapes() {
        assert_eq!(RelPath::new(b"".to_vec()), Err(PathError::Empty));
        assert_eq!(
            RelPath::new(b"/etc/passwd".to_vec()),
            Err(PathError::Absolute)
        );
        assert_eq!(RelPath::new(b"../x".to_vec()), Err(PathError::BadComponent));
        assert_eq!(
            RelPath::new(b"a/../../x".to_vec()),
            Err(PathError::BadComponent)
        );
        assert_eq!(
            RelPath::new(b"a/./x".to_vec()),
            Err(PathError::BadComponent)
        );
        assert_eq!(RelPath::new(b"a//x".to_vec()), Err(PathError::BadComponent));
        assert_eq!(RelPath::new(b"a/".to_vec()), Err(PathError::BadComponent));
        assert_eq!(RelPath::new(b"a\0b".to_vec()), Err(PathError::Nul));
        assert_eq!(RelPath::new(b".syncd/x".to_vec()), Err(PathError::Reserved));
        assert_eq!(RelPath::new(vec![b'a'; 256]), Err(PathError::NameTooLong));
        assert_eq!(RelPath::new(vec![b'a'; 5000]), Err(PathError::TooLong));
    }

    #[test]
    fn decode_validates() {
        let good = RelPath::new(b"xx/yy".to_vec()).unwrap();
        let mut bytes = postcard::to_stdvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<RelPath>(&bytes).unwrap(), good);
        let n = bytes.len();
        bytes[n - 5..n - 3].copy_from_slice(b"..");
        assert!(postcard::from_bytes::<RelPath>(&bytes).is_err());
    }

    #[test]
    fn parent_and_prefix() {
        let p = RelPath::new(b"a/b/c".to_vec()).unwrap();
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
        assert_eq!(p.split_last(), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(p.depth(), 3);
        let a = RelPath::new(b"a".to_vec()).unwrap();
        assert!(p.starts_with(&a));
        assert!(!RelPath::new(b"ab".to_vec()).unwrap().starts_with(&a));
        assert!(RelPath::new(b"x".to_vec()).unwrap().parent().is_none());
    }

    #[test]
    fn temp_names_match_exactly() {
        assert!(is_temp_name(temp_name(4242, 7).as_bytes()));
        assert_eq!(temp_name_pid(temp_name(4242, 7).as_bytes()), Some(4242));
        assert_eq!(
            temp_name_pid(b".syncd-99999999999999999999.1.tmp"),
            Some(u64::MAX)
        );
        assert_eq!(temp_name_pid(b".syncd-1.tmp"), None);
        assert!(is_temp_name(b".syncd-1.0.tmp"));
        for other in [
            &b".syncd-1.0.tmp~"[..],
            b"x.syncd-1.0.tmp",
            b".syncd-1.tmp",
            b".syncd-1.0.0.tmp",
            b".syncd-a.0.tmp",
            b".syncd-.0.tmp",
            b".syncd-1..tmp",
            b".syncd",
            b".syncd-1.0.TMP",
            b"report.tmp",
        ] {
            assert!(!is_temp_name(other), "{}", String::from_utf8_lossy(other));
        }
    }
}
