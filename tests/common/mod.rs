//! Shared harness for the end-to-end tests: a primary/standby pair of real
//! `syncd` processes on loopback, in a temporary directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_syncd");

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin: u16,
    pub standby: Option<Child>,
    pub primary: Option<Child>,
    starts: u32,
    primary_starts: u32,
    /// Network namespaces to run the standby / the primary (and its
    /// commands) in, for partition tests.
    pub standby_ns: Option<String>,
    pub primary_ns: Option<String>,
}

/// `BIN`, run inside `ns` when given.
fn command(ns: &Option<String>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => Command::new(BIN),
    }
}

impl Pair {
    pub fn new() -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = dir.path();
        std::fs::create_dir(b.join("primary")).unwrap();
        std::fs::create_dir(b.join("standby")).unwrap();
        for n in ["primary", "standby", "mallory"] {
            syncd::tls::keygen(&b.join(format!("{n}-keys")), n).unwrap();
        }
        let port = syncd_testkit::port::free_port();
        std::fs::write(
            b.join("standby.toml"),
            format!("export = \"standby\"\nstate_dir = \"standby-state\"\nlisten = \"127.0.0.1:{port}\"\ncert = \"standby-keys/node.crt\"\nkey = \"standby-keys/node.key\"\npeer_cert = \"primary-keys/node.crt\"\n"),
        )
        .unwrap();
        let admin = syncd_testkit::port::free_port();
        std::fs::write(
            b.join("primary.toml"),
            format!("export = \"primary\"\nstate_dir = \"primary-state\"\npeer = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\ncert = \"primary-keys/node.crt\"\nkey = \"primary-keys/node.key\"\npeer_cert = \"standby-keys/node.crt\"\n"),
        )
        .unwrap();
        // A primary holding a certificate the standby does not pin.
        std::fs::write(
            b.join("mallory.toml"),
            format!("export = \"primary\"\nstate_dir = \"mallory-state\"\npeer = \"127.0.0.1:{port}\"\ncert = \"mallory-keys/node.crt\"\nkey = \"mallory-keys/node.key\"\npeer_cert = \"standby-keys/node.crt\"\n"),
        )
        .unwrap();
        Pair {
            dir,
            port,
            admin,
            standby: None,
            primary: None,
            starts: 0,
            primary_starts: 0,
            standby_ns: None,
            primary_ns: None,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn primary(&self) -> PathBuf {
        self.path("primary")
    }
    pub fn standby_dir(&self) -> PathBuf {
        self.path("standby")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path(&format!("standby-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// Starts the standby process and waits until it listens.
    pub fn start_standby(&mut self) {
        self.start_standby_with(command(&self.standby_ns));
    }

    /// The standby, allowed only `n` open descriptors (soft and hard),
    /// logging at debug level.
    pub fn start_standby_with_nofile(&mut self, n: u64) {
        use std::os::unix::process::CommandExt;
        let mut c = command(&self.standby_ns);
        c.env("SYNCD_LOG", "debug");
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            c.pre_exec(move || {
                let lim = rustix::process::Rlimit {
                    current: Some(n),
                    maximum: Some(n),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)
                    .map_err(std::io::Error::from)
            });
        }
        self.start_standby_with(c);
    }

    fn start_standby_with(&mut self, mut c: Command) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.path(&format!("standby-{}.log", self.starts))).unwrap();
        let child = c
            .args(["--role", "standby", "--config"])
            .arg(self.path("standby.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn standby");
        self.standby = Some(child);
        let t = Instant::now();
        while !self.log().contains("standby listening") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "standby did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn primary_log(&self) -> String {
        std::fs::read_to_string(self.path(&format!("primary-{}.log", self.primary_starts)))
            .unwrap_or_default()
    }

    /// Starts `syncd --role primary` and waits until its watch is set up
    /// and it has connected (not necessarily reconciled).
    pub fn start_primary(&mut self) {
        self.primary_starts += 1;
        let log = std::fs::File::create(self.path(&format!("primary-{}.log", self.primary_starts)))
            .unwrap();
        let child = command(&self.primary_ns)
            .args(["--role", "primary", "--config", "primary.toml"])
            .current_dir(self.dir.path())
            .env("SYNCD_LOG", "info,syncd=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn primary");
        self.primary = Some(child);
        let t = Instant::now();
        while !self.primary_log().contains("connected to the standby") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "primary did not connect: {}",
                self.primary_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the primary has finished its first reconcile.
    pub fn wait_live(&self) {
        let t = Instant::now();
        while !self.primary_log().contains("in sync; following changes") {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "primary never went live: {}",
                self.primary_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait; returns whether it exited successfully.
    pub fn stop_primary(&mut self) -> bool {
        match self.primary.take() {
            Some(mut c) => {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(c.id() as i32).unwrap(),
                    rustix::process::Signal::Term,
                );
                c.wait().map(|s| s.success()).unwrap_or(false)
            }
            None => true,
        }
    }

    /// Polls `syncd verify` until the trees are equal.
    pub fn wait_equal(&self, timeout: Duration) {
        let t = Instant::now();
        loop {
            let (ok, out) = self.verify();
            if ok {
                return;
            }
            assert!(
                t.elapsed() < timeout,
                "not equal after {timeout:?}:\n{out}\nprimary log:\n{}",
                self.primary_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET from the primary's admin address.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A counter from the primary's `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let m = self.admin_get("/metrics");
        m.lines()
            .find(|l| l.starts_with(&format!("syncd_{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{m}"))
    }

    pub fn kill_standby(&mut self) {
        if let Some(mut c) = self.standby.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn syncd(&self, args: &[&str]) -> Output {
        command(&self.primary_ns)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run syncd")
    }

    pub fn resync(&self, extra: &[&str]) -> String {
        let mut a = vec!["resync", "--config", "primary.toml"];
        a.extend_from_slice(extra);
        let o = self.syncd(&a);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "resync failed: {out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }

    pub fn verify(&self) -> (bool, String) {
        let o = self.syncd(&["verify", "--config", "primary.toml"]);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    }

    pub fn assert_equal(&self) {
        let (ok, out) = self.verify();
        assert!(ok, "verify found differences:\n{out}");
        assert_eq!(
            snapshot(&self.primary()),
            snapshot(&self.standby_dir()),
            "independent comparison differs"
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(mut c) = self.primary.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_standby();
        // A failure's logs and trees, for reading afterwards (opt-in: a kept
        // tree can be large).
        if std::thread::panicking() && std::env::var_os("SYNCD_TEST_KEEP").is_some() {
            // No second panic here (it would abort the run).
            self.dir.disable_cleanup(true);
            eprintln!("SYNCD_TEST_KEEP: kept {}", self.dir.path().display());
        }
    }
}

/// An independent description of a tree (not using syncd's scanner):
/// per path, type, permissions, mtime (ns), content or link target, and
/// which paths share an inode.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            // State lives outside the export; O_TMPFILE staging leaves no
            // name: a walk of the export finds nothing of syncd's.
            assert!(
                !rel.starts_with(b".syncd"),
                "syncd's own {} in the export {}",
                p.display(),
                root.display()
            );
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let desc = if ft.is_dir() {
                stack.push(p.clone());
                format!(
                    "dir {:o} {}:{} {}.{}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec()
                )
            } else if ft.is_symlink() {
                format!(
                    "link {:?} {}:{} {}.{}",
                    std::fs::read_link(&p).unwrap(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec()
                )
            } else if ft.is_file() {
                let h = blake3::hash(&std::fs::read(&p).unwrap());
                let shared = if m.nlink() > 1 {
                    format!(" nlink{}", m.nlink())
                } else {
                    String::new()
                };
                format!(
                    "file {:o} {}:{} {}.{} {}{}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec(),
                    h.to_hex(),
                    shared
                )
            } else {
                "special".to_string()
            };
            out.insert(rel, desc);
        }
    }
    // Hard-link groups, by sorted member names.
    let mut groups: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && m.nlink() > 1 {
                groups.entry(m.ino()).or_default().push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                );
            }
        }
    }
    for (_, mut g) in groups {
        g.sort();
        for p in &g {
            if let Some(v) = out.get_mut(p) {
                v.push_str(&format!(
                    " group{:?}",
                    g.iter()
                        .map(|x| String::from_utf8_lossy(x).to_string())
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    out
}

#[allow(unused_imports)] // not every test binary uses it
pub use syncd_testkit::rng::Rng;

/// inotify watches held by process `pid` (from /proc/PID/fdinfo).
pub fn watches_of(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .map(|s| s.lines().filter(|l| l.starts_with("inotify wd:")).count())
        .sum()
}

/// Waits until the log file at `log` says the standby listens (`secs`).
pub fn wait_standby_listening(log: &Path, secs: u64) {
    let t = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("standby listening")
    {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "standby did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
