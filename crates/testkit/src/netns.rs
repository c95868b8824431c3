//! Network-namespace labs shared by the three test suites: a bridge namespace, node namespaces joined
//! to it by veth pairs, and processes started inside them. Everything is
//! removed on drop (children killed and waited, namespaces deleted).
//! `http.rs`: HTTP inside a namespace.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod http;
pub use http::{backend, backend_at, get, in_ns};

/// VRRP timing tests must not overlap on a 2-core CI box.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Record a skip (see `syncd_testkit::skip`) and return false unless we are
/// root with `ip netns`.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        crate::skip::skip(test, "needs root for network namespaces and raw sockets");
        return false;
    }
    if !ok(Command::new("ip").args(["netns", "list"])) {
        crate::skip::skip(test, "`ip netns` is not available");
        return false;
    }
    true
}

pub fn have(tool: &str, test: &str) -> bool {
    let found = ok(Command::new("sh").args(["-c", &format!("command -v {tool}")]));
    if !found {
        crate::skip::skip(test, &format!("`{tool}` is not installed"));
    }
    found
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("{args:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("{args:?}: {e}"),
    }
}

fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A LAN: `br` namespace with bridge `br0`; node namespaces with `eth0` at 10.<net>.0.<i+1>/24.
pub struct Lan {
    pub prefix: String,
    pub net: u8,
    pub nodes: Vec<String>,
    pub dir: PathBuf,
    procs: Vec<Proc>,
}

impl Lan {
    /// `tag` distinguishes tests; `n` nodes (the last is usually the observer).
    pub fn new(tag: &str, n: usize) -> Lan {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("sv{}{}{}", std::process::id(), tag, seq);
        let net = 100 + (std::process::id() % 50) as u8 + (seq as u8 % 50);
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::create_dir_all(&dir);
        let mut lan = Lan {
            prefix: prefix.clone(),
            net,
            nodes: vec![],
            dir,
            procs: vec![],
        };
        let br = format!("{prefix}br");
        run(&["ip", "netns", "add", &br]);
        lan.nodes.push(br.clone()); // so Drop removes it even if a later step panics
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{prefix}n{i}");
            run(&["ip", "netns", "add", &ns]);
            lan.nodes.push(ns.clone());
            let port = format!("p{i}");
            run(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ]);
            run(&["ip", "-n", &br, "link", "set", &port, "master", "br0", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{net}.0.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    /// Namespace of node `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i + 1]
    }

    pub fn br(&self) -> &str {
        &self.nodes[0]
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.net, i + 1)
    }

    pub fn vip(&self) -> String {
        format!("10.{}.0.100", self.net)
    }

    pub fn vip6(&self) -> String {
        format!("fd00:{}::100", self.net)
    }

    pub fn mac(&self, i: usize) -> String {
        let s = output(&["ip", "-n", self.ns(i), "link", "show", "eth0"]);
        s.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or("")
            .to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Does node `i` have `addr` on eth0?
    pub fn has_addr(&self, i: usize, addr: &str) -> bool {
        let s = output(&["ip", "-n", self.ns(i), "-o", "addr", "show", "dev", "eth0"]);
        s.split_whitespace()
            .any(|w| w.split('/').next() == Some(addr))
    }

    /// Has node `i` an IPv6 link-local address on eth0 whose duplicate address detection is over?
    pub fn dad_done(&self, i: usize) -> bool {
        let link = |extra: &[&str]| {
            let mut args = vec!["ip", "-n", self.ns(i), "-6", "-o", "addr", "show"];
            args.extend(["dev", "eth0", "scope", "link"]);
            args.extend(extra);
            output(&args)
        };
        let (all, tentative) = (link(&[]), link(&["tentative"]));
        all.contains("fe80::") && tentative.trim().is_empty()
    }

    pub fn holders(&self, nodes: &[usize]) -> Vec<usize> {
        let vip = self.vip();
        nodes
            .iter()
            .copied()
            .filter(|&i| self.has_addr(i, &vip))
            .collect()
    }

    /// Bridge port of node `i`: state 0 = disabled (silent partition), 3 = forwarding.
    pub fn port_state(&self, i: usize, state: u8) {
        self.bridge_port(i, &["state", &state.to_string()]);
    }

    /// `bridge link set dev p<i> ARGS` in the bridge namespace.
    fn bridge_port(&self, i: usize, args: &[&str]) {
        let port = format!("p{i}");
        let mut cmd = vec![
            "ip",
            "netns",
            "exec",
            self.br(),
            "bridge",
            "link",
            "set",
            "dev",
        ];
        cmd.push(&port);
        cmd.extend(args);
        run(&cmd);
    }

    /// Carrier loss on node `i` (its bridge-side veth goes down).
    pub fn port_link(&self, i: usize, up: bool) {
        run(&[
            "ip",
            "-n",
            self.br(),
            "link",
            "set",
            &format!("p{i}"),
            if up { "up" } else { "down" },
        ]);
    }

    /// Stop the bridge flooding multicast to every port (unicast-only LAN).
    pub fn block_multicast(&self, n: usize) {
        for i in 0..n {
            self.bridge_port(i, &["mcast_flood", "off"]);
        }
    }

    /// Write a config file for node `i` and return its path.
    pub fn syncd_config(&self, i: usize, body: &str) -> PathBuf {
        let p = self.path(&format!("n{i}.toml"));
        std::fs::write(&p, body).unwrap();
        p
    }

    /// Start `program args...` in node `i`'s namespace; output goes to a log.
    pub fn start(&mut self, i: usize, name: &str, program: &str, args: &[&str]) -> usize {
        self.start_env(i, name, program, args, &[])
    }

    /// [`Lan::start`] with environment variables set.
    pub fn start_env(
        &mut self,
        i: usize,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> usize {
        let log = self.path(&format!("{name}-n{i}-{}.log", self.procs.len()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(i), program]).args(args);
        cmd.envs(env.iter().copied());
        self.spawn(format!("{name}@n{i}"), cmd, log, None)
    }

    /// Start keepalived (VRRP only) on node `i` with a fresh set of pid files.
    pub fn start_keepalived(&mut self, i: usize, conf: &str) -> usize {
        let k = self.procs.len();
        let cfg = self.path(&format!("ka-n{i}-{k}.conf"));
        std::fs::write(&cfg, conf).unwrap();
        let pid = self.path(&format!("ka-n{i}-{k}.pid"));
        let vpid = self.path(&format!("ka-n{i}-{k}.vrrp.pid"));
        let cpid = self.path(&format!("ka-n{i}-{k}.check.pid"));
        let log = self.path(&format!("ka-n{i}-{k}.log"));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.ns(i),
            "keepalived",
            "-n",
            "-l",
            "-D",
            "-R",
            "--vrrp",
            "-f",
        ])
        .arg(&cfg);
        cmd.arg("-p")
            .arg(&pid)
            .arg("-r")
            .arg(&vpid)
            .arg("-c")
            .arg(&cpid);
        self.spawn(format!("keepalived@n{i}"), cmd, log, Some(vpid))
    }

    /// Start tcpdump on node `i`; returns the index of a process whose log holds the capture.
    pub fn start_capture(&mut self, i: usize, filter: &str) -> usize {
        let log = self.path(&format!("tcpdump-n{i}-{}.txt", self.procs.len()));
        let err = self.path(&format!("tcpdump-n{i}-{}.err", self.procs.len()));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.ns(i),
            "tcpdump",
            "-i",
            "eth0",
            "-n",
            "-l",
            "-e",
            "-tt",
            filter,
        ]);
        let stderr = std::fs::File::create(&err).unwrap();
        cmd.stderr(stderr);
        let k = self.spawn(format!("tcpdump@n{i}"), cmd, log, None);
        assert!(
            wait_for(Duration::from_secs(10), || {
                std::fs::read_to_string(&err).is_ok_and(|s| s.contains("listening on"))
            })
            .is_some(),
            "tcpdump on node {i} did not start: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        k
    }

    fn spawn(
        &mut self,
        name: String,
        mut cmd: Command,
        log: PathBuf,
        child_pidfile: Option<PathBuf>,
    ) -> usize {
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap());
        if !format!("{cmd:?}").contains("tcpdump") {
            cmd.stderr(out);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.procs.push(Proc {
            name,
            child: Some(child),
            log,
            child_pidfile,
        });
        self.procs.len() - 1
    }

    pub fn log(&self, k: usize) -> String {
        std::fs::read_to_string(&self.procs[k].log).unwrap_or_default()
    }

    /// kill -9 process `k` (and keepalived's VRRP child), and wait for it.
    pub fn kill9(&mut self, k: usize) {
        self.procs[k].kill(libc::SIGKILL);
    }

    /// SIGTERM process `k` and wait for it (graceful: priority 0).
    pub fn term(&mut self, k: usize) -> Option<i32> {
        self.procs[k].kill(libc::SIGTERM)
    }

    /// Sends `sig` to process `k` without waiting for anything.
    pub fn signal(&self, k: usize, sig: i32) {
        if let Some(c) = &self.procs[k].child {
            // SAFETY: a signal to a child this lab started and has not reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Whether process `k` is still running.
    pub fn running(&mut self, k: usize) -> bool {
        self.procs[k]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Dump all logs (on failure).
    pub fn dump_logs(&self) {
        for p in &self.procs {
            eprintln!(
                "===== {} ({}) =====\n{}",
                p.name,
                p.log.display(),
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for p in &mut self.procs {
            p.kill(libc::SIGKILL);
        }
        for ns in self.nodes.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    child_pidfile: Option<PathBuf>,
}

impl Proc {
    fn kill(&mut self, sig: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        if sig == libc::SIGKILL {
            // keepalived: kill the VRRP child too, it would otherwise run on (and resign cleanly)
            if let Some(pid) = self
                .child_pidfile
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
            {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) on a pid we started (keepalived's child).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return s.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

/// Poll `cond` every 20 ms until true or `timeout`; returns the elapsed time if it became true.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
