//! Bodies of the fuzz targets. Each `fuzz_targets/<name>.rs` is a one-line
//! call into the function of the same name, and `tests/corpus.rs` replays
//! every committed corpus file through [`TARGETS`] on the stable toolchain.
//!
//! A target checks properties, not only "no panic": round trips for codecs,
//! agreement between the two delta appliers, and the exact accepted
//! language of the small number parsers.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target: name (as under `fuzz_targets/` and `corpus/`) and body.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_request", wire_request),
    ("wire_reply", wire_reply),
    ("relpath", relpath),
    ("delta_apply", delta_apply),
    ("vrrp_packet", vrrp_packet),
    ("vrrp_config", vrrp_config),
    ("keepalived_import", keepalived_import),
    ("proxy_config", proxy_config),
    ("syncd_config", syncd_config),
    ("fingerprint", fingerprint),
    ("index_load", index_load),
    ("sigcache", sigcache),
    ("proxy_head", proxy_head),
    ("proxy_lengths", proxy_lengths),
    ("proxy_request", proxy_request),
    ("status_line", status_line),
];

fn wire_round_trip<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + std::fmt::Debug,
{
    let Ok(msg) = syncd::wire::decode::<T>(data) else {
        return;
    };
    let bytes = postcard::to_stdvec(&msg).expect("a decoded message encodes");
    let again: T = syncd::wire::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(format!("{msg:?}"), format!("{again:?}"));
    // The framed form carries the same payload.
    let mut framed = Vec::new();
    syncd::wire::encode_frame(&msg, &mut framed).expect("frame");
    assert_eq!(&framed[4..], &bytes[..]);
    assert_eq!(
        u32::from_le_bytes(framed[..4].try_into().unwrap()) as usize,
        bytes.len()
    );
}

/// `wire::decode::<Request>`; a decoded request re-encodes to one that
/// decodes equal.
pub fn wire_request(data: &[u8]) {
    wire_round_trip::<syncd::wire::Request>(data);
    let _ = syncd::wire::hello_speaks(data);
    // The same bytes from a primary of protocol 6: what decodes is encoded
    // back for 6 into bytes that decode to the same message.
    use syncd::wire::compat::{decode_request, encode_request, Outgoing};
    if let Ok(r) = decode_request(6, data) {
        let again = match encode_request(6, &r).unwrap() {
            Outgoing::Same => postcard::to_stdvec(&r).unwrap(),
            Outgoing::Bytes(b) => b,
            Outgoing::Skip => panic!("protocol 6 sent a message it does not have: {r:?}"),
        };
        let back = decode_request(6, &again).unwrap();
        assert_eq!(format!("{r:?}"), format!("{back:?}"));
    }
}

/// `wire::decode::<Reply>`; same round trip.
pub fn wire_reply(data: &[u8]) {
    wire_round_trip::<syncd::wire::Reply>(data);
    // The standby's policy trailing a Welcome: decoded, it encodes back
    // after the same reply to the same policy.
    if let Ok(Some(p)) = syncd::wire::welcome_policy(data) {
        let (r, _) = postcard::take_from_bytes::<syncd::wire::Reply>(data).unwrap();
        let enc = postcard::to_stdvec(&(&r, &p)).unwrap();
        assert_eq!(syncd::wire::welcome_policy(&enc).unwrap(), Some(p));
    }
}

fn check_relpath(p: &syncd_proto::path::RelPath) {
    let b = p.as_bytes();
    assert!(!b.is_empty(), "empty path accepted");
    assert!(b[0] != b'/', "absolute path accepted: {p:?}");
    assert!(!b.contains(&0), "NUL accepted: {p:?}");
    for c in b.split(|&x| x == b'/') {
        assert!(
            !c.is_empty() && c != b"." && c != b"..",
            "bad component accepted: {p:?}"
        );
    }
    assert!(!p.as_path().is_absolute());
    assert!(p
        .as_path()
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_))));
    // Serialized and decoded again: the same path.
    let enc = postcard::to_stdvec(p).unwrap();
    let dec: syncd_proto::path::RelPath = postcard::from_bytes(&enc).unwrap();
    assert_eq!(&dec, p);
}

/// `RelPath` from postcard and from raw bytes: anything accepted is relative,
/// NUL-free, without empty, `.` or `..` components.
pub fn relpath(data: &[u8]) {
    if let Ok(p) = postcard::from_bytes::<syncd_proto::path::RelPath>(data) {
        check_relpath(&p);
    }
    if let Ok(p) = syncd_proto::path::RelPath::new(data) {
        assert_eq!(p.as_bytes(), data);
        check_relpath(&p);
    }
}

thread_local! {
    static BASE_FILE: std::fs::File = {
        let dir = scratch();
        let p = dir.join("delta-base");
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .expect("scratch base file")
    };
}

/// A per-process scratch directory, `syncd-fuzz-PID` in /dev/shm (or the
/// temp dir). A fuzzer exits without cleaning up, so the directories of
/// processes that are gone are removed when the next one starts.
fn scratch() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("syncd-fuzz-")) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let d = root.join(format!("syncd-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
    .clone()
}

/// Differential: `apply_segment_file` (base in a file, `pread`) and
/// `apply_segment` (fast_rsync, base in memory) agree on every input: both
/// Ok with the same output, or both Err.
///
/// Input: byte 0 picks the limit, bytes 1..3 the base length (u16 LE,
/// capped at what is left), then the base, then the delta segment.
pub fn delta_apply(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let limit: usize = match data[0] {
        0xff => 1 << 20,
        b => usize::from(b) * 8,
    };
    let rest = &data[3..];
    let n = usize::from(u16::from_le_bytes([data[1], data[2]])).min(rest.len());
    let (base, seg) = rest.split_at(n);

    let mut mem = Vec::new();
    let a = syncd::delta::apply_segment(base, seg, &mut mem, limit);

    let mut file_out = Vec::new();
    let b = BASE_FILE.with(|f| {
        use std::os::unix::fs::FileExt;
        f.set_len(0).unwrap();
        f.write_all_at(base, 0).unwrap();
        let mut buf = Vec::new();
        syncd::delta::apply_segment_file(f, seg, &mut file_out, limit as u64, &mut buf)
    });
    match (&a, &b) {
        (Ok(()), Ok(written)) => {
            assert_eq!(mem, file_out, "appliers produced different output");
            assert_eq!(*written, file_out.len() as u64);
            assert!(file_out.len() <= limit);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("appliers disagree: fast_rsync {a:?}, file {b:?}"),
    }
}

fn advert_round_trip(payload: &[u8], src: IpAddr, dst: IpAddr) {
    use syncd_vrrp::packet::Advert;
    let Ok(ad) = Advert::decode(payload, src, dst) else {
        return;
    };
    assert!(ad.vrid != 0 && ad.interval_cs != 0);
    assert!(ad.addrs.iter().all(|a| a.is_ipv4() == src.is_ipv4()));
    let bytes = ad.encode(src, dst).expect("a decoded advert encodes");
    let again = Advert::decode(&bytes, src, dst).expect("a re-encoded advert decodes");
    assert_eq!(ad, again);
}

/// `Advert::decode` over IPv4 and IPv6 and `parse_ipv4`; a decoded advert
/// re-encodes to bytes that decode to the same advert.
///
/// Input: byte 0 picks the path (0: IPv4 payload, 1: IPv6 payload,
/// else: a raw IPv4 datagram through `parse_ipv4`).
pub fn vrrp_packet(data: &[u8]) {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let v4 = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18)),
    );
    let v6 = (
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12)),
    );
    match sel % 3 {
        0 => advert_round_trip(buf, v4.0, v4.1),
        1 => advert_round_trip(buf, v6.0, v6.1),
        _ => {
            if let Ok((h, payload)) = syncd_vrrp::packet::parse_ipv4(buf) {
                assert_eq!(h.protocol, 112);
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                assert!(ihl >= 20);
                assert_eq!(payload.as_ptr() as usize, buf.as_ptr() as usize + ihl);
                assert!(ihl + payload.len() <= buf.len());
                advert_round_trip(payload, IpAddr::V4(h.src), IpAddr::V4(h.dst));
            }
        }
    }
}

/// `syncd_vrrp::config::parse` on the input as lossy UTF-8.
pub fn vrrp_config(data: &[u8]) {
    let _ = syncd_vrrp::config::parse(&String::from_utf8_lossy(data));
}

/// The keepalived.conf importer: it never panics, and what it writes is
/// valid TOML with one `[[vrrp]]` table per converted instance.
pub fn keepalived_import(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let out = syncd_vrrp::import::convert(&text);
    let v: toml::Value = toml::from_str(&out.toml)
        .unwrap_or_else(|e| panic!("importer wrote invalid TOML: {e}\n{}", out.toml));
    let n = v
        .get("vrrp")
        .and_then(|v| v.as_array())
        .map_or(0, |a| a.len());
    assert_eq!(n, out.instances);
    // The result is then validated like any config; that must not panic.
    let _ = syncd_vrrp::config::parse(&out.toml);
}

/// True if some string in the TOML would make a config loader ask DNS
/// (`host:port` with a host that is not an IP literal): such inputs are
/// skipped so that a fuzz run never waits on, or talks to, a resolver.
fn needs_dns(text: &str) -> bool {
    fn walk(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => {
                s.parse::<SocketAddr>().is_err()
                    && s.rsplit_once(':')
                        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            }
            toml::Value::Array(a) => a.iter().any(walk),
            toml::Value::Table(t) => t.iter().any(|(k, v)| walk(v) || walk_key(k)),
            _ => false,
        }
    }
    fn walk_key(k: &str) -> bool {
        walk(&toml::Value::String(k.to_string()))
    }
    match toml::from_str::<toml::Value>(text) {
        Ok(v) => walk(&v),
        // Not TOML for us; the loader's own parser will refuse it too.
        Err(_) => false,
    }
}

/// `syncd_proxy::config::Config::parse` (inputs that would need DNS are skipped).
pub fn proxy_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if needs_dns(&text) {
        return;
    }
    let _ = syncd_proxy::config::Config::parse(&text);
}

/// `syncd::config::Config::parse` against a directory holding `export/`,
/// `keys/node.crt` and `keys/node.key` (contents are not read), as in
/// `contrib/syncd.example.toml`-style configs (DNS inputs skipped).
pub fn syncd_config(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = scratch().join("config");
        std::fs::create_dir_all(d.join("export")).unwrap();
        std::fs::create_dir_all(d.join("keys")).unwrap();
        for f in ["node.crt", "node.key", "peer.crt"] {
            std::fs::write(d.join("keys").join(f), b"x").unwrap();
        }
        d
    });
    let text = String::from_utf8_lossy(data);
    if needs_dns(&text) {
        return;
    }
    if let Ok(c) = syncd::config::Config::parse(&text, &dir.join("syncd.toml")) {
        assert!(c.export.is_absolute());
        assert!(!c.export_id.is_empty() && c.export_id.len() <= 128);
        assert!(c.sync.delta_min_size >= 1);
        // chown(2) reads u32::MAX as "leave unchanged".
        if let syncd::meta_policy::Owners::Fixed { uid, gid } = c.standby.owners {
            assert!(uid != u32::MAX && gid != u32::MAX);
        }
    }
}

/// `Fingerprint::from_str`: anything accepted prints as `sha256:` and 64
/// lowercase hex digits, which parses back to the same fingerprint.
pub fn fingerprint(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(f) = s.parse::<syncd::tls::Fingerprint>() {
        let printed = f.to_string();
        let hex = printed.strip_prefix("sha256:").expect("prefix");
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(printed.parse::<syncd::tls::Fingerprint>(), Ok(f));
    }
}

/// `Index::load` of arbitrary file contents: no panic, and no more entries
/// than the bytes can encode (an entry takes at least 39 bytes: a key
/// length, six varints of the stamp and a 32-byte hash).
pub fn index_load(data: &[u8]) {
    let p = scratch().join("index");
    std::fs::write(&p, data).unwrap();
    let ix = syncd::index::Index::load(&p);
    assert!(
        ix.len() * 39 <= data.len(),
        "{} entries from {} bytes",
        ix.len(),
        data.len()
    );
}

/// The signature cache: a cache file with arbitrary contents is a miss or
/// exactly the signature after a matching header; what `put` stores, `get`
/// returns.
pub fn sigcache(data: &[u8]) {
    use syncd::index::Stamp;
    static CACHE: OnceLock<(syncd::sigcache::SigCache, PathBuf)> = OnceLock::new();
    let rel = syncd_proto::path::RelPath::new(b"a/b".to_vec()).unwrap();
    let stamp = Stamp {
        size: 7,
        mtime: (1, 2),
        ctime: (3, 4),
        ino: 5,
    };
    let (cache, file) = CACHE.get_or_init(|| {
        let state = scratch().join("state");
        let cache = syncd::sigcache::SigCache::new(&state);
        cache.put(&rel, &stamp, 1024, 8, b"seed");
        let file = std::fs::read_dir(state.join("sigs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_none())
            .expect("the cache file");
        (cache, file)
    });
    std::fs::File::create(file)
        .and_then(|mut f| f.write_all(data))
        .unwrap();
    if let Some(sig) = cache.get(&rel, &stamp, 1024, 8) {
        let mut want = b"SYNCDSG1".to_vec();
        want.extend(postcard::to_stdvec(&(stamp, 1024u32, 8u32)).unwrap());
        want.extend_from_slice(&sig);
        assert_eq!(want, data);
    }
    cache.put(&rel, &stamp, 2048, 6, data);
    assert_eq!(cache.get(&rel, &stamp, 2048, 6).as_deref(), Some(data));
    assert_eq!(cache.get(&rel, &stamp, 1024, 6), None);
}

/// What a strict parser of a decimal length accepts: 1+ ASCII digits, no sign.
fn want_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// What a strict chunk-size parser accepts: 1+ ASCII hex digits, no sign.
fn want_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// The backend response-head parser (`h1client::parse_response_head`) and
/// the framing read from its fields (`framing::response_framing`); the bytes
/// after the head go line by line through the chunk-size parser.
pub fn proxy_head(data: &[u8]) {
    use syncd_proxy::framing::{response_framing, Framing};
    let mut buf = bytes::BytesMut::from(data);
    match syncd_proxy::h1client::parse_response_head(&mut buf) {
        Ok(Some(resp)) => {
            assert!(buf.len() < data.len(), "a head consumes bytes");
            assert_eq!(&data[data.len() - buf.len()..], &buf[..]);
            let field = |name: &[u8]| {
                resp.fields()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            };
            match response_framing(resp.code, false, resp.fields()) {
                Ok(Framing::Chunked) => assert!(field(b"transfer-encoding").is_some()),
                Ok(Framing::Length(n)) => {
                    let v = field(b"content-length").expect("a length");
                    assert!(n > 0);
                    assert_eq!(want_digits(v.trim_ascii()), Some(n));
                }
                _ => {}
            }
            for line in buf[..].split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                check_chunk_line(line);
            }
        }
        Ok(None) => assert_eq!(&buf[..], data, "an incomplete head consumes nothing"),
        Err(_) => {}
    }
}

fn check_chunk_line(line: &[u8]) {
    let hex = line.split(|b| *b == b';').next().unwrap_or(b"");
    assert_eq!(
        syncd_proxy::h1client::chunk_size_line(line),
        want_hex(hex.trim_ascii()),
        "chunk-size line {:?}",
        String::from_utf8_lossy(line)
    );
}

/// The number parsers accept exactly plain digits: the chunk-size line
/// (hex, `;ext` ignored) and `forward::digits` (decimal).
pub fn proxy_lengths(data: &[u8]) {
    check_chunk_line(data);
    assert_eq!(
        syncd_proxy::forward::digits(data),
        want_digits(data),
        "length {:?}",
        String::from_utf8_lossy(data)
    );
}

/// The client request-head parser (`framing::parse_request`) and the strict
/// request framing (`framing::request_framing`). The first byte picks the
/// limits, so small ones are exercised too. Offsets stay inside the head,
/// limits hold, a length is one plain-digit Content-Length, chunked is
/// HTTP/1.1 without any Content-Length.
pub fn proxy_request(data: &[u8]) {
    use syncd_proxy::framing::{self, Framing, HeadLimits};
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let limits = HeadLimits {
        max_size: 64 + usize::from(sel) * 64,
        max_headers: 1 + usize::from(sel % 100),
    };
    let mut spans = Vec::new();
    let head = match framing::parse_request(data, limits, &mut spans) {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert!(data.len() <= limits.max_size, "an incomplete head within limits");
            return;
        }
        Err(_) => return,
    };
    assert!(head.len <= data.len() && head.len <= limits.max_size);
    assert!(spans.len() <= limits.max_headers);
    assert!(head.method.end <= head.len && head.target.end <= head.len);
    let field = |i: usize| (&data[spans[i].name.clone()], &data[spans[i].value.clone()]);
    let named = |name: &[u8]| {
        (0..spans.len())
            .map(field)
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .collect::<Vec<_>>()
    };
    match framing::request_framing(head.minor, (0..spans.len()).map(field)) {
        Ok(Framing::Length(n)) => {
            let cl = named(b"content-length");
            assert_eq!(cl.len(), 1);
            assert_eq!(want_digits(cl[0].1.trim_ascii()), Some(n));
            assert!(named(b"transfer-encoding").is_empty());
        }
        Ok(Framing::Chunked) => {
            assert_eq!(head.minor, 1);
            assert!(named(b"content-length").is_empty());
        }
        Ok(Framing::None) => assert!(named(b"transfer-encoding").is_empty()),
        Ok(Framing::UntilClose) => panic!("a request is never close-delimited"),
        Err(_) => {}
    }
}

/// The health checks' status-line parsers (vrrp `checks::parse_status`,
/// proxy `checker::parse_status_line`): a status is `HTTP/1.x` then three
/// plain digits, and the two agree.
pub fn status_line(data: &[u8]) {
    let a = syncd_vrrp::io::checks::parse_status(data);
    let b = syncd_proxy::checker::parse_status_line(data);
    assert_eq!(a, b, "the status parsers disagree on {data:?}");
    if let Some(code) = a {
        assert!(data.starts_with(b"HTTP/1."));
        let digits = &data[9..12];
        assert_eq!(want_digits(digits), Some(u64::from(code)), "{data:?}");
    }
}
