//! The `syncd` command line: the only place that uses `anyhow`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

mod cli;
mod cmd;
mod demo;
mod progress;

use cli::{Cli, Cmd, Global, LogFormat, PairCmd, Role};

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

fn run(cli: Cli) -> Result<ExitCode> {
    let g = Global {
        config: cli.config,
        check: cli.check,
    };
    match cli.cmd {
        Some(Cmd::Keygen { out, name }) => cmd::keygen(out, name),
        Some(Cmd::Resync {
            dry_run,
            checksum,
            delete: _,
            no_delete,
            take_over,
        }) => cmd::resync(
            &g,
            cmd::ResyncFlags {
                dry_run,
                checksum,
                no_delete,
                take_over,
            },
        ),
        Some(Cmd::Verify { quick }) => cmd::verify(&g, quick),
        Some(Cmd::Promote { force }) => cmd::promote(&g, force),
        Some(Cmd::Conflicts { what }) => cmd::conflicts(&g, what),
        Some(Cmd::Migrate(a)) => cmd::migrate(a),
        Some(Cmd::Pair {
            what:
                PairCmd::Check {
                    peer_config,
                    offline,
                },
        }) => cmd::pair_check(&g, peer_config, offline),
        Some(Cmd::Status { metrics }) => cmd::status(&g, metrics),
        Some(Cmd::Switchover) => cmd::switchover(&g),
        Some(Cmd::Demo {
            dir,
            failover: true,
            ..
        }) => {
            demo::failover::run(dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Demo {
            dir,
            files,
            seconds,
            interval_ms,
            failover: false,
        }) => {
            demo::run(
                dir,
                files,
                seconds,
                std::time::Duration::from_millis(interval_ms),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Vrrp { .. }) => unreachable!("handled before logging is set up"),
        None => {
            match cli.role {
                Some(Role::Standby) => cmd::standby(&g),
                Some(Role::Primary) => cmd::primary(&g),
                Some(Role::Auto) => cmd::auto(&g),
                None => {
                    anyhow::bail!("nothing to do: pass --role primary|standby|auto, or a command (see --help)")
                }
            }
        }
    }
}
