//! `syncd-proxy --config FILE [--check]`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use syncd_proxy::config::Config;
use syncd_proxy::reload::App;
use syncd_proxy::workers::Workers;
use syncd_sdnotify::State;
use syncd_vrrp::daemon::Vrrp;
use tokio::signal::unix::{signal, SignalKind};

// mimalloc: measurably cheaper than glibc malloc for the many small,
// short-lived allocations of request handling (see README benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load balancer with nginx upstream semantics, active health checks and retries.
#[derive(Parser, Debug)]
#[command(name = "syncd-proxy", version)]
struct Cli {
    /// Configuration file (TOML). See contrib/proxy.example.toml.
    #[arg(short, long)]
    config: PathBuf,
    /// Validate the configuration and exit (0 = valid).
    #[arg(long)]
    check: bool,
    /// Worker threads (overrides global.workers; 0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Log format (overrides global.log_format).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syncd-proxy: {e}");
            std::process::exit(2);
        }
    };
    if cli.check {
        println!(
            "{}: ok ({} listener(s), {} upstream(s), {} VRRP instance(s))",
            cli.config.display(),
            cfg.listeners.len(),
            cfg.upstreams.len(),
            cfg.vrrp.len()
        );
        return Ok(());
    }
    if let Some(w) = cli.workers {
        cfg.global.workers = w;
    }
    if let Some(f) = &cli.log_format {
        cfg.global.log_json = f == "json";
    }
    init_tracing(cfg.global.log_json);

    if cfg.global.workers == 0 {
        cfg.global.workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    // worker threads serve traffic; this thread handles signals, reloads,
    // health checks and the admin endpoint
    let workers = Workers::start(cfg.global.workers).context("starting worker threads")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(run(cli, cfg, workers.handles()));
    workers.stop();
    result
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SYNCD_PROXY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colour codes only on a terminal, not in journald or log files
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn run(cli: Cli, cfg: Config, handles: Vec<tokio::runtime::Handle>) -> anyhow::Result<()> {
    let workers = handles.len();
    let vrrp_cfg = cfg.vrrp_config()?;
    let vrrp_written = cfg.vrrp.clone();
    let mut app = App::start(cfg, handles).context("starting syncd-proxy")?;
    // Handlers first: a SIGTERM right after VRRP claims the address must
    // still resign it, not kill the process with the address held.
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    // nginx's reopen (SIGUSR1) and binary upgrade (SIGUSR2), sent by habit
    // (a logrotate postrotate): their default action would end the proxy.
    syncd_ops::signals::log_on_user_signals(
        || "nothing to reopen: syncd-proxy logs to stderr (the journal)".to_string(),
        || {
            "no binary upgrade by signal: restart syncd-proxy (with a VRRP peer, one node at a time)".to_string()
        },
    );
    // VRRP starts after the listeners are bound: a node must be able to
    // serve before it can claim the virtual IP.
    let (vrrp_stop, vrrp_stopped) = tokio::sync::oneshot::channel::<()>();
    let (mut vrrp, vrrp_started) = match vrrp_cfg {
        None => (None, true),
        Some(vc) => {
            let (task, started) = start_vrrp(vc, &app, vrrp_stopped).await?;
            (Some(task), started)
        }
    };
    tracing::info!(config = %cli.config.display(), workers, "syncd-proxy started");
    // Listeners are bound (App::start) and VRRP runs: ready for systemd.
    if vrrp_started {
        syncd_sdnotify::send(&[State::Ready, State::Status(&status(&app, "serving"))]);
    }
    let mut failed = None;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                syncd_sdnotify::send(&[State::Reloading]);
                let outcome = reload(&cli, &mut app, &vrrp_written);
                // READY=1 ends the reload either way: the proxy serves.
                syncd_sdnotify::send(&[State::Ready, State::Status(&status(&app, outcome))]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = async {
                match vrrp.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => {
                vrrp = None;
                let why = match r {
                    Ok(Ok(())) => "stopped unexpectedly".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(error = %why, "built-in VRRP failed; shutting down");
                failed = Some(why);
                break;
            }
        }
    }
    stop(app, vrrp, vrrp_stop).await;
    match failed {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!("built-in VRRP: {why}")),
    }
}

type VrrpTask = tokio::task::JoinHandle<Result<(), syncd_vrrp::RunError>>;

/// Start the built-in VRRP instances, running until `stopped` fires; also
/// whether they all started (no READY=1 otherwise).
async fn start_vrrp(
    vc: syncd_vrrp::config::Config,
    app: &App,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<(VrrpTask, bool)> {
    let n = vc.instances.len();
    let v = Vrrp::start(vc).await.context("starting built-in VRRP")?;
    // Not ready before the instances run; a failed one ends the select
    // loop of `run` at once, and no READY=1 is sent for it.
    let started = v.started().await;
    app.shared().set_vrrp(v.view());
    tracing::info!(instances = n, "built-in VRRP started");
    let task = tokio::spawn(v.run_until(async {
        let _ = stopped.await;
    }));
    Ok((task, started))
}

/// The status line systemd shows.
fn status(app: &App, what: &str) -> String {
    let c = app.shared().current();
    format!(
        "{what}: {} listener(s), {} upstream(s)",
        c.config.listeners.len(),
        c.config.upstreams.len()
    )
}

/// SIGHUP: load the configuration again and apply it, or keep the running
/// one; what happened, for the status line.
fn reload(
    cli: &Cli,
    app: &mut App,
    vrrp_written: &[syncd_vrrp::config::VrrpConfig],
) -> &'static str {
    let failed = |app: &App, e: &dyn std::fmt::Display| {
        app.shared()
            .metrics
            .reload_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error = %e, "reload failed; keeping the running configuration");
        "reload failed, serving the previous configuration"
    };
    let mut new = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return failed(app, &e),
    };
    if let Some(w) = cli.workers {
        new.global.workers = w;
    }
    if new.vrrp != vrrp_written {
        tracing::warn!("[[vrrp]] changed: VRRP changes take effect at restart; the instances keep running as started");
    }
    match app.reload(new) {
        Ok(()) => {
            tracing::info!("configuration reloaded");
            "reloaded"
        }
        Err(e) => failed(app, &e),
    }
}

/// Resign VRRP first (priority 0, addresses removed) so the peer takes the
/// virtual IP at once, then drain what this node still has in flight.
async fn stop(app: App, vrrp: Option<VrrpTask>, vrrp_stop: tokio::sync::oneshot::Sender<()>) {
    syncd_sdnotify::send(&[
        State::Stopping,
        State::Status("stopping: draining connections"),
    ]);
    if let Some(h) = vrrp {
        let _ = vrrp_stop.send(());
        match h.await {
            Ok(Ok(())) => tracing::info!("built-in VRRP stopped; virtual IPs released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "built-in VRRP stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "built-in VRRP task failed"),
        }
    }
    let timeout = app.shared().current().config.global.shutdown_timeout;
    tracing::info!(
        ?timeout,
        "shutting down: no new connections, finishing in-flight requests"
    );
    app.shutdown(timeout.max(Duration::from_millis(1))).await;
    tracing::info!("stopped");
}
