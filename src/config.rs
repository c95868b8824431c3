//! The TOML configuration, validated once at start.
//!
//! Every error names the key and says what to do, because the person reading
//! it is usually an operator at 3 a.m.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use syncd_proto::batch::BatchConfig;

use crate::meta_policy::MetaPolicy;
use crate::tls::Fingerprint;

mod raw;
pub use syncd_ops::config::ConfigError;
use syncd_ops::config::Problems;
use syncd_ops::duration::{Unit, Written};

use raw::{
    default_heartbeat_ms, default_heartbeat_timeout_ms, default_max_delay_ms, default_max_paths,
    default_window_ms, Raw, RawPair, RawSync,
};

/// `--role auto` timing (`[pair]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairOptions {
    /// How often a node tells its peer its state.
    pub heartbeat: std::time::Duration,
    /// A peer silent this long is gone (below VRRP's Master_Down_Interval).
    pub heartbeat_timeout: std::time::Duration,
    /// At start, how long to wait to hear the peer before leading alone.
    pub peer_wait: std::time::Duration,
    /// How long a node that knows the peer had newer data waits before
    /// leading without it.
    pub unsure_wait: std::time::Duration,
}

/// How the peer's certificate is pinned.
#[derive(Debug, Clone)]
pub enum PeerPin {
    Cert(PathBuf),
    Fingerprint(Fingerprint),
}

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub delete: bool,
    pub delta_min_size: u64,
    pub checksum: bool,
    /// syncfs before acknowledging; off only for throwaway benchmarks.
    pub durable: bool,
    /// Live replication: how changes are coalesced.
    pub batch: BatchConfig,
    /// A full reconcile this often while live (0 = never), as a safety net.
    pub full_reconcile: Option<std::time::Duration>,
    /// The primary gives a session up after waiting this long for any
    /// reply (0 = never).
    pub reply_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub node_id: String,
    pub export: PathBuf,
    pub export_id: String,
    /// Where the index, generation record, signature cache and conflicts
    /// live (see [`state_location`]).
    pub state_dir: PathBuf,
    /// `state_dir` is the pre-0.x default `<export>/.syncd`, still holding
    /// state; the daemon moves it at start (`state::adopt_legacy`).
    pub legacy_state: bool,
    pub listen: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub peer_pin: PeerPin,
    pub admin: Option<SocketAddr>,
    pub sync: SyncOptions,
    /// `[standby]`: owners and set-ID bits of what the primary sends.
    pub standby: MetaPolicy,
    /// `[[vrrp]]` as written (validated at load).
    pub vrrp: Vec<syncd_vrrp::config::VrrpConfig>,
    pub pair: PairOptions,
    pub hooks: crate::hooks::HookOptions,
}

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Config::load_with_text(file).map(|(c, _)| c)
    }

    /// [`Config::load`], with the text it was made from (what a daemon
    /// compares the file with when asked to look at it again).
    pub fn load_with_text(file: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::unreadable(file, &e))?;
        Ok((Config::parse(&text, file)?, text))
    }

    /// Parses and validates configuration `text` as if read from `file`:
    /// `file` names the configuration in errors and relative paths are
    /// resolved against its directory. The export, cert, key and peer_cert
    /// must exist (they are checked, not read); host names are resolved.
    /// Every problem is reported at once.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text)
            .map_err(|e| ConfigError::syntax(text, e.message(), e.span().map(|s| s.start)))
            .map_err(|e| e.in_file(file))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let line = |m: String| ConfigError::from_line(&m);
        let mut p = Problems::new();

        let export = p.take(export_dir(&abs(&raw.export)));
        for (key, f) in [("cert", &raw.cert), ("key", &raw.key)] {
            p.take(readable(key, &abs(f)));
        }
        let peer_pin = p.take(peer_pin(&raw, &abs));
        let listen = p.take(address("listen", raw.listen.as_deref())).flatten();
        let peer = p.take(address("peer", raw.peer.as_deref())).flatten();
        let admin = p.take(address("admin", raw.admin.as_deref())).flatten();
        let export_id = raw.export_id.unwrap_or_else(|| "default".into());
        if export_id.is_empty() || export_id.len() > 128 {
            p.push("export_id", "must be 1 to 128 characters");
        }
        let node_id = raw.node_id.unwrap_or_else(hostname);
        let state = export.as_ref().and_then(|export| {
            p.take(
                state_location(export, &export_id, raw.state_dir.as_deref().map(abs)).map_err(line),
            )
        });
        let sync = p.take(sync_options(&raw.sync));
        let standby = p.take(
            MetaPolicy::from_config(raw.standby.owners.as_deref(), raw.standby.strip_setid)
                .map_err(line),
        );
        p.take(vrrp_tables(&raw.vrrp));
        let pair = p.take(pair_options(&raw.pair));
        let hooks = p.take(crate::hooks::validate(&raw.hooks).map_err(line));
        p.finish().map_err(|e| e.in_file(file))?;
        let (
            Some(export),
            Some(peer_pin),
            Some((state_dir, legacy_state)),
            Some(sync),
            Some(standby),
            Some(pair),
            Some(hooks),
        ) = (export, peer_pin, state, sync, standby, pair, hooks)
        else {
            // Each None above left a problem, so finish() returned.
            return Err(ConfigError::new("", "invalid configuration").in_file(file));
        };
        Ok(Config {
            file: file.to_path_buf(),
            node_id,
            export,
            export_id,
            state_dir,
            legacy_state,
            listen,
            peer,
            cert: abs(&raw.cert),
            key: abs(&raw.key),
            peer_pin,
            admin,
            sync,
            standby,
            vrrp: raw.vrrp,
            pair,
            hooks,
        })
    }

    /// The validated `[[vrrp]]` instances (`--role auto`), if any.
    pub fn vrrp_config(&self) -> Result<Option<syncd_vrrp::config::Config>, ConfigError> {
        vrrp_tables(&self.vrrp).map_err(|e| e.in_file(&self.file))
    }

    fn err(&self, msg: String) -> ConfigError {
        ConfigError::from_line(&msg).in_file(&self.file)
    }

    pub fn require_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.ok_or_else(|| {
            self.err("listen: missing; the standby needs listen = \"0.0.0.0:7400\" (address to accept the primary on)".into())
        })
    }

    pub fn require_peer(&self) -> Result<SocketAddr, ConfigError> {
        self.peer.ok_or_else(|| {
            self.err("peer: missing; the primary needs peer = \"STANDBY-HOST:7400\" (the standby's listen address)".into())
        })
    }

    /// Checks that the listen and admin ports can be bound (for `--check`).
    pub fn check_ports(&self) -> Result<(), ConfigError> {
        if let Some(a) = self.listen {
            std::net::UdpSocket::bind(a).map_err(|e| self.port_error("listen", a, e))?;
        }
        if let Some(a) = self.admin {
            std::net::TcpListener::bind(a).map_err(|e| self.port_error("admin", a, e))?;
        }
        Ok(())
    }

    pub fn port_error(&self, key: &str, a: SocketAddr, e: std::io::Error) -> ConfigError {
        let what = if e.kind() == std::io::ErrorKind::AddrInUse {
            "is already in use; stop the other process or choose another port".to_string()
        } else {
            format!("cannot be bound: {e}")
        };
        self.err(format!("{key}: {a} {what}"))
    }
}

/// A key or certificate file exists and can be opened (it is read later).
fn readable(key: &str, f: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(f).map(drop).map_err(|e| {
        ConfigError::new(
            key,
            format!(
                "cannot read {}: {e}; run `syncd keygen --out DIR` and point {key} at the file",
                f.display()
            ),
        )
    })
}

/// An optional address, resolved.
fn address(key: &str, v: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    v.map(|s| resolve(s).map_err(|e| ConfigError::new(key, e)))
        .transpose()
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    let mut it = s.to_socket_addrs().map_err(|e| {
        format!("\"{s}\" is not a HOST:PORT address ({e}); write e.g. \"192.0.2.10:7400\"")
    })?;
    it.next()
        .ok_or_else(|| format!("\"{s}\" resolves to no address"))
}

/// `p` made absolute with `..`, `.` and symlinks resolved as far as it
/// exists (a state directory may not exist yet).
/// Where state lives by default: never in the export, where every NFS
/// client could read the index (each path and hash) and delete it.
pub const DEFAULT_STATE_BASE: &str = "/var/lib/syncd";

/// The state directory and whether it is the legacy `<export>/.syncd`.
///
/// A configured `state_dir` is used as is, unless it is inside the export.
/// Otherwise `/var/lib/syncd/<export_id>`, except when that holds nothing
/// yet and the old default `<export>/.syncd` holds state: an upgraded node
/// keeps its index and generation record (moved at daemon start).
fn state_location(
    export: &Path,
    export_id: &str,
    configured: Option<PathBuf>,
) -> Result<(PathBuf, bool), String> {
    if let Some(dir) = configured {
        let resolved = resolve_path(&dir);
        if resolved.starts_with(export) {
            return Err(format!(
                "state_dir: {} is inside the export {}, where NFS clients could read and delete it \
                 (and it would be replicated like data); point it outside the export, or remove \
                 state_dir to use the default {DEFAULT_STATE_BASE}/<export_id>",
                dir.display(),
                export.display(),
            ));
        }
        return Ok((dir, false));
    }
    if export_id.starts_with('.') || export_id.contains('/') || export_id.contains('\0') {
        return Err(format!(
            "export_id: {export_id:?} cannot name the default state directory \
             {DEFAULT_STATE_BASE}/<export_id>; use letters, digits, '-' and '_', or set state_dir"
        ));
    }
    let dir = Path::new(DEFAULT_STATE_BASE).join(export_id);
    let legacy = export.join(std::ffi::OsStr::from_bytes(
        syncd_proto::path::STATE_DIR_NAME,
    ));
    if !crate::relocate::holds_state(&dir) && crate::relocate::holds_legacy_state(&legacy) {
        return Ok((legacy, true));
    }
    Ok((dir, false))
}

fn resolve_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut lexical = PathBuf::new();
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    for c in p.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            c => lexical.push(c),
        }
    }
    let mut rest = Vec::new();
    let mut head = lexical.clone();
    loop {
        if let Ok(real) = head.canonicalize() {
            return rest.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                head = parent.to_path_buf();
            }
            _ => return lexical,
        }
    }
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// `[[vrrp]]` validated by the VRRP crate's own rules; its messages already
/// name `vrrp[i].key` and the fix, and every problem is reported at once.
fn vrrp_tables(
    tables: &[syncd_vrrp::config::VrrpConfig],
) -> Result<Option<syncd_vrrp::config::Config>, ConfigError> {
    syncd_vrrp::config::validate_tables(tables)
}

/// `export`: an existing directory, canonicalized.
fn export_dir(export: &Path) -> Result<PathBuf, ConfigError> {
    let bad = |m: String| ConfigError::new("export", m);
    match std::fs::metadata(export) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(bad(format!(
                "{} is not a directory; point it at the directory to replicate",
                export.display()
            )))
        }
        Err(e) => {
            return Err(bad(format!(
                "{}: {e}; create the directory or fix the path",
                export.display()
            )))
        }
    }
    export.canonicalize().map_err(|e| bad(e.to_string()))
}

/// How the peer's certificate is pinned: exactly one of `peer_cert` and
/// `peer_fingerprint`.
fn peer_pin(raw: &Raw, abs: &dyn Fn(&Path) -> PathBuf) -> Result<PeerPin, ConfigError> {
    match (&raw.peer_cert, &raw.peer_fingerprint) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "peer_cert",
            "peer_cert and peer_fingerprint are both set; keep exactly one",
        )),
        (None, None) => Err(ConfigError::new(
            "peer_cert",
            "missing; set peer_cert to the peer's certificate file, or peer_fingerprint to the \"sha256:...\" that `syncd keygen` printed on the peer",
        )),
        (Some(c), None) => {
            let c = abs(c);
            match std::fs::File::open(&c) {
                Ok(_) => Ok(PeerPin::Cert(c)),
                Err(e) => Err(ConfigError::new(
                    "peer_cert",
                    format!("cannot read {}: {e}; copy the peer's node.crt here", c.display()),
                )),
            }
        }
        (None, Some(f)) => f
            .parse()
            .map(PeerPin::Fingerprint)
            .map_err(|e| ConfigError::new("peer_fingerprint", e.to_string())),
    }
}

/// `[sync]`: each bound checked, every problem kept.
fn sync_options(rs: &RawSync) -> Result<SyncOptions, ConfigError> {
    let mut p = Problems::new();
    let mut ms = |key: &str, w: &Written| p.take(w.resolve(&format!("sync.{key}"), Unit::Millis));
    let window = ms("batch_window_ms", &rs.batch_window_ms);
    let max_delay = ms("batch_max_delay_ms", &rs.batch_max_delay_ms);
    let settle = ms("settle_ms", &rs.settle_ms);
    let mut secs = |key: &str, w: &Written| p.take(w.resolve(&format!("sync.{key}"), Unit::Secs));
    let full_reconcile = secs("full_reconcile_secs", &rs.full_reconcile_secs);
    let reply_timeout = secs("reply_timeout_secs", &rs.reply_timeout_secs);
    if rs.delta_min_size == 0 {
        p.push(
            "sync.delta_min_size",
            "must be at least 1 (bytes); the default is 65536",
        );
    }
    if let (Some(window), Some(max_delay)) = (window, max_delay) {
        if max_delay.is_zero() || window > max_delay {
            p.push(
                "sync.batch_max_delay_ms",
                format!(
                    "must be at least 1 ms and at least sync.batch_window_ms ({window:?}); the defaults are {} and {}",
                    default_max_delay_ms(),
                    default_window_ms()
                ),
            );
        }
    }
    if rs.batch_max_paths == 0 {
        p.push(
            "sync.batch_max_paths",
            format!("must be at least 1; the default is {}", default_max_paths()),
        );
    }
    p.finish()?;
    let (Some(window), Some(max_delay), Some(settle), Some(full), Some(reply)) =
        (window, max_delay, settle, full_reconcile, reply_timeout)
    else {
        return Err(ConfigError::new("sync", "invalid"));
    };
    // Zero turns the periodic compare and the reply deadline off.
    let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    Ok(SyncOptions {
        delete: rs.delete,
        delta_min_size: rs.delta_min_size,
        checksum: rs.checksum,
        durable: rs.durable,
        batch: BatchConfig {
            window,
            max_delay,
            max_paths: rs.batch_max_paths,
            settle,
        },
        full_reconcile: nonzero(full),
        reply_timeout: nonzero(reply),
    })
}

/// `[pair]`: heartbeats and waits.
fn pair_options(rp: &RawPair) -> Result<PairOptions, ConfigError> {
    let mut p = Problems::new();
    let heartbeat = p.take(rp.heartbeat_ms.resolve("pair.heartbeat_ms", Unit::Millis));
    let timeout = p.take(
        rp.heartbeat_timeout_ms
            .resolve("pair.heartbeat_timeout_ms", Unit::Millis),
    );
    let peer_wait = p.take(rp.peer_wait_secs.resolve("pair.peer_wait_secs", Unit::Secs));
    let unsure_wait = p.take(
        rp.unsure_wait_secs
            .resolve("pair.unsure_wait_secs", Unit::Secs),
    );
    if let (Some(heartbeat), Some(timeout)) = (heartbeat, timeout) {
        if heartbeat.is_zero() || timeout < 2 * heartbeat {
            p.push(
                "pair.heartbeat_timeout_ms",
                format!(
                    "must be at least twice pair.heartbeat_ms ({heartbeat:?}) so one lost heartbeat is not a dead peer; the defaults are {} and {}",
                    default_heartbeat_timeout_ms(),
                    default_heartbeat_ms()
                ),
            );
        }
    }
    p.finish()?;
    match (heartbeat, timeout, peer_wait, unsure_wait) {
        (Some(heartbeat), Some(heartbeat_timeout), Some(peer_wait), Some(unsure_wait)) => {
            Ok(PairOptions {
                heartbeat,
                heartbeat_timeout,
                peer_wait,
                unsure_wait,
            })
        }
        _ => Err(ConfigError::new("pair", "invalid")),
    }
}

#[cfg(test)]
mod tests;
