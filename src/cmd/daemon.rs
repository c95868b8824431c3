//! The daemons: `--role standby`, `--role primary`, `--role auto`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use syncd::standby::Standby;
use syncd_sdnotify::State;

use super::{load, runtime, shutdown_signal};
use crate::cli::Global;

pub(crate) fn standby(cli: &Global) -> Result<ExitCode> {
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

pub(crate) fn primary(cli: &Global) -> Result<ExitCode> {
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

pub(crate) fn auto(cli: &Global) -> Result<ExitCode> {
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
