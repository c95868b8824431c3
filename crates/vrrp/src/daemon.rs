//! Running a set of instances, with state observation and the admin endpoint.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError, VrrpConfig, VrrpFile};
use crate::instance::{self, Hooks, RunError};
use crate::io::netlink::Net;
use crate::metrics::{Counters, InstanceStatus};

/// Running instances. Observe them with [`Vrrp::subscribe`]; stop with
/// [`Vrrp::stop`] (masters send priority 0 and release their addresses).
pub struct Vrrp {
    statuses: Vec<watch::Receiver<InstanceStatus>>,
    stop_tx: watch::Sender<bool>,
    tasks: JoinSet<Result<(), RunError>>,
    view: AdminState,
}

impl Vrrp {
    /// Start every instance of `config` (and its admin endpoint) on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Vrrp, RunError> {
        Vrrp::start_embedded(config, Hooks::default()).await
    }

    /// Like [`Vrrp::start`], with an embedder's gate and promotion hook on
    /// every instance (see [`Hooks`]).
    pub async fn start_embedded(config: Config, hooks: Hooks) -> Result<Vrrp, RunError> {
        let net = Net::new().map_err(|err| RunError::Net {
            name: "netlink".into(),
            err,
        })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut statuses = Vec::new();
        let mut admin_view = Vec::new();
        for cfg in config.instances {
            let (tx, rx) = watch::channel(InstanceStatus::new(
                &cfg.name,
                &cfg.interface,
                cfg.vrid,
                cfg.priority,
            ));
            let counters = Arc::new(Counters::default());
            statuses.push(rx.clone());
            admin_view.push((rx, counters.clone()));
            tasks.spawn(instance::run(
                cfg,
                net.clone(),
                tx,
                counters,
                stop_rx.clone(),
                hooks.clone(),
            ));
        }
        let view = AdminState {
            instances: admin_view,
        };
        if let Some(addr) = config.admin {
            let l = admin::bind(addr)
                .await
                .map_err(|err| RunError::Admin { addr, err })?;
            tracing::info!(%addr, "admin endpoint serving /status and /metrics");
            let st = view.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = admin::serve(l, st) => {}
                    _ = stop.changed() => {}
                }
                Ok(())
            });
        }
        Ok(Vrrp {
            statuses,
            stop_tx,
            tasks,
            view,
        })
    }

    /// Status and counters of every instance, for an embedding program's own
    /// metrics or status endpoint.
    pub fn view(&self) -> AdminState {
        self.view.clone()
    }

    /// Resolves once every instance has opened its sockets and entered the
    /// protocol (left INIT for BACKUP, MASTER or FAULT): what a supervisor's
    /// "ready" means. `false` if one stopped before that (its error comes
    /// from [`Vrrp::run_until`]).
    pub async fn started(&self) -> bool {
        for rx in &self.statuses {
            let mut rx = rx.clone();
            if rx
                .wait_for(|s| s.state != crate::machine::State::Initialize)
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// One receiver per instance, in configuration order.
    pub fn subscribe(&self) -> Vec<watch::Receiver<InstanceStatus>> {
        self.statuses.clone()
    }

    /// Run until `shutdown` completes or an instance fails, then stop gracefully.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        let early = tokio::select! {
            _ = &mut shutdown => None,
            Some(r) = self.tasks.join_next() => Some(r),
        };
        let _ = self.stop_tx.send(true);
        let mut result = match early {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(RunError::Runtime(e.to_string())),
            _ => Ok(()),
        };
        while let Some(r) = self.tasks.join_next().await {
            if let (Ok(Err(e)), Ok(())) = (r, &result) {
                result = Err(e);
            }
        }
        result
    }

    /// Stop now: resign and release, wait for every instance.
    pub async fn stop(self) -> Result<(), RunError> {
        let _ = self.stop_tx.send(true);
        self.run_until(async {}).await
    }
}

/// Either a configuration problem or a runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Validate `cfgs` and run them until `shutdown` completes (convenience for embedding).
pub async fn run_instances(
    cfgs: Vec<VrrpConfig>,
    admin: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let config = crate::config::validate(&VrrpFile { admin, vrrp: cfgs })?;
    Vrrp::start(config).await?.run_until(shutdown).await?;
    Ok(())
}
