//! Tiny admin HTTP endpoint: `/metrics` (Prometheus text) and `/status` (JSON).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use syncd_ops::admin::{self, Limits, Reply, Request, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{render, Counters, InstanceStatus};

/// What the admin endpoint reads.
#[derive(Clone)]
pub struct AdminState {
    pub instances: Vec<(watch::Receiver<InstanceStatus>, Arc<Counters>)>,
}

impl AdminState {
    pub fn status_json(&self) -> String {
        let v: Vec<InstanceStatus> = self
            .instances
            .iter()
            .map(|(r, _)| r.borrow().clone())
            .collect();
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".into())
    }

    pub fn metrics(&self) -> String {
        let snap: Vec<(InstanceStatus, &Counters)> = self
            .instances
            .iter()
            .map(|(r, c)| (r.borrow().clone(), c.as_ref()))
            .collect();
        render(&snap)
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    admin::bind(addr).await
}

/// A request and its answer take at most this long: both are tiny and local.
const ADMIN_LIMITS: Limits = Limits {
    max_connections: 64,
    header: Duration::from_secs(5),
    lifetime: Duration::from_secs(5),
};

/// Serves `/status` and `/metrics` on `listener` until dropped.
pub async fn serve(listener: TcpListener, state: AdminState) {
    admin::serve(listener, ADMIN_LIMITS, move |r: Request| {
        let reply = route(&state, &r.path);
        std::future::ready(reply)
    })
    .await
}

fn route(st: &AdminState, path: &str) -> Reply {
    match path {
        "/metrics" => Reply::metrics(st.metrics()),
        "/status" => Reply::json(StatusCode::OK, st.status_json() + "\n"),
        _ => Reply::text(StatusCode::NOT_FOUND, "try /status or /metrics\n"),
    }
}

/// Client side of `syncd vrrp status`: GET `path` from `addr`, the body of
/// a 2xx answer.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<String, admin::ClientError> {
    admin::get_ok(addr, path).await
}
