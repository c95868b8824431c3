//! The daemons: `--role standby`, `--role primary`, `--role auto`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use syncd::config::Config;
use syncd::standby::Standby;
use syncd_sdnotify::State;

use super::{load_with_text, on_signals, runtime, shutdown_signal};
use crate::cli::Global;

/// How long a stopped daemon waits for blocking tasks still running (a
/// content verify hashing the export, a walk): they only read, or write
/// as a crash would leave it (staged files, atomic renames), so they are
/// abandoned rather than let hold up the stop for minutes.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs a daemon to its stop, then gives its blocking tasks [`STOP_GRACE`].
fn run_daemon(f: impl std::future::Future<Output = Result<()>>) -> Result<ExitCode> {
    let rt = runtime()?;
    let r = rt.block_on(f);
    rt.shutdown_timeout(STOP_GRACE);
    r.map(|()| ExitCode::SUCCESS)
}

/// `--check`: the ports are checked and `None` returned. Otherwise the state
/// directory is moved to where this release keeps it and an earlier run's
/// temporary files are swept: the daemon may start.
fn prepare(cli: &Global, cfg: Config) -> Result<Option<Config>> {
    if cli.check {
        cfg.check_ports()?;
        println!("config OK: {}", cfg.file.display());
        return Ok(None);
    }
    let cfg = syncd::relocate::prepare(cfg)?;
    syncd::scan::sweep_leftovers_from_before(std::time::SystemTime::now(), &cfg.state_dir);
    Ok(Some(cfg))
}

pub(crate) fn standby(cli: &Global) -> Result<ExitCode> {
    let (cfg, text) = load_with_text(&cli.config)?;
    cfg.require_listen()?;
    let Some(cfg) = prepare(cli, cfg)? else {
        return Ok(ExitCode::SUCCESS);
    };
    run_daemon(async {
        let shutdown = shutdown_signal();
        on_signals(cfg.file.clone(), text);
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
    })
}

pub(crate) fn primary(cli: &Global) -> Result<ExitCode> {
    let (cfg, text) = load_with_text(&cli.config)?;
    cfg.require_peer()?;
    let Some(cfg) = prepare(cli, cfg)? else {
        return Ok(ExitCode::SUCCESS);
    };
    run_daemon(async {
        let shutdown = shutdown_signal();
        on_signals(cfg.file.clone(), text);
        Ok(syncd::primary::run(cfg, shutdown).await?)
    })
}

pub(crate) fn auto(cli: &Global) -> Result<ExitCode> {
    let (cfg, text) = load_with_text(&cli.config)?;
    cfg.require_listen()?;
    cfg.require_peer()?;
    if cfg.vrrp.is_empty() {
        bail!(
            "{}: --role auto needs a [[vrrp]] table (the service address that follows the leader); see contrib/syncd-auto.example.toml",
            cfg.file.display()
        );
    }
    let Some(cfg) = prepare(cli, cfg)? else {
        return Ok(ExitCode::SUCCESS);
    };
    run_daemon(async {
        let shutdown = shutdown_signal();
        on_signals(cfg.file.clone(), text);
        Ok(syncd::auto::run(cfg, shutdown).await?)
    })
}
