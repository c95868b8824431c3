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

use std::sync::Arc;
use std::time::Duration;

use syncd_proto::pair::lineage::{Lineage, NodeId, Relation};
use syncd_proto::pair::role::{Action, PeerState, Role, RoleConfig, RoleState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::generation::{self, Record};
use crate::hooks::{HookEnv, HookKind, HookRun, Outcome};
use crate::primary::Session;
use crate::standby::{Standby, StandbyError, StandbyEvent, StandbyHandle};
use crate::stats::{unix_now, PairView, Stats};
use crate::tls::Identity;
use crate::wire::{Purpose, Request};

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

/// A hook run in flight, and what its result continues.
struct Pending {
    after: After,
    task: tokio::task::JoinHandle<HookRun>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum After {
    /// Promotion: then the address (or, failed, the promotion is undone).
    Promote,
    /// Demotion: then the source stops.
    Demote,
    /// Switchover: writes fenced, then drain.
    Fence,
    /// Switchover abandoned (why): serving again, keep leading.
    Unfence(String),
}

/// A switchover request from the admin endpoint; answered with what to
/// print, or why it could not hand over.
pub type SwitchoverReply = oneshot::Sender<Result<String, String>>;

/// How long a demoting node keeps its source for the peer to adopt its
/// generation.
const ADOPT_WAIT: Duration = Duration::from_secs(10);

/// How long the drain may take before the switchover gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fencing,
    Draining,
    HandingOver,
    Unfencing,
}

struct Switch {
    reply: Option<SwitchoverReply>,
    phase: Phase,
    fenced_at: Instant,
    /// When the fence (demote hook) was done, the drain, the address
    /// released (gate closed: VRRP resigns) and the source stopped.
    fenced: Option<Instant>,
    drained: Option<Instant>,
    released: Option<Instant>,
    stopped: Option<Instant>,
    /// Drained no earlier than this (changes made just before the fence
    /// are still on their way from inotify and the batcher).
    settle_until: Instant,
    until: Instant,
}

/// The replication source while this node leads.
struct Source {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AutoError> {
    tokio::pin!(shutdown);
    cfg.require_listen()?;
    cfg.require_peer()?;
    let mut vrrp_cfg = cfg.vrrp_config()?.ok_or(AutoError::NoVrrp)?;
    if vrrp_cfg.instances.len() != 1 {
        return Err(AutoError::OneVrrp(vrrp_cfg.instances.len()));
    }
    // The leader keeps leading: a returning node with a higher priority
    // that preempted would send its first advert before the pair's rules are
    // asked (they would refuse it) and make the leadership flap. Fail back
    // with a planned switchover (SIGTERM the leader) instead.
    for i in &mut vrrp_cfg.instances {
        i.preempt = false;
    }
    let priority = vrrp_cfg.instances.first().map_or(100, |i| i.priority);
    let me = generation::node_id(&Identity::from_config(&cfg)?);

    // The follower side, always on.
    let standby = Standby::bind_as(cfg.clone(), "auto")?;
    let (ev_tx, mut events) = mpsc::channel(1024);
    standby.events(ev_tx.clone());
    let record = standby.handle();
    let stats = standby.stats();
    let (switch_tx, mut switches) = mpsc::channel::<SwitchoverReply>(4);
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
    let (want_tx, mut wants) = mpsc::channel::<Waiter>(4);
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
            gate: Some(gate_rx),
            before_master: Some(hook),
        },
    )
    .await?;
    let mut vrrp_state = vrrp
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
    let (vrrp_stop, vrrp_stop_rx) = oneshot::channel::<()>();
    let vrrp_task = tokio::spawn(vrrp.run_until(async {
        let _ = vrrp_stop_rx.await;
    }));

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
    loop {
        let deadline = role.poll_timeout().map_or(
            Instant::now() + Duration::from_secs(3600),
            Instant::from_std,
        );
        let now = || std::time::Instant::now();
        let ticking = d.switch.is_some() || d.adopt_until.is_some();
        tokio::select! {
            r = async {
                match d.hook.as_mut() {
                    Some(p) => (&mut p.task).await,
                    None => std::future::pending().await,
                }
            } => {
                let after = d.hook.take().map(|p| p.after);
                match (after, r) {
                    (Some(after), Ok(run)) => d.on_hook(&mut role, after, run).await,
                    (_, Err(e)) => tracing::error!("a service hook task ended: {e}"),
                    (None, Ok(_)) => {}
                }
            }
            Some(reply) = switches.recv() => d.start_switchover(&role, reply),
            _ = async {
                match d.waiter.as_mut() {
                    Some(w) => w.closed().await,
                    None => std::future::pending().await,
                }
            } => {
                // VRRP heard a better master while waiting for us and gave
                // the mastership up: a promotion under way becomes a
                // demotion once it is done (a leader without VRRP master).
                tracing::info!("VRRP no longer waits for our promotion");
                d.waiter = None;
                role.handle_vrrp(false, now());
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if ticking => {}
            Some(e) = events.recv() => d.on_event(&mut role, e),
            Some(w) = wants.recv() => {
                if let Some(old) = d.waiter.replace(w) {
                    let _ = old.send(Err("superseded by a newer request".into()));
                }
                d.vrrp_asked = Some(Instant::now());
                role.handle_vrrp(true, now());
            }
            r = vrrp_state.changed() => {
                if r.is_err() {
                    tracing::error!("VRRP stopped; stepping down");
                    d.stopping = true;
                    role.handle_shutdown(now());
                    d.apply(&mut role).await;
                    d.finish_hooks(&mut role).await;
                    break;
                }
                let master = vrrp_state.borrow().state == syncd_vrrp::State::Master;
                if !master {
                    role.handle_vrrp(false, now());
                }
            }
            _ = tokio::time::sleep_until(deadline) => role.handle_timeout(now()),
            _ = async {
                match d.source.as_mut() {
                    Some(s) => { let _ = (&mut s.task).await; }
                    None => std::future::pending().await,
                }
            } => {
                // The source ended on its own (a fatal error): stop leading.
                tracing::error!("the replication source stopped; stepping down");
                d.source = None;
                role.handle_source_failed("it ended on its own (see the error above)", now());
            }
            _ = async {
                match d.source_stop.as_mut() {
                    Some(t) => { let _ = t.await; }
                    None => std::future::pending().await,
                }
            } => d.source_stopped(&mut role),
            _ = &mut shutdown => {
                d.stopping = true;
                role.handle_shutdown(now());
                d.apply(&mut role).await;
                d.finish_hooks(&mut role).await;
                break;
            }
        }
        d.apply(&mut role).await;
        d.check_switchover(&mut role);
        d.check_adopted(&mut role).await;
        d.apply(&mut role).await;
    }
    // Demoted above (source stopped). VRRP may be waiting on its hook: it
    // gets a refusal, so it can resign. Tell the peer we are gone (it then
    // takes over without waiting for our consent), then resign the address.
    if let Some(w) = d.waiter.take() {
        let _ = w.send(Err("stopping".into()));
    }
    wants.close();
    while let Ok(w) = wants.try_recv() {
        let _ = w.send(Err("stopping".into()));
    }
    drop(d);
    if tokio::time::timeout(Duration::from_secs(2), link)
        .await
        .is_err()
    {
        tracing::warn!("the peer session did not close within 2 s");
    }
    let _ = vrrp_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), vrrp_task).await;
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

fn may_lead_beside(v: u32) -> bool {
    syncd_proto::version::features(v).is_some_and(|f| f.may_lead_beside)
}

/// The peer's protocol, kept across restarts while it is one this node may
/// not lead beside: a node that followed a previous-release peer took its
/// generation before the catch-up was complete, and a restart must not make
/// that data leadable (until a peer of this release is heard).
const PEER_PROTOCOL_FILE: &str = "peer_protocol";

fn load_peer_protocol(state_dir: &std::path::Path) -> u32 {
    let current = crate::wire::PROTOCOL_VERSION;
    match crate::state::read_private(&state_dir.join(PEER_PROTOCOL_FILE)) {
        Ok(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                tracing::warn!(
                    "{PEER_PROTOCOL_FILE} in the state directory is not a number; ignored"
                );
                current
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => current,
        Err(e) => {
            tracing::warn!("cannot read {PEER_PROTOCOL_FILE} in the state directory: {e}; ignored");
            current
        }
    }
}

fn save_peer_protocol(state_dir: &std::path::Path, v: u32) -> std::io::Result<()> {
    use std::io::Write;
    let path = state_dir.join(PEER_PROTOCOL_FILE);
    if may_lead_beside(v) {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut f = crate::state::create_private(&path)?;
    f.write_all(format!("{v}\n").as_bytes())?;
    f.sync_all()
}

fn older_peer(v: u32) -> String {
    format!(
        "the peer speaks protocol {v}, this node {}: this node follows it but does not take the lead beside it (a follower of protocol {v} takes a generation before its catch-up is complete, so data cannot be judged); upgrade the peer too (README: Upgrading)",
        crate::wire::Speaks::OURS
    )
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

    /// A hand-over's source stop: the loop goes on (answers the peer's
    /// request to lead) and `source_stopped` follows when it is done.
    fn stop_source_in_background(&mut self) {
        let Some(mut s) = self.source.take() else {
            self.source_stop = Some(tokio::spawn(async {}));
            return;
        };
        let _ = s.stop.send(());
        self.source_stop = Some(tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(15), &mut s.task)
                .await
                .is_err()
            {
                tracing::error!("the replication source did not stop within 15 s; ending it");
                s.task.abort();
            }
        }));
    }

    /// The background source stop is done: the node follows.
    fn source_stopped(&mut self, role: &mut Role) {
        self.source_stop = None;
        if let Some(sw) = self.switch.as_mut() {
            sw.stopped.get_or_insert_with(Instant::now);
        }
        self.fenced = false;
        role.handle_demoted(std::time::Instant::now());
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

    /// Starts the hook for `kind` as a task; `false` if none is configured.
    fn spawn_hook(&mut self, kind: HookKind, after: After, role: &Role, why: &str) -> bool {
        let Some(argv) = self.cfg.hooks.get(kind) else {
            return false;
        };
        let argv = argv.to_vec();
        let env = hook_env(self.cfg, role.lineage(), why);
        let timeout = self.cfg.hooks.timeout;
        let task = tokio::spawn(async move { crate::hooks::run(kind, &argv, &env, timeout).await });
        self.hook = Some(Pending { after, task });
        true
    }

    /// A hook finished: continue what it was part of.
    async fn on_hook(&mut self, role: &mut Role, after: After, run: HookRun) {
        record_hook(self.log, &self.stats, &run);
        let now = std::time::Instant::now();
        let failed = match &run.outcome {
            Outcome::Ok => None,
            _ => Some(run.to_string()),
        };
        match after {
            After::Promote => match failed {
                None => {
                    self.log_promoted(Some(run.took));
                    role.handle_promoted(now);
                }
                // Undone by the demotion this asks for: the demote hook,
                // then the source stops; the gate stays closed a while so
                // the peer keeps or takes the lead.
                Some(why) => role.handle_promote_failed(&why, now),
            },
            After::Demote => {
                if let Some(why) = failed {
                    // Stepping down goes on: holding the address while we
                    // may not lead would be worse than an export left up.
                    tracing::error!("{why}; demoting anyway");
                }
                self.stop_source(role).await;
            }
            After::Fence => match failed {
                None => {
                    self.fenced = true;
                    if let Some(sw) = self.switch.as_mut() {
                        sw.phase = Phase::Draining;
                        sw.fenced = Some(Instant::now());
                    }
                }
                Some(why) => {
                    self.fenced = true;
                    self.unfence(role, format!("fencing writes failed: {why}"));
                }
            },
            After::Unfence(why) => {
                self.fenced = false;
                let why = match failed {
                    None => {
                        format!("{why}; writes are served here again and this node keeps leading")
                    }
                    Some(f) => {
                        // Leading without serving helps nobody: step down.
                        role.handle_source_failed(
                            &format!("un-fencing after a switchover failed: {f}"),
                            now,
                        );
                        format!("{why}; un-fencing failed too ({f}), so this node steps down")
                    }
                };
                self.reply_switch(Err(why));
            }
        }
    }

    /// The promotion's steps, timed from VRRP's request (the end of its
    /// Skew_Time or Master_Down_Interval): what a switchover's client waits
    /// for after the old leader released the address.
    fn log_promoted(&mut self, hook: Option<Duration>) {
        let Some((asked, began)) = self.promoting.take() else {
            return;
        };
        let ms = |d: Duration| d.as_millis();
        let from = asked.unwrap_or(began);
        let hook = hook.map_or("none".to_string(), |d| format!("{} ms", ms(d)));
        let msg = format!(
            "promoted in {} ms from VRRP master: consent and generation durable after {} ms, promote hook {hook}; the address is added and gratuitous ARPs sent now",
            ms(from.elapsed()),
            ms(began.duration_since(from)),
        );
        // The log only: role.log holds state changes, hook runs and
        // switchovers, one kind per line.
        tracing::info!("{msg}");
    }

    /// Not serving any more: the source stops, unless the peer (heard, not
    /// leading) has yet to adopt our generation: without it the peer could
    /// never take over from us (our data would stay newer than its), so
    /// the source runs on until then, bounded.
    async fn stop_source(&mut self, role: &mut Role) {
        if self.waits_for_adoption(role) {
            tracing::info!(
                "demoting: the source runs until the peer holds generation {} (at most {:?}), so it can take over",
                role.lineage().gen,
                ADOPT_WAIT
            );
            self.adopt_until = Some(Instant::now() + ADOPT_WAIT);
            return;
        }
        self.finish_demote(role).await;
    }

    fn waits_for_adoption(&self, role: &Role) -> bool {
        let gen = role.lineage().gen;
        self.source.is_some()
            && !self.stopping
            && role
                .peer()
                .is_some_and(|p| !p.leading && p.lineage.gen != gen)
    }

    async fn check_adopted(&mut self, role: &mut Role) {
        if let Some(t) = self.adopt_until {
            if Instant::now() >= t || !self.waits_for_adoption(role) {
                self.adopt_until = None;
                self.finish_demote(role).await;
            }
        }
    }

    /// The source stops; the node follows.
    async fn finish_demote(&mut self, role: &mut Role) {
        if let Some(mut s) = self.source.take() {
            let _ = s.stop.send(());
            if tokio::time::timeout(Duration::from_secs(15), &mut s.task)
                .await
                .is_err()
            {
                tracing::error!("the replication source did not stop within 15 s; ending it");
                s.task.abort();
            }
        }
        self.fenced = false;
        role.handle_demoted(std::time::Instant::now());
    }

    /// Stopping: let a demotion's hook finish (it is bounded by its timeout).
    async fn finish_hooks(&mut self, role: &mut Role) {
        while let Some(p) = self.hook.take() {
            let after = p.after.clone();
            if let Ok(run) = p.task.await {
                self.on_hook(role, after, run).await;
            }
            self.apply(role).await;
        }
        if self.adopt_until.take().is_some() {
            self.finish_demote(role).await;
            self.apply(role).await;
        }
        if let Some(t) = self.source_stop.take() {
            let _ = t.await;
            self.source_stopped(role);
            self.apply(role).await;
        }
        self.reply_switch(Err("this node is shutting down".into()));
    }

    fn reply_switch(&mut self, r: Result<String, String>) {
        if let Some(mut sw) = self.switch.take() {
            if let Err(e) = &r {
                tracing::warn!("switchover failed: {e}");
            }
            if let Some(reply) = sw.reply.take() {
                let _ = reply.send(r);
            }
        }
    }

    /// `syncd switchover`: checks it can begin, then fences writes.
    fn start_switchover(&mut self, role: &Role, reply: SwitchoverReply) {
        let refuse = if self.switch.is_some() {
            Some("a switchover is already under way".to_string())
        } else if role.state() != RoleState::Leader {
            Some(format!(
                "this node does not lead (it is {}); run `syncd switchover` on the leader",
                role.state()
            ))
        } else if role.peer().is_none() {
            Some("the peer is not heard: there is nobody to hand over to".to_string())
        } else if self.hook.is_some() {
            Some("a service hook is running; try again".to_string())
        } else {
            None
        };
        if let Some(why) = refuse {
            tracing::warn!("switchover refused: {why}");
            let _ = reply.send(Err(why));
            return;
        }
        let now = Instant::now();
        tracing::info!("switchover: fencing writes (demote hook)");
        let settle = self.cfg.sync.batch.max_delay + Duration::from_millis(200);
        self.switch = Some(Switch {
            reply: Some(reply),
            phase: Phase::Fencing,
            fenced_at: now,
            fenced: None,
            drained: None,
            released: None,
            stopped: None,
            settle_until: now + settle,
            until: now + DRAIN_TIMEOUT,
        });
        if !self.spawn_hook(HookKind::Demote, After::Fence, role, "planned switchover") {
            self.fenced = true;
            if let Some(sw) = self.switch.as_mut() {
                sw.phase = Phase::Draining;
                sw.fenced = Some(now);
            }
        }
    }

    /// The switchover gives up before handing over: serve again.
    fn unfence(&mut self, role: &Role, why: String) {
        tracing::warn!("switchover: {why}; un-fencing");
        if let Some(sw) = self.switch.as_mut() {
            sw.phase = Phase::Unfencing;
        }
        if role.state() != RoleState::Leader
            || !self.spawn_hook(
                HookKind::Promote,
                After::Unfence(why.clone()),
                role,
                "switchover abandoned",
            )
        {
            self.fenced = false;
            self.reply_switch(Err(format!("{why}; this node keeps leading")));
        }
    }

    /// Drives a switchover from what is known now.
    fn check_switchover(&mut self, role: &mut Role) {
        let Some((phase, settle_until, until, fenced_at)) = self
            .switch
            .as_ref()
            .map(|sw| (sw.phase, sw.settle_until, sw.until, sw.fenced_at))
        else {
            return;
        };
        let now = Instant::now();
        match phase {
            Phase::Fencing | Phase::Unfencing => {}
            Phase::Draining => {
                use std::sync::atomic::Ordering::Relaxed;
                let Some(peer) = role.peer().cloned() else {
                    self.unfence(role, "the peer was lost while draining".into());
                    return;
                };
                // `lag_ops` (set at each ship) already counts what was
                // queued then; `queue` is fresh. Either nonzero: not drained.
                let lag = self
                    .stats
                    .lag_ops
                    .load(Relaxed)
                    .max(self.stats.queue.load(Relaxed));
                let connected = self.stats.connected_since.load(Relaxed) > 0;
                let adopted = peer.lineage.gen == role.lineage().gen;
                let alive = self
                    .peer_fresh
                    .is_some_and(|t| now.duration_since(t) <= 2 * self.cfg.pair.heartbeat);
                // The source's stop ships what is left; a session that is down
                // shows as lag (changes unacknowledged), not as drained.
                if now >= settle_until && lag == 0 && adopted && alive {
                    if role.handle_handover(now.into_std()) {
                        tracing::info!("switchover: drained; handing over to peer {}", peer.node);
                        if let Some(sw) = self.switch.as_mut() {
                            sw.phase = Phase::HandingOver;
                            sw.drained = Some(now);
                            sw.until = now + RoleConfig::default().handover_wait;
                        }
                    }
                } else if now >= until {
                    let why = format!(
                        "the peer did not catch up within {:?} ({lag} changes unacknowledged, session {}, peer {}, peer generation {}, ours {})",
                        DRAIN_TIMEOUT,
                        if connected { "up" } else { "down" },
                        if alive { "heard" } else { "silent" },
                        peer.lineage.gen,
                        role.lineage().gen
                    );
                    self.unfence(role, why);
                }
            }
            Phase::HandingOver => {
                if let Some(p) = role.peer().filter(|p| p.leading) {
                    let ms = now.duration_since(fenced_at).as_millis();
                    let steps = self.switch.as_ref().map(|sw| {
                        [sw.fenced, sw.drained, sw.released, sw.stopped]
                            .map(|t| t.map_or(0, |t| t.duration_since(fenced_at).as_millis()))
                    });
                    let [f, d, r, s] = steps.unwrap_or_default();
                    let msg = format!(
                        "handed over to peer {} (generation {}); writes were unavailable for {ms} ms (fence to the peer promoting: fenced after {f} ms, drained after {d} ms, address released after {r} ms, source stopped after {s} ms, peer promoting after {ms} ms; its promote hook and the address follow, timed in its log: `promoted in`)",
                        p.node,
                        p.lineage.gen,
                    );
                    tracing::info!("switchover: {msg}");
                    self.log.write(format!("{} switchover: {msg}", unix_now()));
                    self.reply_switch(Ok(msg));
                } else if now >= until {
                    self.reply_switch(Err(format!(
                        "handed over, but the peer did not lead within {:?}; this node follows the pair's rules again (it may lead again)",
                        RoleConfig::default().handover_wait
                    )));
                }
            }
        }
    }
}

fn hook_env(cfg: &Config, lineage: &Lineage, why: &str) -> HookEnv {
    HookEnv {
        export: cfg.export.display().to_string(),
        export_id: cfg.export_id.clone(),
        node: cfg.node_id.clone(),
        generation: lineage.gen.to_string(),
        reason: why.to_string(),
    }
}

/// Counts a hook run and writes it to the role log.
fn record_hook(log: &RoleLog, stats: &Stats, r: &HookRun) {
    stats.record_hook(r);
    log.write(format!("{} hook: {r}", unix_now()));
}

/// Starts `primary::run_with` (it continues the generation just saved).
fn start_source(cfg: &Config, stats: Arc<Stats>) -> Source {
    let (stop, stop_rx) = oneshot::channel::<()>();
    let cfg = cfg.clone();
    let task = tokio::spawn(async move {
        let r = crate::primary::run_source(cfg, stats, async {
            let _ = stop_rx.await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!("replication source: {e}");
        }
    });
    Source { stop, task }
}

/// The durable role log: one line per change, appended and flushed by a
/// thread of its own, so no `fsync` of it sits on a promotion's way to the
/// address (measured under disk load: 1.2 s between a promote hook's end
/// and the address). Lines are written in order; dropping it waits for them.
struct RoleLog {
    path: std::path::PathBuf,
    tx: Option<std::sync::mpsc::SyncSender<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RoleLog {
    fn start(cfg: &Config) -> RoleLog {
        let path = cfg.state_dir.join("role.log");
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(256);
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("syncd-role-log".into())
            .spawn(move || rx.into_iter().for_each(|l| append_line(&p, &l)))
            .ok();
        let tx = thread.as_ref().map(|_| tx);
        RoleLog { path, tx, thread }
    }

    fn write(&self, line: String) {
        // Full (a disk stuck for 256 lines) or no thread: write it here.
        let back = match &self.tx {
            Some(tx) => tx.try_send(line).err().map(|e| match e {
                std::sync::mpsc::TrySendError::Full(l)
                | std::sync::mpsc::TrySendError::Disconnected(l) => l,
            }),
            None => Some(line),
        };
        if let Some(l) = back {
            append_line(&self.path, &l);
        }
    }
}

impl Drop for RoleLog {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn append_line(path: &std::path::Path, line: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link planted in the state directory.
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        });
    if let Err(e) = r {
        tracing::warn!("role log {}: {e}", path.display());
    }
}

/// Our side of the peer session: connect, then send our state at every
/// change and at least every heartbeat, and the role machine's questions
/// and answers. Reconnects on any failure.
async fn peer_link(
    cfg: Config,
    me: NodeId,
    mut state: watch::Receiver<(bool, Lineage)>,
    mut out: mpsc::Receiver<Request>,
    mut redial: watch::Receiver<u64>,
    events: mpsc::Sender<StandbyEvent>,
) {
    let heartbeat = cfg.pair.heartbeat;
    loop {
        if state.has_changed().is_err() {
            return; // stopping, and the peer is not reachable anyway
        }
        let lineage = state.borrow().1.clone();
        // A dead host never answers: give up at the heartbeat timeout, not
        // the session's 10 s, so a returning peer is heard at once.
        let attempt = Session::connect_as(&cfg, Purpose::Peer, me, &lineage);
        let r = match tokio::time::timeout(cfg.pair.heartbeat_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(crate::primary::ClientError::Protocol("no answer".into())),
        };
        let mut s = match r {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("peer session: {e}");
                // Questions asked meanwhile are moot: the peer is not heard.
                while out.try_recv().is_ok() {}
                tokio::time::sleep(heartbeat).await;
                continue;
            }
        };
        tracing::info!("peer session up");
        // What the peer runs is known now, whichever side dials first: an
        // older peer's own session may come much later.
        let _ = events.try_send(StandbyEvent::PeerProtocol(s.peer_speaks.max));
        let conn = s.connection();
        // Ok(()): we are stopping.
        let r: Result<(), crate::primary::ClientError> = async {
            loop {
                let (leading, lineage) = state.borrow_and_update().clone();
                s.send(&Request::PeerState { leading, lineage }).await?;
                s.flush().await?;
                tokio::select! {
                    m = out.recv() => match m {
                        Some(m) => { s.send(&m).await?; s.flush().await?; }
                        None => return Ok(()), // stopping
                    },
                    r = state.changed() => if r.is_err() {
                        return Ok(()); // stopping: our last state is sent
                    },
                    _ = tokio::time::sleep(heartbeat) => {}
                    _ = redial.changed() => return Err(crate::primary::ClientError::Protocol("the peer fell silent; dialling again".into())),
                    e = conn.closed() => return Err(crate::primary::ClientError::Protocol(e.to_string())),
                }
            }
        }
        .await;
        s.close().await;
        match r {
            Ok(()) => return,
            Err(e) => tracing::info!("peer session ended: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_release_peer_is_remembered_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let current = crate::wire::PROTOCOL_VERSION;
        assert_eq!(load_peer_protocol(d.path()), current, "nothing heard yet");
        save_peer_protocol(d.path(), 6).unwrap();
        assert_eq!(load_peer_protocol(d.path()), 6, "a restart keeps it");
        assert!(!may_lead_beside(load_peer_protocol(d.path())));
        save_peer_protocol(d.path(), current).unwrap();
        assert_eq!(
            load_peer_protocol(d.path()),
            current,
            "a current peer clears it"
        );
        assert!(!d.path().join(PEER_PROTOCOL_FILE).exists());
        std::fs::write(d.path().join(PEER_PROTOCOL_FILE), "six").unwrap();
        assert_eq!(load_peer_protocol(d.path()), current, "garbage is ignored");
    }
}
