//! `syncd --role auto`: one daemon per node; the pair as one system.
//!
//! The shell around `syncd_proto::pair::role::Role`. Each node always runs
//! the standby (it follows whichever peer leads, judging by generation),
//! embeds VRRP for the service address, and tells its peer its state over a
//! peer session of its own (the second heartbeat). The role machine decides
//! who may lead; this module carries its actions out:
//!
//! - the VRRP gate: closed means the instance is held in FAULT, so a node
//!   that may not lead never holds the address;
//! - promotion (VRRP would make us master): the new generation is saved,
//!   the replication source (`primary::run_with`) starts, *then* VRRP adds
//!   the address (its `before_master` hook waits for us);
//! - demotion: the demote hook first (stop serving), then the source
//!   stops, then the node follows;
//! - hooks run as tasks whose results come back as events, so the peer
//!   session and the standby are heard while a hook runs (`hooks.rs`);
//! - a planned switchover (`POST /switchover` on the admin address): fence
//!   (demote hook), drain, hand over ([`Role::handle_handover`]); un-fence
//!   (promote hook) and keep leading if the hand-over cannot start.

mod apply;
mod events;
mod hooks;
mod peer;
mod role_log;
mod source;
mod switchover;

use std::sync::Arc;
use std::time::Duration;

use syncd_proto::pair::lineage::{Lineage, NodeId};
use syncd_proto::pair::role::{PeerState, Role, RoleConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::generation;
use crate::hooks::HookKind;
use crate::standby::{Standby, StandbyError, StandbyEvent, StandbyHandle};
use crate::stats::Stats;
use crate::tls::Identity;
use crate::wire::Request;
use events::{service_vrrp, start_vrrp};
use hooks::{hook_env, record_hook, Pending};
use peer::{load_peer_protocol, may_lead_beside, older_peer, peer_link, save_peer_protocol};
use role_log::RoleLog;
use source::{start_source, Source};
use switchover::{Phase, Switch, DRAIN_TIMEOUT};

#[derive(Debug, thiserror::Error)]
pub enum AutoError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Standby(#[from] StandbyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("VRRP: {0}")]
    Vrrp(#[from] syncd_vrrp::RunError),
    #[error("--role auto needs at least one [[vrrp]] table (the service address that follows the leader)")]
    NoVrrp,
    #[error("--role auto takes exactly one [[vrrp]] table (the service address); found {0}")]
    OneVrrp(usize),
    #[error("admin: cannot listen on {0}: {1}")]
    Admin(std::net::SocketAddr, std::io::Error),
}

/// A promotion the VRRP instance waits for before adding the address.
type Waiter = oneshot::Sender<Result<(), String>>;

/// A switchover request from the admin endpoint; answered with what to
/// print, or why it could not hand over.
pub type SwitchoverReply = oneshot::Sender<Result<String, String>>;

pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AutoError> {
    tokio::pin!(shutdown);
    cfg.require_listen()?;
    cfg.require_peer()?;
    let vrrp_cfg = service_vrrp(&cfg)?;
    let priority = vrrp_cfg.instances.first().map_or(100, |i| i.priority);
    let me = generation::node_id(&Identity::from_config(&cfg)?);

    // The follower side, always on.
    let standby = Standby::bind_as(cfg.clone(), "auto")?;
    let (ev_tx, events) = mpsc::channel(1024);
    standby.events(ev_tx.clone());
    let record = standby.handle();
    let stats = standby.stats();
    let (switch_tx, switches) = mpsc::channel::<SwitchoverReply>(4);
    start_admin(&cfg, &stats, switch_tx).await?;
    let (standby_stop, standby_stop_rx) = oneshot::channel::<()>();
    let standby_task = tokio::spawn(standby.run(async {
        let _ = standby_stop_rx.await;
    }));

    let rec = record.record();
    let mut role = Role::new(
        me,
        role_config(&cfg, priority),
        rec.lineage,
        rec.peer_seen,
        std::time::Instant::now(),
    );

    let role_log = RoleLog::start(&cfg);
    demote_at_start(&cfg, &role, &role_log, &stats).await;

    // VRRP, gated by the role machine, adding the address only once promoted.
    let (gate_tx, gate_rx) = watch::channel(Some("starting".to_string()));
    let (vrrp, mut inputs) = start_vrrp(vrrp_cfg, gate_rx, events, switches).await?;

    let (peer, link) = start_peer_link(&cfg, me, role.lineage(), ev_tx);
    let mut d = Driver::new(&cfg, &role_log, record, stats, gate_tx, peer);
    d.apply(&mut role).await;
    d.event_loop(&mut role, &mut inputs, &mut shutdown).await;
    wind_down(d, &mut inputs, link, vrrp, standby_stop, standby_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Our side of the peer session: our state out, every change and every
/// heartbeat; redial when the peer falls silent.
struct PeerChannels {
    state: watch::Sender<(bool, Lineage)>,
    out: mpsc::Sender<Request>,
    redial: watch::Sender<u64>,
}

fn start_peer_link(
    cfg: &Config,
    me: NodeId,
    lineage: &Lineage,
    events: mpsc::Sender<StandbyEvent>,
) -> (PeerChannels, tokio::task::JoinHandle<()>) {
    let (state, state_rx) = watch::channel((false, lineage.clone()));
    let (out, out_rx) = mpsc::channel::<Request>(16);
    let (redial, redial_rx) = watch::channel(0u64);
    let link = tokio::spawn(peer_link(
        cfg.clone(),
        me,
        state_rx,
        out_rx,
        redial_rx,
        events,
    ));
    (PeerChannels { state, out, redial }, link)
}

/// The admin endpoint, with switchover requests to the driver.
async fn start_admin(
    cfg: &Config,
    stats: &Arc<Stats>,
    switch_tx: mpsc::Sender<SwitchoverReply>,
) -> Result<(), AutoError> {
    if let Some(a) = cfg.admin {
        // Long enough for a whole switchover: fence, drain, hand over or
        // un-fence.
        let longest = 2 * cfg.hooks.timeout + DRAIN_TIMEOUT + RoleConfig::default().handover_wait;
        crate::admin::start_with(a, stats.clone(), Some((switch_tx, longest)))
            .await
            .map_err(|e| AutoError::Admin(a, e))?;
    }
    Ok(())
}

fn role_config(cfg: &Config, priority: u8) -> RoleConfig {
    RoleConfig {
        priority,
        heartbeat_timeout: cfg.pair.heartbeat_timeout,
        peer_wait: cfg.pair.peer_wait,
        unsure_wait: cfg.pair.unsure_wait,
        ..RoleConfig::default()
    }
}

/// A node that does not lead never serves the export read-write: stop
/// serving before joining the election, whatever a previous run left.
async fn demote_at_start(cfg: &Config, role: &Role, role_log: &RoleLog, stats: &Stats) {
    if let Some(argv) = cfg.hooks.get(HookKind::Demote) {
        let env = hook_env(cfg, role.lineage(), "starting as a follower");
        let r = crate::hooks::run(HookKind::Demote, argv, &env, cfg.hooks.timeout).await;
        record_hook(role_log, stats, &r);
    }
}

/// After the event loop: VRRP's waits refused, the peer session, VRRP and
/// the standby stopped, in that order.
async fn wind_down<T>(
    mut d: Driver<'_>,
    inputs: &mut events::Inputs,
    link: tokio::task::JoinHandle<()>,
    vrrp: events::VrrpTask,
    standby_stop: oneshot::Sender<()>,
    standby_task: tokio::task::JoinHandle<T>,
) {
    // Demoted above (source stopped). VRRP may be waiting on its hook: it
    // gets a refusal, so it can resign. Tell the peer we are gone (it then
    // takes over without waiting for our consent), then resign the address.
    if let Some(w) = d.waiter.take() {
        let _ = w.send(Err("stopping".into()));
    }
    inputs.wants.close();
    while let Ok(w) = inputs.wants.try_recv() {
        let _ = w.send(Err("stopping".into()));
    }
    drop(d);
    if tokio::time::timeout(Duration::from_secs(2), link)
        .await
        .is_err()
    {
        tracing::warn!("the peer session did not close within 2 s");
    }
    let _ = vrrp.stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), vrrp.task).await;
    let _ = standby_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), standby_task).await;
}

struct Driver<'a> {
    cfg: &'a Config,
    log: &'a RoleLog,
    record: StandbyHandle,
    stats: Arc<Stats>,
    gate: watch::Sender<Option<String>>,
    state: watch::Sender<(bool, Lineage)>,
    out: mpsc::Sender<Request>,
    /// Bumped when the peer falls silent: our own session to it is likely
    /// dead too (a host gone), so the link dials again at once rather than
    /// after QUIC's idle timeout.
    redial: watch::Sender<u64>,
    heard: bool,
    /// VRRP waiting for our promotion before it adds the address.
    waiter: Option<Waiter>,
    source: Option<Source>,
    /// A hand-over's source stopping in the background.
    source_stop: Option<tokio::task::JoinHandle<()>>,
    /// The service hook running now, if any.
    hook: Option<Pending>,
    /// Switchover: the demote hook ran while we still lead.
    fenced: bool,
    /// Demoting: the source runs on until the peer adopts our generation
    /// (or this time), so it can take over.
    adopt_until: Option<Instant>,
    stopping: bool,
    /// When the peer's state last arrived (a switchover hands over only to
    /// a peer heard within two heartbeats, not one dead for less than the
    /// heartbeat timeout).
    peer_fresh: Option<Instant>,
    switch: Option<Switch>,
    /// When VRRP last asked for our promotion, and when the promotion
    /// (generation durable, source started) began: timed in the log.
    vrrp_asked: Option<Instant>,
    promoting: Option<(Option<Instant>, Instant)>,
    last_change: String,
    why: String,
    /// The protocol version of the peer's latest session.
    peer_protocol: u32,
}

impl<'a> Driver<'a> {
    fn new(
        cfg: &'a Config,
        log: &'a RoleLog,
        record: StandbyHandle,
        stats: Arc<Stats>,
        gate: watch::Sender<Option<String>>,
        peer: PeerChannels,
    ) -> Driver<'a> {
        let peer_protocol = load_peer_protocol(&cfg.state_dir);
        if !may_lead_beside(peer_protocol) {
            tracing::warn!(
                "{} (remembered from before this start)",
                older_peer(peer_protocol)
            );
        }
        Driver {
            cfg,
            log,
            record,
            stats,
            gate,
            state: peer.state,
            out: peer.out,
            redial: peer.redial,
            heard: false,
            waiter: None,
            source: None,
            source_stop: None,
            hook: None,
            fenced: false,
            adopt_until: None,
            stopping: false,
            peer_fresh: None,
            switch: None,
            vrrp_asked: None,
            promoting: None,
            last_change: "none".into(),
            why: "starting".into(),
            peer_protocol,
        }
    }

    fn on_event(&mut self, role: &mut Role, e: StandbyEvent) {
        let now = std::time::Instant::now();
        match e {
            StandbyEvent::PeerState {
                node,
                leading,
                lineage,
            } => {
                self.peer_fresh = Some(Instant::now());
                role.handle_peer(
                    PeerState {
                        node,
                        lineage,
                        leading,
                    },
                    now,
                )
            }
            StandbyEvent::Ask { priority } => role.handle_peer_ask(priority, now),
            StandbyEvent::Answer { grant } => role.handle_peer_answer(grant, now),
            StandbyEvent::PeerGone => role.handle_peer_lost(now),
            StandbyEvent::Adopted(l) => role.handle_caught_up(&l, now),
            StandbyEvent::Committed(id) => role.handle_commit(id),
            StandbyEvent::PeerProtocol(v) => {
                if v != self.peer_protocol {
                    if !may_lead_beside(v) {
                        tracing::warn!("{}", older_peer(v));
                    }
                    if let Err(e) = save_peer_protocol(&self.cfg.state_dir, v) {
                        tracing::warn!("cannot record the peer's protocol {v}: {e}");
                    }
                }
                self.peer_protocol = v;
            }
        }
    }

    /// VRRP's gate: the role machine's, closed also while a follower's
    /// peer speaks a version whose data this node cannot judge (a leader
    /// keeps leading: its data is the newest).
    fn send_gate(&mut self, role: &Role) {
        let closed = if !role.leading() && !may_lead_beside(self.peer_protocol) {
            Some(older_peer(self.peer_protocol))
        } else {
            (!role.gate_open()).then(|| self.why.clone())
        };
        self.gate.send_if_modified(|g| {
            let changed = *g != closed;
            *g = closed.clone();
            changed
        });
    }
}

impl Driver<'_> {
    fn handing_over(&self) -> bool {
        self.switch
            .as_ref()
            .is_some_and(|sw| sw.phase == Phase::HandingOver)
    }

    /// Our state to the peer (leading, lineage), if it changed.
    fn publish_state(&self, role: &Role) {
        let _ = self.state.send_if_modified(|s| {
            let next = (role.leading(), role.lineage().clone());
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}
