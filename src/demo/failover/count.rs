//! The demo's verdict: every acknowledged write is on the leader, only in
//! a conflicts area, or gone.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::lab::Lab;

pub(super) struct Counts {
    pub leader: usize,
    pub on_leader: u64,
    pub in_conflicts: u64,
    pub gone: Vec<String>,
}

pub(super) fn count(l: &Lab, written: &BTreeMap<String, String>) -> Counts {
    let leader = l.holder().unwrap_or(1);
    let kept = kept(l);
    let mut c = Counts {
        leader,
        on_leader: 0,
        in_conflicts: 0,
        gone: Vec::new(),
    };
    for (name, content) in written {
        let here = std::fs::read_to_string(l.export(leader).join(name)).ok();
        if here.as_deref() == Some(content.as_str()) {
            c.on_leader += 1;
        } else if kept.iter().any(|(k, p)| {
            k.ends_with(name)
                && std::fs::read_to_string(p).ok().as_deref() == Some(content.as_str())
        }) {
            c.in_conflicts += 1;
        } else {
            c.gone.push(name.clone());
        }
    }
    c
}

/// Every kept file on both nodes: its name and where it lies now.
fn kept(l: &Lab) -> Vec<(PathBuf, PathBuf)> {
    (0..2)
        .filter_map(|i| {
            let cfg = syncd::config::Config::load(&l.config(i)).ok()?;
            let list = syncd::conflicts::list(&cfg.state_dir).ok()?;
            Some(
                list.into_iter()
                    .map(|k| {
                        (
                            k.name.clone(),
                            syncd::conflicts::path_of(&cfg.state_dir, &k),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect()
}
