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
//! - demotion: the source stops first, then the node follows.

use std::sync::Arc;
use std::time::Duration;

use syncd_proto::pair::lineage::{Lineage, NodeId, Relation};
use syncd_proto::pair::role::{Action, PeerState, Role, RoleConfig, RoleState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::client::Session;
use crate::config::Config;
use crate::generation::{self, Record};
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
    standby.events(ev_tx);
    let record = standby.handle();
    let stats = standby.stats();
    if let Some(a) = cfg.admin {
        crate::admin::start(a, stats.clone())
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
    let link = tokio::spawn(peer_link(cfg.clone(), me, state_rx, out_rx, redial_rx));

    let mut d = Driver {
        cfg: &cfg,
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
        last_change: "none".into(),
        why: "starting".into(),
    };
    d.apply(&mut role).await;
    loop {
        let deadline = role.poll_timeout().map_or(
            Instant::now() + Duration::from_secs(3600),
            Instant::from_std,
        );
        let now = || std::time::Instant::now();
        tokio::select! {
            Some(e) = events.recv() => d.on_event(&mut role, e),
            Some(w) = wants.recv() => {
                if let Some(old) = d.waiter.replace(w) {
                    let _ = old.send(Err("superseded by a newer request".into()));
                }
                role.handle_vrrp(true, now());
            }
            r = vrrp_state.changed() => {
                if r.is_err() {
                    tracing::error!("VRRP stopped; stepping down");
                    role.handle_shutdown(now());
                    d.apply(&mut role).await;
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
            _ = &mut shutdown => {
                role.handle_shutdown(now());
                d.apply(&mut role).await;
                break;
            }
        }
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
    last_change: String,
    why: String,
}

impl Driver<'_> {
    fn on_event(&mut self, role: &mut Role, e: StandbyEvent) {
        let now = std::time::Instant::now();
        match e {
            StandbyEvent::PeerState {
                node,
                leading,
                lineage,
            } => role.handle_peer(
                PeerState {
                    node,
                    lineage,
                    leading,
                },
                now,
            ),
            StandbyEvent::Ask { priority } => role.handle_peer_ask(priority, now),
            StandbyEvent::Answer { grant } => role.handle_peer_answer(grant, now),
            StandbyEvent::PeerGone => role.handle_peer_lost(now),
            StandbyEvent::Adopted(l) => role.handle_caught_up(&l, now),
            StandbyEvent::Committed(id) => role.handle_commit(id),
        }
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
                    self.why = why.clone();
                    let _ = self.gate.send((!open).then_some(why));
                }
                // A promotion whose generation could not be saved was turned
                // into a demotion already: no source for it.
                Action::Promote { .. } if role.state() != RoleState::Promoting => {}
                Action::Promote { gen } => {
                    tracing::info!(generation = %gen, "promoting: becoming the replication source");
                    self.source = Some(start_source(self.cfg, self.stats.clone()));
                    // The service hooks (NFS export) will run here, before
                    // the address; none are configured yet.
                    role.handle_promoted(now);
                }
                Action::Demote { why } => {
                    tracing::info!("demoting: {why}");
                    if let Some(mut s) = self.source.take() {
                        let _ = s.stop.send(());
                        if tokio::time::timeout(Duration::from_secs(15), &mut s.task)
                            .await
                            .is_err()
                        {
                            tracing::error!(
                                "the replication source did not stop within 15 s; ending it"
                            );
                            s.task.abort();
                        }
                    }
                    role.handle_demoted(now);
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
            role_log(self.cfg, &self.last_change);
            let status = format!("auto: {} (generation {}): {}", c.to, c.gen, c.why);
            syncd_sdnotify::send(&[syncd_sdnotify::State::Status(&status)]);
        }
        // Answer VRRP: the address once we lead; a refusal once we will not.
        if role.state() == RoleState::Leader {
            if let Some(w) = self.waiter.take() {
                let _ = w.send(Ok(()));
            }
        } else if !role.gate_open() || role.state() != RoleState::Follower {
            if let Some(w) = self.waiter.take() {
                let _ = w.send(Err(self.why.clone()));
            }
        }
        let heard = role.peer().is_some();
        if self.heard && !heard {
            self.redial.send_modify(|n| *n += 1);
        }
        self.heard = heard;
        let _ = self.state.send_if_modified(|s| {
            let next = (role.leading(), role.lineage().clone());
            let changed = *s != next;
            *s = next;
            changed
        });
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
        self.stats.set_pair(PairView {
            role: role.state().to_string(),
            leading: role.leading(),
            gate_open: role.gate_open(),
            why: self.why.clone(),
            data,
            last_change: self.last_change.clone(),
        });
    }
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

/// The durable role log: one line per change, appended and flushed.
fn role_log(cfg: &Config, line: &str) {
    use std::io::Write;
    let path = cfg.state_dir.join("role.log");
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
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
            Err(_) => Err(crate::client::ClientError::Protocol("no answer".into())),
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
        let conn = s.connection();
        // Ok(()): we are stopping.
        let r: Result<(), crate::client::ClientError> = async {
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
                    _ = redial.changed() => return Err(crate::client::ClientError::Protocol("the peer fell silent; dialling again".into())),
                    e = conn.closed() => return Err(crate::client::ClientError::Protocol(e.to_string())),
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
