//! The daemon's inputs: the embedded VRRP (gated by the role machine,
//! asking for our promotion before it adds the address), the standby's
//! events, switchover requests; and the loop that feeds them to the role
//! machine.

use std::sync::Arc;
use std::time::Duration;

use syncd_proto::pair::role::Role;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{AutoError, Driver, SwitchoverReply, Waiter};
use crate::config::Config;
use crate::standby::StandbyEvent;

/// What the event loop listens to besides the driver's own tasks.
pub(super) struct Inputs {
    pub(super) events: mpsc::Receiver<StandbyEvent>,
    pub(super) switches: mpsc::Receiver<SwitchoverReply>,
    /// VRRP asking for our promotion before it adds the address.
    pub(super) wants: mpsc::Receiver<Waiter>,
    pub(super) vrrp_state: watch::Receiver<syncd_vrrp::InstanceStatus>,
}

/// The embedded VRRP's task and how to stop it.
pub(super) struct VrrpTask {
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: tokio::task::JoinHandle<Result<(), syncd_vrrp::RunError>>,
}

/// The one `[[vrrp]]` table, never preempting: a returning node with a
/// higher priority that preempted would send its first advert before the
/// pair's rules are asked (they would refuse it) and make the leadership
/// flap. Fail back with a planned switchover (SIGTERM the leader) instead.
pub(super) fn service_vrrp(cfg: &Config) -> Result<syncd_vrrp::Config, AutoError> {
    let mut vrrp_cfg = cfg.vrrp_config()?.ok_or(AutoError::NoVrrp)?;
    if vrrp_cfg.instances.len() != 1 {
        return Err(AutoError::OneVrrp(vrrp_cfg.instances.len()));
    }
    for i in &mut vrrp_cfg.instances {
        i.preempt = false;
    }
    Ok(vrrp_cfg)
}

/// Starts the embedded VRRP, gated by the role machine, its `before_master`
/// hook asking for our promotion; says Ready once it runs the protocol.
pub(super) async fn start_vrrp(
    vrrp_cfg: syncd_vrrp::Config,
    gate: watch::Receiver<Option<String>>,
    events: mpsc::Receiver<StandbyEvent>,
    switches: mpsc::Receiver<SwitchoverReply>,
) -> Result<(VrrpTask, Inputs), AutoError> {
    let (want_tx, wants) = mpsc::channel::<Waiter>(4);
    let hook: syncd_vrrp::BeforeMaster = Arc::new(move || {
        let tx = want_tx.clone();
        Box::pin(async move {
            let (t, r) = oneshot::channel();
            tx.send(t).await.map_err(|_| "stopping".to_string())?;
            r.await.unwrap_or_else(|_| Err("stopping".into()))
        })
    });
    let vrrp = syncd_vrrp::Vrrp::start_embedded(
        vrrp_cfg,
        syncd_vrrp::Hooks {
            gate: Some(gate),
            before_master: Some(hook),
        },
    )
    .await?;
    let vrrp_state = vrrp
        .subscribe()
        .into_iter()
        .next()
        .ok_or(AutoError::NoVrrp)?;
    // Ready (sd_notify): the standby listens and VRRP runs the protocol.
    if vrrp.started().await {
        syncd_sdnotify::send(&[
            syncd_sdnotify::State::Ready,
            syncd_sdnotify::State::Status("auto: standby listening, VRRP running"),
        ]);
    }
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(vrrp.run_until(async {
        let _ = stop_rx.await;
    }));
    let inputs = Inputs {
        events,
        switches,
        wants,
        vrrp_state,
    };
    Ok((VrrpTask { stop, task }, inputs))
}

impl Driver<'_> {
    /// Until shutdown (or VRRP stops): each event to the role machine, its
    /// actions carried out after each.
    pub(super) async fn event_loop(
        &mut self,
        role: &mut Role,
        inputs: &mut Inputs,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) {
        loop {
            let deadline = role.poll_timeout().map_or(
                Instant::now() + Duration::from_secs(3600),
                Instant::from_std,
            );
            let now = std::time::Instant::now;
            let ticking = self.switch.is_some() || self.adopt_until.is_some();
            let stop = tokio::select! {
                r = ended(self.hook.as_mut().map(|p| &mut p.task)) => {
                    self.on_hook_ended(role, r).await;
                    false
                }
                Some(reply) = inputs.switches.recv() => {
                    self.start_switchover(role, reply);
                    false
                }
                _ = closed(self.waiter.as_mut()) => {
                    self.on_waiter_gone(role);
                    false
                }
                _ = tokio::time::sleep(Duration::from_millis(50)), if ticking => false,
                Some(e) = inputs.events.recv() => {
                    self.on_event(role, e);
                    false
                }
                Some(w) = inputs.wants.recv() => {
                    self.on_want(role, w);
                    false
                }
                r = inputs.vrrp_state.changed() => on_vrrp_state(role, inputs, r.is_err()),
                _ = tokio::time::sleep_until(deadline) => {
                    role.handle_timeout(now());
                    false
                }
                _ = ended(self.source.as_mut().map(|s| &mut s.task)) => {
                    // The source ended on its own (a fatal error): stop leading.
                    tracing::error!("the replication source stopped; stepping down");
                    self.source = None;
                    role.handle_source_failed("it ended on its own (see the error above)", now());
                    false
                }
                _ = ended(self.source_stop.as_mut()) => {
                    self.source_stopped(role);
                    false
                }
                _ = &mut *shutdown => true,
            };
            if stop {
                self.stopping = true;
                role.handle_shutdown(now());
                self.apply(role).await;
                self.finish_hooks(role).await;
                break;
            }
            self.apply(role).await;
            self.check_switchover(role);
            self.check_adopted(role).await;
            self.apply(role).await;
        }
    }

    async fn on_hook_ended(
        &mut self,
        role: &mut Role,
        r: Result<crate::hooks::HookRun, tokio::task::JoinError>,
    ) {
        let after = self.hook.take().map(|p| p.after);
        match (after, r) {
            (Some(after), Ok(run)) => self.on_hook(role, after, run).await,
            (_, Err(e)) => tracing::error!("a service hook task ended: {e}"),
            (None, Ok(_)) => {}
        }
    }

    /// VRRP heard a better master while waiting for us and gave the
    /// mastership up: a promotion under way becomes a demotion once it is
    /// done (a leader without VRRP master).
    fn on_waiter_gone(&mut self, role: &mut Role) {
        tracing::info!("VRRP no longer waits for our promotion");
        self.waiter = None;
        role.handle_vrrp(false, std::time::Instant::now());
    }

    /// VRRP asks for our promotion before it adds the address.
    fn on_want(&mut self, role: &mut Role, w: Waiter) {
        if let Some(old) = self.waiter.replace(w) {
            let _ = old.send(Err("superseded by a newer request".into()));
        }
        self.vrrp_asked = Some(Instant::now());
        role.handle_vrrp(true, std::time::Instant::now());
    }
}

/// VRRP's state changed (or, `stopped`, VRRP is gone): `true` to step down.
fn on_vrrp_state(role: &mut Role, inputs: &Inputs, stopped: bool) -> bool {
    if stopped {
        tracing::error!("VRRP stopped; stepping down");
        return true;
    }
    let master = inputs.vrrp_state.borrow().state == syncd_vrrp::State::Master;
    if !master {
        role.handle_vrrp(false, std::time::Instant::now());
    }
    false
}

/// The end of a task, if there is one; never otherwise.
async fn ended<T>(
    task: Option<&mut tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// The waiter's receiver gone, if there is a waiter; never otherwise.
async fn closed(waiter: Option<&mut Waiter>) {
    match waiter {
        Some(w) => w.closed().await,
        None => std::future::pending().await,
    }
}
