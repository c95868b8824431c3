//! `syncd vrrp ...` command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use syncd_sdnotify::State;
use tokio::runtime::Runtime;

use crate::config::{Config, InstanceConfig};

#[derive(Debug, Parser)]
#[command(
    name = "syncd vrrp",
    about = "VRRP v2/v3 virtual addresses (a keepalived replacement)"
)]
struct Cli {
    /// TOML file with [[vrrp]] instances.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Convert the vrrp_instance / vrrp_script blocks of a keepalived.conf to TOML on stdout.
    #[arg(long, value_name = "KEEPALIVED_CONF")]
    import_keepalived: Option<PathBuf>,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print /status from the running daemon's admin address.
    Status {
        /// Print /metrics instead.
        #[arg(long)]
        metrics: bool,
    },
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colour codes only on a terminal, not in journald or log files
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Entry point: args exclude the program name and the word `vrrp`.
pub fn cli_main(args: Vec<OsString>) -> i32 {
    let cli = match Cli::try_parse_from(std::iter::once(OsString::from("syncd vrrp")).chain(args)) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_tracing(cli.log_json);
    if let Some(path) = &cli.import_keepalived {
        return import_keepalived(path);
    }
    let Some(path) = cli.config.clone() else {
        eprintln!("error: --config FILE is required (or --import-keepalived FILE)");
        return 2;
    };
    let (config, text) = match crate::config::load_with_text(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration:\n{e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    if let Some(Cmd::Status { metrics }) = cli.cmd {
        return status(&rt, &config, &path, metrics);
    }
    if cli.check {
        for i in &config.instances {
            println!("{}", describe(i));
        }
        println!("configuration OK");
        return 0;
    }
    run_daemon(&rt, config, path, text)
}

/// keepalived.conf → TOML on stdout, warnings and errors on stderr.
fn import_keepalived(path: &Path) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return 1;
        }
    };
    let r = crate::import::convert(&text);
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if !r.errors.is_empty() {
        // No TOML at all: a half-converted file could be deployed by mistake.
        for e in &r.errors {
            eprintln!("error: {e}");
        }
        return 1;
    }
    print!("{}", r.toml);
    if r.instances == 0 {
        eprintln!("error: no vrrp_instance block found in {}", path.display());
        1
    } else {
        0
    }
}

/// Print the running daemon's /status (or /metrics) from its admin address.
fn status(rt: &Runtime, config: &Config, path: &Path, metrics: bool) -> i32 {
    let Some(addr) = config.admin else {
        eprintln!(
            "error: {} has no `admin = \"127.0.0.1:PORT\"`; status needs it",
            path.display()
        );
        return 1;
    };
    let route = if metrics { "/metrics" } else { "/status" };
    match rt.block_on(crate::admin::fetch(addr, route)) {
        Ok(body) => {
            print!("{body}");
            0
        }
        Err(e) => {
            // the error names the address
            eprintln!("error: {e} (is the daemon running?)");
            1
        }
    }
}

/// One `--check` line: what the instance will do.
fn describe(i: &InstanceConfig) -> String {
    format!(
        "{}: {} vrid {} priority {} v{} advert_int {:.2}s {} [{}]",
        i.name,
        i.interface,
        i.vrid,
        i.priority,
        i.version.number(),
        i.advert_int.as_secs_f64(),
        if i.unicast_peers.is_empty() {
            "multicast".to_string()
        } else {
            format!("unicast to {:?}", i.unicast_peers)
        },
        i.vips
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Run every instance until SIGTERM/SIGINT; READY=1 once all have started.
/// SIGHUP checks `path` again (`text` is what `config` was made from) and
/// changes nothing: the instances keep running as started; SIGUSR1 logs
/// the status, SIGUSR2 the counters.
fn run_daemon(rt: &Runtime, config: Config, path: PathBuf, text: String) -> i32 {
    let r = rt.block_on(async move {
        let shutdown = shutdown_signal();
        let file = path.clone();
        syncd_ops::signals::recheck_on_hangup("syncd vrrp", path, text, move |t| {
            crate::config::parse(t)
                .map(drop)
                .map_err(|e| e.in_file(&file))
        });
        let n = config.instances.len();
        let vrrp = crate::daemon::Vrrp::start(config).await?;
        // keepalived's dumps (SIGUSR1 data, SIGUSR2 stats), to the log.
        let (v1, v2) = (vrrp.view(), vrrp.view());
        syncd_ops::signals::log_on_user_signals(
            move || format!("status:\n{}", v1.status_json()),
            move || format!("counters:\n{}", v2.metrics()),
        );
        // Ready once every instance runs the protocol; one that failed to
        // start makes run_until return its error at once.
        if vrrp.started().await {
            let status = format!("{n} VRRP instance(s) running");
            syncd_sdnotify::send(&[State::Ready, State::Status(&status)]);
        }
        vrrp.run_until(shutdown).await
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            1
        }
    }
}

/// Installs the handlers now (a SIGTERM right after READY=1 must release
/// the addresses, not kill the process); resolves at the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: releasing virtual addresses (priority 0)"),
            _ = int.recv() => tracing::info!("SIGINT: releasing virtual addresses (priority 0)"),
        }
        syncd_sdnotify::send(&[
            State::Stopping,
            State::Status("stopping: releasing virtual addresses"),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    fn one(toml: &str) -> crate::config::InstanceConfig {
        crate::config::parse(toml).unwrap().instances.remove(0)
    }

    #[test]
    fn check_line_names_the_mode_and_the_addresses() {
        let base = "[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 7\npriority = 150\nvirtual_ips = [\"10.0.0.100/24\", \"10.0.0.101\"]\n";
        assert_eq!(
            describe(&one(base)),
            "VI_1: eth0 vrid 7 priority 150 v2 advert_int 1.00s multicast [10.0.0.100/24, 10.0.0.101/32]"
        );
        let uni = format!("{base}unicast_peers = [\"10.0.0.2\"]\n");
        assert!(
            describe(&one(&uni)).contains("unicast to [10.0.0.2]"),
            "{}",
            describe(&one(&uni))
        );
    }
}
