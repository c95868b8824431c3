//! Several workers: each counts in its own slot (no cache line shared per
//! request), and `/metrics` must still report the sums.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_over_workers() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg = "[global]\nworkers = 4\n\n".to_string()
        + &http_listener("web")
        + &upstream("web", "", &[(a.addr, ""), (b.addr, "")]);
    let p = Proxy::start(&cfg).await;
    // 16 keep-alive clients: SO_REUSEPORT spreads their connections over
    // the four workers' sockets
    let (clients, each) = (16, 25);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let listen = p.listen;
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            for _ in 0..each {
                let (status, _) = keepalive_get(&mut conn, listen, "/").await.unwrap();
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = f64::from(clients * each);
    assert_eq!(p.metric("syncd_proxy_requests_total").await, n);
    assert_eq!(
        p.metric("syncd_proxy_responses_total{class=\"2xx\"}").await,
        n
    );
    let mut sent = 0.0;
    let mut timed = 0.0;
    for be in [&a, &b] {
        let labels = format!("{{upstream=\"web\",server=\"{}\"}}", be.addr);
        let requests = p
            .metric(&format!("syncd_proxy_upstream_requests_total{labels}"))
            .await;
        assert_eq!(requests, be.count() as f64, "{labels}");
        sent += requests;
        timed += p
            .metric(&format!(
                "syncd_proxy_upstream_response_seconds_count{labels}"
            ))
            .await;
    }
    assert_eq!(sent, n);
    assert_eq!(timed, n);
}
