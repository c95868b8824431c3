//! The demo's generated tree (also the resync tests' rich tree, which
//! includes this file).

use std::os::unix::fs::symlink;
use std::path::Path;

/// Writes a pseudo-random tree of `files` small files plus one of each special case.
pub fn generate_tree(root: &Path, files: usize, seed: u64) -> std::io::Result<u64> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = 0;
    for i in 0..files {
        let d = root.join(format!("d{:02}/e{:02}", i % 17, i % 5));
        std::fs::create_dir_all(&d)?;
        let len = (rnd() % 16384) as usize;
        let data: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        std::fs::write(d.join(format!("f{i:05}.dat")), &data)?;
        bytes += len as u64;
    }
    std::fs::create_dir_all(root.join("empty/dir"))?;
    std::fs::write(root.join("zero-length"), b"")?;
    let big: Vec<u8> = (0..(8usize << 20)).map(|_| rnd() as u8).collect();
    std::fs::write(root.join("big.bin"), &big)?;
    bytes += big.len() as u64;
    std::fs::hard_link(root.join("big.bin"), root.join("big-hardlink.bin"))?;
    symlink("big.bin", root.join("link-to-big"))?;
    symlink("/nonexistent/target", root.join("dangling-link"))?;
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1-name")),
        b"non-UTF-8 name",
    )?;
    Ok(bytes)
}
