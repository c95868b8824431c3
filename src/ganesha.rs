//! The nfs-ganesha setup that `syncd demo --failover`, the NFS tests and the
//! failover bench serve an export with: one configuration text,
//! `contrib/ganesha/lab.conf` (the bench reads the same file), and the
//! command that starts ganesha beside an rpcbind of its own. No I/O here:
//! the callers write the file and run the command.

use std::path::Path;

/// The configuration's template; `@GRACE@`, `@RECOVERY@` and `@EXPORT@`
/// are filled in by [`config`].
pub const TEMPLATE: &str = include_str!("../contrib/ganesha/lab.conf");

/// The port the server listens on (each node in its own namespace).
pub const PORT: u16 = 2049;
/// The NFSv4 pseudo path of the export.
pub const PSEUDO: &str = "/export";
/// What ganesha logs once it serves.
pub const READY: &str = "NFS SERVER INITIALIZED";

/// NFSv4's grace period after a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// None: a lab's servers serve at once (the tests, the demo).
    Off,
    /// The production recipe: `seconds` of grace, leases 5 s shorter.
    On { seconds: u32 },
}

/// The configuration serving `export`, with NFSv4 recovery state in
/// `recovery` (outside the export: it is the node's own).
pub fn config(export: &Path, recovery: &Path, grace: Grace) -> String {
    let grace = match grace {
        Grace::Off => "Graceless = true;".to_string(),
        Grace::On { seconds } => format!(
            "Graceless = false; Grace_Period = {seconds}; Lease_Lifetime = {};",
            seconds.saturating_sub(5).max(1)
        ),
    };
    TEMPLATE
        .replace("@GRACE@", &grace)
        .replace("@RECOVERY@", &recovery.display().to_string())
        .replace("@EXPORT@", &export.display().to_string())
}

/// The shell command (for `unshare --mount sh -c`) that starts rpcbind in a
/// private `/run` and then ganesha in the foreground, with its config,
/// log and pid file.
pub fn launch_script(conf: &Path, log: &Path, pid: &Path) -> String {
    format!(
        "mount -t tmpfs tmpfs /run || exit 1; rpcbind -f -w & sleep 0.3; \
         exec ganesha.nfsd -F -f {} -L {} -p {}",
        conf.display(),
        log.display(),
        pid.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let c = config(Path::new("/e x"), Path::new("/r"), Grace::Off);
        assert!(!c.contains('@'), "{c}");
        assert!(c.contains("Path = \"/e x\"; Pseudo = \"/export\""), "{c}");
        assert!(c.contains("Graceless = true; RecoveryBackend = fs; RecoveryRoot = \"/r\""));
        let c = config(Path::new("/e"), Path::new("/r"), Grace::On { seconds: 15 });
        assert!(c.contains("Graceless = false; Grace_Period = 15; Lease_Lifetime = 10;"));
        assert!(c.contains(&format!("NFS_Port = {PORT};")));
    }
}
