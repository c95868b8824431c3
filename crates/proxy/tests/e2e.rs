//! End-to-end tests: real backends, the real `syncd-proxy` binary, loopback.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_follows_weights() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let cfg = http_listener("web")
        + &upstream(
            "web",
            "",
            &[
                (a.addr, "weight = 5"),
                (b.addr, "weight = 1"),
                (c.addr, "weight = 1"),
            ],
        );
    let p = Proxy::start(&cfg).await;
    let mut seq = String::new();
    for _ in 0..70 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200, "{r:?}");
        seq.push_str(&r.backend());
    }
    // sequential requests follow nginx's smooth WRR sequence exactly
    assert_eq!(&seq[..7], "aabacaa");
    assert_eq!(a.count(), 50);
    assert_eq!(b.count(), 10);
    assert_eq!(c.count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_reach_the_backend() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let raw = b"GET /x HTTP/1.1\r\nHost: site.example\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\n\r\n";
    let r = send_raw(p.listen, raw).await.unwrap();
    assert_eq!(r.status, 200);
    let h = a.stats.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["host"], "site.example");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert!(!h.contains_key("x-drop-me"));
    assert!(!h.contains_key("keep-alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_under_load_gives_zero_failed_gets() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    // one worker: the single-threaded runtime path
    let cfg = "[global]\nworkers = 1\n\n".to_string()
        + &http_listener("web")
        + &upstream(
            "web",
            "",
            &[
                (a.addr, "max_fails = 1\nfail_timeout = \"2s\""),
                (b.addr, ""),
                (c.addr, ""),
            ],
        );
    let p = Proxy::start(&cfg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failures, addr) = (stop.clone(), ok.clone(), failures.clone(), p.listen);
        clients.push(tokio::spawn(async move {
            let mut conn = None;
            while !stop.load(Ordering::SeqCst) {
                match keepalive_get(&mut conn, addr, "/").await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((s, body)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {s}: {body:?}")),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        conn = None;
                    }
                }
            }
        }));
    }
    // load flows through all three servers before the kill
    wait_for("load on every server", Duration::from_secs(20), || {
        ok.load(Ordering::SeqCst) >= 60 && a.count() > 0 && b.count() > 0 && c.count() > 0
    })
    .await;
    let before_kill = ok.load(Ordering::SeqCst);
    a.kill();
    // the proxy meets the dead server (and marks it failed)...
    let a_errors = format!(
        "syncd_proxy_upstream_errors_total{{upstream=\"web\",server=\"{}\"}}",
        a.addr
    );
    wait_metric_at_least(&p, &a_errors, 1.0).await;
    // ...while the load keeps flowing on the others
    wait_for("load after the kill", Duration::from_secs(20), || {
        ok.load(Ordering::SeqCst) > before_kill * 2
    })
    .await;
    let a_after_kill = a.count();
    a.restart().await;
    // fail_timeout (2s) passes, a is probed and used again
    wait_for(
        "the restarted backend to be used again",
        Duration::from_secs(20),
        || a.count() > a_after_kill,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(before_kill > 0);
    assert!(
        ok.load(Ordering::SeqCst) > before_kill * 2,
        "load kept flowing"
    );
    assert!(a.count() > a_after_kill, "restarted backend is used again");
    assert!(b.count() > 0 && c.count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_never_replayed_but_get_is_retried() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.behaviour.reset.store(true, Ordering::SeqCst);
    b.behaviour.reset.store(true, Ordering::SeqCst);
    // max_fails = 0 so both stay eligible for this test
    let cfg = http_listener("web")
        + &upstream(
            "web",
            "",
            &[(a.addr, "max_fails = 0"), (b.addr, "max_fails = 0")],
        );
    let p = Proxy::start(&cfg).await;

    let r = request(p.listen, "POST", "/order", b"item=1")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        a.stats.method("POST") + b.stats.method("POST"),
        1,
        "POST sent exactly once"
    );

    let r = request(p.listen, "PATCH", "/order", b"x").await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        a.stats.method("PATCH") + b.stats.method("PATCH"),
        1,
        "PATCH sent exactly once"
    );

    let r = request(p.listen, "GET", "/", b"").await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        a.stats.method("GET") + b.stats.method("GET"),
        2,
        "GET tried on both servers"
    );

    // with one healthy server the GET succeeds through the retry
    b.behaviour.reset.store(false, Ordering::SeqCst);
    for _ in 0..4 {
        let r = request(p.listen, "GET", "/", b"").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_is_used_only_when_primaries_are_down() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let z = Backend::start("z").await;
    let cfg = http_listener("web")
        + &upstream(
            "web",
            "",
            &[
                (a.addr, "fail_timeout = \"30s\""),
                (b.addr, "fail_timeout = \"30s\""),
                (z.addr, "backup = true"),
            ],
        );
    let p = Proxy::start(&cfg).await;
    for _ in 0..10 {
        assert_eq!(p.get("/").await.status, 200);
    }
    assert_eq!(z.count(), 0, "backup idle while primaries are up");
    a.kill();
    for _ in 0..4 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "b");
    }
    assert_eq!(z.count(), 0, "one primary left: still no backup");
    b.kill();
    for _ in 0..5 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "z");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_server_gives_502_or_503_with_short_body() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web")
        + &upstream(
            "web",
            "",
            &[
                (a.addr, ""),
                ("127.0.0.1:1".parse().unwrap(), "down = true"),
            ],
        );
    let p = Proxy::start(&cfg).await;
    a.kill();
    let r = p.get("/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.len() < 100);
    // a is now marked failed (max_fails 1) and the other is down: nothing to try
    let r = p.get("/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.text().contains("no live upstream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_in_flight_requests_and_health_state() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg1 = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg1).await;
    let listen = p.listen;
    let slow = tokio::spawn(async move { request(listen, "GET", "/slow", b"").await });
    wait_for(
        "the slow request to reach a",
        Duration::from_secs(10),
        || a.count() == 1,
    )
    .await;
    let cfg2 = http_listener("web")
        + &upstream("web", "", &[(a.addr, "weight = 1"), (b.addr, "weight = 3")]);
    p.reload(&cfg2).await;
    let r = slow.await.unwrap().unwrap();
    assert_eq!(
        r.status, 200,
        "in-flight request survived the reload: {r:?}"
    );
    assert_eq!(r.backend(), "a");
    // the new configuration applies to new requests
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..8 {
        *counts.entry(p.get("/").await.backend()).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&2));
    assert_eq!(counts.get("b"), Some(&6));

    // passive failure state survives a reload: kill b, mark it failed, reload
    b.kill();
    for _ in 0..3 {
        assert_eq!(p.get("/").await.status, 200);
    }
    let cfg3 = http_listener("web")
        + &upstream(
            "web",
            "",
            &[
                (a.addr, "weight = 1"),
                (b.addr, "weight = 3\nfail_timeout = \"60s\""),
            ],
        );
    p.reload(&cfg3).await;
    let errors_before = p
        .metric(&format!(
            "syncd_proxy_upstream_errors_total{{upstream=\"web\",server=\"{}\"}}",
            b.addr
        ))
        .await;
    for _ in 0..5 {
        let r = p.get("/").await;
        assert_eq!(r.backend(), "a");
    }
    let errors_after = p
        .metric(&format!(
            "syncd_proxy_upstream_errors_total{{upstream=\"web\",server=\"{}\"}}",
            b.addr
        ))
        .await;
    assert_eq!(
        errors_before, errors_after,
        "b stayed marked failed across the reload"
    );
    assert!(errors_before >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_running_config() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    std::fs::write(&p.config, "this is not toml [").unwrap();
    p.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.metric("syncd_proxy_reload_failures_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reload failure not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_not_a_crash() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let cases: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
    ];
    for raw in cases {
        let r = send_raw(p.listen, raw).await.unwrap();
        assert_eq!(
            r.status,
            400,
            "for {:?}: {r:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let r = send_raw(p.listen, huge.as_bytes()).await.unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = send_raw(p.listen, many.as_bytes()).await.unwrap();
    assert_eq!(r.status, 431, "150 headers > max_headers (100): {r:?}");
    assert_eq!(a.count(), 0, "nothing malformed reached the backend");
    assert_eq!(p.get("/").await.status, 200, "proxy still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_check_removes_and_restores_after_rise() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg = http_listener("web")
        + &upstream(
            "web",
            "[upstream.health_check]\ntype = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 3\nfall = 2\n",
            &[(a.addr, ""), (b.addr, "")],
        );
    let p = Proxy::start(&cfg).await;
    let up_metric = format!(
        "syncd_proxy_upstream_health_check_up{{upstream=\"web\",server=\"{}\"}}",
        a.addr
    );
    assert_eq!(p.metric(&up_metric).await, 1.0);
    a.behaviour.unhealthy.store(true, Ordering::SeqCst);
    wait_metric(&p, &up_metric, 0.0).await;
    let before = a.count();
    for _ in 0..6 {
        assert_eq!(p.get("/").await.backend(), "b");
    }
    assert_eq!(a.count(), before);
    a.behaviour.unhealthy.store(false, Ordering::SeqCst);
    wait_metric(&p, &up_metric, 1.0).await;
    let mut seen_a = false;
    for _ in 0..4 {
        seen_a |= p.get("/").await.backend() == "a";
    }
    assert!(seen_a, "a back in rotation after rise");
    let r = request(p.admin, "GET", "/healthz", b"").await.unwrap();
    assert_eq!(r.status, 200);
    b.behaviour.unhealthy.store(true, Ordering::SeqCst);
    a.behaviour.unhealthy.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = request(p.admin, "GET", "/healthz", b"").await.unwrap();
        if r.status == 503 {
            assert!(r.text().contains("web"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "healthz never reported 503"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `cond` until it holds; fail naming `what` after `limit`. Tests wait
/// for the condition itself, never for a guessed time.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_metric_at_least(p: &Proxy, name: &str, min: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = p.metric(name).await;
        if v >= min {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stuck at {v}, want at least {min}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_metric(p: &Proxy, name: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = p.metric(name).await;
        if v == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stuck at {v}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connections_are_retried_on_fresh_ones() {
    // the backend closes idle keep-alive connections after 150 ms, while
    // the proxy would keep them for 60 s: every request meets a pooled
    // connection the backend has closed (or is closing right now)
    let a = Backend::start_idle_closing("a", Duration::from_millis(150)).await;
    let cfg =
        http_listener("web") + &upstream("web", "keepalive_timeout = \"60s\"", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    for i in 0..24u64 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = request(p.listen, method, "/", b"x").await.unwrap();
        assert_eq!(r.status, 200, "request {i} ({method}): {r:?}");
        // GETs land around the backend's idle timeout to provoke the race
        // (a GET caught in it is retried on a fresh connection); a POST in
        // that instant would rightly get a 502 (never replayed), so POSTs
        // come after the close, which the pool must notice
        let next_is_post = (i + 1) % 2 == 1;
        let gap = if next_is_post {
            300
        } else {
            130 + (i % 5) * 10
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let mut p = Proxy::start(&cfg).await;
    let listen = p.listen;
    let slow = tokio::spawn(async move { request(listen, "GET", "/slow", b"").await });
    wait_for(
        "the slow request to reach a",
        Duration::from_secs(10),
        || a.count() == 1,
    )
    .await;
    p.signal(libc::SIGTERM);
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    assert!(
        request(listen, "GET", "/", b"").await.is_err(),
        "no longer listening"
    );
}

/// Idle keep-alive connections that already served requests (their wait
/// for the stop signal registered long before it comes) close at SIGTERM
/// instead of holding the drain for `shutdown_timeout` (30 s here), on
/// both workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keepalive_connections() {
    let a = Backend::start("a").await;
    let cfg = "[global]\nworkers = 2\n\n".to_string()
        + &http_listener("web")
        + &upstream("web", "", &[(a.addr, "")]);
    let mut p = Proxy::start(&cfg).await;
    let mut conns: Vec<_> = (0..4).map(|_| None).collect();
    for _ in 0..3 {
        for conn in &mut conns {
            let (status, _) = keepalive_get(conn, p.listen, "/").await.unwrap();
            assert_eq!(status, 200);
        }
    }
    p.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit without waiting out the drain: {status:?}"
    );
    wait_for(
        "the clients to see their connections closed",
        Duration::from_secs(10),
        || {
            conns
                .iter()
                .all(|c| c.as_ref().is_some_and(|s| s.is_closed()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_forwards_bytes_and_skips_dead_servers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // echo server
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = format!(
        "[[listener]]\nlisten = \"{{listen}}\"\nmode = \"tcp\"\nupstream = \"db\"\n\n[[upstream]]\nname = \"db\"\nalgorithm = \"least_conn\"\n[[upstream.server]]\naddr = \"{dead}\"\n[[upstream.server]]\naddr = \"{echo}\"\n"
    );
    let p = Proxy::start(&cfg).await;
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
        let msg = format!("hello {i}\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
}

#[test]
fn check_flag_reports_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"web\"\n[[upstream]]\nname = \"web\"\n[[upstream.server]]\naddr = \"127.0.0.1:9000\"\n[[upstream.server]]\naddr = \"127.0.0.1:9001\"\nweight = 0\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncd-proxy"))
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    // the README documents `--check`: exit 0 valid, 2 invalid
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream \"web\".server[1].weight: 0 is invalid; use a positive integer"),
        "{err}"
    );
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/proxy.example.toml"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncd-proxy"))
        .args(["--check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw backend that answers the first request on each connection with
/// keep-alive, then closes the connection when the second request arrives,
/// without answering: exactly what the proxy sees when a backend's idle
/// close crosses a request on a pooled connection.
async fn closing_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (ans, dro) = (answered.clone(), dropped.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (ans, dro) = (ans.clone(), dro.clone());
            tokio::spawn(async move {
                let mut n = 0;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    n += 1;
                    if n >= 2 {
                        dro.fetch_add(1, Ordering::SeqCst);
                        return; // close without answering
                    }
                    ans.fetch_add(1, Ordering::SeqCst);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, answered, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_on_pooled_connection_closed_by_backend_is_retried_fresh() {
    let (addr, answered, dropped) = closing_backend().await;
    let cfg = http_listener("web") + &upstream("web", "keepalive_timeout = \"60s\"", &[(addr, "")]);
    let p = Proxy::start(&cfg).await;
    for i in 0..10 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 10);
    assert!(
        dropped.load(Ordering::SeqCst) >= 5,
        "the race was exercised"
    );
    // the backend is a single server: had the stale connection been counted
    // as a failure or not retried, requests would have failed with 502
    assert_eq!(
        p.metric("syncd_proxy_local_errors_total{code=\"502\"}")
            .await,
        0.0
    );
}

/// A self-signed certificate for `localhost` in `dir`: the `tls = { .. }`
/// value for a listener, and a client connector that trusts it.
fn localhost_tls(dir: &std::path::Path) -> (String, tokio_rustls::TlsConnector) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            cert_path.display(),
            key_path.display()
        ),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination_forwards_with_https_proto() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let (tls, connector) = localhost_tls(dir.path());
    let cfg = format!("[[listener]]\nlisten = \"{{listen}}\"\nupstream = \"web\"\ntls = {tls}\n\n")
        + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;

    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(p.listen).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        // a TLS peer may close without close_notify; what was read is enough
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
        let r = parse_reply(&buf);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), "a");
    }
    let h = a.stats.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["x-forwarded-proto"], "https");
    // a plain-text request on the TLS port does not reach the backend
    let before = a.count();
    let _ = tokio::time::timeout(Duration::from_secs(5), request(p.listen, "GET", "/", b"")).await;
    assert_eq!(a.count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    // 1 MiB response
    let r = p.get("/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body.iter().all(|b| *b == b'x'));
    // 1 MiB upload with Content-Length (streamed, not buffered)
    let body = vec![b'y'; 1 << 20];
    let r = request(p.listen, "POST", "/upload", &body).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), format!("a {}", 1 << 20));
    // chunked upload: re-chunked to the backend
    let mut raw = b"PUT /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        raw.extend_from_slice(format!("{:x}\r\n", 5000).as_bytes());
        raw.extend_from_slice(&[b'z'; 5000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = send_raw(p.listen, &raw).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "a 100000");
    // and keep-alive reuse after all that still works
    for _ in 0..3 {
        assert_eq!(p.get("/").await.text(), "a 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abort_mid_upload_neither_marks_servers_down_nor_leaks() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, ""), (b.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let arrived = || a.count() + b.count();
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'q'; 10_000]).await.unwrap();
        // the upload is being streamed to a server...
        wait_for(
            "the upload to reach a server",
            Duration::from_secs(10),
            || arrived() == i + 1,
        )
        .await;
        drop(s); // ...when the client goes away mid-body
    }
    // and a client that gives up while the backend is still thinking
    for i in 0..2 {
        let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        wait_for(
            "the slow GET to reach a server",
            Duration::from_secs(10),
            || arrived() == 5 + i,
        )
        .await;
        drop(s);
    }
    // every abandoned attempt has been released before servers are judged
    for be in [&a, &b] {
        let name = format!(
            "syncd_proxy_upstream_active_connections{{upstream=\"web\",server=\"{}\"}}",
            be.addr
        );
        wait_metric(&p, &name, 0.0).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.backend());
    }
    assert_eq!(
        seen.len(),
        2,
        "aborted uploads must not mark servers down: {seen:?}"
    );
    for be in [&a, &b] {
        let name = format!(
            "syncd_proxy_upstream_active_connections{{upstream=\"web\",server=\"{}\"}}",
            be.addr
        );
        wait_metric(&p, &name, 0.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_server_across_workers() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg = "[global]\nworkers = 2\n\n".to_string()
        + &http_listener("web")
        + &upstream(
            "web",
            "algorithm = \"least_conn\"",
            &[(a.addr, ""), (b.addr, "")],
        );
    let p = Proxy::start(&cfg).await;
    let listen = p.listen;
    let slow = tokio::spawn(async move { request(listen, "GET", "/slow", b"").await });
    // wait until the slow request is in flight on one server
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.count() + b.count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = if a.count() == 1 { "a" } else { "b" };
    for _ in 0..6 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200);
        assert_ne!(
            r.backend(),
            busy,
            "least_conn sent a request to the busy server"
        );
    }
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.backend(), busy);
}

/// Two clients that send a POST head and one body byte, then stall, must not
/// be charged to the servers: the client gets 408 after client_body_timeout,
/// read_timeout starts only once the request is sent, and traffic and
/// /healthz are unaffected meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_get_408_and_never_take_servers_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg =
        "[[listener]]\nlisten = \"{listen}\"\nupstream = \"web\"\nclient_body_timeout = \"3s\"\n\n"
            .to_string()
            + &upstream(
                "web",
                "read_timeout = \"1s\"",
                &[(a.addr, ""), (b.addr, "")],
            );
    let p = Proxy::start(&cfg).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nq")
            .await
            .unwrap();
        stalled.push(s);
    }
    // round-robin: one stalled upload on each server
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.count() + b.count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "uploads never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((a.count(), b.count()), (1, 1));
    // well past read_timeout (1s), before client_body_timeout (3s)
    let until = std::time::Instant::now() + Duration::from_millis(2300);
    while std::time::Instant::now() < until {
        let r = p.get("/").await;
        assert_eq!(r.status, 200, "GET while uploads stall: {r:?}");
        let h = request(p.admin, "GET", "/healthz", b"").await.unwrap();
        assert_eq!(h.status, 200, "/healthz while uploads stall: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut s in stalled {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "stalled client never answered or closed");
        if !buf.is_empty() {
            let r = parse_reply(&buf);
            assert_eq!(r.status, 408, "{r:?}");
        }
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.backend());
    }
    assert_eq!(seen.len(), 2, "no server was marked down: {seen:?}");
    for be in [&a, &b] {
        let fails = format!(
            "syncd_proxy_upstream_fails{{upstream=\"web\",server=\"{}\"}}",
            be.addr
        );
        assert_eq!(p.metric(&fails).await, 0.0, "{fails}");
        let errors = format!(
            "syncd_proxy_upstream_errors_total{{upstream=\"web\",server=\"{}\"}}",
            be.addr
        );
        assert_eq!(p.metric(&errors).await, 0.0, "{errors}");
        let active = format!(
            "syncd_proxy_upstream_active_connections{{upstream=\"web\",server=\"{}\"}}",
            be.addr
        );
        wait_metric(&p, &active, 0.0).await;
    }
}

/// A client that requests a large response and never reads it is cut off
/// after send_timeout, releasing the backend connection and the server's
/// least_conn/max_conns slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_cut_after_send_timeout() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let cfg = "[[listener]]\nlisten = \"{listen}\"\nupstream = \"web\"\nsend_timeout = \"1s\"\n\n"
        .to_string()
        + &upstream("web", "algorithm = \"least_conn\"", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let active = format!(
        "syncd_proxy_upstream_active_connections{{upstream=\"web\",server=\"{}\"}}",
        a.addr
    );
    // the response is stuck in flight: the server's slot is held...
    wait_metric(&p, &active, 1.0).await;
    // ...until send_timeout, although the client socket stays open
    wait_metric(&p, &active, 0.0).await;
    assert_eq!(p.get("/").await.status, 200);
    drop(s);
}

/// idle_timeout closes HTTP keep-alive connections idle between requests
/// (it used to be ignored for HTTP listeners), and the admin listener closes
/// connections that never send a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_and_silent_admin_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let cfg = "[[listener]]\nlisten = \"{listen}\"\nupstream = \"web\"\nidle_timeout = \"1s\"\n\n"
        .to_string()
        + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let admin = p.admin;
    let silent_admin = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(25), s.read_to_end(&mut buf))
            .await
            .map(|r| r.map(|_| buf.len()))
    });
    let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // read the whole keep-alive response (Content-Length framed)
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response");
        buf.extend_from_slice(&chunk[..n]);
        let r = parse_reply(&buf);
        let len = r
            .head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .and_then(|v| v.trim().parse::<usize>().ok());
        if r.status != 0 && len.is_some_and(|l| r.body.len() >= l) {
            assert_eq!(r.status, 200);
            break;
        }
    }
    // now idle: the proxy closes the connection after idle_timeout (the
    // 60s header_timeout default would keep it much longer)
    let rest = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await;
    assert!(
        matches!(rest, Ok(Ok(0)) | Ok(Err(_))),
        "idle keep-alive connection not closed: {rest:?}"
    );
    let admin_closed = silent_admin.await.unwrap();
    assert!(
        admin_closed.is_ok(),
        "admin connection without a request was never closed"
    );
}

/// A backend on a raw socket that answers every request with `reply`.
async fn raw_backend(reply: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut have = Vec::new();
                let mut buf = [0u8; 4096];
                while !have.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(reply).await;
            });
        }
    });
    addr
}

/// Ambiguous framing and routing: duplicate or missing Host and signed
/// lengths are refused, Connection cannot strip Host/Authorization, and a
/// backend's Content-Length next to chunked encoding is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_and_responses_are_refused_or_normalised() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\nConnection: close\r\n\r\nhello",
    ] {
        let r = send_raw(p.listen, raw).await.unwrap();
        assert_eq!(r.status, 400, "{}: {r:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(a.count(), 0, "nothing ambiguous reached the backend");
    // HTTP/1.0 may omit Host
    let r = send_raw(p.listen, b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    let raw = b"GET / HTTP/1.1\r\nHost: site\r\nAuthorization: Bearer t\r\nConnection: close, Host, Authorization\r\n\r\n";
    let r = send_raw(p.listen, raw).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let h = a.stats.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["host"], "site");
    assert_eq!(h["authorization"], "Bearer t");

    let signed = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello").await;
    let both = raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let cfg = http_listener("web") + &upstream("web", "", &[(signed, "")]);
    let p = Proxy::start(&cfg).await;
    let r = p.get("/").await;
    assert_eq!(r.status, 502, "{r:?}");
    let cfg = http_listener("web") + &upstream("web", "", &[(both, "")]);
    let p = Proxy::start(&cfg).await;
    let r = p.get("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.head.to_ascii_lowercase().contains("content-length: 3"),
        "{r:?}"
    );
    assert!(r.text().contains("hello"), "{r:?}");
}

/// Request smuggling shapes (framing two parsers could read differently)
/// are refused with 400 and nothing reaches the backend: a length next to
/// chunked encoding (here with a second request inside the chunked body),
/// duplicate or list-valued lengths. hyper's server, before, normalised the
/// first three (chunked won; one of two equal lengths) and forwarded them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_are_refused() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let hidden = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut cl_te = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        hidden.len()
    )
    .into_bytes();
    cl_te.extend_from_slice(hidden);
    cl_te.extend_from_slice(b"\r\n0\r\n\r\n");
    for raw in [
        &cl_te[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
    ] {
        let r = send_raw(p.listen, raw).await.unwrap();
        assert_eq!(r.status, 400, "{}: {r:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(a.count(), 0, "nothing ambiguous reached the backend");
    // the same bodies framed one way are fine
    let ok = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = send_raw(p.listen, ok).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(a.count(), 1);
}

/// Read one response from a kept-alive connection (bodies framed by
/// Content-Length; none for HEAD and 1xx). Bytes after it stay in `buf`.
async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, head: bool) -> Reply {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..i]).to_string();
            let len = if head || text.starts_with("HTTP/1.1 1") {
                0
            } else {
                text.lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or_else(|| panic!("no length in {text:?}"))
            };
            if buf.len() >= i + 4 + len {
                let reply = parse_reply(&buf[..i + 4 + len]);
                buf.drain(..i + 4 + len);
                return reply;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed early; have {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection carries pipelined requests (answered in order, bodies by
/// length and chunked), an `Expect: 100-continue` upload (the interim 100
/// comes before the body is sent; none when the body comes unasked), and a
/// HEAD (length, no body); HTTP/1.0
/// keeps the connection only when asked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_expect_continue_head_and_http10_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    for want in ["a 0", "a 3", "a 2"] {
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!((r.status, r.text()), (200, want.to_string()), "{r:?}");
    }
    s.write_all(b"PUT /4 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 100, "{r:?}");
    s.write_all(b"hello").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.text()), (200, "a 5".to_string()), "{r:?}");
    // a client that sends its body without waiting gets no 100 at all
    s.write_all(
        b"PUT /4 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.text()), (200, "a 2".to_string()), "{r:?}");
    s.write_all(b"HEAD /5 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, true).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.head.to_ascii_lowercase().contains("content-length: 3"),
        "{r:?}"
    );
    assert_eq!(a.count(), 6);

    let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /6 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{r:?}"
    );
    s.write_all(b"GET /7 HTTP/1.0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("HTTP/1.0 without keep-alive is closed")
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(a.count(), 8);
}

/// A WebSocket backend: greets each client with `hello from <name>`, then
/// echoes every message. Counts handshakes.
async fn ws_echo_backend(name: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                if ws
                    .send(Message::text(format!("hello from {name}")))
                    .await
                    .is_err()
                {
                    return;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn next_ws<S>(ws: &mut S) -> tokio_tungstenite::tungstenite::Message
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .expect("stream open")
        .expect("a valid message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_spliced_both_ways_and_releases_the_slot() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (addr, accepted) = ws_echo_backend("ws1").await;
    // max_conns = 1: the open tunnel must hold the server's only slot;
    // the client connection's idle_timeout and header_timeout (meant for
    // keep-alive waits and request heads) must not cut a tunnel
    let cfg = "[[listener]]\nlisten = \"{listen}\"\nupstream = \"ws\"\nidle_timeout = \"1s\"\nheader_timeout = \"1s\"\n\n"
        .to_string()
        + &upstream("ws", "", &[(addr, "max_conns = 1")]);
    let p = Proxy::start(&cfg).await;
    let url = format!("ws://{}/chat", p.listen);
    let (mut ws, resp) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert_eq!(next_ws(&mut ws).await, Message::text("hello from ws1"));
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_ws(&mut ws).await, Message::text(text));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::binary(big));

    // while the tunnel is open, the server's one slot is taken
    let busy = p.get("/").await;
    assert!(
        busy.status == 502 || busy.status == 503,
        "max_conns reached by the tunnel: {busy:?}"
    );

    // quiet for longer than those limits: a tunnel is neither a keep-alive
    // wait nor a request head, so it stays open
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws.send(Message::text("still there")).await.unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::text("still there"));
    assert_eq!(
        p.metric("syncd_proxy_responses_total{class=\"1xx\"}").await,
        1.0,
        "the 101 is counted as 1xx"
    );

    ws.close(None).await.unwrap();
    // the close handshake completes: the server's close frame, then the end
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("close within 10 s")
        {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("close failed: {e}"),
        }
    }
    drop(ws);

    // the slot comes back when the tunnel ends; a new tunnel then works
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ws = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => break ws,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot never released after the tunnel closed: {e}"),
        }
    };
    assert_eq!(next_ws(&mut ws).await, Message::text("hello from ws1"));
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::text("again"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// The same tunnel behind a TLS listener (wss://): the splice runs over
/// rustls on the client side, so whatever TLS buffers must still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_works_through_a_tls_listener() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (addr, accepted) = ws_echo_backend("wss1").await;
    let dir = tempfile::tempdir().unwrap();
    let (tls, connector) = localhost_tls(dir.path());
    let cfg = format!(
        "[[listener]]\nlisten = \"{{listen}}\"\nupstream = \"ws\"\ntls = {tls}\nidle_timeout = \"1s\"\nheader_timeout = \"1s\"\n\n"
    ) + &upstream("ws", "", &[(addr, "max_conns = 1")]);
    let p = Proxy::start(&cfg).await;
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(p.listen).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        tokio_tungstenite::client_async("wss://localhost/chat", stream).await
    };
    let (mut ws, resp) = connect()
        .await
        .expect("WebSocket handshake through the TLS listener");
    assert_eq!(resp.status(), 101);
    // the backend speaks first: its bytes must cross without a client read
    assert_eq!(next_ws(&mut ws).await, Message::text("hello from wss1"));
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_ws(&mut ws).await, Message::text(text));
    }
    // many TLS records each way
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::binary(big));
    // neither the header nor the idle limit cuts a quiet tunnel
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws.send(Message::text("still there")).await.unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::text("still there"));

    ws.close(None).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("close within 10 s")
        {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("close failed: {e}"),
        }
    }
    drop(ws);
    // the server's only slot comes back; a second tunnel works
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ws = loop {
        match connect().await {
            Ok((ws, _)) => break ws,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot never released after the tunnel closed: {e}"),
        }
    };
    assert_eq!(next_ws(&mut ws).await, Message::text("hello from wss1"));
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::text("again"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_tunnel_closes_after_read_timeout() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (addr, _) = ws_echo_backend("ws1").await;
    let cfg = http_listener("ws") + &upstream("ws", "read_timeout = \"1s\"", &[(addr, "")]);
    let p = Proxy::start(&cfg).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", p.listen))
        .await
        .unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::text("hello from ws1"));
    let t = std::time::Instant::now();
    // nothing is sent either way: the proxy ends the tunnel
    let end = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("an idle tunnel must be closed by the proxy");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "unexpected message: {end:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_request_answered_without_101_is_relayed_normally() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let raw = b"GET /ws HTTP/1.1\r\nHost: site.example\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = send_raw(p.listen, raw).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "a 0");
    // the backend was asked to upgrade (nginx's Upgrade/Connection pass-on)
    let h = a.stats.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    // and the connection to it is still a plain HTTP one: reused normally
    assert_eq!(p.get("/").await.status, 200);
    assert_eq!(a.count(), 2);
}

/// An address whose connects hang (time out) rather than fail: a listener
/// with a full accept queue, never accepting; Linux drops further SYNs.
struct Blackhole {
    addr: std::net::SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

fn blackhole() -> Blackhole {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    l.bind(&any.into()).unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    // fill the queue until a connect times out: from then on, connects hang
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Blackhole {
                    addr,
                    _listener: l,
                    _queued: queued,
                }
            }
            Err(e) => panic!("blackhole: {e}"),
        }
    }
    panic!("blackhole: the accept queue never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_read_timeout_gives_504() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "read_timeout = \"500ms\"", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let r = p.get("/slow").await; // the backend answers after 1.5 s
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.text(), "504 Gateway Timeout\n");
    // The proxy's own timer answered: the backend had the request and was
    // still waiting to answer it (it never answers in under 1.5 s).
    assert_eq!(a.count(), 1);
    assert_eq!(a.stats.slow_answered.load(Ordering::SeqCst), 0);
    assert_eq!(
        p.metric("syncd_proxy_local_errors_total{code=\"504\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_moves_on_to_the_next_server() {
    let hole = tokio::task::block_in_place(blackhole);
    let b = Backend::start("b").await;
    let cfg = http_listener("web")
        + &upstream(
            "web",
            "connect_timeout = \"400ms\"",
            &[(hole.addr, ""), (b.addr, "")],
        );
    let p = Proxy::start(&cfg).await;
    // round-robin starts with the first server: the connect hangs, then
    // times out, and the request goes on to b
    let t = std::time::Instant::now();
    let r = p.get("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "b");
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "waited for connect_timeout, not a refusal: {:?}",
        t.elapsed()
    );
    let errors = format!(
        "syncd_proxy_upstream_errors_total{{upstream=\"web\",server=\"{}\"}}",
        hole.addr
    );
    assert_eq!(p.metric(&errors).await, 1.0);
    // marked failed (max_fails 1): the next requests go straight to b,
    // never to the hole again, and none is a retry
    for _ in 0..3 {
        assert_eq!(p.get("/").await.backend(), "b");
    }
    // (an attempt on the hole can only end as an error: still the first)
    assert_eq!(p.metric(&errors).await, 1.0);
    assert_eq!(p.metric("syncd_proxy_retries_total").await, 1.0);
    assert_eq!(b.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_upstream_timeout_stops_retrying() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let servers = [(a.addr, ""), (b.addr, "")];
    // each attempt times out after 400 ms; retrying stops once 300 ms have
    // passed since the first attempt, so b is never tried
    let cfg = http_listener("web")
        + &upstream(
            "web",
            "read_timeout = \"400ms\"\nnext_upstream_timeout = \"300ms\"",
            &servers,
        );
    let p = Proxy::start(&cfg).await;
    let r = p.get("/slow").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(
        a.count() + b.count(),
        1,
        "no retry after next_upstream_timeout"
    );
    drop(p);
    // control: without it, the same request is tried on both servers
    let cfg = http_listener("web") + &upstream("web", "read_timeout = \"400ms\"", &servers);
    let p = Proxy::start(&cfg).await;
    let r = p.get("/slow").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(a.count() + b.count(), 3, "retried on the other server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_an_unbindable_address_is_refused_and_logged() {
    let a = Backend::start("a").await;
    let cfg = http_listener("web") + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    // held without SO_REUSEPORT: the proxy cannot bind it
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let generation = p.metric("syncd_proxy_config_generation").await;
    let bad =
        cfg.clone() + &format!("[[listener]]\nlisten = \"{taken_addr}\"\nupstream = \"web\"\n\n");
    std::fs::write(
        &p.config,
        format!(
            "[admin]\nlisten = \"{}\"\n\n{}",
            p.admin,
            bad.replace("{listen}", &p.listen.to_string())
        ),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    wait_metric_at_least(&p, "syncd_proxy_reload_failures_total", 1.0).await;
    assert_eq!(p.metric("syncd_proxy_config_generation").await, generation);
    let want = format!("cannot listen on {taken_addr}");
    wait_for(
        "the reload error in the log",
        Duration::from_secs(10),
        || {
            let log = p.log();
            log.contains("reload failed") && log.contains(&want)
        },
    )
    .await;
    // the old configuration keeps serving
    for _ in 0..3 {
        let r = p.get("/").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_replay_body_are_not_retried() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.behaviour.reset.store(true, Ordering::SeqCst);
    b.behaviour.reset.store(true, Ordering::SeqCst);
    let cfg = "[retry]\nmax_replay_body = 16\n\n".to_string()
        + &http_listener("web")
        + &upstream(
            "web",
            "",
            &[(a.addr, "max_fails = 0"), (b.addr, "max_fails = 0")],
        );
    let p = Proxy::start(&cfg).await;
    let puts = || a.stats.method("PUT") + b.stats.method("PUT");
    // within the limit: buffered, so replayed on the other server
    let r = request(p.listen, "PUT", "/doc", &[b'x'; 16]).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(puts(), 2, "a small idempotent body is retried");
    // over the limit: streamed, so sent once
    let r = request(p.listen, "PUT", "/doc", &[b'x'; 17]).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(puts(), 3, "a body over max_replay_body is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_limits_retries_end_to_end() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.behaviour.reset.store(true, Ordering::SeqCst);
    b.behaviour.reset.store(true, Ordering::SeqCst);
    // half a retry per request and no free per-second allowance: every
    // second request may retry, deterministically
    let cfg = "[retry]\nbudget_ratio = 0.5\nbudget_min_per_sec = 0\n\n".to_string()
        + &http_listener("web")
        + &upstream(
            "web",
            "",
            &[(a.addr, "max_fails = 0"), (b.addr, "max_fails = 0")],
        );
    let p = Proxy::start(&cfg).await;
    let gets = || a.stats.method("GET") + b.stats.method("GET");
    let mut tries = Vec::new();
    for _ in 0..4 {
        let before = gets();
        let r = p.get("/").await;
        assert_eq!(r.status, 502, "{r:?}");
        tries.push(gets() - before);
    }
    assert_eq!(tries, [1, 2, 1, 2], "attempts per request");
    // the budget is asked only when another attempt could follow: after the
    // last server failed, nothing is spent and nothing is "denied"
    assert_eq!(p.metric("syncd_proxy_retries_total").await, 2.0);
    assert_eq!(p.metric("syncd_proxy_retries_denied_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_request_head_is_closed_after_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let cfg = "[[listener]]\nlisten = \"{listen}\"\nupstream = \"web\"\nheader_timeout = \"1s\"\n\n"
        .to_string() + &upstream("web", "", &[(a.addr, "")]);
    let p = Proxy::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    let t = std::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(end.is_ok(), "a half-sent head was never closed");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "closed before header_timeout: {:?}",
        t.elapsed()
    );
    assert_eq!(a.count(), 0, "nothing reached the backend");
    assert_eq!(p.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_websocket_tunnels() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (addr, _) = ws_echo_backend("ws1").await;
    let cfg = http_listener("ws") + &upstream("ws", "", &[(addr, "")]);
    let mut p = Proxy::start(&cfg).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", p.listen))
        .await
        .unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::text("hello from ws1"));
    p.signal(libc::SIGTERM);
    // the listener stops accepting...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(p.listen).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still listening after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the open tunnel is drained like a request in flight
    ws.send(Message::text("after SIGTERM")).await.unwrap();
    assert_eq!(next_ws(&mut ws).await, Message::text("after SIGTERM"));
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited under a tunnel"
    );
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit once the tunnel closed: {status:?}"
    );
}
