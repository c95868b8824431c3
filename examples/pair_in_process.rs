//! A primary and a standby in one process, through the library API:
//! identities, configuration, a standby task, one resync, one verify.
//!
//!     cargo run --example pair_in_process

use std::time::Duration;

use syncd::config::Config;
use syncd::primary::{self, ResyncOptions};
use syncd::standby::Standby;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for side in ["primary", "standby"] {
        std::fs::create_dir(d.join(side))?;
        let fp = syncd::tls::keygen(&d.join(format!("{side}-keys")), side)?;
        println!("{side}: {fp}");
    }
    std::fs::write(d.join("primary/hello.txt"), "hello, standby\n")?;
    std::fs::create_dir_all(d.join("primary/a/b"))?;
    std::os::unix::fs::symlink("../hello.txt", d.join("primary/a/link"))?;

    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let common = |me: &str, peer: &str| {
        format!("cert = \"{me}-keys/node.crt\"\nkey = \"{me}-keys/node.key\"\npeer_cert = \"{peer}-keys/node.crt\"\n")
    };
    std::fs::write(
        d.join("standby.toml"),
        format!(
            "export = \"standby\"\nstate_dir = \"standby-state\"\nlisten = \"127.0.0.1:{port}\"\n{}",
            common("standby", "primary")
        ),
    )?;
    std::fs::write(
        d.join("primary.toml"),
        format!(
            "export = \"primary\"\nstate_dir = \"primary-state\"\npeer = \"127.0.0.1:{port}\"\n{}",
            common("primary", "standby")
        ),
    )?;

    let standby = Standby::bind(Config::load(&d.join("standby.toml"))?)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(standby.run(async {
        let _ = stopped.await;
    }));

    let cfg = Config::load(&d.join("primary.toml"))?;
    let o = ResyncOptions {
        settle: None,
        detach_transfers: false,
        commit_follows: false,
        defer_links: None,
        dry_run: false,
        checksum: false,
        delete: true,
        progress: false,
        take_over: false,
        watch_dirs: None,
    };
    println!("{}", primary::resync(&cfg, &o).await?);
    let diffs = primary::verify(&cfg).await?;
    println!("verify: {} difference(s)", diffs.len());
    println!(
        "standby has: {:?}",
        std::fs::read_to_string(d.join("standby/hello.txt"))?
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await??;
    Ok(())
}
