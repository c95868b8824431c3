//! NFS lab pieces: an nfs-ganesha server (userspace NFSv3/v4, FSAL VFS) in
//! a network namespace, and libnfs's command-line client (`nfs-cp`,
//! `nfs-cat`) run in another. No kernel NFS client is needed: nothing is
//! mounted.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use syncd::ganesha::{self, Grace};
pub use syncd::ganesha::{PORT, PSEUDO};

/// Record a skip and return false unless ganesha, rpcbind and libnfs's tools are installed.
pub fn available(test: &str) -> bool {
    ["ganesha.nfsd", "rpcbind", "nfs-cp", "nfs-cat", "unshare"]
        .iter()
        .all(|tool| {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                syncd_testkit::skip::skip(test, &format!("`{tool}` is not installed"));
            }
            found
        })
}

/// nfs-ganesha serving `export` in namespace `ns`, with an rpcbind of its
/// own (beside it, in a private `/run`): both in one process group, killed
/// together (SIGKILL) by [`Ganesha::kill`] or on drop.
pub struct Ganesha {
    child: Option<Child>,
    pub dir: PathBuf,
    pub export: PathBuf,
}

impl Ganesha {
    /// Starts it and waits until it serves. `dir` holds its configuration,
    /// log and NFSv4 recovery directory. `Graceless`: no grace period after
    /// a start, as in the tests (the production recipe keeps it).
    pub fn start(ns: &str, dir: &Path, export: &Path) -> Ganesha {
        std::fs::create_dir_all(dir.join("recovery")).unwrap();
        let conf = dir.join("ganesha.conf");
        let log = dir.join("ganesha.log");
        let _ = std::fs::remove_file(&log);
        let text = ganesha::config(export, &dir.join("recovery"), Grace::Off);
        std::fs::write(&conf, text).unwrap();
        let script = ganesha::launch_script(&conf, &log, &dir.join("ganesha.pid"));
        let out = std::fs::File::create(dir.join("ganesha.out")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "unshare", "--mount", "sh", "-c", &script,
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn ganesha");
        let mut g = Ganesha {
            child: Some(child),
            dir: dir.to_path_buf(),
            export: export.to_path_buf(),
        };
        let t = Instant::now();
        while !g.log().contains(ganesha::READY) {
            let exited = g.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && t.elapsed() < Duration::from_secs(30),
                "ganesha did not start in {ns}: {exited:?}\n{}\n{}",
                g.log(),
                std::fs::read_to_string(dir.join("ganesha.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ganesha.log")).unwrap_or_default()
    }

    /// Process id of the server (the group's leader).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the server and its rpcbind (host death), and reap them.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the process group we created for this child.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which NFS version the client speaks. libnfs 4.0 (Debian 12) fails to
/// encode an NFSv4 COMPOUND with a WRITE of about 4 KiB or more ("ZDR error:
/// Failed to encode COMPOUND4args"), so larger files go over NFSv3 (split
/// into the server's `MaxWrite`, 64 KiB, per WRITE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V3,
    V4,
}

/// libnfs's URL of `name` in the export served at `host`.
pub fn url(host: &str, export: &Path, name: &str, v: Version) -> String {
    match v {
        // NFSv3 mounts the export by its path on the server.
        Version::V3 => format!("nfs://{host}{}/{name}?version=3", export.display()),
        Version::V4 => format!("nfs://{host}{PSEUDO}/{name}?version=4&nfsport={PORT}"),
    }
}

/// Largest file [`Version::V4`] writes here (3,000 bytes work, 4,096 do not).
pub const V4_MAX: usize = 3000;

/// A fresh libnfs client in namespace `ns` copies the local file `from` to
/// `url` (a new file: nfs-cp creates exclusively). Ok once the server
/// answered every WRITE (and, over NFSv4, the CLOSE).
pub fn put(ns: &str, from: &Path, url: &str) -> Result<(), String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nfs-cp"])
        .arg(from)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
    }
}

/// A fresh libnfs client in `ns` reads `url`.
pub fn cat(ns: &str, url: &str) -> Result<Vec<u8>, String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nfs-cat", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(o.stdout)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).to_string())
    }
}

/// A fresh libnfs client in `ns` lists `url` recursively (`nfs-ls -R`).
pub fn ls_recursive(ns: &str, url: &str) -> Result<String, String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nfs-ls", "-R", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).to_string())
    }
}

/// A long-lived NFSv4 client (`nfs_client.py`: one libnfs session and root
/// file handle, mounted once) in namespace `ns`, creating new files through
/// `host` every `interval_ms`; each attempt's outcome is recorded with the
/// time its line arrived. Killed (its process group) on drop.
pub struct LongClient {
    child: Child,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl LongClient {
    pub fn start(ns: &str, host: &str, prefix: &str, interval_ms: u32) -> LongClient {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/nfs_client.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", script, host, prefix])
            .arg(interval_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("spawn nfs_client.py");
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push((Instant::now(), line));
            }
        });
        LongClient { child, lines }
    }

    /// The content it writes into file `name`.
    pub fn content(name: &str) -> Vec<u8> {
        format!("{name}\n").repeat(20).into_bytes()
    }
}

impl Drop for LongClient {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
