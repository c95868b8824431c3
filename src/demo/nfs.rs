//! The failover demo's NFS side, when nfs-ganesha and libnfs's tools are
//! installed: each node serves its export with ganesha (the tests' recipe:
//! its own rpcbind in a private `/run`, `Graceless`, FSAL VFS), and the
//! client, in a namespace of its own, writes each file through the service
//! address with a fresh `nfs-cp` (NFSv4).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{msg, DemoError};
use syncd::ganesha;

/// Every tool the NFS path needs, or the first one missing.
pub fn missing() -> Option<&'static str> {
    ["ganesha.nfsd", "rpcbind", "unshare", "nfs-cp"]
        .into_iter()
        .find(|t| !on_path(t))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(tool)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// Starts ganesha serving `export` in namespace `ns`, its files in `dir`,
/// in a process group of its own (a host death kills it with the node);
/// returns once it serves.
pub fn start(ns: &str, dir: &Path, export: &Path) -> Result<Child, DemoError> {
    std::fs::create_dir_all(dir.join("recovery"))?;
    let conf = dir.join("ganesha.conf");
    let log = dir.join("ganesha.log");
    let _ = std::fs::remove_file(&log);
    let text = ganesha::config(export, &dir.join("recovery"), ganesha::Grace::Off);
    std::fs::write(&conf, text)?;
    let script = ganesha::launch_script(&conf, &log, &dir.join("ganesha.pid"));
    let out = std::fs::File::create(dir.join("ganesha.out"))?;
    let mut c = Command::new("ip");
    c.args([
        "netns", "exec", ns, "unshare", "--mount", "sh", "-c", &script,
    ])
    .stdin(Stdio::null())
    .stdout(out.try_clone()?)
    .stderr(out);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut child = c.spawn()?;
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(ganesha::READY) {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || t.elapsed() > Duration::from_secs(30) {
            kill(&mut child);
            return Err(msg(format!(
                "ganesha did not start in {ns} (see {} and {})",
                log.display(),
                dir.join("ganesha.out").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs a server's process group (ganesha and its rpcbind) and reaps it.
pub fn kill(c: &mut Child) {
    if let Some(pg) = rustix::process::Pid::from_raw(c.id() as i32) {
        let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::Kill);
    }
    let _ = c.wait();
}

/// The client: a fresh libnfs `nfs-cp` in namespace `ns` copies `content`
/// (staged in `tmp`) to a new file `name` at `host`. Ok once the server
/// answered the WRITE and the CLOSE.
pub struct Client {
    pub ns: String,
    pub host: String,
    pub tmp: PathBuf,
}

impl Client {
    pub fn put(&self, name: &str, content: &str) -> bool {
        let src = self.tmp.join("next");
        if std::fs::write(&src, content).is_err() {
            return false;
        }
        let (pseudo, port) = (ganesha::PSEUDO, ganesha::PORT);
        let url = format!(
            "nfs://{}{pseudo}/{name}?version=4&nfsport={port}",
            self.host
        );
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "nfs-cp"])
            .arg(&src)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}
