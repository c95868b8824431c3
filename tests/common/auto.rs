//! Two `syncd --role auto` nodes in network namespaces (the VRRP crate's
//! netns bench, included by the test as `netns`): directories, keys,
//! configs, bootstrap and the commands run inside a node's namespace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{wait_for, Lan};

pub const SYNCD: &str = env!("CARGO_BIN_EXE_syncd");

pub struct Node {
    pub dir: PathBuf,
}

impl Node {
    pub fn export(&self) -> PathBuf {
        self.dir.join("export")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    pub fn cfg(&self) -> String {
        self.config().display().to_string()
    }
}

/// Two nodes' directories, keys and `--role auto` configs (prio 150 / 100).
pub fn nodes(lan: &Lan) -> [Node; 2] {
    nodes_with(lan, |_, _| String::new())
}

/// [`nodes`], with `extra(i, dir)` appended to node `i`'s config (tables
/// such as `[hooks]`).
pub fn nodes_with(lan: &Lan, extra: impl Fn(usize, &Path) -> String) -> [Node; 2] {
    let dirs: Vec<PathBuf> = (0..2).map(|i| lan.path(&format!("node{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d.join("export")).unwrap();
        syncd::tls::keygen(&d.join("keys"), &format!("node{i}")).unwrap();
    }
    for i in 0..2 {
        let other = 1 - i;
        let prio = if i == 0 { 150 } else { 100 };
        let cfg = format!(
            "export = \"export\"\nstate_dir = \"state\"\nlisten = \"{me}:7400\"\npeer = \"{peer}:7400\"\nadmin = \"127.0.0.1:7401\"\n\
             cert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_cert = \"{pc}\"\n\
             [pair]\npeer_wait_secs = 3\nunsure_wait_secs = 30\n\
             [[vrrp]]\nname = \"VI_NFS\"\ninterface = \"eth0\"\nvrid = 61\npriority = {prio}\nadvert_int = 1\nversion = 3\nvirtual_ips = [\"{vip}/24\"]\n{extra}",
            me = lan.ip(i),
            peer = lan.ip(other),
            pc = dirs[other].join("keys/node.crt").display(),
            vip = lan.vip(),
            extra = extra(i, &dirs[i]),
        );
        std::fs::write(dirs[i].join("node.toml"), cfg).unwrap();
    }
    let mut it = dirs.into_iter().map(|dir| Node { dir });
    [it.next().unwrap(), it.next().unwrap()]
}

/// `syncd ARGS` in node `i`'s namespace; (success, output).
pub fn syncd(lan: &Lan, i: usize, args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", lan.ns(i), SYNCD])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

pub fn status(lan: &Lan, n: &[Node; 2], i: usize) -> String {
    syncd(lan, i, &["status", "--config", &n[i].cfg()]).1
}

pub fn start_auto(lan: &mut Lan, n: &[Node; 2], i: usize) -> usize {
    let cfg = n[i].cfg();
    lan.start(i, "auto", SYNCD, &["--role", "auto", "--config", &cfg])
}

pub fn same(a: &Path, b: &Path, name: &str) -> bool {
    std::fs::read(a.join(name))
        .ok()
        .is_some_and(|x| std::fs::read(b.join(name)).ok() == Some(x))
}

/// As an existing primary/standby pair would be: node 1 a standby, one
/// resync from node 0, standby stopped.
/// `syncd --role standby|primary` on node `i`, as the old units ran it; a
/// standby is waited for until it listens.
pub fn start_role(lan: &mut Lan, n: &[Node; 2], role: &str, i: usize) -> usize {
    let k = lan.start(i, role, SYNCD, &["--role", role, "--config", &n[i].cfg()]);
    if role == "standby" {
        assert!(
            wait_for(Duration::from_secs(10), || lan
                .log(k)
                .contains("standby listening"))
            .is_some(),
            "{}",
            lan.log(k)
        );
    }
    k
}

pub fn bootstrap(lan: &mut Lan, n: &[Node; 2]) {
    let sb = start_role(lan, n, "standby", 1);
    let (ok, out) = syncd(lan, 0, &["resync", "--config", &n[0].cfg()]);
    assert!(ok, "bootstrap resync: {out}");
    lan.term(sb);
}

/// Waits until node `i` alone holds the service address (30 s); otherwise
/// dumps every log and fails.
pub fn wait_led_by(lan: &Lan, i: usize) {
    if wait_for(Duration::from_secs(30), || lan.holders(&[0, 1]) == vec![i]).is_none() {
        lan.dump_logs();
        panic!("node {i} must lead; holders {:?}", lan.holders(&[0, 1]));
    }
}
