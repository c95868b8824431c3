//! Times syncd's whole-tree walk (the listing a restart, `verify --quick`
//! and every full compare make on each side) of one directory: `ROUNDS`
//! walks, printing each round's seconds and entry count. Run by
//! `benches/walk.sh`, which sets the cores and compares rsync's listing.
//!
//!   cargo bench --bench walk -- DIR [ROUNDS]
//!
//! With `WATCH=1`, each walk also watches every directory before reading
//! it, as the primary's does (a fresh inotify watch each round). With
//! `DIGESTS=1`, each round also builds the listing's directory digests (what
//! both sides do next at a restart) and prints that build's seconds.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let Some(dir) = args.next() else {
        eprintln!("usage: walk DIR [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(1);
    let watching = std::env::var_os("WATCH").is_some_and(|v| v == "1");
    let digests = std::env::var_os("DIGESTS").is_some_and(|v| v == "1");
    let root = std::path::Path::new(&dir);
    for _ in 0..rounds {
        let watch = watching.then(|| {
            syncd::watch::Watch::start(root).unwrap_or_else(|e| {
                eprintln!("walk: {e}");
                std::process::exit(1);
            })
        });
        let t0 = Instant::now();
        let mut index = syncd::index::Index::default();
        let hook = watch.as_ref().map(|w| w.dirs().hook());
        match syncd::scan::scan_with(root, &mut index, false, false, hook) {
            Ok(s) if digests => {
                let walked = t0.elapsed().as_secs_f64();
                let t1 = Instant::now();
                let side = syncd::scan::digest::Side::Primary;
                let tree = syncd::scan::digest::tree(&s.entries, false, side);
                let built = t1.elapsed().as_secs_f64();
                let root = tree.root().tree;
                println!(
                    "{walked:.3} {} digests {built:.3} root {:02x?}",
                    s.entries.len(),
                    &root[..4]
                );
            }
            Ok(s) => println!("{:.3} {}", t0.elapsed().as_secs_f64(), s.entries.len()),
            Err(e) => {
                eprintln!("walk: {dir}: {e}");
                std::process::exit(1);
            }
        }
    }
}
