//! The command line's shape (clap).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "syncd",
    version,
    about = "Replication for a primary/standby pair: QUIC + mutual TLS, rsync deltas, atomic apply"
)]
pub(crate) struct Cli {
    /// Run as a daemon in this role.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Configuration file (TOML); see contrib/syncd.example.toml.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Validate the configuration (and that ports can be bound) and exit.
    #[arg(long, global = true)]
    pub check: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "human", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    Primary,
    Standby,
    /// The pair as one system: VRRP moves the service address and the
    /// replication direction together; data decides who may lead.
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum ConflictsCmd {
    /// List kept entries as `<generation>/<path>`, with kind, size and mtime.
    List,
    /// Copy a kept entry back to its path in the export (or to --to); never
    /// over an existing file. Run it on the primary, or copy the file there:
    /// on a standby the next reconcile removes what the primary lacks.
    Restore {
        /// As `syncd conflicts list` prints it.
        name: String,
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum PairCmd {
    /// Report every setting that would split or stall the pair: export id,
    /// addresses, certificate pins, VRRP (vrid, version, interval, auth,
    /// addresses, unicast peers, priorities), [pair] and [sync] options; and,
    /// unless --offline, what the running peer says in an authenticated
    /// handshake (protocol version, export id, generation). Exit 1 on errors.
    Check {
        /// The peer's config file (a copy of it); without it only the
        /// handshake is checked.
        #[arg(long)]
        peer_config: Option<PathBuf>,
        /// Do not contact the peer.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Create this node's certificate and key for mutual TLS; prints the fingerprint.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Name in the certificate (defaults to the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// One-shot: make the standby equal to this primary, print a summary, exit.
    Resync {
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Compare file contents by BLAKE3 instead of size and mtime.
        #[arg(long)]
        checksum: bool,
        /// Delete what the primary no longer has (default).
        #[arg(long, overrides_with = "no_delete")]
        delete: bool,
        /// Keep files on the standby that the primary does not have.
        #[arg(long)]
        no_delete: bool,
        /// Lead even if the standby holds newer data (it refuses otherwise):
        /// start a generation above its own; the standby keeps the files
        /// this overwrites or deletes in its conflicts area.
        #[arg(long)]
        take_over: bool,
    },
    /// Compare both trees by content and metadata; change nothing. Exit 0 iff equal.
    Verify {
        /// Metadata only (type, size, mtime, mode, owners), by directory
        /// digests: seconds on a large tree, but content is not read.
        #[arg(long)]
        quick: bool,
    },
    /// Bootstrap a pair: make this node's data the current generation, so
    /// `--role auto` may lead with it (a node that never synced may not).
    /// Run it on one node while syncd is stopped there.
    Promote {
        /// Required: this declares this node's export the newest data.
        #[arg(long)]
        force: bool,
    },
    /// Files a catch-up kept instead of overwriting or deleting them.
    Conflicts {
        #[command(subcommand)]
        what: ConflictsCmd,
    },
    /// Write syncd, syncd vrrp and syncd-proxy configs from what a
    /// keepalived + nginx + inotifywait|rsync (or lsyncd) setup runs, with a
    /// report of what was carried over, what was not, and the traps found.
    Migrate(MigrateArgs),
    /// Checks of the two nodes together.
    Pair {
        #[command(subcommand)]
        what: PairCmd,
    },
    /// Print the running daemon's status (role, peer, lag, counters) from its admin address.
    Status {
        /// Print the Prometheus metrics instead.
        #[arg(long)]
        metrics: bool,
    },
    /// Planned hand-over (`--role auto`): on the leader, fence writes (demote
    /// hook), drain to the peer, hand the address over; prints how long
    /// writes were unavailable. Exits 1 if it could not hand over (the
    /// leader then serves again and keeps leading).
    Switchover,
    /// Self-contained demo on loopback: generated tree, certificates, a standby, a resync.
    Demo {
        /// Where to put the demo (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of small files to generate.
        #[arg(long, default_value_t = 2000)]
        files: usize,
        /// Stop the live part after this many seconds (default: at Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Time between the live part's writes, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// The pair instead (root): two nodes in network namespaces running
        /// `--role auto`, a client writing through the service address, the
        /// leader's host dying, the address and replication moving, the old
        /// leader returning; counts every acknowledged write at the end.
        #[arg(long)]
        failover: bool,
    },
    /// VRRP failover (keepalived replacement); see crates/vrrp/README.md.
    #[command(disable_help_flag = true)]
    Vrrp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// The options every command reads.
pub(crate) struct Global {
    pub config: Option<PathBuf>,
    pub check: bool,
}

/// `syncd migrate`'s inputs, as given on the command line.
#[derive(clap::Args)]
pub(crate) struct MigrateArgs {
    /// A node's keepalived.conf; give both nodes' (node1 first).
    #[arg(long)]
    pub keepalived: Vec<PathBuf>,
    /// The `inotifywait ... | while read; do rsync ...; done` script.
    #[arg(long, conflicts_with = "lsyncd")]
    pub sync_script: Option<PathBuf>,
    /// An lsyncd configuration (`sync { default.rsync, ... }`).
    #[arg(long)]
    pub lsyncd: Option<PathBuf>,
    /// nginx.conf (or the part with `upstream` and `proxy_pass`).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Where the vrrp_script check scripts are (looked up by file name;
    /// default: the paths keepalived.conf gives).
    #[arg(long)]
    pub scripts: Option<PathBuf>,
    /// The NFS standby's address, when the rsync target is not it.
    #[arg(long)]
    pub standby: Option<std::net::IpAddr>,
    /// Output directory (created; existing files are never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}
