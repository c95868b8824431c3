//! Writes through a real NFS server: nfs-ganesha serves the primary's
//! export in one network namespace, the standby runs in another, and a
//! libnfs client in a third writes small files (NFSv4: OPEN, WRITE, CLOSE)
//! and multi-MiB ones (NFSv3, 64 KiB per WRITE). Every file must reach the
//! standby with its content, and no partial file may ever be visible there.
//! Needs root, ganesha, rpcbind and libnfs-utils (skips visibly otherwise).

use syncd_testkit::netns;
#[path = "common/nfs.rs"]
mod nfs;

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netns::{can_run, serial, wait_for, Lan};
use nfs::{Ganesha, Version};
use syncd_testkit::rng::Rng;

const SYNCD: &str = env!("CARGO_BIN_EXE_syncd");
const PRIMARY: usize = 0;
const STANDBY: usize = 1;
const CLIENT: usize = 2;

/// Node directories, keys and configs: node 0 the primary (its export
/// served by ganesha), node 1 the standby.
fn configs(lan: &Lan, settle_ms: u64) -> [PathBuf; 2] {
    let dirs: Vec<PathBuf> = (0..2).map(|i| lan.path(&format!("node{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d.join("export")).unwrap();
        if !d.join("keys").exists() {
            syncd::tls::keygen(&d.join("keys"), &format!("node{i}")).unwrap();
        }
    }
    let common = |i: usize| {
        format!(
            "export = \"{}\"\nstate_dir = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\npeer_cert = \"{}\"\n",
            dirs[i].join("export").display(),
            dirs[i].join("state").display(),
            dirs[i].join("keys/node.crt").display(),
            dirs[i].join("keys/node.key").display(),
            dirs[1 - i].join("keys/node.crt").display(),
        )
    };
    let p = dirs[0].join("primary.toml");
    std::fs::write(
        &p,
        format!(
            "{}peer = \"{}:7400\"\nadmin = \"127.0.0.1:7401\"\n[sync]\nsettle_ms = {settle_ms}\n",
            common(0),
            lan.ip(STANDBY)
        ),
    )
    .unwrap();
    let s = dirs[1].join("standby.toml");
    std::fs::write(
        &s,
        format!("{}listen = \"{}:7400\"\n", common(1), lan.ip(STANDBY)),
    )
    .unwrap();
    [p, s]
}

/// Starts `syncd --role primary` on node 0 and waits until it follows changes.
fn start_primary(lan: &mut Lan, config: &Path) -> usize {
    let k = lan.start(
        PRIMARY,
        "primary",
        SYNCD,
        &["--role", "primary", "--config", config.to_str().unwrap()],
    );
    let live = wait_for(Duration::from_secs(60), || {
        lan.log(k).contains("in sync; following changes")
    });
    assert!(live.is_some(), "primary never went live:\n{}", lan.log(k));
    k
}

/// Every content the client wrote, by name (registered before the write starts).
type Versions = Arc<Mutex<HashMap<Vec<u8>, blake3::Hash>>>;

/// Watches the standby's export while the client writes: every regular
/// file visible there must be a complete version the client wrote.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Watcher {
    fn start(root: PathBuf, versions: Versions) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut seen, mut bad) = (0usize, Vec::new());
            while !s.load(Ordering::Relaxed) {
                let Ok(dir) = std::fs::read_dir(&root) else {
                    break; // the test is over
                };
                for e in dir.flatten() {
                    let name = e.file_name().as_bytes().to_vec();
                    if name.starts_with(b".syncd") {
                        // State lives outside the export, staging unnamed.
                        bad.push(format!("syncd's own {} in the export", e.path().display()));
                        continue;
                    }
                    if !e.file_type().is_ok_and(|t| t.is_file()) {
                        continue;
                    }
                    // Gone meanwhile is fine; what is read is one inode, whole.
                    let Ok(data) = std::fs::read(e.path()) else {
                        continue;
                    };
                    seen += 1;
                    let want = versions.lock().unwrap().get(&name).copied();
                    if want != Some(blake3::hash(&data)) {
                        bad.push(format!(
                            "{} ({} bytes)",
                            String::from_utf8_lossy(&name),
                            data.len()
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (seen, bad)
        });
        Watcher { stop, thread }
    }

    /// (files read, files that were not a version the client wrote)
    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The client writes `files` (name, content) through the server, one fresh
/// nfs-cp each; panics on a failed write.
fn write_all(lan: &Lan, export: &Path, versions: &Versions, files: &[(String, Vec<u8>, Version)]) {
    let stage = lan.path("stage");
    std::fs::create_dir_all(&stage).unwrap();
    for (name, data, v) in files {
        let local = stage.join(name);
        std::fs::write(&local, data).unwrap();
        versions
            .lock()
            .unwrap()
            .insert(name.as_bytes().to_vec(), blake3::hash(data));
        let url = nfs::url(&lan.ip(PRIMARY), export, name, *v);
        nfs::put(lan.ns(CLIENT), &local, &url).unwrap_or_else(|e| panic!("nfs-cp {url}: {e}"));
    }
}

fn arrived(standby: &Path, files: &[(String, Vec<u8>, Version)]) -> Vec<String> {
    files
        .iter()
        .filter(|(name, data, _)| std::fs::read(standby.join(name)).ok().as_ref() != Some(data))
        .map(|(name, _, _)| name.clone())
        .collect()
}

#[test]
fn files_written_through_ganesha_reach_the_standby_whole() {
    let name = "files_written_through_ganesha_reach_the_standby_whole";
    if !can_run(name) || !nfs::available(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("nfs", 3);
    // A settle time no test waits for: a file arrives only if syncd knows
    // it is complete (closed), never because it went quiet.
    let [primary_cfg, standby_cfg] = configs(&lan, 600_000);
    let (export, standby) = (lan.path("node0/export"), lan.path("node1/export"));
    let sb = lan.start(
        STANDBY,
        "standby",
        SYNCD,
        &[
            "--role",
            "standby",
            "--config",
            standby_cfg.to_str().unwrap(),
        ],
    );
    assert!(
        wait_for(Duration::from_secs(20), || lan
            .log(sb)
            .contains("standby listening"))
        .is_some(),
        "{}",
        lan.log(sb)
    );
    let mut ganesha = Ganesha::start(lan.ns(PRIMARY), &lan.path("node0/ganesha"), &export);
    let p1 = start_primary(&mut lan, &primary_cfg);
    let versions: Versions = Default::default();
    let watcher = Watcher::start(standby.clone(), versions.clone());
    let mut rng = Rng(0x6e66_7331);

    // 1. Small files over NFSv4 with the rule's worst case: ganesha keeps a
    // descriptor open for writing after the client's CLOSE, so the kernel
    // refuses the read lease; with settle_ms this long they arrive only by
    // the closed-and-unchanged rule.
    let small: Vec<_> = (0..120)
        .map(|i| {
            let n = 1 + rng.below(nfs::V4_MAX);
            (format!("s{i:03}.txt"), rng.bytes(n), Version::V4)
        })
        .collect();
    write_all(&lan, &export, &versions, &small);
    let done = wait_for(Duration::from_secs(60), || {
        arrived(&standby, &small).is_empty()
    });
    assert!(
        done.is_some(),
        "closed NFSv4 files did not arrive (settle_ms is 600 s): {:?}",
        arrived(&standby, &small)
    );
    let ganesha_pid = ganesha.pid().unwrap();
    let writers = open_for_writing(ganesha_pid, &export);
    eprintln!("ganesha still has {writers} files open for writing after the clients' CLOSE");

    // 2. Multi-MiB files over NFSv3 (no CLOSE in the protocol: syncd ships
    // them after settle_ms of quiet; 2 s, so that a client or server starved
    // of CPU mid-file on a loaded machine still counts as writing), beside
    // more small ones.
    lan.term(p1);
    let [primary_cfg, _] = configs(&lan, 2000);
    let _p2 = start_primary(&mut lan, &primary_cfg);
    let mut mixed = Vec::new();
    for i in 0..6 {
        let n = (2 << 20) + rng.below(5 << 20);
        mixed.push((format!("big{i}.bin"), rng.bytes(n), Version::V3));
        for j in 0..10 {
            let n = 1 + rng.below(nfs::V4_MAX);
            mixed.push((format!("m{i}-{j}.txt"), rng.bytes(n), Version::V4));
        }
    }
    write_all(&lan, &export, &versions, &mixed);
    let done = wait_for(Duration::from_secs(60), || {
        arrived(&standby, &mixed).is_empty()
    });
    let (seen, bad) = watcher.stop();
    assert!(
        done.is_some(),
        "missing or different on the standby: {:?}",
        arrived(&standby, &mixed)
    );
    assert!(
        bad.is_empty(),
        "partial or unknown files were visible on the standby: {bad:?}"
    );
    assert!(seen > small.len(), "the watcher read only {seen} files");
    // and what the client reads back through the server is what it wrote
    let (n, data, v) = &mixed[0];
    assert_eq!(
        &nfs::cat(lan.ns(CLIENT), &nfs::url(&lan.ip(PRIMARY), &export, n, *v)).unwrap(),
        data
    );
    // A walk of the export through the server finds nothing of syncd's
    // (state lives in the state directory, staging is unnamed).
    let url = nfs::url(&lan.ip(PRIMARY), &export, "", Version::V3);
    let walk = nfs::ls_recursive(lan.ns(CLIENT), &url).unwrap();
    assert!(
        walk.contains(&mixed[0].0),
        "the walk lists the data: {walk}"
    );
    assert!(
        !walk.contains(".syncd"),
        "syncd's own files over NFS: {walk}"
    );
    ganesha.kill();
}

/// How many files under `dir` process `pid` has open for writing.
fn open_for_writing(pid: u32, dir: &Path) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)))
        .filter(|fd| {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|f| f & 3 != 0)
        })
        .count()
}

/// `--role auto` configs for nodes 0 and 1 (priority 150 / 100), the
/// address `lan.vip()` moving between them.
fn auto_configs(lan: &Lan) -> [PathBuf; 2] {
    let dirs: Vec<PathBuf> = (0..2).map(|i| lan.path(&format!("node{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d.join("export")).unwrap();
        syncd::tls::keygen(&d.join("keys"), &format!("node{i}")).unwrap();
    }
    (0..2)
        .map(|i| {
            let cfg = dirs[i].join("node.toml");
            std::fs::write(
                &cfg,
                format!(
                    "export = \"export\"\nstate_dir = \"state\"\nlisten = \"{me}:7400\"\npeer = \"{peer}:7400\"\nadmin = \"127.0.0.1:7401\"\n\
                     cert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_cert = \"{pc}\"\n\
                     [pair]\npeer_wait_secs = 3\nunsure_wait_secs = 30\n\
                     [[vrrp]]\nname = \"VI_NFS\"\ninterface = \"eth0\"\nvrid = 62\npriority = {prio}\nadvert_int = 1\nversion = 3\nvirtual_ips = [\"{vip}/24\"]\n",
                    me = lan.ip(i),
                    peer = lan.ip(1 - i),
                    pc = dirs[1 - i].join("keys/node.crt").display(),
                    prio = if i == 0 { 150 } else { 100 },
                    vip = lan.vip(),
                ),
            )
            .unwrap();
            cfg
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

/// One write the client made: its name, content, and when it ended.
struct Write1 {
    name: String,
    data: Vec<u8>,
    ok: bool,
    at: std::time::Instant,
}

/// A client writing new small files through `host` (fresh nfs-cp each,
/// NFSv4) one after another until stopped.
fn client_loop(
    ns: String,
    host: String,
    stage: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Write1>> {
    std::thread::spawn(move || {
        std::fs::create_dir_all(&stage).unwrap();
        let mut rng = Rng(0x6661_696c);
        let mut out = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("c{i:05}.txt");
            let n = 1 + rng.below(nfs::V4_MAX);
            let data = rng.bytes(n);
            std::fs::write(stage.join(&name), &data).unwrap();
            let url = nfs::url(&host, Path::new("/"), &name, Version::V4);
            let ok = nfs::put(&ns, &stage.join(&name), &url).is_ok();
            out.push(Write1 {
                name,
                data,
                ok,
                at: std::time::Instant::now(),
            });
            if !ok {
                // A failed create may still have made the file: the next
                // try uses a new name. Do not spin while the service is away.
                std::thread::sleep(Duration::from_millis(50));
            }
            i += 1;
        }
        out
    })
}

/// Where each acknowledged write is: (readable through `host` with its
/// content, only in a conflicts area of `nodes`, gone).
fn count(
    lan: &Lan,
    host: &str,
    nodes: &[PathBuf],
    writes: &[Write1],
) -> (usize, usize, usize, Vec<String>) {
    let (mut served, mut kept, mut gone, mut names) = (0, 0, 0, Vec::new());
    for w in writes.iter().filter(|w| w.ok) {
        let url = nfs::url(host, Path::new("/"), &w.name, Version::V4);
        if nfs::cat(lan.ns(CLIENT), &url).is_ok_and(|d| d == w.data) {
            served += 1;
        } else if nodes
            .iter()
            .any(|n| in_conflicts(&n.join("state/conflicts"), &w.name, &w.data))
        {
            kept += 1;
        } else {
            gone += 1;
            names.push(w.name.clone());
        }
    }
    (served, kept, gone, names)
}

/// Is a file `name` with content `data` under `conflicts/<generation>/`?
fn in_conflicts(conflicts: &Path, name: &str, data: &[u8]) -> bool {
    std::fs::read_dir(conflicts).is_ok_and(|gens| {
        gens.flatten()
            .any(|g| std::fs::read(g.path().join(name)).is_ok_and(|d| d == data))
    })
}

#[test]
fn nfs_clients_lose_no_acknowledged_write_when_the_leader_dies() {
    let name = "nfs_clients_lose_no_acknowledged_write_when_the_leader_dies";
    if !can_run(name) || !nfs::available(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("nfsf", 3);
    let vip = lan.vip();
    let cfg = auto_configs(&lan);
    let nodes: Vec<PathBuf> = (0..2).map(|i| lan.path(&format!("node{i}"))).collect();
    let node = |i: usize| nodes[i].clone();
    // Bootstrap as an existing pair: one resync from node 0.
    let sb = lan.start(
        1,
        "standby",
        SYNCD,
        &["--role", "standby", "--config", cfg[1].to_str().unwrap()],
    );
    assert!(wait_for(Duration::from_secs(20), || lan
        .log(sb)
        .contains("standby listening"))
    .is_some());
    let o = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lan.ns(0),
            SYNCD,
            "resync",
            "--config",
            cfg[0].to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "bootstrap resync: {o:?}");
    lan.term(sb);

    // Each node serves its own export all the time; the client uses the address.
    let mut g0 = Ganesha::start(lan.ns(0), &node(0).join("ganesha"), &node(0).join("export"));
    let _g1 = Ganesha::start(lan.ns(1), &node(1).join("ganesha"), &node(1).join("export"));
    let start_auto = |lan: &mut Lan, i: usize| {
        lan.start(
            i,
            "auto",
            SYNCD,
            &["--role", "auto", "--config", cfg[i].to_str().unwrap()],
        )
    };
    let a0 = start_auto(&mut lan, 0);
    let _a1 = start_auto(&mut lan, 1);
    assert!(
        wait_for(Duration::from_secs(30), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "node 0 must lead; holders {:?}",
        lan.holders(&[0, 1])
    );

    let long = nfs::LongClient::start(lan.ns(CLIENT), &vip, "l", 20);
    let stop = Arc::new(AtomicBool::new(false));
    let client = client_loop(
        lan.ns(CLIENT).to_string(),
        vip.clone(),
        lan.path("stage"),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(3));

    // Node 0 dies: syncd and ganesha SIGKILLed, its port silent.
    lan.kill9(a0);
    g0.kill();
    lan.port_state(0, 0);
    let killed = std::time::Instant::now();
    let took = wait_for(Duration::from_secs(30), || lan.has_addr(1, &vip));
    assert!(took.is_some(), "node 1 never took the address");
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let mut writes = client.join().unwrap();
    // The long-lived client: what it saw after the kill, and its writes.
    let long_lines = long.lines.lock().unwrap().clone();
    drop(long);
    let long_before = long_lines
        .iter()
        .filter(|(t, l)| *t < killed && l.starts_with("ok "))
        .count();
    let long_first_ok = long_lines
        .iter()
        .find(|(t, l)| *t >= killed && l.starts_with("ok "))
        .map(|(t, _)| *t - killed);
    let mut long_errors: Vec<String> = long_lines
        .iter()
        .filter(|(t, l)| *t >= killed && l.starts_with("err "))
        .map(|(_, l)| l.splitn(3, ' ').nth(2).unwrap_or("").to_string())
        .collect();
    let long_failed = long_errors.len();
    long_errors.dedup();
    eprintln!(
        "long-lived client (one session, kept root handle): acknowledged before the kill {long_before}; \
         after it {long_failed} failures, first acknowledged write {long_first_ok:?} after the kill; errors seen: {long_errors:?}"
    );
    assert!(
        long_before > 0,
        "the long-lived client must write before the kill: {long_lines:?}"
    );
    let long_writes: Vec<Write1> = long_lines
        .iter()
        .filter_map(|(t, l)| {
            let name = l.strip_prefix("ok ")?;
            Some(Write1 {
                name: name.to_string(),
                data: nfs::LongClient::content(name),
                ok: true,
                at: *t,
            })
        })
        .collect();
    let before = writes.iter().filter(|w| w.ok && w.at < killed).count();
    let after: Vec<_> = writes.iter().filter(|w| w.ok && w.at >= killed).collect();
    let failed = writes.iter().filter(|w| !w.ok).count();
    let first_ok = after.first().map(|w| w.at - killed);
    eprintln!(
        "NFS failover: address moved after {took:?}; client writes acknowledged before the kill {before}, \
         failed {failed}, acknowledged after {}; first acknowledged write {first_ok:?} after the kill",
        after.len()
    );
    assert!(
        before > 0 && !after.is_empty(),
        "the client must write before and after the failover"
    );
    writes.extend(long_writes);
    let (served, kept, gone, names) = count(&lan, &vip, &[node(1)], &writes);
    eprintln!("after the failover: served through the address {served}, only in a conflicts area {kept}, not on node 1 {gone} {names:?}");

    // The old leader returns (as follower): what it held that node 1 missed
    // is kept in its conflicts area; nothing acknowledged is gone.
    lan.port_state(0, 3);
    let _g0 = Ganesha::start(lan.ns(0), &node(0).join("ganesha"), &node(0).join("export"));
    let _a0 = start_auto(&mut lan, 0);
    let current = wait_for(Duration::from_secs(60), || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                lan.ns(0),
                SYNCD,
                "status",
                "--config",
                cfg[0].to_str().unwrap(),
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("data: current"))
    });
    assert!(
        current.is_some(),
        "node 0 must come back as a current follower"
    );
    let (served, kept, gone, names) = count(&lan, &vip, &[node(0), node(1)], &writes);
    eprintln!("after the old leader's return: served {served}, only in a conflicts area {kept}, gone {gone}");
    assert_eq!(gone, 0, "acknowledged writes gone: {names:?}");
    assert_eq!(served + kept, writes.iter().filter(|w| w.ok).count());
}
