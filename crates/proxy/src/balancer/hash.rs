//! Hash-based selection: nginx `ip_hash` and `hash $key consistent` (ketama).

use std::net::IpAddr;
use std::time::Instant;

use super::{Attempt, Peer};

/// CRC-32 (IEEE), the hash nginx uses for `hash` keys.
pub fn crc32(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// nginx gives up hashing after 20 unavailable picks and falls back to round-robin.
const MAX_HASH_TRIES: u32 = 20;

/// `ip_hash`: the first three octets of an IPv4 address (the whole IPv6
/// address) select a server, with nginx's hash (`89`, `*113`, `%6271`) so the
/// same clients land on the same servers as behind nginx.
pub fn select_ip_hash<T>(
    set: &[Peer<T>],
    now: Instant,
    ip: IpAddr,
    attempt: &mut Attempt,
) -> Option<usize> {
    let octets: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets()[..3].to_vec(),
            None => v6.octets().to_vec(),
        },
    };
    let total: u32 = set.iter().map(|p| p.spec.weight).sum();
    if total == 0 {
        return None;
    }
    let mut hash = attempt.hash_state.unwrap_or(89);
    loop {
        for &b in &octets {
            hash = (hash * 113 + u32::from(b)) % 6271;
        }
        let mut w = hash % total;
        let mut idx = 0;
        while w >= set[idx].spec.weight {
            w -= set[idx].spec.weight;
            idx += 1;
        }
        let p = &set[idx];
        if !attempt.tried(p.id) && p.usable(now, false) {
            attempt.hash_state = Some(hash);
            attempt.hash_tries += 1;
            return Some(idx);
        }
        attempt.hash_tries += 1;
        if attempt.hash_tries > MAX_HASH_TRIES {
            return None;
        }
    }
}

/// A ketama ring: 160 points per unit of weight, as nginx's `hash ... consistent`.
#[derive(Debug, Default, Clone)]
pub struct Ring {
    points: Vec<(u32, usize)>,
}

impl Ring {
    pub fn build<'a>(servers: impl Iterator<Item = (&'a str, u32)>) -> Ring {
        let mut points = Vec::new();
        for (idx, (key, weight)) in servers.enumerate() {
            let mut prev: u32 = 0;
            for _ in 0..(160 * weight) {
                let mut buf = Vec::with_capacity(key.len() + 5);
                buf.extend_from_slice(key.as_bytes());
                buf.push(0);
                buf.extend_from_slice(&prev.to_le_bytes());
                prev = crc32(&buf);
                points.push((prev, idx));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Walk the ring clockwise from the key's hash to the first available server.
    pub fn select<T>(
        &self,
        set: &[Peer<T>],
        now: Instant,
        hash: u32,
        attempt: &mut Attempt,
    ) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(h, _)| *h < hash);
        let skip = attempt.hash_tries as usize;
        for step in skip..self.points.len().min(skip + MAX_HASH_TRIES as usize + 1) {
            let (_, idx) = self.points[(start + step) % self.points.len()];
            attempt.hash_tries += 1;
            let p = set.get(idx)?;
            if !attempt.tried(p.id) && p.usable(now, false) {
                return Some(idx);
            }
        }
        None
    }
}

/// Variables a hash key can use.
pub trait KeyVars {
    fn var(&self, name: &str) -> Option<String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

/// A parsed `hash_key` such as `"$request_uri"` or `"$http_x_user$arg_id"`.
/// Supported: `$remote_addr`, `$host`, `$uri`, `$request_uri`, `$args`,
/// `$http_NAME` (request header), `$arg_NAME` (query argument), `$cookie_NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

impl KeyTemplate {
    pub fn parse(text: &str) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' {
                lit.push(c);
                continue;
            }
            let mut name = String::new();
            while let Some(&n) = chars.peek() {
                if n.is_ascii_alphanumeric() || n == '_' {
                    name.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            let known = matches!(
                name.as_str(),
                "remote_addr" | "host" | "uri" | "request_uri" | "args"
            ) || ["http_", "arg_", "cookie_"]
                .iter()
                .any(|p| name.len() > p.len() && name.starts_with(p));
            if !known {
                return Err(format!(
                    "unknown variable ${name}; use $remote_addr, $host, $uri, $request_uri, $args, $http_NAME, $arg_NAME or $cookie_NAME"
                ));
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(name));
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if !parts.iter().any(|p| matches!(p, Part::Var(_))) {
            return Err("has no variable, so every request would go to one server; use e.g. \"$request_uri\"".into());
        }
        Ok(KeyTemplate { parts })
    }

    pub fn eval(&self, vars: &dyn KeyVars) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => out.push_str(&vars.var(v).unwrap_or_default()),
            }
        }
        out
    }

    pub fn hash(&self, vars: &dyn KeyVars) -> u32 {
        crc32(self.eval(vars).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Attempt, Key, Method, Outcome};
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn pick(g: &mut super::super::Group<String>, key: Key) -> String {
        let mut at = Attempt::new();
        let (id, n) = g.select(Instant::now(), key, &mut at).unwrap();
        let n = n.clone();
        g.release(id, Instant::now(), Outcome::Success);
        n
    }

    #[test]
    fn ip_hash_is_sticky_per_slash24_and_spreads() {
        let mut g = group(
            Method::IpHash,
            vec![spec("a", 1), spec("b", 1), spec("c", 1)],
        );
        let ip = |s: &str| Key {
            client_ip: Some(s.parse().unwrap()),
            hash: None,
        };
        let first = pick(&mut g, ip("192.168.1.10"));
        for _ in 0..5 {
            assert_eq!(pick(&mut g, ip("192.168.1.10")), first);
            assert_eq!(
                pick(&mut g, ip("192.168.1.200")),
                first,
                "same /24, same server"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            seen.insert(pick(&mut g, ip(&format!("10.{i}.{}.1", (i * 7) % 256))));
        }
        assert_eq!(seen.len(), 3, "different networks spread over all servers");
    }

    #[test]
    fn ip_hash_nginx_value() {
        // nginx: hash=89; for 192,168,1: (h*113+b)%6271 -> 3004 ... ; w = hash % 3
        let mut h = 89u32;
        for b in [192u32, 168, 1] {
            h = (h * 113 + b) % 6271;
        }
        let mut g = group(
            Method::IpHash,
            vec![spec("a", 1), spec("b", 1), spec("c", 1)],
        );
        let want = ["a", "b", "c"][(h % 3) as usize];
        let got = pick(
            &mut g,
            Key {
                client_ip: Some("192.168.1.77".parse().unwrap()),
                hash: None,
            },
        );
        assert_eq!(got, want);
    }

    #[test]
    fn consistent_hash_moves_few_keys_when_a_server_goes_away() {
        let names = ["a", "b", "c", "d"];
        let mut g = group(Method::Hash, names.iter().map(|n| spec(n, 1)).collect());
        let key = |i: u32| Key {
            client_ip: None,
            hash: Some(crc32(format!("/object/{i}").as_bytes())),
        };
        let before: Vec<String> = (0..1000).map(|i| pick(&mut g, key(i))).collect();
        let counts = before.iter().fold(HashMap::new(), |mut m, n| {
            *m.entry(n.clone()).or_insert(0) += 1;
            m
        });
        for n in names {
            assert!(counts[n] > 120, "{n} got {} of 1000", counts[n]);
        }
        // take "c" down by active check: only its keys move
        let c_id = g.peers().find(|p| p.spec.key == "c").unwrap().id;
        g.record_check(c_id, false, 1, 1);
        let after: Vec<String> = (0..1000).map(|i| pick(&mut g, key(i))).collect();
        for (b, a) in before.iter().zip(&after) {
            if b != "c" {
                assert_eq!(b, a, "a key not on c must not move");
            } else {
                assert_ne!(a, "c");
            }
        }
    }

    struct Vars(HashMap<&'static str, &'static str>);
    impl KeyVars for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
    }

    #[test]
    fn key_template() {
        let t = KeyTemplate::parse("u:$request_uri|$http_x_user").unwrap();
        let v = Vars(HashMap::from([
            ("request_uri", "/a?b=1"),
            ("http_x_user", "bob"),
        ]));
        assert_eq!(t.eval(&v), "u:/a?b=1|bob");
        assert!(KeyTemplate::parse("$bogus").is_err());
        assert!(KeyTemplate::parse("constant").is_err());
    }
}
