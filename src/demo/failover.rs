//! `syncd demo --failover` (root): the pair as one system, on this machine.
//!
//! Two nodes in network namespaces joined by a bridge, each running
//! `syncd --role auto` with the service address 10.213.0.100. A client
//! writes a file every 50 ms through the address: with NFS when
//! nfs-ganesha and libnfs's tools are installed (each node serves its
//! export with ganesha; the client is a third namespace running `nfs-cp`,
//! `nfs.rs`), otherwise straight into the export of the node holding it
//! (`SYNCD_DEMO_PLAIN=1` forces that). The
//! leader's host dies (its daemon SIGKILLed, its bridge port silenced); the
//! other node takes the address and the replication direction; the old
//! leader returns and follows. At the end every file the client was told
//! was written is counted: readable on the leader with the right content,
//! only in a conflicts area, or gone. Everything the demo made is removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{msg, DemoError};

const VIP: &str = "10.213.0.100";
const NET: &str = "10.213.0";

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
struct Lab {
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
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }
    fn br(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn client_ns(&self) -> String {
        format!("{}c", self.prefix)
    }

    fn new(dir: &Path, nfs: bool) -> Result<Lab, DemoError> {
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

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    fn config(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("node.toml")
    }

    fn export(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("export")
    }

    fn start(&mut self, i: usize) -> Result<(), DemoError> {
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
            self.servers[i] = Some(super::nfs::start(&self.ns(i), &dir, &self.export(i))?);
        }
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut g) = self.servers[i].take() {
            super::nfs::kill(&mut g);
        }
        if let Some(mut c) = self.nodes[i].take() {
            if let Some(pg) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::Kill);
            }
            let _ = c.wait();
        }
    }

    fn port(&self, i: usize, state: u8) -> Result<(), DemoError> {
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

    fn holds_vip(&self, i: usize) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns(i), "-br", "addr", "show", "dev", "eth0"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{VIP}/")))
            .unwrap_or(false)
    }

    fn holder(&self) -> Option<usize> {
        (0..2).find(|&i| !self.dead[i] && self.holds_vip(i))
    }

    /// Host death: the daemon SIGKILLed, the bridge port silenced.
    fn die(&mut self, i: usize) -> Result<(), DemoError> {
        self.dead[i] = true;
        self.kill(i);
        self.port(i, 0)
    }

    /// The host reboots: its addresses are gone, the port comes back, the
    /// daemon starts.
    fn reboot(&mut self, i: usize) -> Result<(), DemoError> {
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

fn wait(d: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < d {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One acknowledged client write.
struct Written {
    content: String,
}

/// Whether the client writes through NFS (and why not, if not).
fn nfs_client() -> Result<(), String> {
    if std::env::var_os("SYNCD_DEMO_PLAIN").is_some() {
        return Err("SYNCD_DEMO_PLAIN is set".into());
    }
    match super::nfs::missing() {
        Some(t) => Err(format!("`{t}` is not installed")),
        None => Ok(()),
    }
}

pub fn run(dir: Option<PathBuf>) -> Result<(), DemoError> {
    if !rustix::process::geteuid().is_root() {
        return Err(msg(
            "`demo --failover` needs root: it makes two network namespaces and a bridge (and removes them)",
        ));
    }
    let base = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("syncd-failover-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&base)?;
    println!("demo directory: {}", base.display());
    let nfs = nfs_client();
    let mut lab = Lab::new(&base, nfs.is_ok())?;
    println!(
        "two nodes in network namespaces {} and {}, one bridge; service address {VIP}",
        lab.ns(0),
        lab.ns(1)
    );
    match &nfs {
        Ok(()) => println!(
            "client: NFSv4 through {VIP} (nfs-ganesha serves each node's export; a fresh libnfs nfs-cp per file, from namespace {})",
            lab.client_ns()
        ),
        Err(why) => println!(
            "client: plain writes into the export of the node holding {VIP} (no NFS: {why})"
        ),
    }
    let client_nfs = nfs.is_ok().then(|| super::nfs::Client {
        ns: lab.client_ns(),
        host: VIP.to_string(),
        tmp: base.clone(),
    });
    let mut fps = Vec::new();
    for i in 0..2 {
        std::fs::create_dir_all(lab.export(i))?;
        fps.push(
            crate::tls::keygen(&lab.node_dir(i).join("keys"), &format!("node{i}")).map_err(msg)?,
        );
    }
    for i in 0..2 {
        let prio = if i == 0 { 150 } else { 100 };
        let body = format!(
            "node_id = \"node{i}\"\nexport = \"export\"\nstate_dir = \"state\"\nlisten = \"{NET}.{me}:7400\"\npeer = \"{NET}.{peer}:7400\"\n\
             admin = \"127.0.0.1:7401\"\ncert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_fingerprint = \"{fp}\"\n\
             [pair]\npeer_wait_secs = 3\n\n[[vrrp]]\nname = \"VI_NFS\"\ninterface = \"eth0\"\nvrid = 61\npriority = {prio}\n\
             advert_int = 1\nversion = 3\nvirtual_ips = [\"{VIP}/24\"]\n",
            me = i + 1,
            peer = 2 - i,
            fp = fps[1 - i],
        );
        std::fs::write(lab.config(i), body)?;
    }
    // A new pair: node 0's (empty) export is the data to start from.
    let cfg0 = crate::config::Config::load(&lab.config(0)).map_err(msg)?;
    crate::generation::promote_here(&cfg0).map_err(msg)?;
    lab.start(0)?;
    lab.start(1)?;
    let t = wait(Duration::from_secs(30), || lab.holder() == Some(0)).ok_or_else(|| {
        msg(format!(
            "node 0 never took the address; logs in {}",
            base.display()
        ))
    })?;
    println!(
        "node 0 leads (holds {VIP}) after {:.1} s; node 1 follows",
        t.as_secs_f64()
    );

    // The client: a file every 50 ms, written where the address is.
    let written: Arc<Mutex<BTreeMap<String, Written>>> = Arc::default();
    let unavailable = Arc::new(Mutex::new((0u64, None::<Instant>, Duration::ZERO)));
    let stop = Arc::new(AtomicBool::new(false));
    let lab = Arc::new(Mutex::new(lab));
    let client = {
        let (written, unavailable, stop, lab) = (
            written.clone(),
            unavailable.clone(),
            stop.clone(),
            lab.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (holder, export) = {
                    let l = lab.lock().unwrap_or_else(|p| p.into_inner());
                    let h = l.holder();
                    (h, h.map(|i| l.export(i)))
                };
                let mut u = unavailable.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = &client_nfs {
                    drop(u);
                    let name = format!("w{n:05}.txt");
                    let content = format!("write {n} through NFS at the service address\n");
                    let ok = c.put(&name, &content);
                    let mut u = unavailable.lock().unwrap_or_else(|p| p.into_inner());
                    if ok {
                        if let Some(since) = u.1.take() {
                            u.2 = u.2.max(since.elapsed());
                        }
                        written
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(name, Written { content });
                    } else {
                        u.0 += 1;
                        u.1.get_or_insert_with(Instant::now);
                    }
                    n += 1;
                    drop(u);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                match (holder, export) {
                    (Some(h), Some(dir)) => {
                        if let Some(since) = u.1.take() {
                            u.2 = u.2.max(since.elapsed());
                        }
                        drop(u);
                        let name = format!("w{n:05}.txt");
                        let content =
                            format!("write {n} through the service address, to node {h}\n");
                        if std::fs::write(dir.join(&name), &content).is_ok() {
                            written
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(name, Written { content });
                        }
                        n += 1;
                    }
                    _ => {
                        u.0 += 1;
                        u.1.get_or_insert_with(Instant::now);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(5));

    println!("node 0's host dies: its daemon SIGKILLed, its bridge port silenced");
    lab.lock().unwrap_or_else(|p| p.into_inner()).die(0)?;
    let took = wait(Duration::from_secs(15), || {
        lab.lock().unwrap_or_else(|p| p.into_inner()).holds_vip(1)
    })
    .ok_or_else(|| msg("node 1 never took the address"))?;
    println!(
        "node 1 holds the address {:.2} s after the death and leads; the client writes there",
        took.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));

    println!(
        "node 0 returns (rebooted: port up, daemon started): it must follow, not take the address back"
    );
    lab.lock().unwrap_or_else(|p| p.into_inner()).reboot(0)?;
    let status = |i: usize| -> String {
        let l = lab.lock().unwrap_or_else(|p| p.into_inner());
        Command::new("ip")
            .args(["netns", "exec", &l.ns(i)])
            .arg(std::env::current_exe().unwrap_or_default())
            .args(["status", "--config"])
            .arg(l.config(i))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    match wait(Duration::from_secs(30), || {
        status(0).contains("data: current")
    }) {
        Some(d) => println!(
            "node 0 caught up and follows after {:.1} s",
            d.as_secs_f64()
        ),
        None => println!("node 0 did not report itself current within 30 s (see its log)"),
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();

    // Let the last writes reach the follower, then count.
    let l = lab.lock().unwrap_or_else(|p| p.into_inner());
    let leader = l.holder().unwrap_or(1);
    let (mut on_leader, mut in_conflicts, mut gone) = (0u64, 0u64, Vec::new());
    let kept: Vec<(PathBuf, PathBuf)> = (0..2)
        .filter_map(|i| {
            let cfg = crate::config::Config::load(&l.config(i)).ok()?;
            let list = crate::conflicts::list(&cfg.state_dir).ok()?;
            Some(
                list.into_iter()
                    .map(|k| {
                        (
                            k.name.clone(),
                            crate::conflicts::path_of(&cfg.state_dir, &k),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    let written = written.lock().unwrap_or_else(|p| p.into_inner());
    for (name, w) in written.iter() {
        let here = std::fs::read_to_string(l.export(leader).join(name)).ok();
        if here.as_deref() == Some(w.content.as_str()) {
            on_leader += 1;
        } else if kept.iter().any(|(k, p)| {
            k.ends_with(name)
                && std::fs::read_to_string(p).ok().as_deref() == Some(w.content.as_str())
        }) {
            in_conflicts += 1;
        } else {
            gone.push(name.clone());
        }
    }
    let u = unavailable.lock().unwrap_or_else(|p| p.into_inner());
    println!();
    println!("the client was told {} writes succeeded:", written.len());
    println!("  readable on the leader (node {leader}) with the right content: {on_leader}");
    println!("  only in a conflicts area (written on a node cut off before they replicated): {in_conflicts}");
    println!("  gone: {}", gone.len());
    let what = if nfs.is_ok() {
        "writes through NFS failed"
    } else {
        "no node held the address"
    };
    println!(
        "{what} for {:.2} s at most ({} client attempts found no service); failover {:.2} s after the death",
        u.2.as_secs_f64(),
        u.0,
        took.as_secs_f64()
    );
    println!("logs and exports: {}", base.display());
    if !gone.is_empty() {
        return Err(msg(format!(
            "{} acknowledged writes are gone: {:?}",
            gone.len(),
            gone
        )));
    }
    Ok(())
}
