//! `Type=notify` readiness of the real `syncd-proxy`: READY=1 once the
//! listeners accept, RELOADING=1 then READY=1 around a SIGHUP reload (also
//! a failed one: the proxy keeps serving), SIGUSR1/SIGUSR2 answered in the
//! log, STOPPING=1 at SIGTERM.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use syncd_testkit::notify::NotifySocket;

const PROXY: &str = env!("CARGO_BIN_EXE_syncd-proxy");
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    syncd_testkit::port::free_port()
}

fn config(ports: &[u16]) -> String {
    let mut s =
        String::from("[global]\nworkers = 1\nshutdown_timeout = \"1s\"\naccess_log = false\n");
    for p in ports {
        s.push_str(&format!(
            "\n[[listener]]\nlisten = \"127.0.0.1:{p}\"\nupstream = \"web\"\n"
        ));
    }
    s.push_str("\n[[upstream]]\nname = \"web\"\n\n[[upstream.server]]\naddr = \"127.0.0.1:9\"\n");
    s
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn ready_when_listening_reload_and_stop_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.toml");
    let (a, b) = (free_port(), free_port());
    std::fs::write(&cfg, config(&[a])).unwrap();
    let log = dir.path().join("proxy.log");
    let mut n = NotifySocket::abstract_name("proxy");
    let mut child = Command::new(PROXY)
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &n.addr)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = n
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY=1: {:?}\n{}", n.seen, logs()));
    assert!(
        ready.contains("STATUS=serving: 1 listener(s), 1 upstream(s)"),
        "{ready}"
    );
    // Right after READY=1 the listener accepts (one attempt, no retry).
    TcpStream::connect(("127.0.0.1", a)).expect("listener not accepting at READY=1");

    // A reload that adds a listener: RELOADING=1, then READY=1 once bound.
    std::fs::write(&cfg, config(&[a, b])).unwrap();
    signal(child.id(), libc::SIGHUP);
    let r = n
        .wait_for("RELOADING=1", WAIT)
        .unwrap_or_else(|| panic!("no RELOADING=1: {:?}\n{}", n.seen, logs()));
    assert!(r.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{r}");
    let again = n
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY=1 after reload: {:?}\n{}", n.seen, logs()));
    assert!(again.contains("STATUS=reloaded: 2 listener(s)"), "{again}");
    TcpStream::connect(("127.0.0.1", b)).expect("new listener not accepting at READY=1");

    // A reload that fails still ends with READY=1: the proxy keeps serving.
    std::fs::write(&cfg, "this is = not [valid").unwrap();
    signal(child.id(), libc::SIGHUP);
    assert!(n.wait_for("RELOADING=1", WAIT).is_some(), "{:?}", n.seen);
    let failed = n
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY=1 after a failed reload: {:?}", n.seen));
    assert!(failed.contains("STATUS=reload failed"), "{failed}");
    TcpStream::connect(("127.0.0.1", a)).expect("serving after a failed reload");

    // nginx's reopen and upgrade signals, sent by habit (a logrotate
    // postrotate): answered in the log; the proxy serves on.
    signal(child.id(), libc::SIGUSR1);
    signal(child.id(), libc::SIGUSR2);
    let t = std::time::Instant::now();
    while !(logs().contains("SIGUSR1: nothing to reopen")
        && logs().contains("SIGUSR2: no binary upgrade"))
    {
        assert!(t.elapsed() < WAIT, "{}", logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "{}", logs());
    TcpStream::connect(("127.0.0.1", a)).expect("serving after SIGUSR1/SIGUSR2");

    signal(child.id(), libc::SIGTERM);
    assert!(
        n.wait_for("STOPPING=1", WAIT).is_some(),
        "no STOPPING=1: {:?}\n{}",
        n.seen,
        logs()
    );
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}\n{}", logs());
}

/// Built-in VRRP that cannot start (no such interface): the proxy exits
/// with an error and never says READY=1, so systemd sees a failed start.
#[test]
fn no_ready_when_builtin_vrrp_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.toml");
    let body = config(&[free_port()])
        + "\n[[vrrp]]\nname = \"VI_LB\"\ninterface = \"nope0\"\nvrid = 52\npriority = 100\nadvert_int = 1\nversion = 3\nvirtual_ips = [\"192.0.2.100/24\"]\n";
    std::fs::write(&cfg, body).unwrap();
    let mut n = NotifySocket::path(&dir.path().join("notify.sock"));
    let out = Command::new(PROXY)
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &n.addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("nope0"), "{err}");
    assert!(
        n.wait_for("READY=1", Duration::from_millis(200)).is_none(),
        "READY=1 from a proxy whose VRRP failed: {:?}",
        n.seen
    );
}
