//! `syncd demo`: everything on loopback with nothing but the binary.
//! Generates a tree, certificates and configs, starts a standby process,
//! resyncs into it, changes a few things, resyncs again (showing the delta),
//! and verifies.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{self, ResyncOptions};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Msg(String),
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
}

fn msg(e: impl std::fmt::Display) -> DemoError {
    DemoError::Msg(e.to_string())
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a pseudo-random tree of `files` small files plus one of each special case.
pub fn generate_tree(root: &Path, files: usize, seed: u64) -> std::io::Result<u64> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = 0;
    for i in 0..files {
        let d = root.join(format!("d{:02}/e{:02}", i % 17, i % 5));
        std::fs::create_dir_all(&d)?;
        let len = (rnd() % 16384) as usize;
        let data: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        std::fs::write(d.join(format!("f{i:05}.dat")), &data)?;
        bytes += len as u64;
    }
    std::fs::create_dir_all(root.join("empty/dir"))?;
    std::fs::write(root.join("zero-length"), b"")?;
    let big: Vec<u8> = (0..(8usize << 20)).map(|_| rnd() as u8).collect();
    std::fs::write(root.join("big.bin"), &big)?;
    bytes += big.len() as u64;
    std::fs::hard_link(root.join("big.bin"), root.join("big-hardlink.bin"))?;
    symlink("big.bin", root.join("link-to-big"))?;
    symlink("/nonexistent/target", root.join("dangling-link"))?;
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1-name")),
        b"non-UTF-8 name",
    )?;
    Ok(bytes)
}

fn write_config(path: &Path, body: &str) -> std::io::Result<()> {
    std::fs::File::create(path)?.write_all(body.as_bytes())
}

fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(dir: Option<PathBuf>, files: usize) -> Result<(), DemoError> {
    let base = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            let d = std::env::temp_dir().join(format!("syncd-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
    };
    let (pex, sex) = (base.join("primary"), base.join("standby"));
    std::fs::create_dir_all(&pex)?;
    std::fs::create_dir_all(&sex)?;
    println!("demo directory: {}", base.display());
    for n in ["primary", "standby"] {
        let k = base.join(format!("{n}-keys"));
        if !k.join("node.crt").exists() {
            let fp = crate::tls::keygen(&k, n).map_err(msg)?;
            println!("  {n} certificate {fp}");
        }
    }
    let port = free_udp_port()?;
    write_config(
        &base.join("standby.toml"),
        &format!("node_id = \"standby\"\nexport = \"standby\"\nlisten = \"127.0.0.1:{port}\"\ncert = \"standby-keys/node.crt\"\nkey = \"standby-keys/node.key\"\npeer_cert = \"primary-keys/node.crt\"\n"),
    )?;
    write_config(
        &base.join("primary.toml"),
        &format!("node_id = \"primary\"\nexport = \"primary\"\npeer = \"127.0.0.1:{port}\"\ncert = \"primary-keys/node.crt\"\nkey = \"primary-keys/node.key\"\npeer_cert = \"standby-keys/node.crt\"\n"),
    )?;
    let t = Instant::now();
    let bytes = generate_tree(&pex, files, 42)?;
    println!(
        "generated {files} files + special cases ({:.1} MiB) in {:.2} s",
        bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(base.join("standby.log"))?;
    let child = Command::new(exe)
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

    let cfg = Config::load(&base.join("primary.toml")).map_err(msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let o = ResyncOptions {
        dry_run: false,
        checksum: false,
        delete: true,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let first = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client::resync(&cfg, &o).await {
                Err(client::ClientError::Connect(..)) if Instant::now() < deadline => {
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
    let second = rt.block_on(client::resync(&cfg, &o)).map_err(msg)?;
    println!("\n== after editing 4 KiB of big.bin, adding and deleting a file ==\n{second}");
    let diffs = rt.block_on(client::verify(&cfg)).map_err(msg)?;
    if diffs.is_empty() {
        println!(
            "\n== verify ==\nequal: {} and {} match by content and metadata",
            pex.display(),
            sex.display()
        );
    } else {
        for d in &diffs {
            println!("{}: {}", d.path, d.what);
        }
        return Err(DemoError::Msg(format!(
            "{} differences after resync",
            diffs.len()
        )));
    }
    println!("\nTry it yourself:\n  syncd resync --config {0}/primary.toml --dry-run\n  syncd verify --config {0}/primary.toml\n(the standby process stops when the demo exits; start it with `syncd --role standby --config {0}/standby.toml`)", base.display());
    Ok(())
}
