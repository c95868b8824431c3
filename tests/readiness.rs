//! `Type=notify` readiness of the real `syncd` daemons: READY=1 only once
//! the daemon serves, STOPPING=1 at SIGTERM. `NOTIFY_SOCKET` points at a
//! socket the test binds (these machines run no systemd), by path and by
//! abstract name. `--role auto` needs network namespaces (root; skips
//! visibly otherwise).

mod common;

use syncd_testkit::netns;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Pair, BIN};
use syncd_testkit::notify::NotifySocket;

const WAIT: Duration = Duration::from_secs(30);

fn sigterm(c: &Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(c.id() as i32).unwrap(),
        rustix::process::Signal::Term,
    )
    .unwrap();
}

fn spawn(p: &Pair, role: &str, cfg: &str, notify: &NotifySocket, log: &str) -> Child {
    Command::new(BIN)
        .args(["--role", role, "--config", cfg])
        .current_dir(p.dir.path())
        .env("NOTIFY_SOCKET", &notify.addr)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.path(log)).unwrap())
        .spawn()
        .expect("spawn syncd")
}

/// Stops `c` with SIGTERM: STOPPING=1 must arrive and the exit be clean.
fn assert_stops(mut c: Child, n: &mut NotifySocket, log: &str) {
    sigterm(&c);
    assert!(
        n.wait_for("STOPPING=1", WAIT).is_some(),
        "no STOPPING=1 after SIGTERM; got {:?}\n{log}",
        n.seen
    );
    let st = c.wait().unwrap();
    assert!(st.success(), "exit after SIGTERM: {st}\n{log}");
}

#[test]
fn standby_is_ready_when_it_accepts_the_primary() {
    let p = Pair::new();
    let mut n = NotifySocket::path(&p.path("notify.sock"));
    let c = spawn(&p, "standby", "standby.toml", &n, "standby.log");
    let ready = n.wait_for("READY=1", WAIT);
    let log = std::fs::read_to_string(p.path("standby.log")).unwrap_or_default();
    let ready = ready.unwrap_or_else(|| panic!("no READY=1: {:?}\n{log}", n.seen));
    assert!(
        ready.contains(&format!(
            "STATUS=standby: listening on 127.0.0.1:{}",
            p.port
        )),
        "{ready}"
    );
    // Right after READY=1 a primary gets through (no retry loop here: verify
    // connects once and fails if nothing answers).
    let (equal, out) = p.verify();
    assert!(equal, "verify right after READY=1 failed:\n{out}");
    let log = std::fs::read_to_string(p.path("standby.log")).unwrap_or_default();
    assert_stops(c, &mut n, &log);
}

#[test]
fn primary_is_ready_when_it_records_changes_and_reports_the_standby() {
    let mut p = Pair::new();
    p.start_standby();
    let mut n = NotifySocket::abstract_name("primary");
    let c = spawn(&p, "primary", "primary.toml", &n, "primary.log");
    let log = || std::fs::read_to_string(p.path("primary.log")).unwrap_or_default();
    let ready = n
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY=1: {:?}\n{}", n.seen, log()));
    assert!(ready.contains("STATUS=primary: watching"), "{ready}");
    // A file written right after READY=1 is replicated: the watch was in
    // place when readiness was announced.
    std::fs::write(p.primary().join("after-ready"), b"x").unwrap();
    assert!(
        n.wait_for(
            &format!(
                "STATUS=primary: in sync with 127.0.0.1:{}; following changes",
                p.port
            ),
            WAIT
        )
        .is_some(),
        "no in-sync STATUS: {:?}\n{}",
        n.seen,
        log()
    );
    p.wait_equal(WAIT);
    assert_eq!(
        std::fs::read(p.standby_dir().join("after-ready")).unwrap(),
        b"x"
    );
    let lines = n.lines();
    let connected = lines
        .iter()
        .position(|l| l.starts_with("STATUS=primary: connected to"));
    let ready_at = lines.iter().position(|l| l == "READY=1");
    assert!(
        connected.is_some() && ready_at < connected,
        "READY=1, then connected: {lines:?}"
    );
    assert_stops(c, &mut n, &log());
}

#[test]
fn primary_is_ready_while_its_standby_is_down() {
    // Documented choice: the primary is serving once it records changes; a
    // standby that is down must not fail the primary's start.
    let p = Pair::new();
    let mut n = NotifySocket::path(&p.path("notify.sock"));
    let c = spawn(&p, "primary", "primary.toml", &n, "primary.log");
    let log = || std::fs::read_to_string(p.path("primary.log")).unwrap_or_default();
    assert!(
        n.wait_for("READY=1", WAIT).is_some(),
        "no READY=1 without a standby: {:?}\n{}",
        n.seen,
        log()
    );
    let prefix = format!("STATUS=primary: standby 127.0.0.1:{} unavailable", p.port);
    assert!(
        n.wait_until(|l| l.starts_with(&prefix), WAIT).is_some(),
        "no 'standby unavailable' STATUS: {:?}\n{}",
        n.seen,
        log()
    );
    assert_stops(c, &mut n, &log());
}

#[test]
fn auto_is_ready_when_its_standby_listens_and_vrrp_runs() {
    let t = "auto_is_ready_when_its_standby_listens_and_vrrp_runs";
    if !netns::can_run(t) {
        return;
    }
    let _g = netns::serial();
    let mut lan = netns::Lan::new("rd", 2);
    let d = lan.path("node0");
    std::fs::create_dir_all(d.join("export")).unwrap();
    syncd::tls::keygen(&d.join("keys"), "node0").unwrap();
    syncd::tls::keygen(&lan.path("node1-keys"), "node1").unwrap();
    let cfg = d.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "export = \"export\"\nstate_dir = \"state\"\nlisten = \"{me}:7400\"\npeer = \"{peer}:7400\"\nadmin = \"127.0.0.1:7401\"\n\
             cert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_cert = \"{pc}\"\n\
             [pair]\npeer_wait_secs = 1\n\
             [[vrrp]]\nname = \"VI_NFS\"\ninterface = \"eth0\"\nvrid = 62\npriority = 100\nadvert_int = 1\nversion = 3\nvirtual_ips = [\"{vip}/24\"]\n",
            me = lan.ip(0),
            peer = lan.ip(1),
            pc = lan.path("node1-keys/node.crt").display(),
            vip = lan.vip(),
        ),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["promote", "--force", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A path socket: abstract names do not cross network namespaces.
    let mut n = NotifySocket::path(&lan.path("notify.sock"));
    let env = format!("NOTIFY_SOCKET={}", n.addr);
    let cfg_s = cfg.display().to_string();
    let k = lan.start(
        0,
        "auto",
        "env",
        &[&env, BIN, "--role", "auto", "--config", &cfg_s],
    );
    let ready = n.wait_for("READY=1", WAIT);
    assert!(ready.is_some(), "no READY=1: {:?}\n{}", n.seen, lan.log(k));
    // Serving: the QUIC port is bound.
    let ss = Command::new("ip")
        .args([
            "netns",
            "exec",
            lan.ns(0),
            "ss",
            "-Hlun",
            "sport",
            "=",
            ":7400",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ss.stdout).contains(":7400"),
        "nothing listens on 7400 at READY=1: {}",
        String::from_utf8_lossy(&ss.stdout)
    );
    let log = lan.log(k);
    assert!(log.contains("standby listening"), "{log}");
    // Role changes show in `systemctl status`: promoted, alone, this node
    // leads once peer_wait_secs is over.
    let ready_line = "STATUS=auto: standby listening, VRRP running";
    assert!(
        n.wait_until(|l| l.starts_with("STATUS=auto: ") && l != ready_line, WAIT)
            .is_some(),
        "no role STATUS: {:?}\n{}",
        n.seen,
        lan.log(k)
    );
    lan.term(k);
    // Datagrams sent before the exit wait in the socket's queue.
    assert!(
        n.wait_for("STOPPING=1", WAIT).is_some(),
        "no STOPPING=1: {:?}\n{}",
        n.seen,
        lan.log(k)
    );
}
