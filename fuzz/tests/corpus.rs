//! Replays every committed corpus file of every target, and the inputs of
//! past findings under `regressions/` (which `-merge=1` would drop, as they
//! add no coverage), through the target bodies on the stable toolchain (no
//! libFuzzer): the cheap CI smoke.
//!
//!     cargo test --manifest-path fuzz/Cargo.toml --no-default-features

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, body) in syncd_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; every target needs seeds", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: empty corpus");
        if let Ok(rd) = std::fs::read_dir(root.join("../regressions").join(name)) {
            files.extend(rd.map(|e| e.unwrap().path()));
        }
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "{name}: {} fails", f.display());
        }
        total += files.len();
    }
    // Every corpus directory belongs to a target.
    for e in std::fs::read_dir(&root).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(
            syncd_fuzz::TARGETS.iter().any(|(t, _)| *t == n),
            "corpus/{n} has no target in TARGETS"
        );
    }
    eprintln!("replayed {total} corpus files");
}
