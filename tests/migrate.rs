//! `syncd migrate` on the seeds' own configurations (as found, in
//! `tests/fixtures/migrate/seed*`) and on a pair of real ones that
//! keepalived 2.2 accepts (`fixtures/migrate/real`): every trap the seeds
//! hold is reported, and every generated config passes its daemon's
//! `--check`.

use syncd_testkit::netns;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netns::{backend_at, get, serial, wait_for, Lan};

const SYNCD: &str = env!("CARGO_BIN_EXE_syncd");

/// A seed's fixture file, as a command-line argument.
fn seed(s: &str, p: &str) -> String {
    fixture(&format!("{s}/{p}")).to_str().unwrap().to_string()
}

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrate")
        .join(p)
}

/// `syncd ARGS`: (exit code, stdout + stderr).
fn syncd(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(SYNCD).args(args).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn migrate(args: &[&str], out: &Path) -> String {
    let mut a = vec!["migrate"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let (code, text) = syncd(&a);
    assert_eq!(code, Some(0), "{text}");
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(text.contains(&report), "the report is printed and written");
    report
}

fn traps(report: &str) -> Vec<&str> {
    report.lines().filter(|l| l.starts_with("TRAP: ")).collect()
}

/// Every generated file passes its daemon's own check. syncd's configs
/// need their keys where they say; they are made here.
fn check_all(out: &Path) -> usize {
    let proxy = Path::new(SYNCD).with_file_name("syncd-proxy");
    let mut n = 0;
    for e in walkdir::WalkDir::new(out) {
        let e = e.unwrap();
        let p = e.path();
        let s = p.to_str().unwrap();
        let (code, text) = match p.file_name().and_then(|f| f.to_str()) {
            Some("proxy.toml") => {
                let o = Command::new(&proxy)
                    .args(["--check", "--config", s])
                    .output()
                    .unwrap_or_else(|e| panic!("{}: {e} (build the workspace)", proxy.display()));
                (
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout).to_string()
                        + &String::from_utf8_lossy(&o.stderr),
                )
            }
            Some("vrrp.toml") => syncd(&["vrrp", "--check", "--config", s]),
            Some("syncd.toml") => {
                let dir = p.parent().unwrap();
                syncd::tls::keygen(dir, "node").unwrap();
                std::fs::copy(dir.join("node.crt"), dir.join("peer.crt")).unwrap();
                let role = if s.contains("standby") {
                    "standby"
                } else {
                    "primary"
                };
                std::fs::create_dir_all(dir.join("export")).unwrap();
                // The export the config names need not exist here: point
                // the check at a local one.
                let text = std::fs::read_to_string(p).unwrap();
                let local = dir.join("local.toml");
                let export = text
                    .lines()
                    .find(|l| l.starts_with("export = "))
                    .unwrap()
                    .to_string();
                std::fs::write(&local, text.replace(&export, "export = \"export\"")).unwrap();
                syncd(&[
                    "--role",
                    role,
                    "--check",
                    "--config",
                    local.to_str().unwrap(),
                ])
            }
            _ => continue,
        };
        assert_eq!(code, Some(0), "{s}:\n{text}");
        n += 1;
    }
    n
}

#[test]
fn migrate_carries_seed_000_over_and_reports_its_traps() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let f = |p| seed("seed000", p);
    let report = migrate(
        &[
            "--keepalived",
            &f("node1-keepalived.conf"),
            "--keepalived",
            &f("node2-keepalived.conf"),
            "--nginx",
            &f("nginx.conf"),
            "--sync-script",
            &f("ino.sh"),
        ],
        &out,
    );
    let t = traps(&report);
    for want in [
        // the two nodes' virtual_router_id (51 and 1)
        "vrid differs (node1 51, node2 1)",
        // rsync sends to 192.168.1.40, the load balancers' VIP
        "rsync target 192.168.1.40 is the virtual IP of keepalived instance VI_1",
        // `if [ $(pgrep rsync | wc -l) -gt 0 ]`
        "`pgrep rsync`",
        "without --delete",
    ] {
        assert!(t.iter().any(|l| l.contains(want)), "{want}:\n{report}");
    }
    assert!(
        report.contains("carried over: nginx upstream backend (2 servers)"),
        "{report}"
    );
    let proxy = std::fs::read_to_string(out.join("node1/proxy.toml")).unwrap();
    assert!(
        proxy.contains(
            "addr = \"192.168.1.11:90\"\nweight = 1\nmax_fails = 2\nfail_timeout = \"10s\""
        ),
        "{proxy}"
    );
    assert!(proxy.contains("vrid = 51"), "{proxy}");
    // node2's vrid is node1's, so the migrated pair hears itself.
    let proxy2 = std::fs::read_to_string(out.join("node2/proxy.toml")).unwrap();
    assert!(proxy2.contains("vrid = 51  # was 1"), "{proxy2}");
    assert!(
        report.contains(
            "carried over: node2's vrrp_instance VI_1: vrid set to 51 (node1's) instead of 1"
        ),
        "{report}"
    );
    let syncd_toml = std::fs::read_to_string(out.join("nfs-primary/syncd.toml")).unwrap();
    assert!(
        syncd_toml.contains("export = \"/database\""),
        "{syncd_toml}"
    );
    // The VIP is not the standby: the address is a placeholder, said so.
    assert!(
        syncd_toml.contains("peer = \"192.0.2.1:7400\""),
        "{syncd_toml}"
    );
    assert_eq!(check_all(&out), 4);

    // Never over existing files.
    let (code, text) = syncd(&[
        "migrate",
        "--sync-script",
        &f("ino.sh"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("never overwritten"), "{text}");
}

#[test]
fn migrate_finds_the_check_script_that_stops_keepalived_and_carries_lvs() {
    let d = tempfile::tempdir().unwrap();
    // Seed 003: a unicast pair whose track script restarts nginx and else
    // stops keepalived, exiting 0 either way.
    let out = d.path().join("s3");
    let f = |p| seed("seed003", p);
    let report = migrate(
        &[
            "--keepalived",
            &f("node1-keepalived.conf"),
            "--keepalived",
            &f("node2-keepalived.conf"),
            "--scripts",
            fixture("seed003").to_str().unwrap(),
        ],
        &out,
    );
    let t = traps(&report);
    assert_eq!(t.len(), 2, "{report}");
    assert!(
        t.iter()
            .all(|l| l.contains("stops keepalived and always exits 0")),
        "{report}"
    );
    let vrrp = std::fs::read_to_string(out.join("node1/vrrp.toml")).unwrap();
    assert!(
        vrrp.contains("process = \"nginx\"  # was \"/etc/keepalived/check_nginx.sh\""),
        "{vrrp}"
    );
    assert!(!vrrp.contains("script = "), "{vrrp}");
    assert_eq!(check_all(&out), 2);

    // Seed 002: LVS-DR (as pasted, with no-break spaces) → a TCP listener.
    let out = d.path().join("s2");
    let report = migrate(
        &[
            "--keepalived",
            fixture("seed002/keepalived.conf").to_str().unwrap(),
        ],
        &out,
    );
    assert!(
        report.contains("carried over: LVS virtual_server 10.1.1.140:80 (2 real servers)"),
        "{report}"
    );
    assert!(
        report.contains("lb_kind DR → syncd-proxy terminates connections"),
        "{report}"
    );
    let proxy = std::fs::read_to_string(out.join("node1/proxy.toml")).unwrap();
    assert!(proxy.contains("mode = \"tcp\""), "{proxy}");
    assert!(proxy.contains("addr = \"10.1.1.133:80\""), "{proxy}");
    assert_eq!(check_all(&out), 1);

    // A `nopreempt` that keepalived ignored.
    let conf = d.path().join("np.conf");
    std::fs::write(
        &conf,
        "vrrp_instance VI_1 {\n state MASTER\n interface eth0\n virtual_router_id 7\n priority 150\n nopreempt\n virtual_ipaddress {\n 10.0.0.5\n }\n}\n",
    )
    .unwrap();
    let report = migrate(
        &["--keepalived", conf.to_str().unwrap()],
        &d.path().join("np"),
    );
    assert!(
        traps(&report)
            .iter()
            .any(|l| l.contains("`nopreempt` with `state MASTER`")),
        "{report}"
    );
}

#[test]
fn migrate_real_configs_that_keepalived_accepts() {
    let name = "migrate_real_configs_that_keepalived_accepts";
    if !netns::can_run(name) || !netns::have("keepalived", name) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // keepalived wants its check script at an absolute, root-owned path.
    let scripts = d.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::copy(
        fixture("real/check_nginx.sh"),
        scripts.join("check_nginx.sh"),
    )
    .unwrap();
    let confs: Vec<PathBuf> = (1..=2)
        .map(|n| {
            let text = std::fs::read_to_string(fixture(&format!("real/node{n}-keepalived.conf")))
                .unwrap()
                .replace("SCRIPTS", scripts.to_str().unwrap());
            let p = d.path().join(format!("node{n}.conf"));
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    // keepalived -t needs the interface: a namespace with one.
    let lan = Lan::new("mig", 1);
    let ns = lan.ns(0);
    let o = Command::new("ip")
        .args([
            "-n", ns, "link", "add", "ens33", "type", "veth", "peer", "name", "x0",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ip link add: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for c in &confs {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "keepalived", "--config-test", "-f"])
            .arg(c)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "keepalived -t {}: {}",
            c.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let out = d.path().join("out");
    let report = migrate(
        &[
            "--keepalived",
            confs[0].to_str().unwrap(),
            "--keepalived",
            confs[1].to_str().unwrap(),
            "--nginx",
            fixture("real/nginx.conf").to_str().unwrap(),
            "--lsyncd",
            fixture("real/lsyncd.conf.lua").to_str().unwrap(),
        ],
        &out,
    );
    let t = traps(&report);
    for want in [
        "stops keepalived and always exits 0",
        "advert_int differs (node1 1, node2 2)",
        "node2's unicast_peers [10.20.0.13] lack node1's address 10.20.0.11",
        "`delete = running`",
    ] {
        assert!(t.iter().any(|l| l.contains(want)), "{want}:\n{report}");
    }
    let proxy = std::fs::read_to_string(out.join("node2/proxy.toml")).unwrap();
    assert!(proxy.contains("algorithm = \"least_conn\""), "{proxy}");
    assert!(
        proxy.contains("http = \"http://127.0.0.1:9901/healthz\""),
        "{proxy}"
    );
    let standby = std::fs::read_to_string(out.join("nfs-primary/syncd.toml")).unwrap();
    assert!(standby.contains("peer = \"10.20.0.32:7400\""), "{standby}");
    assert_eq!(check_all(&out), 4);
}

/// The load-balancer half of README's migration guide, followed step by
/// step on seed 000's own files (with the lab's addresses): the seed as
/// found splits (its nodes' vrids differ, both hold the address); the
/// backup is replaced first and joins keepalived's master as a backup (the
/// VRRP is wire-compatible); stopping keepalived on the master moves the
/// address to syncd-proxy and clients keep being served; the master's
/// syncd-proxy takes it back; and the rollback (keepalived again) works.
#[test]
fn migration_guide_load_balancers_of_seed_000() {
    let name = "migration_guide_load_balancers_of_seed_000";
    if !netns::can_run(name) || !netns::have("keepalived", name) {
        return;
    }
    let _g = serial();
    // n0, n1: the load balancers; n2: both web servers; n3: a client.
    let mut lan = Lan::new("mg", 4);
    let vip = lan.vip();
    let web = lan.ip(2);
    let _w1 = backend_at(lan.ns(2), &format!("{web}:90"), "web1");
    let _w2 = backend_at(lan.ns(2), &format!("{web}:91"), "web2");
    let lab = |text: String| {
        text.replace("ens33", "eth0")
            .replace("192.168.1.40", &vip)
            .replace("192.168.1.11:90", &format!("{web}:90"))
            .replace("192.168.1.13:90", &format!("{web}:91"))
    };
    let read = |p: &str| std::fs::read_to_string(fixture(&format!("seed000/{p}"))).unwrap();
    let files = [
        ("node1-keepalived.conf", lab(read("node1-keepalived.conf"))),
        ("node2-keepalived.conf", lab(read("node2-keepalived.conf"))),
        ("nginx.conf", lab(read("nginx.conf"))),
    ];
    for (f, text) in &files {
        std::fs::write(lan.path(f), text).unwrap();
    }
    let holders = |lan: &Lan, want: Vec<usize>, why: &str| {
        assert!(
            wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == want).is_some(),
            "{why}: holders {:?}, want {want:?}",
            lan.holders(&[0, 1])
        );
    };
    let served = |lan: &Lan| {
        assert!(
            wait_for(Duration::from_secs(5), || get(
                lan.ns(3),
                &format!("{vip}:80"),
                "/"
            )
            .is_some_and(|(s, b)| s == 200 && b.starts_with("web")))
            .is_some(),
            "the client must be served through the VIP"
        );
    };

    // Before: the seed as found. Two vrids, two masters.
    let ka0 = lan.start_keepalived(0, &files[0].1);
    let ka1 = lan.start_keepalived(1, &files[1].1);
    holders(
        &lan,
        vec![0, 1],
        "the seed's nodes (vrid 51 and 1) both hold the VIP",
    );

    // Step 1: syncd migrate.
    let out = lan.path("migrated");
    let report = migrate(
        &[
            "--keepalived",
            lan.path("node1-keepalived.conf").to_str().unwrap(),
            "--keepalived",
            lan.path("node2-keepalived.conf").to_str().unwrap(),
            "--nginx",
            lan.path("nginx.conf").to_str().unwrap(),
        ],
        &out,
    );
    assert!(report.contains("vrid differs"), "{report}");
    let proxy = Path::new(SYNCD).with_file_name("syncd-proxy");
    let proxy = proxy.to_str().unwrap();

    // Step 2: the backup first. It joins keepalived's master as a backup.
    lan.term(ka1);
    let p1 = out.join("node2/proxy.toml");
    lan.start(1, "proxy", proxy, &["--config", p1.to_str().unwrap()]);
    holders(
        &lan,
        vec![0],
        "keepalived (priority 100) stays master beside syncd-proxy (99)",
    );
    assert!(
        wait_for(Duration::from_secs(5), || get(
            lan.ns(1),
            "127.0.0.1:9901",
            "/metrics"
        )
        .is_some_and(|(_, m)| m.contains("state=\"BACKUP\"} 1")))
        .is_some(),
        "syncd-proxy on node2 must be BACKUP"
    );

    // Step 3: stop keepalived (and nginx) on the master: the address moves.
    lan.term(ka0);
    holders(&lan, vec![1], "syncd-proxy on node2 takes the address");
    served(&lan);

    // Step 4: syncd-proxy on the master; it takes the address back.
    let p0 = out.join("node1/proxy.toml");
    let px0 = lan.start(0, "proxy", proxy, &["--config", p0.to_str().unwrap()]);
    holders(
        &lan,
        vec![0],
        "syncd-proxy on node1 (priority 100) preempts",
    );
    served(&lan);

    // Rollback of step 4: keepalived again on node1, beside node2's proxy.
    lan.term(px0);
    holders(&lan, vec![1], "node2 takes over when node1's proxy stops");
    let fixed = files[0].1.clone();
    lan.start_keepalived(0, &fixed);
    holders(
        &lan,
        vec![0],
        "keepalived on node1 preempts syncd-proxy (one vrid now)",
    );
}

/// The NFS half of README's migration guide, followed on loopback: seed
/// 000's `inotifywait | rsync` loop keeps a standby copy; `syncd migrate`
/// writes the configs; the loop is stopped, `syncd resync` finds the copy
/// equal and sends nothing, `syncd verify` agrees, the live primary takes
/// over; and the rollback (the loop again) works.
#[test]
fn migration_guide_nfs_loop_of_seed_000() {
    let name = "migration_guide_nfs_loop_of_seed_000";
    if !netns::have("inotifywait", name) || !netns::have("rsync", name) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (src, dst) = (d.path().join("database"), d.path().join("standby"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("old{i}.html")), format!("page {i}")).unwrap();
    }
    // The seed's loop, with the lab's paths: rsync to a local directory
    // instead of the daemon module, and without its `pgrep rsync` guard
    // (no rsync daemon here).
    let script = std::fs::read_to_string(fixture("seed000/ino.sh"))
        .unwrap()
        .replace("/database/", &format!("{}/", src.display()))
        .replace("192.168.1.40::wwwroot", dst.to_str().unwrap())
        .replace(
            "if [ $(pgrep rsync | wc -l) -gt 0 ] ; then",
            "if true; then",
        );
    let ino = d.path().join("ino.sh");
    std::fs::write(&ino, &script).unwrap();
    let start_loop = || {
        let mut c = Command::new("setsid");
        c.arg("bash").arg(&ino);
        c.stdout(std::process::Stdio::null());
        c.stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let stop_loop = |c: &mut std::process::Child| {
        // The loop and its inotifywait/rsync children: its process group.
        let pg = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::Term);
        let _ = c.wait();
    };
    let arrives = |name: &str, what: &[u8]| {
        wait_for(Duration::from_secs(20), || {
            std::fs::read(dst.join(name)).ok().as_deref() == Some(what)
        })
        .is_some()
    };
    // Before: the loop replicates (an initial rsync, as the seed's users ran).
    assert!(Command::new("rsync")
        .args(["-a", &format!("{}/", src.display()), dst.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let mut lp = start_loop();
    std::thread::sleep(Duration::from_millis(500)); // inotifywait sets its watches
    std::fs::write(src.join("before.html"), b"written under the loop").unwrap();
    assert!(
        arrives("before.html", b"written under the loop"),
        "the loop replicates"
    );

    // Step 1: generate.
    let out = d.path().join("migrated");
    let report = migrate(
        &[
            "--sync-script",
            fixture("seed000/ino.sh").to_str().unwrap(),
            "--standby",
            "127.0.0.1",
        ],
        &out,
    );
    assert!(report.contains("`pgrep rsync`"), "{report}");
    // With the lab's paths and a free port; keys as README's "Setting up a pair".
    let port = syncd_testkit::port::free_port();
    let conf = |role: &str, export: &Path| {
        let dir = out.join(format!("nfs-{role}"));
        syncd::tls::keygen(&dir, role).unwrap();
        let text = std::fs::read_to_string(dir.join("syncd.toml"))
            .unwrap()
            .replace(
                "\"/database\"",
                &format!(
                    "{:?}\nstate_dir = {:?}",
                    export.to_str().unwrap(),
                    dir.join("state").to_str().unwrap()
                ),
            )
            .replace(":7400", &format!(":{port}"))
            .replace("admin = \"127.0.0.1:7401\"\n", "");
        std::fs::write(dir.join("syncd.toml"), text).unwrap();
        dir.join("syncd.toml")
    };
    let (pc, sc) = (conf("primary", &src), conf("standby", &dst));
    std::fs::copy(
        out.join("nfs-standby/node.crt"),
        out.join("nfs-primary/peer.crt"),
    )
    .unwrap();
    std::fs::copy(
        out.join("nfs-primary/node.crt"),
        out.join("nfs-standby/peer.crt"),
    )
    .unwrap();
    let (pc, sc) = (pc.to_str().unwrap(), sc.to_str().unwrap());

    // Step 2: stop the loop; start the standby; resync (the copy is equal:
    // nothing is sent); verify.
    stop_loop(&mut lp);
    let mut standby = Command::new(SYNCD)
        .args(["--role", "standby", "--config", sc])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _reap = Reap(vec![standby.id()]);
    std::thread::sleep(Duration::from_millis(500));
    let (code, text) = syncd(&["resync", "--config", pc]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("sent whole 0, sent as delta 0, deleted 0"),
        "the loop's copy is equal:\n{text}"
    );
    let (code, text) = syncd(&["verify", "--config", pc]);
    assert_eq!(code, Some(0), "{text}");

    // Step 3: the live primary.
    let mut primary = Command::new(SYNCD)
        .args(["--role", "primary", "--config", pc])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _reap2 = Reap(vec![primary.id()]);
    std::fs::write(src.join("after.html"), b"written under syncd").unwrap();
    assert!(
        arrives("after.html", b"written under syncd"),
        "syncd replicates"
    );

    // Rollback: stop syncd, start the loop again.
    for c in [&mut primary, &mut standby] {
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::Term).unwrap();
        assert!(c.wait().unwrap().success());
    }
    let mut lp = start_loop();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(src.join("rolled-back.html"), b"the loop again").unwrap();
    assert!(
        arrives("rolled-back.html", b"the loop again"),
        "the rollback replicates"
    );
    stop_loop(&mut lp);
}

/// Kills leftover children of a failed test.
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
            }
        }
    }
}
