//! Notify hooks, run in order per instance on a background task so the state
//! machine never waits for them.

use std::process::Stdio;
use std::time::Duration;

use tokio::sync::mpsc;

/// Commands run on transitions of one instance.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
    pub stop: Option<String>,
    /// Generic: `CMD INSTANCE <name> <STATE> <priority>` (keepalived's `notify`).
    pub generic: Option<String>,
    /// As whom and with which PATH the hooks run.
    pub runner: crate::script_security::ScriptRunner,
}

struct Job {
    runner: crate::script_security::ScriptRunner,
    cmd: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// Queue of hook invocations for one instance.
#[derive(Clone)]
pub struct Notifier {
    name: String,
    hooks: Hooks,
    tx: mpsc::UnboundedSender<Job>,
}

const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

impl Notifier {
    /// Spawn the runner task (inside a tokio runtime). It ends when every
    /// `Notifier` clone is dropped and the queue is drained.
    pub fn spawn(name: String, hooks: Hooks) -> (Notifier, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let task = tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                run(job).await;
            }
        });
        (Notifier { name, hooks, tx }, task)
    }

    /// Queue the hooks for entering `state` ("MASTER", "BACKUP", "FAULT", "STOP").
    pub fn notify(&self, state: &str, priority: u8) {
        let specific = match state {
            "MASTER" => &self.hooks.master,
            "BACKUP" => &self.hooks.backup,
            "FAULT" => &self.hooks.fault,
            "STOP" => &self.hooks.stop,
            _ => &None,
        };
        let env = vec![
            ("SYNCD_VRRP_INSTANCE", self.name.clone()),
            ("SYNCD_VRRP_STATE", state.to_string()),
            ("SYNCD_VRRP_PRIORITY", priority.to_string()),
        ];
        if let Some(cmd) = specific {
            let _ = self.tx.send(Job {
                runner: self.hooks.runner.clone(),
                cmd: cmd.clone(),
                args: vec![],
                env: env.clone(),
            });
        }
        if let Some(cmd) = &self.hooks.generic {
            let args = vec![
                "INSTANCE".into(),
                self.name.clone(),
                state.into(),
                priority.to_string(),
            ];
            let _ = self.tx.send(Job {
                runner: self.hooks.runner.clone(),
                cmd: cmd.clone(),
                args,
                env,
            });
        }
    }
}

async fn run(job: Job) {
    // `sh -c 'CMD "$@"' sh ARGS...` passes the arguments after the user's command.
    let script = if job.args.is_empty() {
        job.cmd.clone()
    } else {
        format!("{} \"$@\"", job.cmd)
    };
    let mut c = job.runner.command();
    c.arg("-c").arg(&script).arg("sh").args(&job.args);
    c.envs(job.env.iter().map(|(k, v)| (*k, v.as_str())));
    c.stdin(Stdio::null()).kill_on_drop(true);
    match c.spawn() {
        Ok(mut child) => match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
            Ok(Ok(s)) if s.success() => tracing::debug!(cmd = %job.cmd, "notify hook ran"),
            Ok(Ok(s)) => tracing::warn!(cmd = %job.cmd, status = %s, "notify hook failed"),
            Ok(Err(e)) => tracing::warn!(cmd = %job.cmd, error = %e, "notify hook wait failed"),
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!(cmd = %job.cmd, "notify hook killed after {}s", HOOK_TIMEOUT.as_secs());
            }
        },
        Err(e) => tracing::warn!(cmd = %job.cmd, error = %e, "notify hook cannot be executed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_run_in_order_with_arguments() {
        let dir = std::env::temp_dir().join(format!("vrrp-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join("log");
        let hooks = Hooks {
            master: Some(format!(
                "echo master-$SYNCD_VRRP_PRIORITY >> {}",
                log.display()
            )),
            generic: Some(format!("echo >> {} generic", log.display())),
            ..Hooks::default()
        };
        let (n, task) = Notifier::spawn("VI_1".into(), hooks);
        n.notify("MASTER", 150);
        n.notify("BACKUP", 150);
        drop(n);
        task.await.unwrap();
        let got = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            "master-150\ngeneric INSTANCE VI_1 MASTER 150\ngeneric INSTANCE VI_1 BACKUP 150\n"
        );
    }
}
