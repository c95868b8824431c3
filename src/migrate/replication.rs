//! The replication being replaced: the seeds' `inotifywait ... | while read
//! ...; do rsync ...; done` script, or an lsyncd `sync { default.rsync ... }`.
//! Only those patterns are read, not arbitrary shell or Lua.

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replication {
    /// The watched (source) directory.
    pub source: Option<String>,
    /// Where rsync sends: the host and the module or path there.
    pub target_host: Option<String>,
    pub target_path: Option<String>,
    pub delete: bool,
    /// Traps found in the script itself.
    pub traps: Vec<String>,
    pub from: &'static str,
}

/// Words of a shell fragment, quotes dropped (no expansion: an assignment
/// like `B="rsync -a ..."` reads as its words); `;`, `|` and `&` are
/// separate words, ending a command.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '"' | '\'' => {}
            ';' | '|' | '&' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_sep(w: &str) -> bool {
    matches!(w, ";" | "|" | "&")
}

/// `host::module/path`, `rsync://host[:port]/module/path`, `[user@]host:path`.
fn split_target(t: &str) -> (Option<String>, Option<String>) {
    if let Some(rest) = t.strip_prefix("rsync://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        return (Some(host.to_string()), Some(path.to_string()));
    }
    if let Some((host, m)) = t.split_once("::") {
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        return (Some(host.to_string()), Some(m.to_string()));
    }
    if let Some((host, p)) = t.split_once(':') {
        if !host.contains('/') {
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            return (Some(host.to_string()), Some(p.to_string()));
        }
    }
    (None, Some(t.to_string()))
}

/// Options of inotifywait that take a value.
const INOTIFY_VALUED: &[&str] = &[
    "-e",
    "--event",
    "--exclude",
    "--excludei",
    "--include",
    "--includei",
    "--format",
    "--timefmt",
    "-t",
    "--timeout",
    "--fromfile",
    "-o",
    "--outfile",
];

/// Reads the seeds' shell loop.
pub fn script(text: &str) -> Replication {
    let mut r = Replication {
        from: "rsync loop script",
        ..Replication::default()
    };
    let code: Vec<&str> = text
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.starts_with('#'))
        .collect();
    for line in &code {
        let w = words(line);
        if let Some(i) = w.iter().position(|x| x.ends_with("inotifywait")) {
            let mut j = i + 1;
            while j < w.len() && !is_sep(&w[j]) {
                let a = &w[j];
                if INOTIFY_VALUED.contains(&a.as_str()) {
                    j += 2;
                    continue;
                }
                if !a.starts_with('-') && !a.starts_with('$') && r.source.is_none() {
                    r.source = Some(a.clone());
                }
                j += 1;
            }
        }
        if let Some(i) = w
            .iter()
            .position(|x| x.ends_with("rsync") || x.ends_with("/rsync"))
        {
            // `pgrep rsync` is a guard, not the transfer.
            if i > 0 && w[i - 1].ends_with("pgrep") {
                continue;
            }
            let args: Vec<&String> = w[i + 1..].iter().take_while(|a| !is_sep(a)).collect();
            if args.iter().any(|a| a.as_str() == "--daemon") {
                continue;
            }
            r.delete |= args.iter().any(|a| a.starts_with("--delete"));
            let pos: Vec<&&String> = args
                .iter()
                .filter(|a| !a.starts_with('-') && !a.starts_with('$'))
                .collect();
            if let Some(dest) = pos.last() {
                let (h, p) = split_target(dest);
                r.target_host = h;
                r.target_path = p;
            }
            if r.source.is_none() {
                r.source = pos.first().map(|s| s.to_string());
            }
        }
    }
    let text_code = code.join("\n");
    if text_code.contains("pgrep rsync") {
        r.traps.push(
            "the loop runs rsync only while `pgrep rsync` finds an rsync process (the local `rsync --daemon`): when that daemon is down, changes are silently not replicated".into(),
        );
    }
    if r.target_host.is_some() && !r.delete {
        r.traps.push(
            "rsync runs without --delete: files deleted on the source stay on the standby (syncd replicates deletions; `[sync] delete = false` keeps the old behaviour)".into(),
        );
    }
    if text_code.contains("while read") && !text_code.contains("--exclude") {
        // Each event runs a full-tree rsync: cost grows with the tree.
        r.traps.push(
            "every event runs a full-tree rsync: with many files each change costs a full scan; bursts queue up behind it".into(),
        );
    }
    r
}

/// Reads an lsyncd config's first `sync { default.rsync | default.rsyncssh ... }`.
pub fn lsyncd(text: &str) -> Replication {
    let mut r = Replication {
        from: "lsyncd config",
        ..Replication::default()
    };
    let field = |name: &str| -> Option<String> {
        let mut at = 0;
        while let Some(i) = text[at..].find(name) {
            let start = at + i;
            at = start + name.len();
            let before_ok = start == 0
                || !text[..start]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let rest = text[at..].trim_start();
            if before_ok {
                if let Some(v) = rest.strip_prefix('=') {
                    let v = v.trim_start();
                    let end = v.find([',', '\n', '}']).unwrap_or(v.len());
                    return Some(v[..end].trim().trim_matches(['"', '\'']).to_string());
                }
            }
        }
        None
    };
    r.source = field("source");
    if let Some(t) = field("target") {
        let (h, p) = split_target(&t);
        r.target_host = h;
        r.target_path = p;
    } else {
        r.target_host = field("host");
        r.target_path = field("targetdir");
    }
    // lsyncd deletes by default (`delete = true`).
    r.delete = !matches!(field("delete").as_deref(), Some("false"));
    if matches!(field("delete").as_deref(), Some("startup" | "running")) {
        r.traps.push(format!(
            "lsyncd `delete = {}` deletes only part of the time; syncd replicates every deletion (or none with `[sync] delete = false`)",
            field("delete").unwrap_or_default()
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seed_000s_loop() {
        let r = script(
            "#!/bin/bash\nA=\"inotifywait -mrq -e modify,move,create,delete /database/\"\n\
             B=\"rsync -avz  /database/ 192.168.1.40::wwwroot\"\n$A | while read DIRECTORY EVENT FILE\ndo\n\
             \x20   if [ $(pgrep rsync | wc -l) -gt 0 ] ; then\n        $B\n    fi\ndone\n",
        );
        assert_eq!(r.source.as_deref(), Some("/database/"));
        assert_eq!(r.target_host.as_deref(), Some("192.168.1.40"));
        assert_eq!(r.target_path.as_deref(), Some("wwwroot"));
        assert!(!r.delete);
        assert!(
            r.traps.iter().any(|t| t.contains("pgrep rsync")),
            "{:?}",
            r.traps
        );
        assert!(
            r.traps.iter().any(|t| t.contains("without --delete")),
            "{:?}",
            r.traps
        );
    }

    #[test]
    fn reads_targets_of_every_form() {
        for (t, host, path) in [
            ("backup::data", "backup", "data"),
            ("rsync://10.0.0.2:873/data/x", "10.0.0.2", "data/x"),
            ("root@10.0.0.2:/srv/nfs", "10.0.0.2", "/srv/nfs"),
        ] {
            let r = script(&format!(
                "inotifywait -mrq --format '%w%f' -e close_write /srv/nfs | while read f; do rsync -a --delete /srv/nfs/ {t}; done"
            ));
            assert_eq!(r.source.as_deref(), Some("/srv/nfs"), "{t}");
            assert_eq!(r.target_host.as_deref(), Some(host), "{t}");
            assert_eq!(r.target_path.as_deref(), Some(path), "{t}");
            assert!(r.delete);
        }
    }

    #[test]
    fn reads_lsyncd() {
        let r = lsyncd(
            "settings { logfile = \"/var/log/lsyncd.log\" }\nsync {\n  default.rsync,\n  source = \"/data/www\",\n  target = \"10.0.0.2::www\",\n  delete = \"running\",\n  rsync = { archive = true }\n}\n",
        );
        assert_eq!(r.source.as_deref(), Some("/data/www"));
        assert_eq!(r.target_host.as_deref(), Some("10.0.0.2"));
        assert!(r.delete);
        assert_eq!(r.traps.len(), 1);
        let r = lsyncd(
            "sync { default.rsyncssh, source = '/srv', host = 'standby', targetdir = '/srv' }",
        );
        assert_eq!(r.target_host.as_deref(), Some("standby"));
        assert_eq!(r.target_path.as_deref(), Some("/srv"));
    }
}
