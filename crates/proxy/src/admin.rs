//! Admin endpoint: `/healthz` (cheap, for a VRRP track script),
//! `/metrics` (Prometheus text format) and `/vrrp` (built-in VRRP state, JSON).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::client_io::{ClientIo, Limits, WithBusy};
use crate::state::Shared;

/// Header, keep-alive idle and send limits of admin connections: the
/// answers are small and local, so these are short and fixed.
const ADMIN_LIMITS: Limits = Limits {
    header: std::time::Duration::from_secs(10),
    idle: std::time::Duration::from_secs(10),
    send: std::time::Duration::from_secs(10),
};

fn text(status: StatusCode, body: String, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Answer one admin request.
pub fn respond<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    match req.uri().path() {
        // 200 while every upstream has a server it can use; 503 names the
        // upstreams that have none. Takes one short lock per upstream.
        "/healthz" => {
            let bad = shared.unhealthy_upstreams();
            if bad.is_empty() {
                text(StatusCode::OK, "ok\n".into(), "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no usable server in upstream(s): {}\n", bad.join(", ")),
                    "text/plain",
                )
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            shared.render_metrics(),
            "text/plain; version=0.0.4",
        ),
        "/vrrp" => match shared.vrrp_status() {
            Some(json) => text(StatusCode::OK, json, "application/json"),
            None => text(
                StatusCode::NOT_FOUND,
                "built-in VRRP is not configured (no [[vrrp]] section)\n".into(),
                "text/plain",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /metrics or /vrrp\n".into(),
            "text/plain",
        ),
    }
}

pub async fn run(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        // a scraper or health checker that stalls must not hold a
        // connection (and its task) forever
        let io = ClientIo::new(stream, ADMIN_LIMITS);
        let activity = io.activity();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let busy = activity.begin();
                let r = respond(&req, &shared).map(|b| WithBusy::new(b, busy));
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}
