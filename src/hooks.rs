//! Service hooks (`[hooks]`): the commands that start and stop serving the
//! export (NFS export/unexport) when this node leads or stops leading.
//!
//! Commands are argv arrays run without a shell, in a process group of
//! their own so a timeout kills everything they started in it. Their output
//! goes to the log, bounded: a chatty or looping hook must not flood it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// `[hooks]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    promote: Option<Vec<String>>,
    demote: Option<Vec<String>>,
    timeout_ms: Option<syncd_ops::duration::Written>,
}

/// Long enough for an NFS server to export with its grace period set up,
/// short enough that a hung hook does not hold a failover for minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Output kept in the log per stream and run.
const MAX_LINES: usize = 40;
const MAX_LINE: usize = 400;

/// Validated `[hooks]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOptions {
    pub promote: Option<Vec<String>>,
    pub demote: Option<Vec<String>>,
    pub timeout: Duration,
}

impl Default for HookOptions {
    fn default() -> Self {
        HookOptions {
            promote: None,
            demote: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl HookOptions {
    pub fn get(&self, kind: HookKind) -> Option<&[String]> {
        match kind {
            HookKind::Promote => self.promote.as_deref(),
            HookKind::Demote => self.demote.as_deref(),
        }
    }
}

/// Checks `[hooks]`; the message names the key and the fix.
pub fn validate(raw: &RawHooks) -> Result<HookOptions, String> {
    let timeout = match &raw.timeout_ms {
        None => DEFAULT_TIMEOUT,
        Some(w) => {
            let t = w
                .resolve("hooks.timeout_ms", syncd_ops::duration::Unit::Millis)
                .map_err(|e| e.to_string())?;
            if t.is_zero() {
                return Err(format!(
                    "hooks.timeout_ms: must be at least 1; the default is {}",
                    DEFAULT_TIMEOUT.as_millis()
                ));
            }
            if t > MAX_TIMEOUT {
                return Err(format!(
                    "hooks.timeout_ms: {} is more than {} (10 minutes); a hook that slow holds every failover",
                    t.as_millis(),
                    MAX_TIMEOUT.as_millis()
                ));
            }
            t
        }
    };
    Ok(HookOptions {
        promote: raw
            .promote
            .as_ref()
            .map(|a| command("hooks.promote", a))
            .transpose()?,
        demote: raw
            .demote
            .as_ref()
            .map(|a| command("hooks.demote", a))
            .transpose()?,
        timeout,
    })
}

fn command(key: &str, argv: &[String]) -> Result<Vec<String>, String> {
    let Some(prog) = argv.first() else {
        return Err(format!(
            "{key}: empty; give the command as an array, e.g. [\"/usr/local/sbin/nfs-export\", \"start\"]"
        ));
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(format!("{key}: an argument contains a NUL character"));
    }
    let p = Path::new(prog);
    if !p.is_absolute() {
        return Err(format!(
            "{key}: \"{prog}\" is not an absolute path; hooks run without a shell or PATH search, write the full path (e.g. /usr/sbin/exportfs)"
        ));
    }
    let m = std::fs::metadata(p)
        .map_err(|e| format!("{key}: {prog}: {e}; install the command or fix the path"))?;
    if !m.is_file() {
        return Err(format!("{key}: {prog} is not a regular file"));
    }
    if m.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{key}: {prog} is not executable; chmod +x it (or run a script through its interpreter, e.g. [\"/bin/sh\", \"{prog}\"])"
        ));
    }
    Ok(argv.to_vec())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookKind {
    Promote,
    Demote,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Promote => "promote",
            HookKind::Demote => "demote",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(String),
    TimedOut,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timeout",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HookRun {
    pub kind: HookKind,
    pub outcome: Outcome,
    pub took: Duration,
}

impl std::fmt::Display for HookRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} hook {} in {} ms",
            self.kind.as_str(),
            self.outcome.label(),
            self.took.as_millis()
        )?;
        if let Outcome::Failed(why) = &self.outcome {
            write!(f, ": {why}")?;
        }
        Ok(())
    }
}

/// What a hook is told (as `SYNCD_*` environment variables).
#[derive(Debug, Clone, Default)]
pub struct HookEnv {
    pub export: String,
    pub export_id: String,
    pub node: String,
    pub generation: String,
    pub reason: String,
}

/// Kills the hook's process group if the run is abandoned (timeout, or the
/// task running it dropped because a demotion overtook a promotion).
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `argv` with `env` and waits for it, at most `timeout`.
pub async fn run(kind: HookKind, argv: &[String], env: &HookEnv, timeout: Duration) -> HookRun {
    let start = Instant::now();
    let outcome = run_inner(kind, argv, env, timeout).await;
    let r = HookRun {
        kind,
        outcome,
        took: start.elapsed(),
    };
    match r.outcome {
        Outcome::Ok => tracing::info!(hook = kind.as_str(), "{r}"),
        _ => tracing::error!(hook = kind.as_str(), "{r}"),
    }
    r
}

async fn run_inner(kind: HookKind, argv: &[String], env: &HookEnv, timeout: Duration) -> Outcome {
    let Some(prog) = argv.first() else {
        return Outcome::Failed("no command".into());
    };
    tracing::info!(hook = kind.as_str(), reason = %env.reason, "running {argv:?}");
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .env("SYNCD_HOOK", kind.as_str())
        .env("SYNCD_EXPORT", &env.export)
        .env("SYNCD_EXPORT_ID", &env.export_id)
        .env("SYNCD_NODE", &env.node)
        .env("SYNCD_GENERATION", &env.generation)
        .env("SYNCD_REASON", &env.reason);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start {prog}: {e}")),
    };
    let mut group = Group(child.id().and_then(|p| i32::try_from(p).ok()));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(o) = child.stdout.take() {
        readers.spawn(log_output(kind, "stdout", o));
    }
    if let Some(e) = child.stderr.take() {
        readers.spawn(log_output(kind, "stderr", e));
    }
    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            Outcome::TimedOut
        }
        Ok(Err(e)) => Outcome::Failed(format!("waiting for {prog}: {e}")),
        Ok(Ok(s)) => {
            // Whatever it left running (a daemon it started) stays.
            group.0 = None;
            if s.success() {
                Outcome::Ok
            } else {
                Outcome::Failed(format!("{prog} {s}"))
            }
        }
    };
    // A background process may keep the pipes open: log what came, not wait
    // for it.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    outcome
}

async fn log_output(kind: HookKind, stream: &'static str, r: impl AsyncRead + Unpin) {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    let mut lines = 0usize;
    let mut emit = |line: &[u8]| {
        lines += 1;
        if lines <= MAX_LINES {
            tracing::info!(
                hook = kind.as_str(),
                stream,
                "{}",
                String::from_utf8_lossy(line)
            );
        } else if lines == MAX_LINES + 1 {
            tracing::warn!(hook = kind.as_str(), stream, "further output not logged");
        }
    };
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) if !b.is_empty() => b,
            _ => break,
        };
        let (chunk, nl) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let n = chunk.len() + usize::from(nl);
        r.consume(n);
        if nl {
            emit(&line);
            line.clear();
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawHooks {
        toml::from_str(toml_text).unwrap()
    }

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }

    #[test]
    fn bad_hook_configs_name_the_key_and_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let cases = [
            ("promote = []", "hooks.promote: empty"),
            (
                "demote = [\"nfs-down\"]",
                "hooks.demote: \"nfs-down\" is not an absolute path",
            ),
            (
                "promote = [\"/nonexistent/hook\"]",
                "install the command or fix the path",
            ),
            ("promote = [\"/tmp\"]", "is not a regular file"),
            (
                &format!("promote = [{:?}]", plain.display().to_string()),
                "is not executable",
            ),
            ("timeout_ms = 0", "hooks.timeout_ms: must be at least 1"),
            (
                "timeout_ms = 700000",
                "hooks.timeout_ms: 700000 is more than",
            ),
            (
                "timeout_ms = \"11m\"",
                "hooks.timeout_ms: 660000 is more than",
            ),
            ("timeout_ms = \"soon\"", "\"soon\" is not a duration"),
        ];
        for (text, want) in cases {
            let e = validate(&raw(text)).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(toml::from_str::<RawHooks>("promte = []").is_err());
        let ok = validate(&raw("promote = [\"/bin/sh\", \"-c\", \"true\"]")).unwrap();
        assert_eq!(ok.timeout, DEFAULT_TIMEOUT);
        assert_eq!(ok.get(HookKind::Promote).unwrap()[0], "/bin/sh");
        assert!(ok.get(HookKind::Demote).is_none());
    }

    #[tokio::test]
    async fn a_hook_gets_its_environment_and_its_exit_status_counts() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let ok = script(
            d.path(),
            "ok",
            &format!(
                "echo \"$SYNCD_HOOK $SYNCD_GENERATION $SYNCD_REASON $SYNCD_EXPORT\" > {}",
                out.display()
            ),
        );
        let env = HookEnv {
            export: "/srv/x".into(),
            generation: "7@n1".into(),
            reason: "because".into(),
            ..HookEnv::default()
        };
        let r = run(HookKind::Promote, &[ok], &env, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, Outcome::Ok);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "promote 7@n1 because /srv/x\n"
        );
        let bad = script(d.path(), "bad", "echo nope >&2; exit 3");
        let r = run(HookKind::Demote, &[bad], &env, Duration::from_secs(10)).await;
        assert!(
            matches!(&r.outcome, Outcome::Failed(w) if w.contains("exit status: 3")),
            "{r}"
        );
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("pid");
        // The child of the hook must die too: it is in the hook's group.
        let hang = script(
            d.path(),
            "hang",
            &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        );
        let r = run(
            HookKind::Promote,
            &[hang],
            &HookEnv::default(),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(r.outcome, Outcome::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The sleep was SIGKILLed; it is reaped by init (or is a zombie
        // briefly): either way it no longer runs.
        let gone = (0..100).any(|_| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let dead = st.is_empty() || st.split(' ').nth(2) == Some("Z");
            if !dead {
                std::thread::sleep(Duration::from_millis(20));
            }
            dead
        });
        assert!(gone, "the hook's child {pid} still runs");
    }

    #[tokio::test]
    async fn endless_output_is_bounded_and_does_not_block_the_hook() {
        let d = tempfile::tempdir().unwrap();
        let chatty = script(d.path(), "chatty", "yes | head -c 2000000; exit 0");
        let r = run(
            HookKind::Demote,
            &[chatty],
            &HookEnv::default(),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(r.outcome, Outcome::Ok);
    }
}
