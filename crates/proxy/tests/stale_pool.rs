//! A pooled backend connection that the backend has just closed (its FIN
//! already in the proxy's socket, but not yet reported by the proxy's
//! reactor) must not cost a client request, a POST included, and must
//! never deliver a request twice.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::*;

/// What the backend saw: requests it read and answered, and requests that
/// were already in its socket when it closed (never read).
#[derive(Default)]
struct Seen {
    answered: Vec<String>,
    unread_at_close: Vec<String>,
}

/// A backend whose keep-alive timeout is zero: it answers one request per
/// connection as HTTP/1.1 keep-alive (no `Connection: close`), then closes
/// the connection at once, as a server does when its idle timeout is
/// shorter than the proxy's pool time. Requests are logged as
/// "METHOD /path".
fn closes_after_each_response() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let log = log.clone();
            std::thread::spawn(move || serve_one(s, &log));
        }
    });
    (addr, seen)
}

fn serve_one(mut s: TcpStream, log: &Mutex<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = head.lines().next().unwrap_or("").to_string();
    let target = line.rsplit_once(' ').map_or(line.as_str(), |(t, _)| t);
    log.lock().unwrap().answered.push(target.to_string());
    let body = target
        .split_once(' ')
        .map_or("", |(_, path)| path)
        .as_bytes();
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    let _ = s.write_all(&out);
    // the idle close, right behind the response. Until the drop below the
    // kernel still acknowledges and queues new bytes (the proxy must not
    // replay a POST it cannot prove unread: 502); after it, it answers
    // them with a reset (unread: replayed). The peek tells the two apart
    // for the test
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = s.set_nonblocking(true);
    let mut rest = [0u8; 256];
    if let Ok(n @ 1..) = s.peek(&mut rest) {
        let text = String::from_utf8_lossy(&rest[..n]).to_string();
        let line = text.lines().next().unwrap_or("");
        let target = line.rsplit_once(' ').map_or(line, |(t, _)| t);
        log.lock().unwrap().unread_at_close.push(target.to_string());
    }
}

/// Read one response (Content-Length framed) from `s`, with `buf` keeping
/// what follows it.
fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= p + 4 + len {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[p + 4..p + 4 + len]).to_string();
                buf.drain(..p + 4 + len);
                return (status, body);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, String::from_utf8_lossy(buf).to_string()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Each client pipelines a GET and a POST: the proxy answers the GET on a
/// backend connection, pools it, and at once takes it for the POST, which
/// it already holds, without a turn of its reactor in between; the
/// backend's FIN, sent right behind the GET's response, is in the socket
/// by then or arrives as the POST goes out. nginx answers such a POST with
/// 502 (`proxy_next_upstream` never replays a sent POST); the proxy must
/// notice that the backend read none of it and send it once more, on a
/// fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_on_a_pooled_connection_the_backend_just_closed_is_sent_once_fresh() {
    let (addr, seen) = closes_after_each_response();
    let cfg = "[global]\nworkers = 1\naccess_log = false\n".to_string()
        + &http_listener("web")
        + &upstream(
            "web",
            "keepalive = 16\nkeepalive_timeout = \"60s\"",
            &[(addr, "max_fails = 0")],
        );
    let p = Proxy::start(&cfg).await;
    let listen = p.listen;
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 100;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                for r in 0..ROUNDS {
                    let id = format!("{c}-{r}");
                    let mut s = TcpStream::connect(listen).unwrap();
                    let req = format!(
                        "GET /g{id} HTTP/1.1\r\nHost: t\r\n\r\n\
                         POST /p{id} HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nitem=1"
                    );
                    s.write_all(req.as_bytes()).unwrap();
                    let mut buf = Vec::new();
                    for want in [format!("/g{id}"), format!("/p{id}")] {
                        let (status, body) = read_reply(&mut s, &mut buf);
                        if status != 200 || body != want {
                            failed.push(format!("{want}: {status} {body:?}"));
                        }
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.join().unwrap());
    }
    let attempts = p
        .metric(&format!(
            "syncd_proxy_upstream_requests_total{{upstream=\"web\",server=\"{addr}\"}}"
        ))
        .await;
    let seen = seen.lock().unwrap();
    // a POST whose bytes the backend's kernel held when it closed may have
    // been read (the proxy cannot tell): a 502 is right for it, never a replay
    let excused = |f: &String| {
        let target = f.split(':').next().unwrap_or("");
        f.contains(": 502 ") && seen.unread_at_close.contains(&format!("POST {target}"))
    };
    let unexcused: Vec<_> = failed.iter().filter(|f| !excused(f)).collect();
    assert!(
        unexcused.is_empty(),
        "{} of {} requests failed ({} excused: in the backend's socket at its close): {:?}\nproxy log:\n{}",
        unexcused.len(),
        2 * CLIENTS * ROUNDS,
        failed.len() - unexcused.len(),
        &unexcused[..unexcused.len().min(10)],
        p.log()
    );
    // every POST answered was read by the backend's application exactly once
    let mut posts: Vec<_> = seen
        .answered
        .iter()
        .filter(|t| t.starts_with("POST"))
        .collect();
    let answered = posts.len();
    posts.sort();
    posts.dedup();
    assert_eq!(posts.len(), answered, "a POST was read twice");
    assert_eq!(
        answered,
        CLIENTS * ROUNDS - (failed.len() - unexcused.len()),
        "POSTs read by the backend"
    );
    // how often the race was met: attempts on a connection the backend had
    // closed (sent again, or the excused 502s) beyond the requests it read
    eprintln!(
        "{} POSTs were in the backend's socket at its close; {} got 502 for it; \
         {} attempts met a closed connection",
        seen.unread_at_close
            .iter()
            .filter(|t| t.starts_with("POST"))
            .count(),
        failed.len(),
        attempts - seen.answered.len() as f64
    );
}
