//! `syncd migrate`: reads what the seeds' users run, writes syncd's configs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::MigrateArgs;

pub(crate) fn migrate(a: MigrateArgs) -> Result<ExitCode> {
    let MigrateArgs {
        keepalived,
        sync_script,
        lsyncd,
        nginx,
        scripts,
        standby,
        out,
    } = a;
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
        bail!("nothing to migrate: give --keepalived, --sync-script, --lsyncd and/or --nginx");
    }
    let m = migrate::plan(&inp);
    let report = m.report();
    for (rel, text) in m.files.iter().chain(std::iter::once(&(
        PathBuf::from("report.txt"),
        report.clone(),
    ))) {
        let p = out.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
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
