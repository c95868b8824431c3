//! The durable role log (`role.log` in the state directory).

use crate::config::Config;

/// The durable role log: one line per change, appended and flushed by a
/// thread of its own, so no `fsync` of it sits on a promotion's way to the
/// address (measured under disk load: 1.2 s between a promote hook's end
/// and the address). Lines are written in order; dropping it waits for them.
pub(super) struct RoleLog {
    path: std::path::PathBuf,
    tx: Option<std::sync::mpsc::SyncSender<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RoleLog {
    pub(super) fn start(cfg: &Config) -> RoleLog {
        let path = cfg.state_dir.join("role.log");
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(256);
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("syncd-role-log".into())
            .spawn(move || rx.into_iter().for_each(|l| append_line(&p, &l)))
            .ok();
        let tx = thread.as_ref().map(|_| tx);
        RoleLog { path, tx, thread }
    }

    pub(super) fn write(&self, line: String) {
        // Full (a disk stuck for 256 lines) or no thread: write it here.
        let back = match &self.tx {
            Some(tx) => tx.try_send(line).err().map(|e| match e {
                std::sync::mpsc::TrySendError::Full(l)
                | std::sync::mpsc::TrySendError::Disconnected(l) => l,
            }),
            None => Some(line),
        };
        if let Some(l) = back {
            append_line(&self.path, &l);
        }
    }
}

impl Drop for RoleLog {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn append_line(path: &std::path::Path, line: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link planted in the state directory.
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        });
    if let Err(e) = r {
        tracing::warn!("role log {}: {e}", path.display());
    }
}
