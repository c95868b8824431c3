//! nginx `upstream {}` blocks and the `server {}` blocks that proxy to them,
//! as `syncd migrate` carries them over to syncd-proxy.

/// One nginx directive: its words, and its `{}` block if any.
#[derive(Debug, Clone, Default)]
struct Directive {
    words: Vec<String>,
    children: Vec<Directive>,
}

fn parse(text: &str) -> Vec<Directive> {
    // Tokens: words, ";", "{", "}"; `#` comments to the end of the line.
    let mut toks: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut cur = String::new();
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => cur.push(c),
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, ';' | '{' | '}') => {
                    if !cur.is_empty() {
                        toks.push(std::mem::take(&mut cur));
                    }
                    toks.push(c.to_string());
                }
                (None, c) if c.is_whitespace() => {
                    if !cur.is_empty() {
                        toks.push(std::mem::take(&mut cur));
                    }
                }
                (None, c) => cur.push(c),
            }
        }
        if !cur.is_empty() {
            toks.push(cur);
        }
    }
    let mut pos = 0;
    block(&toks, &mut pos)
}

fn block(toks: &[String], pos: &mut usize) -> Vec<Directive> {
    let mut out = Vec::new();
    let mut cur = Directive::default();
    while *pos < toks.len() {
        let t = &toks[*pos];
        *pos += 1;
        match t.as_str() {
            ";" => {
                if !cur.words.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            "{" => {
                cur.children = block(toks, pos);
                out.push(std::mem::take(&mut cur));
            }
            "}" => break,
            w => cur.words.push(w.to_string()),
        }
    }
    if !cur.words.is_empty() {
        out.push(cur);
    }
    out
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Server {
    pub addr: String,
    pub weight: Option<String>,
    pub max_fails: Option<String>,
    pub fail_timeout: Option<String>,
    pub backup: bool,
    pub down: bool,
    /// Parameters not carried over (`resolve`, `slow_start`, ...).
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub name: String,
    /// `least_conn`, `ip_hash`, `hash KEY` or round robin.
    pub algorithm: Option<String>,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Default)]
pub struct Site {
    pub listen: Vec<String>,
    pub upstream: String,
}

#[derive(Debug, Clone, Default)]
pub struct Nginx {
    pub upstreams: Vec<Upstream>,
    pub sites: Vec<Site>,
    /// What was seen and not carried over.
    pub notes: Vec<String>,
}

/// Every `upstream` and every `server` with a `proxy_pass http://NAME`
/// (anywhere: top level, inside `http {}`, or a bare snippet as in the seeds).
pub fn read(text: &str) -> Nginx {
    let mut n = Nginx::default();
    walk(&parse(text), &mut n);
    n
}

fn walk(ds: &[Directive], n: &mut Nginx) {
    for d in ds {
        match d.words.first().map(String::as_str) {
            Some("upstream") if d.words.len() > 1 => n.upstreams.push(upstream(d)),
            Some("server") if !d.children.is_empty() => site(d, n),
            // `location / { proxy_pass ...; }` outside any server block:
            // a snippet; it proxies on the default port.
            Some("location") => {
                if let Some(u) = proxy_pass(&d.children) {
                    n.sites.push(Site {
                        listen: vec!["80".into()],
                        upstream: u,
                    });
                }
            }
            _ => walk(&d.children, n),
        }
    }
}

fn upstream(d: &Directive) -> Upstream {
    let mut u = Upstream {
        name: d.words[1].clone(),
        ..Upstream::default()
    };
    for c in &d.children {
        match c.words.first().map(String::as_str) {
            Some("server") if c.words.len() > 1 => {
                let mut s = Server {
                    addr: c.words[1].clone(),
                    ..Server::default()
                };
                for p in &c.words[2..] {
                    match p.split_once('=') {
                        Some(("weight", v)) => s.weight = Some(v.into()),
                        Some(("max_fails", v)) => s.max_fails = Some(v.into()),
                        Some(("fail_timeout", v)) => s.fail_timeout = Some(v.into()),
                        None if p == "backup" => s.backup = true,
                        None if p == "down" => s.down = true,
                        _ => s.ignored.push(p.clone()),
                    }
                }
                u.servers.push(s);
            }
            Some(a @ ("least_conn" | "ip_hash")) => u.algorithm = Some(a.to_string()),
            Some("hash") => u.algorithm = Some(c.words[1..].join(" ")),
            _ => {}
        }
    }
    u
}

fn proxy_pass(ds: &[Directive]) -> Option<String> {
    ds.iter().find_map(|d| {
        if d.words.first().map(String::as_str) == Some("proxy_pass") {
            d.words
                .get(1)
                .and_then(|t| t.strip_prefix("http://"))
                .map(|t| t.trim_end_matches('/').to_string())
        } else {
            proxy_pass(&d.children)
        }
    })
}

fn site(d: &Directive, n: &mut Nginx) {
    let Some(upstream) = proxy_pass(&d.children) else {
        return;
    };
    let listen: Vec<String> = d
        .children
        .iter()
        .filter(|c| c.words.first().map(String::as_str) == Some("listen"))
        .filter_map(|c| c.words.get(1).cloned())
        .collect();
    if d.children.iter().any(|c| {
        c.words.first().map(String::as_str) == Some("listen") && c.words.iter().any(|w| w == "ssl")
    }) {
        n.notes.push(format!(
            "server proxying to {upstream}: `listen ... ssl`: add `tls = {{ cert, key }}` to the listener by hand"
        ));
    }
    n.sites.push(Site {
        listen: if listen.is_empty() {
            vec!["80".into()]
        } else {
            listen
        },
        upstream,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seed_snippet_and_a_full_config() {
        // Seed 000: an upstream and a bare location, as pasted in the write-up.
        let n = read(
            "upstream backend {\nserver 192.168.1.11:90 weight=1 max_fails=2 fail_timeout=10s;\n\
             server 192.168.1.13:90 weight=1 max_fails=2 fail_timeout=10s;\n}\n\
             location / {\n   # root   html;\n   proxy_pass http://backend;  #添加\n}\n",
        );
        assert_eq!(n.upstreams[0].name, "backend");
        assert_eq!(n.upstreams[0].servers.len(), 2);
        assert_eq!(
            n.upstreams[0].servers[0],
            Server {
                addr: "192.168.1.11:90".into(),
                weight: Some("1".into()),
                max_fails: Some("2".into()),
                fail_timeout: Some("10s".into()),
                ..Server::default()
            }
        );
        assert_eq!(n.sites[0].upstream, "backend");
        assert_eq!(n.sites[0].listen, ["80"]);

        let n = read(
            "http { upstream app { least_conn; server 10.0.0.1:8080; server 10.0.0.2:8080 backup; }\n\
             server { listen 8080; listen [::]:8080; location / { proxy_pass http://app/; } } }",
        );
        assert_eq!(n.upstreams[0].algorithm.as_deref(), Some("least_conn"));
        assert!(n.upstreams[0].servers[1].backup);
        assert_eq!(n.sites[0].listen, ["8080", "[::]:8080"]);
        assert_eq!(n.sites[0].upstream, "app");
    }
}
