//! `syncd pair check`: the two nodes' configs compared, and the peer asked.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use syncd::config::Config;

use super::{load, runtime};
use crate::cli::Global;

pub(crate) fn check(cli: &Global, peer_config: Option<PathBuf>, offline: bool) -> Result<ExitCode> {
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
        bail!("nothing to check: give --peer-config FILE, or drop --offline to ask the peer");
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
