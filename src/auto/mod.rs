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

mod events;
mod hooks;
mod peer;
mod role_log;
mod source;
mod switchover;

use std::sync::Arc;
use std::time::Duration;

use syncd_proto::pair::lineage::{Lineage, NodeId, Relation};
use syncd_proto::pair::role::{Action, PeerState, Role, RoleConfig, RoleState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::generation::{self, Record};
use crate::hooks::HookKind;
use crate::standby::{Standby, StandbyError, StandbyEvent, StandbyHandle};
use crate::stats::{unix_now, PairView, Stats};
use crate::tls::Identity;
use crate::wire::Request;
use events::{service_vrrp, start_vrrp};
use hooks::{hook_env, record_hook, After, Pending};
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
    if let Some(a) = cfg.admin {
        // Long enough for a whole switchover: fence, drain, hand over or
        // un-fence.
        let longest = 2 * cfg.hooks.timeout + DRAIN_TIMEOUT + RoleConfig::default().handover_wait;
        crate::admin::start_with(a, stats.clone(), Some((switch_tx, longest)))
            .await
            .map_err(|e| AutoError::Admin(a, e))?;
    }
    let (standby_stop, standby_stop_rx) = oneshot::channel::<()>();
    let standby_task = tokio::spawn(standby.run(async {
        let _ = standby_stop_rx.await;
    }));

    let rec = record.record();
    let rcfg = RoleConfig {
        priority,
        heartbeat_timeout: cfg.pair.heartbeat_timeout,
        peer_wait: cfg.pair.peer_wait,
        unsure_wait: cfg.pair.unsure_wait,
        ..RoleConfig::default()
    };
    let mut role = Role::new(
        me,
        rcfg,
        rec.lineage,
        rec.peer_seen,
        std::time::Instant::now(),
    );

    let role_log = RoleLog::start(&cfg);
    // A node that does not lead never serves the export read-write: stop
    // serving before joining the election, whatever a previous run left.
    if let Some(argv) = cfg.hooks.get(HookKind::Demote) {
        let env = hook_env(&cfg, role.lineage(), "starting as a follower");
        let r = crate::hooks::run(HookKind::Demote, argv, &env, cfg.hooks.timeout).await;
        record_hook(&role_log, &stats, &r);
    }

    // VRRP, gated by the role machine, adding the address only once promoted.
    let (gate_tx, gate_rx) = watch::channel(Some("starting".to_string()));
    let (vrrp, mut inputs) = start_vrrp(vrrp_cfg, gate_rx, events, switches).await?;

    // The peer session: our state out, every change and every heartbeat.
    let (state_tx, state_rx) = watch::channel((false, role.lineage().clone()));
    let (out_tx, out_rx) = mpsc::channel::<Request>(16);
    let (redial_tx, redial_rx) = watch::channel(0u64);
    let link = tokio::spawn(peer_link(
        cfg.clone(),
        me,
        state_rx,
        out_rx,
        redial_rx,
        ev_tx,
    ));

    let mut d = Driver {
        cfg: &cfg,
        log: &role_log,
        me,
        record,
        stats: stats.clone(),
        gate: gate_tx,
        state: state_tx,
        out: out_tx,
        redial: redial_tx,
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
        peer_protocol: load_peer_protocol(&cfg.state_dir),
    };
    if !may_lead_beside(d.peer_protocol) {
        tracing::warn!(
            "{} (remembered from before this start)",
            older_peer(d.peer_protocol)
        );
    }
    d.apply(&mut role).await;
    d.event_loop(&mut role, &mut inputs, &mut shutdown).await;
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
    tracing::info!("stopped");
    Ok(())
}

struct Driver<'a> {
    cfg: &'a Config,
    log: &'a RoleLog,
    me: NodeId,
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

impl Driver<'_> {
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

    /// Carries out what the role machine asks, until it asks nothing more.
    async fn apply(&mut self, role: &mut Role) {
        while let Some(a) = role.poll_action() {
            let now = std::time::Instant::now();
            match a {
                Action::Persist { lineage, peer_seen } => {
                    if let Err(e) = self.record.save_record(Record { lineage, peer_seen }) {
                        // Never lead on a generation that is not on disk.
                        tracing::error!("{e}");
                        if role.state() == RoleState::Promoting {
                            role.handle_promote_failed(&e.to_string(), now);
                        }
                    }
                }
                Action::Gate { open, why } => {
                    tracing::info!(open, "VRRP gate: {why}");
                    if let Some(sw) = self
                        .switch
                        .as_mut()
                        .filter(|s| !open && s.phase == Phase::HandingOver)
                    {
                        sw.released.get_or_insert_with(Instant::now);
                    }
                    self.why = why;
                    self.send_gate(role);
                }
                // A promotion whose generation could not be saved was turned
                // into a demotion already: no source for it.
                Action::Promote { .. } if role.state() != RoleState::Promoting => {}
                Action::Promote { gen } => {
                    tracing::info!(generation = %gen, "promoting: becoming the replication source");
                    self.source = Some(start_source(self.cfg, self.stats.clone()));
                    self.promoting = Some((self.vrrp_asked.take(), Instant::now()));
                    // Serve (NFS export) before the address; the answer
                    // comes back as an event (`on_hook`).
                    if !self.spawn_hook(HookKind::Promote, After::Promote, role, "promotion") {
                        self.log_promoted(None);
                        role.handle_promoted(now);
                    }
                }
                Action::Demote { why } => {
                    tracing::info!("demoting: {why}");
                    // A demotion overtakes a promotion (or a switchover)
                    // still in its hook: that hook is killed (its task
                    // dropped), then the demote hook undoes what it did.
                    if let Some(p) = self.hook.take() {
                        tracing::warn!(
                            "stopping the running service hook ({:?}): demoting",
                            p.after
                        );
                        // An un-fence cut short may have served again: the
                        // demote hook must run.
                        if matches!(p.after, After::Unfence(_)) {
                            self.fenced = false;
                        }
                        p.task.abort();
                        let _ = p.task.await;
                    }
                    if let Some(mut sw) = self.switch.take() {
                        if let Some(r) = sw.reply.take() {
                            if sw.phase != Phase::HandingOver {
                                let _ = r.send(Err(format!(
                                    "this node stopped leading during the switchover: {why}"
                                )));
                            } else {
                                self.switch = Some(Switch {
                                    reply: Some(r),
                                    ..sw
                                });
                            }
                        }
                    }
                    // Stop serving first (unless the switchover's fence did).
                    if self.fenced || !self.spawn_hook(HookKind::Demote, After::Demote, role, &why)
                    {
                        if self.handing_over() {
                            // Tell the peer we no longer lead and stop the
                            // source without blocking (seen taking 7.7 s):
                            // the peer's VRRP takes over meanwhile and its
                            // promotion, which we consent to, closes our
                            // source's session.
                            self.publish_state(role);
                            self.stop_source_in_background();
                        } else {
                            self.finish_demote(role).await;
                        }
                    }
                }
                Action::Follow { preserve } => {
                    if preserve {
                        tracing::warn!("following the peer's newer data; what the catch-up replaces or deletes here is kept in the conflicts area");
                    } else {
                        tracing::info!("following the peer");
                    }
                }
                Action::Ask { priority } => {
                    tracing::info!("asking the peer's consent to lead");
                    let _ = self.out.try_send(Request::Ask { priority });
                }
                Action::Answer { grant } => {
                    tracing::info!(grant, "answering the peer's request to lead");
                    let _ = self.out.try_send(Request::Answer { grant });
                }
            }
        }
        while let Some(c) = role.poll_change() {
            self.stats
                .role_changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(from = %c.from, to = %c.to, generation = %c.gen, "role: {}", c.why);
            self.last_change = format!(
                "{} {} -> {} ({}): {}",
                unix_now(),
                c.from,
                c.to,
                c.gen,
                c.why
            );
            self.log.write(self.last_change.clone());
            let status = format!("auto: {} (generation {}): {}", c.to, c.gen, c.why);
            syncd_sdnotify::send(&[syncd_sdnotify::State::Status(&status)]);
        }
        self.send_gate(role);
        // Answer VRRP: the address once we lead; a refusal once we will not.
        if role.state() == RoleState::Leader {
            if let Some(w) = self.waiter.take() {
                let _ = w.send(Ok(()));
            }
        } else if self.gate.borrow().is_some()
            || !matches!(role.state(), RoleState::Follower | RoleState::Promoting)
        {
            if let Some(w) = self.waiter.take() {
                let _ = w.send(Err(self.why.clone()));
            }
        }
        let heard = role.peer().is_some();
        if self.heard && !heard {
            self.redial.send_modify(|n| *n += 1);
        }
        self.heard = heard;
        self.publish_state(role);
        let data = match role.relation() {
            None => "unknown (peer not heard)",
            Some(Relation::Same) => "current",
            Some(Relation::Ahead) => "ahead of the peer",
            Some(Relation::Behind { .. }) => "behind the peer",
            Some(Relation::Diverged { .. }) => "diverged from the peer",
        };
        let _ = self.me;
        self.stats
            .set_generation(role.lineage(), role.peer().map(|p| &p.lineage));
        let closed = self.gate.borrow().clone();
        self.stats.set_pair(PairView {
            role: role.state().to_string(),
            leading: role.leading(),
            gate_open: closed.is_none(),
            why: closed.unwrap_or_else(|| self.why.clone()),
            data,
            last_change: self.last_change.clone(),
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
