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

mod client;
mod count;
mod lab;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{msg, DemoError};
use lab::Lab;

const VIP: &str = "10.213.0.100";
const NET: &str = "10.213.0";

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
    announce(&lab, &nfs);
    let via = nfs.is_ok().then(|| super::nfs::Client {
        ns: lab.client_ns(),
        host: VIP.to_string(),
        tmp: base.clone(),
    });
    configure(&lab)?;
    start_pair(&mut lab, &base)?;

    let lab = Arc::new(Mutex::new(lab));
    let stop = Arc::new(AtomicBool::new(false));
    let client = client::spawn(lab.clone(), via, stop.clone());
    let story = fail_over_and_back(&lab);
    // Even when a phase failed: the client holds the lab, whose drop stops
    // the daemons and removes the namespaces.
    stop.store(true, Ordering::Relaxed);
    let rec = client
        .join()
        .map_err(|_| msg("the demo's client thread failed"))?;
    let took = story?;

    let counts = count::count(&lock(&lab), &rec.written);
    report(&counts, &rec, nfs.is_ok(), took);
    println!("logs and exports: {}", base.display());
    if !counts.gone.is_empty() {
        return Err(msg(format!(
            "{} acknowledged writes are gone: {:?}",
            counts.gone.len(),
            counts.gone
        )));
    }
    Ok(())
}

fn lock(lab: &Mutex<Lab>) -> std::sync::MutexGuard<'_, Lab> {
    lab.lock().unwrap_or_else(|p| p.into_inner())
}

fn announce(lab: &Lab, nfs: &Result<(), String>) {
    println!(
        "two nodes in network namespaces {} and {}, one bridge; service address {VIP}",
        lab.ns(0),
        lab.ns(1)
    );
    match nfs {
        Ok(()) => println!(
            "client: NFSv4 through {VIP} (nfs-ganesha serves each node's export; a fresh libnfs nfs-cp per file, from namespace {})",
            lab.client_ns()
        ),
        Err(why) => println!(
            "client: plain writes into the export of the node holding {VIP} (no NFS: {why})"
        ),
    }
}

/// Keys and a `--role auto` config per node; node 0's (empty) export is the
/// data a new pair starts from.
fn configure(lab: &Lab) -> Result<(), DemoError> {
    let mut fps = Vec::new();
    for i in 0..2 {
        std::fs::create_dir_all(lab.export(i))?;
        fps.push(
            syncd::tls::keygen(&lab.node_dir(i).join("keys"), &format!("node{i}")).map_err(msg)?,
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
    let cfg0 = syncd::config::Config::load(&lab.config(0)).map_err(msg)?;
    syncd::generation::promote_here(&cfg0).map_err(msg)?;
    Ok(())
}

fn start_pair(lab: &mut Lab, base: &Path) -> Result<(), DemoError> {
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
    Ok(())
}

/// The story's middle, while the client writes: node 0's host dies, node 1
/// takes over, node 0 returns and follows. Returns how long the address
/// was without a holder.
fn fail_over_and_back(lab: &Mutex<Lab>) -> Result<Duration, DemoError> {
    std::thread::sleep(Duration::from_secs(5));
    let took = kill_leader(lab)?;
    std::thread::sleep(Duration::from_secs(5));
    old_leader_returns(lab)?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(took)
}

/// Node 0's host dies; returns how long until node 1 held the address.
fn kill_leader(lab: &Mutex<Lab>) -> Result<Duration, DemoError> {
    println!("node 0's host dies: its daemon SIGKILLed, its bridge port silenced");
    lock(lab).die(0)?;
    let took = wait(Duration::from_secs(15), || lock(lab).holds_vip(1))
        .ok_or_else(|| msg("node 1 never took the address"))?;
    println!(
        "node 1 holds the address {:.2} s after the death and leads; the client writes there",
        took.as_secs_f64()
    );
    Ok(took)
}

/// Node 0 reboots; it must follow, not take the address back.
fn old_leader_returns(lab: &Mutex<Lab>) -> Result<(), DemoError> {
    println!(
        "node 0 returns (rebooted: port up, daemon started): it must follow, not take the address back"
    );
    lock(lab).reboot(0)?;
    let status = |i: usize| -> String {
        let l = lock(lab);
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
    Ok(())
}

fn report(c: &count::Counts, rec: &client::Record, nfs: bool, took: Duration) {
    println!();
    println!(
        "the client was told {} writes succeeded:",
        rec.written.len()
    );
    println!(
        "  readable on the leader (node {}) with the right content: {}",
        c.leader, c.on_leader
    );
    println!(
        "  only in a conflicts area (written on a node cut off before they replicated): {}",
        c.in_conflicts
    );
    println!("  gone: {}", c.gone.len());
    let what = if nfs {
        "writes through NFS failed"
    } else {
        "no node held the address"
    };
    println!(
        "{what} for {:.2} s at most ({} client attempts found no service); failover {:.2} s after the death",
        rec.outage.longest.as_secs_f64(),
        rec.outage.attempts,
        took.as_secs_f64()
    );
}
