//! Health probes: track scripts (forked, with a timeout) and built-in checks
//! that need no fork (TCP connect, HTTP GET status, process alive).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::CheckKind;
use crate::script_security::ScriptRunner;

/// Run one probe; `true` = healthy. Anything that cannot run counts as a failure
/// (unlike keepalived #2126, where an unexecutable script is ignored).
pub async fn probe(kind: &CheckKind, timeout: Duration, runner: &ScriptRunner) -> bool {
    match tokio::time::timeout(timeout, probe_inner(kind, runner)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(?kind, "check timed out");
            false
        }
    }
}

async fn probe_inner(kind: &CheckKind, runner: &ScriptRunner) -> bool {
    match kind {
        CheckKind::Script(cmd) => {
            let child = runner
                .command()
                .arg("-c")
                .arg(cmd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            match child {
                Ok(mut c) => c.wait().await.map(|s| s.success()).unwrap_or(false),
                Err(e) => {
                    tracing::warn!(%cmd, error = %e, "track script cannot be executed; counting it as failed");
                    false
                }
            }
        }
        CheckKind::Tcp(addr) => TcpStream::connect(addr.as_str()).await.is_ok(),
        CheckKind::Http { host_port, path } => http_ok(host_port, path).await,
        CheckKind::Process(name) => process_running(name),
    }
}

async fn http_ok(host_port: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(host_port).await else {
        return false;
    };
    let host = host_port.rsplit_once(':').map_or(host_port, |h| h.0);
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: syncd-vrrp\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    parse_status(&buf[..n]).is_some_and(|c| (200..400).contains(&c))
}

/// Status code of an HTTP/1.x status line: `HTTP/1.`, a digit, a space
/// and three digits (`str::parse` alone would take `+20`).
pub fn parse_status(b: &[u8]) -> Option<u16> {
    let b = b.get(..12)?;
    if !b.starts_with(b"HTTP/1.") || !b[7].is_ascii_digit() || b[8] != b' ' {
        return None;
    }
    b[9..12].iter().try_fold(0u16, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0'))
    })
}

/// Is a process with this `comm` (or argv[0] basename) running?
pub fn process_running(name: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    for e in rd.flatten() {
        let f = e.file_name();
        let Some(pid) = f.to_str() else { continue };
        if !pid.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let p = e.path();
        if let Ok(comm) = std::fs::read_to_string(p.join("comm")) {
            if comm.trim_end() == name {
                return true;
            }
        }
        if let Ok(cmd) = std::fs::read(p.join("cmdline")) {
            let argv0 = cmd.split(|&b| b == 0).next().unwrap_or(&[]);
            let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
            if !base.is_empty() && base == name.as_bytes() {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500 x"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1"), None);
        // Found by fuzz/ (status_line): a sign, or bytes that are not a
        // version digit and a space, were accepted.
        assert_eq!(parse_status(b"HTTP/1.1 +20 OK"), None);
        assert_eq!(parse_status(b"HTTP/1.\xd0\xe5500 x"), None);
        assert_eq!(parse_status(b"HTTP/1.1X200 OK"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2 0 OK"), None);
    }

    #[tokio::test]
    async fn scripts_run_as_script_user_with_the_safe_path() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            syncd_testkit::skip::skip(
                "scripts_run_as_script_user_with_the_safe_path",
                "only root can switch users",
            );
            return;
        }
        let t = Duration::from_secs(5);
        let runner = ScriptRunner {
            user: Some(crate::script_security::ScriptUser::resolve("nobody").unwrap()),
            secure: true,
        };
        let cmd = format!(
            "test \"$(id -u)\" = 65534 && test \"$PATH\" = {}",
            crate::script_security::SAFE_PATH
        );
        assert!(probe(&CheckKind::Script(cmd.clone()), t, &runner).await);
        assert!(!probe(&CheckKind::Script(cmd), t, &ScriptRunner::default()).await);
    }

    #[tokio::test]
    async fn probes() {
        let t = Duration::from_secs(5);
        assert!(
            probe(
                &CheckKind::Script("true".into()),
                t,
                &ScriptRunner::default()
            )
            .await
        );
        assert!(
            !probe(
                &CheckKind::Script("false".into()),
                t,
                &ScriptRunner::default()
            )
            .await
        );
        assert!(
            !probe(
                &CheckKind::Script("/nonexistent/script.sh".into()),
                t,
                &ScriptRunner::default()
            )
            .await,
            "unexecutable = failed"
        );
        assert!(
            !probe(
                &CheckKind::Script("sleep 5".into()),
                Duration::from_millis(100),
                &ScriptRunner::default()
            )
            .await,
            "timeout = failed"
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 256];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        assert!(probe(&CheckKind::Tcp(addr.clone()), t, &ScriptRunner::default()).await);
        assert!(
            probe(
                &CheckKind::Http {
                    host_port: addr.clone(),
                    path: "/".into()
                },
                t,
                &ScriptRunner::default()
            )
            .await
        );
        assert!(
            !probe(
                &CheckKind::Tcp("127.0.0.1:1".into()),
                t,
                &ScriptRunner::default()
            )
            .await
        );
        // our own test binary is running; a made-up name is not
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(process_running(me.trim_end()));
        assert!(!process_running("no-such-process-xyz"));
    }
}
