//! The `syncd` command line: the only place that uses `anyhow`.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use syncd_sdnotify::State;

mod progress;

use syncd::client::{self, ResyncOptions};
use syncd::config::Config;
use syncd::standby::Standby;

#[derive(Parser)]
#[command(
    name = "syncd",
    version,
    about = "Replication for a primary/standby pair: QUIC + mutual TLS, rsync deltas, atomic apply"
)]
struct Cli {
    /// Run as a daemon in this role.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// Configuration file (TOML); see contrib/syncd.example.toml.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration (and that ports can be bound) and exit.
    #[arg(long, global = true)]
    check: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "human", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Role {
    Primary,
    Standby,
    /// The pair as one system: VRRP moves the service address and the
    /// replication direction together; data decides who may lead.
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum ConflictsCmd {
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
enum PairCmd {
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
enum Cmd {
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
    Migrate {
        /// A node's keepalived.conf; give both nodes' (node1 first).
        #[arg(long)]
        keepalived: Vec<PathBuf>,
        /// The `inotifywait ... | while read; do rsync ...; done` script.
        #[arg(long, conflicts_with = "lsyncd")]
        sync_script: Option<PathBuf>,
        /// An lsyncd configuration (`sync { default.rsync, ... }`).
        #[arg(long)]
        lsyncd: Option<PathBuf>,
        /// nginx.conf (or the part with `upstream` and `proxy_pass`).
        #[arg(long)]
        nginx: Option<PathBuf>,
        /// Where the vrrp_script check scripts are (looked up by file name;
        /// default: the paths keepalived.conf gives).
        #[arg(long)]
        scripts: Option<PathBuf>,
        /// The NFS standby's address, when the rsync target is not it.
        #[arg(long)]
        standby: Option<std::net::IpAddr>,
        /// Output directory (created; existing files are never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
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

fn init_logs(f: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNCD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colour codes only on a terminal, not in journald or log files
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match f {
        LogFormat::Human => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Vrrp { args }) = cli.cmd {
        let mut a = args;
        if let Some(c) = &cli.config {
            a.insert(0, c.clone().into_os_string());
            a.insert(0, "--config".into());
        }
        if cli.check {
            a.insert(0, "--check".into());
        }
        return ExitCode::from(syncd_vrrp::cli_main(a).clamp(0, 255) as u8);
    }
    init_logs(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("syncd: error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, skipping a cause whose text the message
/// already carries (many errors quote their source).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn load(cli_config: &Option<PathBuf>) -> Result<Config> {
    let Some(p) = cli_config else {
        bail!("--config FILE is required (see contrib/syncd.example.toml)")
    };
    Ok(Config::load(p)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Some(Cmd::Keygen { out, name }) => {
            let name = name.unwrap_or_else(|| {
                rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned()
            });
            let fp = syncd::tls::keygen(&out, &name)?;
            println!("wrote {0}/node.crt and {0}/node.key", out.display());
            println!("fingerprint {fp}");
            println!("give the peer node.crt (peer_cert) or this fingerprint (peer_fingerprint)");
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Resync {
            dry_run,
            checksum,
            delete: _,
            no_delete,
            take_over,
        }) => {
            let cfg = load(&cli.config)?;
            cfg.require_peer()?;
            if cli.check {
                println!("config OK: {}", cfg.file.display());
                return Ok(ExitCode::SUCCESS);
            }
            let o = ResyncOptions {
                settle: None,
                background: false,
                defer_links: None,
                dry_run,
                checksum: checksum || cfg.sync.checksum,
                delete: if no_delete { false } else { cfg.sync.delete },
                progress: std::io::stderr().is_terminal(),
                take_over,
            };
            // Formats checked, but the state not moved: a daemon may be
            // running from the old place; its next start moves it.
            syncd::state::check_formats(&cfg.state_dir)?;
            let bar = progress::bar(o.progress);
            let sum = runtime()?.block_on(client::resync_with(&cfg, &o, bar))?;
            println!("{sum}");
            Ok(if sum.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Some(Cmd::Verify { quick }) => {
            let cfg = load(&cli.config)?;
            cfg.require_peer()?;
            if cli.check {
                println!("config OK: {}", cfg.file.display());
                return Ok(ExitCode::SUCCESS);
            }
            let diffs = if quick {
                runtime()?.block_on(client::verify_quick(&cfg))?
            } else {
                runtime()?.block_on(client::verify(&cfg))?
            };
            if diffs.is_empty() {
                println!(
                    "equal: primary {} and standby {} match",
                    cfg.export.display(),
                    cfg.peer.map(|p| p.to_string()).unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                for d in &diffs {
                    println!("{}: {}", d.path, d.what);
                }
                println!("{} difference(s)", diffs.len());
                Ok(ExitCode::from(1))
            }
        }
        Some(Cmd::Promote { force }) => {
            let cfg = load(&cli.config)?;
            if !force {
                bail!("syncd promote declares this node's export the newest data of the pair; pass --force to do it");
            }
            let gen = syncd::generation::promote_here(&cfg)?;
            println!("this node leads generation {gen}; start `syncd --role auto` on both nodes");
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Conflicts { what }) => {
            let cfg = load(&cli.config)?;
            match what {
                ConflictsCmd::List => {
                    let kept = syncd::conflicts::list(&cfg.state_dir)?;
                    for k in &kept {
                        println!("{}\t{}\t{}\t{}", k.name.display(), k.kind, k.size, k.mtime);
                    }
                    println!(
                        "{} kept entr{}",
                        kept.len(),
                        if kept.len() == 1 { "y" } else { "ies" }
                    );
                }
                ConflictsCmd::Restore { name, to } => {
                    let dest = syncd::conflicts::restore(
                        &cfg.state_dir,
                        &cfg.export,
                        &name,
                        to.as_deref(),
                    )?;
                    println!("restored {name} to {}", dest.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Migrate {
            keepalived,
            sync_script,
            lsyncd,
            nginx,
            scripts,
            standby,
            out,
        }) => {
            use syncd::migrate;
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let mut inp = migrate::Inputs {
                standby,
                ..migrate::Inputs::default()
            };
            for k in &keepalived {
                let text = read(k)?;
                for name in migrate::keepalived::read(&text).scripts.values() {
                    let cmd = name.split_whitespace().next().unwrap_or("").to_string();
                    let at = match &scripts {
                        Some(d) => d.join(Path::new(&cmd).file_name().unwrap_or_default()),
                        None => PathBuf::from(&cmd),
                    };
                    if let Ok(body) = std::fs::read_to_string(&at) {
                        inp.scripts.insert(cmd, body);
                    }
                }
                inp.keepalived.push(migrate::KeepalivedFile {
                    file: k.display().to_string(),
                    text,
                });
            }
            if let Some(p) = &sync_script {
                inp.replication = Some(migrate::replication::script(&read(p)?));
            }
            if let Some(p) = &lsyncd {
                inp.replication = Some(migrate::replication::lsyncd(&read(p)?));
            }
            if let Some(p) = &nginx {
                inp.nginx = Some(migrate::nginx::read(&read(p)?));
            }
            if inp.keepalived.is_empty() && inp.replication.is_none() && inp.nginx.is_none() {
                bail!(
                    "nothing to migrate: give --keepalived, --sync-script, --lsyncd and/or --nginx"
                );
            }
            let m = migrate::plan(&inp);
            let report = m.report();
            for (rel, text) in m.files.iter().chain(std::iter::once(&(
                PathBuf::from("report.txt"),
                report.clone(),
            ))) {
                let p = out.join(rel);
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("creating {}", d.display()))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .with_context(|| {
                        format!(
                            "writing {} (existing files are never overwritten)",
                            p.display()
                        )
                    })?;
                std::io::Write::write_all(&mut f, text.as_bytes())
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Pair {
            what:
                PairCmd::Check {
                    peer_config,
                    offline,
                },
        }) => {
            use syncd::paircheck::{self, Severity};
            let cfg = load(&cli.config)?;
            let mut findings = Vec::new();
            if let Some(p) = &peer_config {
                let peer = Config::load(p)?;
                findings.extend(paircheck::compare(
                    &paircheck::node("this node", &cfg),
                    &paircheck::node("the peer", &peer),
                ));
            } else if offline {
                bail!(
                    "nothing to check: give --peer-config FILE, or drop --offline to ask the peer"
                );
            }
            if !offline {
                let (r, me, ours) = runtime()?.block_on(paircheck::reach(&cfg));
                if let paircheck::Reached::Welcome {
                    version,
                    speaks,
                    node_id,
                    ..
                } = &r
                {
                    let ours = syncd::wire::Speaks::OURS;
                    println!(
                        "reached the peer \"{node_id}\" (it speaks protocol {speaks}, this node {ours}: they pair on {version}); pins match both ways"
                    );
                }
                findings.extend(paircheck::reached(&r, me, &ours));
            }
            for f in &findings {
                println!("{f}");
            }
            let errors = findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            println!("{errors} errors, {} warnings", findings.len() - errors);
            Ok(if errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Some(Cmd::Status { metrics }) => {
            let cfg = load(&cli.config)?;
            let Some(admin) = cfg.admin else {
                bail!(
                    "{}: admin: missing; set admin = \"127.0.0.1:7401\" so the daemon serves its status",
                    cfg.file.display()
                )
            };
            let path = if metrics { "/metrics" } else { "/status" };
            let text = runtime()?.block_on(syncd::admin::fetch(admin, path))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Switchover) => {
            let cfg = load(&cli.config)?;
            let Some(admin) = cfg.admin else {
                bail!(
                    "{}: admin: missing; set admin = \"127.0.0.1:7401\" (the switchover is asked there)",
                    cfg.file.display()
                )
            };
            let (code, text) = runtime()?.block_on(syncd::admin::post(admin, "/switchover"))?;
            if code.is_success() {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprint!("syncd: switchover not done: {text}");
                Ok(ExitCode::from(1))
            }
        }
        Some(Cmd::Demo {
            dir,
            failover: true,
            ..
        }) => {
            syncd::demo::failover::run(dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Demo {
            dir,
            files,
            seconds,
            interval_ms,
            failover: false,
        }) => {
            syncd::demo::run(
                dir,
                files,
                seconds,
                std::time::Duration::from_millis(interval_ms),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Vrrp { .. }) => unreachable!("handled before logging is set up"),
        None => match cli.role {
            Some(Role::Standby) => {
                let cfg = load(&cli.config)?;
                cfg.require_listen()?;
                if cli.check {
                    cfg.check_ports()?;
                    println!("config OK: {}", cfg.file.display());
                    return Ok(ExitCode::SUCCESS);
                }
                let cfg = syncd::relocate::prepare(cfg)?;
                syncd::scan::sweep_leftovers_from_before(std::time::SystemTime::now());
                let rt = runtime()?;
                rt.block_on(async {
                    let shutdown = shutdown_signal();
                    let admin = cfg.admin;
                    let s = Standby::bind(cfg)?;
                    if let Some(a) = admin {
                        syncd::admin::start(a, s.stats())
                            .await
                            .with_context(|| format!("admin: cannot listen on {a}"))?;
                    }
                    // Bound: a primary connecting from now on is accepted.
                    let status = format!(
                        "standby: listening on {}",
                        s.local_addr().map(|a| a.to_string()).unwrap_or_default()
                    );
                    syncd_sdnotify::send(&[State::Ready, State::Status(&status)]);
                    s.run(shutdown).await;
                    anyhow::Ok(())
                })?;
                Ok(ExitCode::SUCCESS)
            }
            Some(Role::Primary) => {
                let cfg = load(&cli.config)?;
                cfg.require_peer()?;
                if cli.check {
                    cfg.check_ports()?;
                    println!("config OK: {}", cfg.file.display());
                    return Ok(ExitCode::SUCCESS);
                }
                let cfg = syncd::relocate::prepare(cfg)?;
                syncd::scan::sweep_leftovers_from_before(std::time::SystemTime::now());
                let rt = runtime()?;
                rt.block_on(async { syncd::primary::run(cfg, shutdown_signal()).await })?;
                Ok(ExitCode::SUCCESS)
            }
            Some(Role::Auto) => {
                let cfg = load(&cli.config)?;
                cfg.require_listen()?;
                cfg.require_peer()?;
                if cfg.vrrp.is_empty() {
                    bail!(
                        "{}: --role auto needs a [[vrrp]] table (the service address that follows the leader); see contrib/syncd-auto.example.toml",
                        cfg.file.display()
                    );
                }
                if cli.check {
                    cfg.check_ports()?;
                    println!("config OK: {}", cfg.file.display());
                    return Ok(ExitCode::SUCCESS);
                }
                let cfg = syncd::relocate::prepare(cfg)?;
                syncd::scan::sweep_leftovers_from_before(std::time::SystemTime::now());
                let rt = runtime()?;
                rt.block_on(async { syncd::auto::run(cfg, shutdown_signal()).await })?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                bail!("nothing to do: pass --role primary|standby|auto, or a command (see --help)")
            }
        },
    }
}

/// Installs the SIGTERM/SIGINT handlers now, so that a SIGTERM arriving
/// right after READY=1 is a clean stop rather than the default kill; the
/// future resolves at the first of them. Call it inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("interrupt: shutting down"),
        }
        syncd_sdnotify::send(&[State::Stopping]);
    }
}
