//! Times syncd's whole-tree walk (the listing a restart, `verify --quick`
//! and every full compare make on each side) of one directory: `ROUNDS`
//! walks, printing each round's seconds and entry count. Run by
//! `benches/walk.sh`, which sets the cores and compares rsync's listing.
//!
//!   cargo bench --bench walk -- DIR [ROUNDS]

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let Some(dir) = args.next() else {
        eprintln!("usage: walk DIR [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(1);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let mut index = syncd::index::Index::default();
        match syncd::scan::scan(std::path::Path::new(&dir), &mut index, false, false) {
            Ok(s) => println!("{:.3} {}", t0.elapsed().as_secs_f64(), s.entries.len()),
            Err(e) => {
                eprintln!("walk: {dir}: {e}");
                std::process::exit(1);
            }
        }
    }
}
