//! `syncd demo`: everything on loopback with nothing but the binary.
//! Generates a tree, certificates and configs, starts a standby process,
//! resyncs into it, changes a few things, resyncs again (showing the delta),
//! and verifies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod failover;
mod nfs;
mod tree;

use syncd::config::Config;
use syncd::primary::{self, ResyncOptions};

/// The demo is part of the binary: its errors are for a person to read.
pub type DemoError = anyhow::Error;

fn msg(e: impl std::fmt::Display) -> DemoError {
    anyhow::anyhow!("demo: {e}")
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(path: &Path, body: &str) -> std::io::Result<()> {
    std::fs::File::create(path)?.write_all(body.as_bytes())
}

fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_tcp_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `live`: after the resync part, run a primary daemon and write a file every
/// `interval` until Ctrl-C (or for `seconds`), showing each one's latency.
pub fn run(
    dir: Option<PathBuf>,
    files: usize,
    seconds: Option<u64>,
    interval: Duration,
) -> Result<(), DemoError> {
    let base = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("syncd-demo-{}", std::process::id())),
    };
    let dirs = Dirs {
        pex: base.join("primary"),
        sex: base.join("standby"),
        base,
    };
    let (base, pex) = (&dirs.base, &dirs.pex);
    std::fs::create_dir_all(pex)?;
    std::fs::create_dir_all(&dirs.sex)?;
    println!("demo directory: {}", base.display());
    let port = write_setup(base)?;
    let t = Instant::now();
    let bytes = tree::generate_tree(pex, files, 42)?;
    println!(
        "generated {files} files + special cases ({:.1} MiB) in {:.2} s",
        bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(base.join("standby.log"))?;
    let child = Command::new(&exe)
        .args(["--role", "standby", "--config"])
        .arg(base.join("standby.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let _standby = KillOnDrop(child);
    println!(
        "standby started on 127.0.0.1:{port} (log: {})",
        base.join("standby.log").display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    resyncs(&rt, &dirs)?;
    live(&rt, &exe, &dirs, seconds, interval)?;
    println!("\nTry it yourself:\n  syncd resync --config {0}/primary.toml --dry-run\n  syncd verify --config {0}/primary.toml\n(the daemons stop when the demo exits; start them with `syncd --role standby --config {0}/standby.toml` and `syncd --role primary --config {0}/primary.toml`)", base.display());
    Ok(())
}

/// Keys (kept across runs) and both nodes' configs on fresh loopback ports;
/// returns the standby's port.
fn write_setup(base: &Path) -> Result<u16, DemoError> {
    for n in ["primary", "standby"] {
        let k = base.join(format!("{n}-keys"));
        if !k.join("node.crt").exists() {
            let fp = syncd::tls::keygen(&k, n).map_err(msg)?;
            println!("  {n} certificate {fp}");
        }
    }
    let port = free_udp_port()?;
    let admin = free_tcp_port()?;
    write_config(
        &base.join("standby.toml"),
        &format!("node_id = \"standby\"\nexport = \"standby\"\nstate_dir = \"standby-state\"\nlisten = \"127.0.0.1:{port}\"\ncert = \"standby-keys/node.crt\"\nkey = \"standby-keys/node.key\"\npeer_cert = \"primary-keys/node.crt\"\n"),
    )?;
    write_config(
        &base.join("primary.toml"),
        &format!("node_id = \"primary\"\nexport = \"primary\"\nstate_dir = \"primary-state\"\npeer = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\ncert = \"primary-keys/node.crt\"\nkey = \"primary-keys/node.key\"\npeer_cert = \"standby-keys/node.crt\"\n"),
    )?;
    Ok(port)
}

/// The initial resync, a small edit and its delta resync, then verify.
/// The demo's directory and the two exports in it.
struct Dirs {
    base: PathBuf,
    /// The primary's export.
    pex: PathBuf,
    /// The standby's export.
    sex: PathBuf,
}

fn resyncs(rt: &tokio::runtime::Runtime, dirs: &Dirs) -> Result<(), DemoError> {
    let (base, pex, sex) = (&dirs.base, &dirs.pex, &dirs.sex);
    let cfg = Config::load(&base.join("primary.toml")).map_err(msg)?;
    let o = ResyncOptions {
        settle: None,
        detach_transfers: false,
        commit_follows: false,
        defer_links: None,
        dry_run: false,
        checksum: false,
        delete: true,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        take_over: false,
        watch_dirs: None,
    };
    let first = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match primary::resync(&cfg, &o).await {
                Err(primary::ClientError::Connect(..)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                r => return r,
            }
        }
    });
    let first = first.map_err(msg)?;
    println!("\n== initial resync ==\n{first}");

    // Change a little: 4 KiB in the middle of the big file, one new file, one delete.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(pex.join("big.bin"))?;
        f.write_all_at(&[0x5a; 4096], 4 << 20)?;
    }
    std::fs::write(pex.join("new-file.txt"), b"hello from the primary\n")?;
    let _ = std::fs::remove_file(pex.join("zero-length"));
    let second = rt.block_on(primary::resync(&cfg, &o)).map_err(msg)?;
    println!("\n== after editing 4 KiB of big.bin, adding and deleting a file ==\n{second}");
    let diffs = rt.block_on(primary::verify(&cfg)).map_err(msg)?;
    if !diffs.is_empty() {
        for d in &diffs {
            println!("{}: {}", d.path, d.what);
        }
        return Err(msg(format!("{} differences after resync", diffs.len())));
    }
    println!(
        "\n== verify ==\nequal: {} and {} match by content and metadata",
        pex.display(),
        sex.display()
    );
    Ok(())
}

/// Writes `live/<i>.txt` (and every tenth, renames it) on the primary and
/// prints when the standby has it; returns the write's latency.
async fn write_and_time(
    dirs: &Dirs,
    i: u64,
    start: Instant,
) -> Result<Option<Duration>, DemoError> {
    let (base, pex, sex) = (&dirs.base, &dirs.pex, &dirs.sex);
    let name = format!("live/{i:05}.txt");
    let body = format!("write {i} at {:?}\n", start.elapsed());
    std::fs::write(pex.join(&name), &body)?;
    let t = Instant::now();
    let seen = loop {
        if std::fs::read(sex.join(&name)).is_ok_and(|b| b == body.as_bytes()) {
            break Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(10) {
            break None;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    match seen {
        Some(d) => println!(
            "  {name}: on the standby after {:6.1} ms",
            d.as_secs_f64() * 1e3
        ),
        None => println!(
            "  {name}: not on the standby after 10 s (see {}/primary.log)",
            base.display()
        ),
    }
    if i.is_multiple_of(10) {
        let to = format!("live/renamed-{i:05}.txt");
        std::fs::rename(pex.join(&name), pex.join(&to))?;
        let t = Instant::now();
        while !sex.join(&to).exists() && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        println!(
            "  renamed {name} -> {to}: on the standby after {:6.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(seen)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn live(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    dirs: &Dirs,
    seconds: Option<u64>,
    interval: Duration,
) -> Result<(), DemoError> {
    let (base, pex) = (&dirs.base, &dirs.pex);
    let log = std::fs::File::create(base.join("primary.log"))?;
    let child = Command::new(exe)
        .args(["--role", "primary", "--config"])
        .arg(base.join("primary.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let _primary = KillOnDrop(child);
    std::fs::create_dir_all(pex.join("live"))?;
    match seconds {
        Some(s) => println!("\n== live replication for {s} s: a write every {interval:?} on the primary, timed until it is readable on the standby =="),
        None => println!("\n== live replication: a write every {interval:?} on the primary, timed until it is readable on the standby (Ctrl-C to stop) =="),
    }
    let cfg = Config::load(&base.join("primary.toml")).map_err(msg)?;
    let lat = rt.block_on(async {
        let start = Instant::now();
        let mut lat = Vec::new();
        let mut i = 0u64;
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(interval) => {}
            }
            if seconds.is_some_and(|s| start.elapsed() >= Duration::from_secs(s)) {
                break;
            }
            i += 1;
            if let Some(d) = write_and_time(dirs, i, start).await? {
                lat.push(d);
            }
        }
        if let Some(a) = cfg.admin {
            if let Ok(st) = syncd::admin::fetch(a, "/status").await {
                println!("\n== syncd status (primary) ==\n{st}");
            }
        }
        Ok::<_, DemoError>(lat)
    })?;
    let mut sorted = lat.clone();
    sorted.sort();
    if !sorted.is_empty() {
        println!(
            "{} writes: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            sorted.len(),
            percentile(&sorted, 0.5).as_secs_f64() * 1e3,
            percentile(&sorted, 0.99).as_secs_f64() * 1e3,
            sorted[sorted.len() - 1].as_secs_f64() * 1e3
        );
    }
    Ok(())
}
