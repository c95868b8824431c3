//! `syncd resync` and `syncd verify`: one-shot sessions from the primary.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use syncd::primary::{self, ResyncOptions};

use super::{load, runtime};
use crate::cli::Global;
use crate::progress;

/// `syncd resync`'s flags.
pub(crate) struct ResyncFlags {
    pub dry_run: bool,
    pub checksum: bool,
    pub no_delete: bool,
    pub take_over: bool,
}

pub(crate) fn resync(cli: &Global, f: ResyncFlags) -> Result<ExitCode> {
    let cfg = load(&cli.config)?;
    cfg.require_peer()?;
    if cli.check {
        println!("config OK: {}", cfg.file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let o = ResyncOptions {
        settle: None,
        detach_transfers: false,
        commit_follows: false,
        defer_links: None,
        dry_run: f.dry_run,
        checksum: f.checksum || cfg.sync.checksum,
        delete: if f.no_delete { false } else { cfg.sync.delete },
        progress: std::io::stderr().is_terminal(),
        take_over: f.take_over,
        watch_dirs: None,
    };
    // Formats checked, but the state not moved: a daemon may be
    // running from the old place; its next start moves it.
    syncd::state::check_formats(&cfg.state_dir)?;
    // An unmounted export would be sent as empty: every file deleted there.
    syncd::state::check_mounted(&cfg.state_dir, &cfg.export)?;
    let bar = progress::bar(o.progress);
    let sum = runtime()?.block_on(primary::resync_with(&cfg, &o, bar))?;
    println!("{sum}");
    Ok(if sum.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn verify(cli: &Global, quick: bool) -> Result<ExitCode> {
    let cfg = load(&cli.config)?;
    cfg.require_peer()?;
    if cli.check {
        println!("config OK: {}", cfg.file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let diffs = if quick {
        runtime()?.block_on(primary::verify_quick(&cfg))?
    } else {
        runtime()?.block_on(primary::verify(&cfg))?
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
