//! One function per `syncd` command; `main.rs` parses and dispatches.

mod daemon;
mod migrate;
mod pair;
mod replicate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use syncd::config::Config;
use syncd_sdnotify::State;

use crate::cli::{ConflictsCmd, Global};

pub(crate) use daemon::{auto, primary, standby};
pub(crate) use migrate::migrate;
pub(crate) use pair::check as pair_check;
pub(crate) use replicate::{resync, verify, ResyncFlags};

pub(crate) fn keygen(out: PathBuf, name: Option<String>) -> Result<ExitCode> {
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

pub(crate) fn promote(cli: &Global, force: bool) -> Result<ExitCode> {
    let cfg = load(&cli.config)?;
    if !force {
        bail!("syncd promote declares this node's export the newest data of the pair; pass --force to do it");
    }
    let gen = syncd::generation::promote_here(&cfg)?;
    println!("this node leads generation {gen}; start `syncd --role auto` on both nodes");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn conflicts(cli: &Global, what: ConflictsCmd) -> Result<ExitCode> {
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
            let dest =
                syncd::conflicts::restore(&cfg.state_dir, &cfg.export, &name, to.as_deref())?;
            println!("restored {name} to {}", dest.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn status(cli: &Global, metrics: bool) -> Result<ExitCode> {
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

pub(crate) fn switchover(cli: &Global) -> Result<ExitCode> {
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

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn load(cli_config: &Option<PathBuf>) -> Result<Config> {
    Ok(load_with_text(cli_config)?.0)
}

/// [`load`], with the file's text (see [`on_signals`]).
pub(crate) fn load_with_text(cli_config: &Option<PathBuf>) -> Result<(Config, String)> {
    let Some(p) = cli_config else {
        bail!("--config FILE is required (see contrib/syncd.example.toml)")
    };
    Ok(Config::load_with_text(p)?)
}

/// SIGHUP checks the config file again and changes nothing; SIGUSR1 and
/// SIGUSR2 (keepalived's dumps, sent by habit to `--role auto`) say where
/// the status is. None of them ends the daemon (see
/// [`syncd_ops::signals`]). Call it inside the runtime.
pub(crate) fn on_signals(file: PathBuf, at_start: String) {
    let f = file.clone();
    syncd_ops::signals::recheck_on_hangup("syncd", file, at_start, move |text| {
        Config::parse(text, &f).map(drop)
    });
    let status = || {
        "no dump: `syncd status` prints the status, `syncd status --metrics` the counters"
            .to_string()
    };
    syncd_ops::signals::log_on_user_signals(status, status);
}

/// Installs the SIGTERM/SIGINT handlers now, so that a SIGTERM arriving
/// right after READY=1 is a clean stop rather than the default kill; the
/// future resolves at the first of them. Call it inside the runtime.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
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
