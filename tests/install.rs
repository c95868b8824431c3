//! `scripts/install.sh` into a temporary DESTDIR, then `systemd-analyze
//! verify` on every unit in `contrib/systemd/` as installed there (with the
//! proxy's VRRP drop-in), for PREFIX=/usr (the package layout) and
//! /usr/local (the script's default). A unit that systemd warns about fails
//! the test, as does a capability name that does not exist (systemd skips
//! those silently). Needs `systemd-analyze` (skips visibly otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every Linux capability (capabilities(7)); anything else is a typo.
const CAPS: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETGID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
];

fn units() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("contrib/systemd"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.ends_with(".service").then_some(n)
        })
        .collect();
    v.sort();
    v
}

/// Runs install.sh (debug build: the test's own profile, so it is cached).
fn install(destdir: &Path, prefix: &str) {
    let mut cmd = Command::new(Path::new(ROOT).join("scripts/install.sh"));
    // What cargo sets for this test's run would make its build differ from
    // the one that built the test (ring's build script reruns when
    // CARGO_MANIFEST_DIR changes): the nested build and the next `cargo
    // test` would each rebuild half the dependency tree.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ]
        .iter()
        .any(|p| k.starts_with(p))
        {
            cmd.env_remove(&k);
        }
    }
    let o = cmd
        .arg("--debug")
        .env("DESTDIR", destdir)
        .env("PREFIX", prefix)
        .output()
        .expect("run install.sh");
    assert!(
        o.status.success(),
        "install.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// What a target system provides beside our files: systemd's own units
/// (targets the units refer to) and `kill` for ExecReload.
fn system_around(root: &Path) {
    let sys = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&sys).unwrap();
    let st = Command::new("cp")
        .args(["-r", "/usr/lib/systemd/system"])
        .arg(&sys)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    let kill = ["/usr/bin/kill", "/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("kill(1)");
    std::fs::copy(kill, root.join("usr/bin/kill")).unwrap();
    if !root.join("bin").exists() {
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    }
}

/// `systemd-analyze verify` in `root`: `Err(output)` on failure or any warning.
fn verify(root: &Path, unit: &str) -> Result<(), String> {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    if o.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{unit}: {}\n{text}", o.status))
    }
}

fn unknown_caps(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("CapabilityBoundingSet=")
                .or_else(|| l.strip_prefix("AmbientCapabilities="))
        })
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .filter(|c| !CAPS.contains(&c.trim_start_matches('~')))
        .collect()
}

fn have_systemd_analyze(test: &str) -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        syncd_testkit::skip::skip(test, "systemd-analyze is not installed (Debian: systemd)");
    }
    ok
}

fn check_layout(prefix: &str) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    install(root, prefix);
    system_around(root);
    let p = |s: &str| -> PathBuf { root.join(s.trim_start_matches('/')) };
    // The binaries are real and runnable where the units say.
    for b in ["syncd", "syncd-proxy"] {
        let o = Command::new(p(&format!("{prefix}/bin/{b}")))
            .arg("--version")
            .output()
            .unwrap();
        assert!(o.status.success(), "{b} --version");
    }
    for c in ["syncd", "syncd-auto", "vrrp", "proxy"] {
        assert!(
            p(&format!("/etc/syncd/{c}.example.toml")).is_file(),
            "{c} example"
        );
    }
    // The sysctl example names only settings this kernel has.
    let sysctl = std::fs::read_to_string(p(&format!("{prefix}/share/doc/syncd/90-syncd.conf")))
        .expect("the sysctl example is installed");
    let keys: Vec<&str> = sysctl
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .filter_map(|l| l.split('=').next().map(str::trim))
        .collect();
    assert_eq!(keys.len(), 4, "{sysctl}");
    for k in keys {
        let proc = Path::new("/proc/sys").join(k.replace('.', "/"));
        assert!(
            proc.exists(),
            "{k} is not a sysctl here ({})",
            proc.display()
        );
    }
    // The proxy with built-in VRRP: the documented drop-in, verified too.
    let dropin = p("/etc/systemd/system/syncd-proxy.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::copy(
        p(&format!("{prefix}/share/doc/syncd/syncd-proxy-vrrp.conf")),
        dropin.join("vrrp.conf"),
    )
    .unwrap();

    let units = units();
    assert!(units.len() >= 5, "{units:?}");
    let mut failures = Vec::new();
    for u in &units {
        let installed = p(&format!("{prefix}/lib/systemd/system/{u}"));
        let text = std::fs::read_to_string(&installed)
            .unwrap_or_else(|e| panic!("{u} not installed at {}: {e}", installed.display()));
        assert!(
            text.contains(&format!("ExecStart={prefix}/bin/syncd")),
            "{u}: ExecStart not under {prefix}/bin:\n{text}"
        );
        assert!(text.contains("Type=notify"), "{u}: not Type=notify");
        let bad = unknown_caps(&text);
        assert!(bad.is_empty(), "{u}: unknown capabilities {bad:?}");
        if let Err(e) = verify(root, u) {
            failures.push(e);
        }
    }
    let bad = unknown_caps(&std::fs::read_to_string(dropin.join("vrrp.conf")).unwrap());
    assert!(bad.is_empty(), "drop-in: unknown capabilities {bad:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The check itself can fail: a unit with a typo is caught.
    let bad_unit = p("/etc/systemd/system/syncd-typo.service");
    let typo = std::fs::read_to_string(p(&format!(
        "{prefix}/lib/systemd/system/syncd-vrrp.service"
    )))
    .unwrap()
    .replace("ProtectSystem=strict", "ProtectSystem=stricter");
    std::fs::write(&bad_unit, typo).unwrap();
    let e = verify(root, "syncd-typo.service").expect_err("a typo must fail verification");
    assert!(e.contains("stricter"), "{e}");
}

#[test]
fn units_verify_installed_under_usr() {
    if have_systemd_analyze("units_verify_installed_under_usr") {
        check_layout("/usr");
    }
}

#[test]
fn units_verify_installed_under_usr_local() {
    if have_systemd_analyze("units_verify_installed_under_usr_local") {
        check_layout("/usr/local");
    }
}

#[test]
fn unit_capabilities_are_checked() {
    assert_eq!(
        unknown_caps("CapabilityBoundingSet=CAP_NET_RAW CAP_NETADMIN\n"),
        vec!["CAP_NETADMIN".to_string()]
    );
    assert!(unknown_caps("CapabilityBoundingSet=~CAP_SYS_ADMIN\n").is_empty());
}

/// The README's nftables rules are what nft accepts (checked with `nft -c`
/// in a new network namespace: nothing is applied).
#[test]
fn readme_nftables_rules_parse() {
    let t = "readme_nftables_rules_parse";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        syncd_testkit::skip::skip(t, "needs root for a network namespace");
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        syncd_testkit::skip::skip(t, "nft is not installed (Debian: nftables)");
        return;
    }
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let at = readme
        .find("**nftables**")
        .expect("README has the nftables rules");
    let rules = readme[at..]
        .split("```\n")
        .nth(1)
        .expect("a code block after **nftables**");
    assert!(rules.contains("ip protocol vrrp"), "{rules}");
    let d = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let f = d.path().join("rules.nft");
        std::fs::write(&f, text).unwrap();
        Command::new("unshare")
            .args(["--net", "nft", "-c", "-f"])
            .arg(&f)
            .output()
            .unwrap()
    };
    let o = check(rules);
    assert!(
        o.status.success(),
        "nft -c rejects the README's rules:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The check can fail: a misspelt protocol is refused.
    let o = check(&rules.replace("ip protocol vrrp", "ip protocol vrrrp"));
    assert!(!o.status.success(), "nft -c accepted a typo");
}
