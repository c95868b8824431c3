//! Admin endpoint: `/healthz` (cheap, for a VRRP track script),
//! `/metrics` (Prometheus text format) and `/vrrp` (built-in VRRP state, JSON).

use std::sync::Arc;
use std::time::Duration;

use syncd_ops::admin::{self, Limits, Reply, Request, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::Shared;

/// Answer one admin request (any method).
pub fn respond(path: &str, shared: &Shared) -> Reply {
    match path {
        // 200 while every upstream has a server it can use; 503 names the
        // upstreams that have none. Takes one short lock per upstream.
        "/healthz" => {
            let bad = shared.unhealthy_upstreams();
            if bad.is_empty() {
                Reply::text(StatusCode::OK, "ok\n")
            } else {
                Reply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no usable server in upstream(s): {}\n", bad.join(", ")),
                )
            }
        }
        "/metrics" => Reply::metrics(shared.render_metrics()),
        "/vrrp" => match shared.vrrp_status() {
            Some(json) => Reply::json(StatusCode::OK, json),
            None => Reply::text(
                StatusCode::NOT_FOUND,
                "built-in VRRP is not configured (no [[vrrp]] section)\n",
            ),
        },
        _ => Reply::text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /metrics or /vrrp\n",
        ),
    }
}

/// The answers are small and local: a scraper or health checker that
/// stalls (sends no request, reads no answer) is cut off within 10 s.
const ADMIN_LIMITS: Limits = Limits {
    max_connections: 64,
    header: Duration::from_secs(10),
    lifetime: Duration::from_secs(10),
};

/// Serves until `stop` changes.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let routes = move |r: Request| std::future::ready(respond(&r.path, &shared));
    tokio::select! {
        _ = admin::serve(listener, ADMIN_LIMITS, routes) => {}
        _ = stop.changed() => {}
    }
}
