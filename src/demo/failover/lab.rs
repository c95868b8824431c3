//! The failover demo's lab: two node namespaces and a client's on one
//! bridge, the daemons in them, and a host's death and reboot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{NET, VIP};
use crate::demo::{msg, DemoError};

fn ip(args: &[&str]) -> Result<(), DemoError> {
    let o = Command::new("ip").args(args).output().map_err(|e| {
        msg(format!(
            "cannot run `ip` ({e}): the failover demo needs iproute2"
        ))
    })?;
    if o.status.success() {
        Ok(())
    } else {
        Err(msg(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )))
    }
}

/// The namespaces, and the daemons in them; all removed on drop.
pub(super) struct Lab {
    prefix: String,
    dir: PathBuf,
    nodes: Vec<Option<Child>>,
    /// Each node's ganesha, when the client writes through NFS.
    servers: Vec<Option<Child>>,
    nfs: bool,
    /// A dead host serves nothing, whatever its interface still holds.
    dead: [bool; 2],
    made: Vec<String>,
}

impl Lab {
    pub(super) fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }
    pub(super) fn br(&self) -> String {
        format!("{}br", self.prefix)
    }

    pub(super) fn client_ns(&self) -> String {
        format!("{}c", self.prefix)
    }

    pub(super) fn new(dir: &Path, nfs: bool) -> Result<Lab, DemoError> {
        let prefix = format!("sdemo{}", std::process::id());
        let mut lab = Lab {
            prefix,
            dir: dir.to_path_buf(),
            nodes: vec![None, None],
            servers: vec![None, None],
            nfs,
            dead: [false; 2],
            made: Vec::new(),
        };
        let br = lab.br();
        ip(&["netns", "add", &br])?;
        lab.made.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        // Nodes 0 and 1, and the NFS client (.3) when there is one.
        for i in 0..(if nfs { 3 } else { 2 }) {
            let ns = if i < 2 { lab.ns(i) } else { lab.client_ns() };
            ip(&["netns", "add", &ns])?;
            lab.made.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{NET}.{}/24", i + 1),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    pub(super) fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    pub(super) fn config(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("node.toml")
    }

    pub(super) fn export(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("export")
    }

    pub(super) fn start(&mut self, i: usize) -> Result<(), DemoError> {
        let exe = std::env::current_exe()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node_dir(i).join("syncd.log"))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)])
            .arg(exe)
            .args(["--role", "auto", "--config"])
            .arg(self.config(i))
            .stdout(Stdio::null())
            .stderr(log);
        // Its own process group: the "host death" ends it whole.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        self.nodes[i] = Some(c.spawn()?);
        if self.nfs {
            let dir = self.node_dir(i).join("ganesha");
            self.servers[i] = Some(crate::demo::nfs::start(&self.ns(i), &dir, &self.export(i))?);
        }
        Ok(())
    }

    pub(super) fn kill(&mut self, i: usize) {
        if let Some(mut g) = self.servers[i].take() {
            crate::demo::nfs::kill(&mut g);
        }
        if let Some(mut c) = self.nodes[i].take() {
            if let Some(pg) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::Kill);
            }
            let _ = c.wait();
        }
    }

    pub(super) fn port(&self, i: usize, state: u8) -> Result<(), DemoError> {
        let st = state.to_string();
        let o = Command::new("ip")
            .args(["netns", "exec", &self.br(), "bridge", "link", "set", "dev"])
            .arg(format!("p{i}"))
            .args(["state", &st])
            .output()?;
        if o.status.success() {
            Ok(())
        } else {
            Err(msg(String::from_utf8_lossy(&o.stderr).trim().to_string()))
        }
    }

    pub(super) fn holds_vip(&self, i: usize) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns(i), "-br", "addr", "show", "dev", "eth0"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{VIP}/")))
            .unwrap_or(false)
    }

    pub(super) fn holder(&self) -> Option<usize> {
        (0..2).find(|&i| !self.dead[i] && self.holds_vip(i))
    }

    /// Host death: the daemon SIGKILLed, the bridge port silenced.
    pub(super) fn die(&mut self, i: usize) -> Result<(), DemoError> {
        self.dead[i] = true;
        self.kill(i);
        self.port(i, 0)
    }

    /// The host reboots: its addresses are gone, the port comes back, the
    /// daemon starts.
    pub(super) fn reboot(&mut self, i: usize) -> Result<(), DemoError> {
        let _ = ip(&[
            "-n",
            &self.ns(i),
            "addr",
            "del",
            &format!("{VIP}/24"),
            "dev",
            "eth0",
        ]);
        self.port(i, 3)?;
        self.dead[i] = false;
        self.start(i)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A planned stop first, so the address is released cleanly.
            if let Some(c) = &self.nodes[i] {
                if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::Term);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
