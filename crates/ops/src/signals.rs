//! Signals whose default action would end a daemon that has no use for
//! them: SIGHUP (a logrotate `postrotate`, keepalived's reload, a closed
//! terminal) and SIGUSR1/SIGUSR2 (keepalived's data and stats dumps). A
//! VRRP master ended so leaves its address behind. SIGHUP, for a daemon
//! that takes its configuration at start only (`syncd`'s roles, `syncd
//! vrrp`), checks the file again and names what changed since the start,
//! for a restart to apply; SIGUSR1/SIGUSR2 log what the daemon says.

use std::path::PathBuf;

use crate::config::ConfigError;

/// On every SIGHUP from now on, reads `file` and checks it with `check`,
/// and logs whether it loads and which keys changed since `at_start`
/// (the text the running configuration was made from); nothing else
/// changes. `program` names the binary in the advice. Call it inside the
/// runtime.
pub fn recheck_on_hangup(
    program: &'static str,
    file: PathBuf,
    at_start: String,
    check: impl Fn(&str) -> Result<(), ConfigError> + Send + Sync + 'static,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => return tracing::warn!("cannot handle SIGHUP ({e}): it ends this process"),
    };
    let check = std::sync::Arc::new(check);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let (file, at_start, check) = (file.clone(), at_start.clone(), check.clone());
            // A check may resolve host names: off the async threads.
            let _ =
                tokio::task::spawn_blocking(move || recheck(program, &file, &at_start, &*check))
                    .await;
        }
    });
}

/// On every SIGUSR1 and SIGUSR2 from now on, logs what `usr1` and `usr2`
/// say (a status, counters). Call it inside the runtime.
pub fn log_on_user_signals(
    usr1: impl Fn() -> String + Send + 'static,
    usr2: impl Fn() -> String + Send + 'static,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut one, mut two) = match (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) {
        (Ok(one), Ok(two)) => (one, two),
        (Err(e), _) | (_, Err(e)) => {
            return tracing::warn!("cannot handle SIGUSR1/SIGUSR2 ({e}): they end this process")
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = one.recv() => tracing::info!("SIGUSR1: {}", usr1()),
                Some(()) = two.recv() => tracing::info!("SIGUSR2: {}", usr2()),
                else => return,
            }
        }
    });
}

fn recheck(
    program: &str,
    file: &std::path::Path,
    at_start: &str,
    check: &dyn Fn(&str) -> Result<(), ConfigError>,
) {
    let f = file.display();
    let checked = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::unreadable(file, &e))
        .and_then(|text| check(&text).map(|()| text));
    match checked {
        Err(e) => tracing::error!(
            "SIGHUP: {f} does not load; it matters at the next start (this process goes on as started):\n{e}"
        ),
        Ok(text) => match changed_keys(at_start, &text)[..] {
            [] => tracing::info!("SIGHUP: {f} checked: valid, unchanged since the start"),
            ref keys => tracing::warn!(
                "SIGHUP: {f} checked: valid; changed since the start: {}. {program} takes its configuration at start only: restart it to apply",
                keys.join(", ")
            ),
        },
    }
}

/// The keys whose values differ between `old` and `new` (`sync.durable`,
/// `peer`, `vrrp` for an array of tables), sorted; a text that is not
/// TOML counts as empty.
pub fn changed_keys(old: &str, new: &str) -> Vec<String> {
    let parse = |t: &str| t.parse::<toml::Table>().unwrap_or_default();
    let mut out = Vec::new();
    diff("", &parse(old), &parse(new), &mut out);
    out.sort();
    out
}

fn diff(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = toml::Table::new();
    for k in keys {
        let name = format!("{prefix}{k}");
        // A table added or removed names its keys.
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff(&format!("{name}."), x, y, out)
            }
            (Some(toml::Value::Table(x)), None) => diff(&format!("{name}."), x, &none, out),
            (None, Some(toml::Value::Table(y))) => diff(&format!("{name}."), &none, y, out),
            (x, y) if x != y => out.push(name),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::changed_keys;

    #[test]
    fn names_each_changed_added_or_removed_key_and_nothing_else() {
        let old = "peer = \"10.0.0.2:7400\"\nexport = \"/srv\"\n[sync]\ndurable = true\nbatch_max = 10\n[[vrrp]]\nvrid = 1\n";
        // Comments, order and spacing are no change.
        let same = "# edited\nexport = \"/srv\"\npeer   = \"10.0.0.2:7400\"\n\n[sync]\nbatch_max = 10\ndurable = true\n[[vrrp]]\nvrid = 1\n";
        assert!(changed_keys(old, same).is_empty());
        let new = "peer = \"10.0.0.3:7400\"\nexport = \"/srv\"\nadmin = \"127.0.0.1:7401\"\n[sync]\ndurable = true\n[[vrrp]]\nvrid = 2\n";
        assert_eq!(
            changed_keys(old, new),
            ["admin", "peer", "sync.batch_max", "vrrp"]
        );
    }

    #[test]
    fn a_table_added_or_removed_names_its_keys() {
        let old = "peer = 1\n";
        let new = "peer = 1\n[sync]\ndurable = false\n[pair]\n";
        assert_eq!(changed_keys(old, new), ["sync.durable"]);
        assert_eq!(changed_keys(new, old), ["sync.durable"]);
    }

    #[test]
    fn a_text_that_is_not_toml_counts_as_empty() {
        assert_eq!(changed_keys("peer = 1\n", "peer = [\n"), ["peer"]);
    }
}
