use super::*;
use std::time::Duration;

#[test]
fn the_contrib_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir(&export).unwrap();
    let keys = tmp.path().join("keys");
    crate::tls::keygen(&keys, "example").unwrap();
    for f in ["syncd.example.toml", "syncd-auto.example.toml"] {
        // what must exist on this machine: the export and the keys
        let text = std::fs::read_to_string(dir.join(f))
            .unwrap()
            .replace(
                "\"/srv/export\"",
                &format!("{:?}", export.display().to_string()),
            )
            .replace("/etc/syncd/node.", &format!("{}/node.", keys.display()))
            .replace(
                "/etc/syncd/peer.crt",
                &format!("{}/node.crt", keys.display()),
            );
        let copy = tmp.path().join(f);
        std::fs::write(&copy, text).unwrap();
        let c = Config::load(&copy).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.contains("auto") {
            assert!(c.vrrp_config().unwrap().is_some(), "{f}: a [[vrrp]] table");
            assert_eq!(
                c.pair.heartbeat_timeout,
                std::time::Duration::from_millis(2500)
            );
        }
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("export")).unwrap();
    crate::tls::keygen(&d.path().join("keys"), "t").unwrap();
    let f = d.path().join("syncd.toml");
    (d, f)
}

fn write(f: &Path, s: &str) {
    std::fs::write(f, s).unwrap();
}

const BASE: &str = "export = \"export\"\ncert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_cert = \"keys/node.crt\"\n";

#[test]
fn minimal_config_loads_with_defaults() {
    let (_d, f) = setup();
    write(&f, &format!("{BASE}listen = \"127.0.0.1:0\"\n"));
    let c = Config::load(&f).unwrap();
    assert!(c.sync.delete);
    assert_eq!(c.export_id, "default");
    assert_eq!(c.state_dir, Path::new("/var/lib/syncd/default"));
    assert!(!c.legacy_state);
    assert!(c
        .require_peer()
        .unwrap_err()
        .to_string()
        .contains("peer: missing"));
}

#[test]
fn durations_take_a_number_in_the_keys_unit_or_a_string_with_units() {
    let (_d, f) = setup();
    write(&f, BASE);
    let c = Config::load(&f).unwrap();
    assert_eq!(c.sync.batch, BatchConfig::default(), "defaults unchanged");
    assert_eq!(c.sync.full_reconcile, Some(Duration::from_secs(3600)));
    assert_eq!(c.pair.heartbeat, Duration::from_millis(500));
    write(
        &f,
        &format!(
            "{BASE}[sync]\nsettle_ms = 250\nbatch_max_delay_ms = \"1s\"\nfull_reconcile_secs = \"1m30s\"\nreply_timeout_secs = 0\n[pair]\npeer_wait_secs = \"500ms\"\n"
        ),
    );
    let c = Config::load(&f).unwrap();
    assert_eq!(c.sync.batch.settle, Duration::from_millis(250));
    assert_eq!(c.sync.batch.max_delay, Duration::from_secs(1));
    assert_eq!(c.sync.full_reconcile, Some(Duration::from_secs(90)));
    assert_eq!(c.sync.reply_timeout, None, "0 turns the deadline off");
    assert_eq!(c.pair.peer_wait, Duration::from_millis(500));
    write(
        &f,
        &format!("{BASE}[sync]\nsettle_ms = \"half a second\"\n"),
    );
    let e = Config::load(&f).unwrap_err();
    assert!(e.names("sync.settle_ms"), "{e}");
}

#[test]
fn errors_name_the_key() {
    let (_d, f) = setup();
    write(&f, "cert = \"keys/node.crt\"\n");
    assert!(Config::load(&f).unwrap_err().to_string().contains("export"));
    write(&f, &format!("{BASE}exprot = 1\n"));
    assert!(Config::load(&f).unwrap_err().to_string().contains("exprot"));
    write(&f, &format!("{BASE}listen = 7400\n"));
    let e = Config::load(&f).unwrap_err().to_string();
    assert!(e.contains("line 5"), "{e}");
    write(&f, &BASE.replace("\"export\"", "\"nope\""));
    assert!(Config::load(&f)
        .unwrap_err()
        .to_string()
        .contains("export: "));
    write(&f, &BASE.replace("keys/node.key", "keys/missing.key"));
    let e = Config::load(&f).unwrap_err().to_string();
    assert!(
        e.contains("key: cannot read") && e.contains("keygen"),
        "{e}"
    );
    write(&f, &format!("{BASE}listen = \"nohost\"\n"));
    assert!(Config::load(&f)
        .unwrap_err()
        .to_string()
        .contains("listen: "));
    write(&f, &format!("{BASE}[sync]\ndelete = \"yes\"\n"));
    assert!(Config::load(&f).unwrap_err().to_string().contains("line 6"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let (_d, f) = setup();
    write(
        &f,
        &format!(
            "{}listen = \"nohost\"\n[sync]\ndelta_min_size = 0\n[pair]\nheartbeat_ms = 500\nheartbeat_timeout_ms = 600\n",
            BASE.replace("keys/node.key", "keys/missing.key")
        ),
    );
    let e = Config::load(&f).unwrap_err();
    for key in [
        "key",
        "listen",
        "sync.delta_min_size",
        "pair.heartbeat_timeout_ms",
    ] {
        assert!(e.names(key), "{key} not reported in:\n{e}");
    }
    // One line per problem, each naming the file.
    let text = e.to_string();
    assert_eq!(text.lines().count(), 4, "{text}");
    let file = f.display().to_string();
    assert!(text.lines().all(|l| l.starts_with(&file)), "{text}");
}

#[test]
fn a_state_dir_inside_the_export_is_refused() {
    let (d, f) = setup();
    for bad in [
        "export/state",
        "export",
        "export/sub/../state",
        "./export/a/b",
        "export/.syncd",
    ] {
        write(&f, &format!("{BASE}state_dir = \"{bad}\"\n"));
        let e = Config::load(&f).unwrap_err().to_string();
        assert!(
            e.contains("state_dir: ")
                && e.contains("inside the export")
                && e.contains("outside the export")
                && e.contains("/var/lib/syncd/<export_id>"),
            "{bad}: {e}"
        );
    }
    // Through a symlink to the export, too.
    std::os::unix::fs::symlink(d.path().join("export"), d.path().join("alias")).unwrap();
    write(&f, &format!("{BASE}state_dir = \"alias/st\"\n"));
    assert!(Config::load(&f).is_err());
    // Anywhere outside is fine.
    for good in ["state", "/var/lib/x"] {
        write(&f, &format!("{BASE}state_dir = \"{good}\"\n"));
        Config::load(&f).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    write(&f, BASE);
    Config::load(&f).unwrap();
}

#[test]
fn state_left_in_the_export_by_an_older_release_is_found() {
    let (d, f) = setup();
    let id = format!("unit-legacy-{}", std::process::id());
    let body = format!("{BASE}export_id = \"{id}\"\n");
    write(&f, &body);
    let c = Config::load(&f).unwrap();
    assert_eq!(c.state_dir, Path::new("/var/lib/syncd").join(&id));
    // Only staging leftovers: not state.
    std::fs::create_dir_all(d.path().join("export/.syncd/staging")).unwrap();
    assert!(!Config::load(&f).unwrap().legacy_state);
    std::fs::write(d.path().join("export/.syncd/index.bin"), b"x").unwrap();
    let c = Config::load(&f).unwrap();
    assert!(c.legacy_state);
    assert_eq!(
        c.state_dir,
        d.path().join("export/.syncd").canonicalize().unwrap()
    );
    if rustix::process::geteuid().is_root() {
        // Planted by a client of the export (another owner): not adopted.
        std::os::unix::fs::chown(d.path().join("export/.syncd"), Some(4321), None).unwrap();
        assert!(!Config::load(&f).unwrap().legacy_state);
    }
    // An export_id that cannot name a directory needs state_dir.
    for bad in ["../etc", ".hidden", "a/b"] {
        write(&f, &format!("{BASE}export_id = \"{bad}\"\n"));
        let e = Config::load(&f).unwrap_err().to_string();
        assert!(e.contains("export_id") && e.contains("state_dir"), "{e}");
        write(
            &f,
            &format!("{BASE}export_id = \"{bad}\"\nstate_dir = \"st\"\n"),
        );
        Config::load(&f).unwrap();
    }
}

#[test]
fn bad_hooks_are_config_errors() {
    let (_d, f) = setup();
    write(
        &f,
        &format!("{BASE}[hooks]\npromote = [\"exportfs\", \"-a\"]\n"),
    );
    let e = Config::load(&f).unwrap_err().to_string();
    assert!(
        e.contains("syncd.toml: hooks.promote:") && e.contains("absolute path"),
        "{e}"
    );
    write(
        &f,
        &format!("{BASE}[hooks]\ndemote = [\"/bin/sh\", \"-c\", \"true\"]\ntimeout_ms = 5000\n"),
    );
    let c = Config::load(&f).unwrap();
    assert_eq!(c.hooks.timeout, std::time::Duration::from_secs(5));
    assert!(c.hooks.promote.is_none());
    write(&f, &format!("{BASE}[hooks]\ntimeout = 5\n"));
    let e = Config::load(&f).unwrap_err().to_string();
    assert!(e.contains("timeout"), "{e}");
}

#[test]
fn standby_owner_policy_loads_and_bad_values_are_named() {
    use crate::meta_policy::Owners;
    let (_d, f) = setup();
    write(&f, BASE);
    let c = Config::load(&f).unwrap();
    assert_eq!(c.standby, MetaPolicy::default());
    write(
        &f,
        &format!("{BASE}[standby]\nowners = \"65534:65533\"\nstrip_setid = true\n"),
    );
    let c = Config::load(&f).unwrap();
    assert_eq!(
        c.standby.owners,
        Owners::Fixed {
            uid: 65534,
            gid: 65533
        }
    );
    assert!(c.standby.strip_setid);
    for (bad, want) in [
        ("owners = \"nobody\"", "standby.owners: \"nobody\" is not"),
        ("owners = \"-1:0\"", "standby.owners: "),
        ("owners = \"4294967295:0\"", "out of range"),
        ("owners = 0", "line 6"),
        ("strip_setid = \"yes\"", "line 6"),
        ("strip_suid = true", "unknown field"),
    ] {
        write(&f, &format!("{BASE}[standby]\n{bad}\n"));
        let e = Config::load(&f).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn port_in_use_is_named() {
    let (_d, f) = setup();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    write(&f, &format!("{BASE}listen = \"{a}\"\n"));
    let c = Config::load(&f).unwrap();
    let e = c.check_ports().unwrap_err().to_string();
    assert!(e.contains("listen") && e.contains("in use"), "{e}");
}
