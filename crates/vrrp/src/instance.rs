//! One running instance: the thin async shell around [`Machine`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant as TokioInstant;

use crate::config::InstanceConfig;
use crate::io::arp::Announcer;
use crate::io::checks;
use crate::io::netlink::{LinkAddr, Net, NetError};
use crate::io::socket::{RecvError, VrrpSocket};
use crate::machine::{Action, Event, Machine, State};
use crate::metrics::{unix_now, Counters, InstanceStatus};
use crate::notify::{Hooks as NotifyHooks, Notifier};
use crate::packet::{Advert, MCAST_V4, MCAST_V6};
use crate::track::{health, LinkState, TrackState};

/// Errors that stop an instance.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("instance {name}: {err}")]
    Net { name: String, err: NetError },
    #[error("instance {name}: cannot open the VRRP socket on {iface}: {err} (are you root / CAP_NET_RAW?)")]
    Socket {
        name: String,
        iface: String,
        err: std::io::Error,
    },
    #[error("instance {name}: interface {iface} has no {family} address to send from; add one or set unicast_src")]
    NoSource {
        name: String,
        iface: String,
        family: &'static str,
    },
    #[error("instance {name}: source address {addr} on {iface} failed duplicate address detection (another host uses it); fix the address clash or set mcast_src / unicast_src")]
    DadFailed {
        name: String,
        iface: String,
        addr: IpAddr,
    },
    #[error("instance {name}: interface {iface} has no MAC address for gratuitous ARP")]
    NoMac { name: String, iface: String },
    #[error("admin endpoint {addr}: {err}")]
    Admin {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error("no tokio runtime: {0}")]
    Runtime(String),
}

enum HealthMsg {
    Track(usize, bool),
    Link(usize, bool),
}

const LINK_POLL: Duration = Duration::from_millis(200);

/// How long to wait for IPv6 duplicate address detection on the link-local source.
/// The kernel default is about 1-2 s after link up (RFC 4862); a slow DAD (many
/// `dad_transmits`) still gets a chance, and after this we start anyway and say why.
const DAD_WAIT: Duration = Duration::from_secs(10);
const DAD_POLL: Duration = Duration::from_millis(100);

/// What the addresses on the interface allow as an advert source.
#[derive(Debug, PartialEq, Eq)]
enum SourcePick {
    Ready(IpAddr),
    /// The only candidates are still in DAD: sending from them fails, and a master
    /// that cannot advertise would cause a split brain, so wait.
    Tentative(IpAddr),
    /// A candidate failed DAD (a duplicate on the link) and none other exists.
    DadFailed(IpAddr),
    None,
}

/// The first non-virtual address of the family (IPv6: link-local, as RFC 5798 requires),
/// preferring one whose DAD has finished.
fn pick_source(cfg: &InstanceConfig, addrs: &[LinkAddr]) -> SourcePick {
    let candidates = addrs.iter().filter(|a| {
        !cfg.vips.iter().any(|v| v.addr == a.ip)
            && match a.ip {
                IpAddr::V4(_) => !cfg.ipv6,
                IpAddr::V6(v6) => cfg.ipv6 && (v6.segments()[0] & 0xffc0) == 0xfe80,
            }
    });
    let mut pick = SourcePick::None;
    for a in candidates {
        if !a.tentative && !a.dad_failed {
            return SourcePick::Ready(a.ip);
        }
        pick = match (pick, a.dad_failed) {
            (SourcePick::None | SourcePick::DadFailed(_), false) => SourcePick::Tentative(a.ip),
            (SourcePick::None, true) => SourcePick::DadFailed(a.ip),
            (p, _) => p,
        };
    }
    pick
}

/// Pick the source address: `unicast_src` / `mcast_src`, else [`pick_source`], waiting
/// (bounded by [`DAD_WAIT`]) for a link-local address that is still tentative.
async fn source_address(cfg: &InstanceConfig, net: &Net, index: u32) -> Result<IpAddr, RunError> {
    if let Some(s) = cfg.unicast_src.or(cfg.mcast_src) {
        return Ok(s);
    }
    let deadline = TokioInstant::now() + DAD_WAIT;
    let mut logged = false;
    loop {
        let addrs = net.addresses(index).await.map_err(|err| RunError::Net {
            name: cfg.name.clone(),
            err,
        })?;
        match pick_source(cfg, &addrs) {
            SourcePick::Ready(ip) => return Ok(ip),
            SourcePick::Tentative(ip) if TokioInstant::now() < deadline => {
                if !logged {
                    tracing::info!(instance = %cfg.name, source = %ip, "waiting for duplicate address detection to finish on the source address");
                    logged = true;
                }
                tokio::time::sleep(DAD_POLL).await;
            }
            SourcePick::Tentative(ip) => {
                tracing::warn!(instance = %cfg.name, source = %ip, "source address still tentative after {DAD_WAIT:?}; starting anyway, adverts may fail until DAD finishes");
                return Ok(ip);
            }
            SourcePick::DadFailed(ip) => {
                return Err(RunError::DadFailed {
                    name: cfg.name.clone(),
                    iface: cfg.interface.clone(),
                    addr: ip,
                })
            }
            SourcePick::None => {
                return Err(RunError::NoSource {
                    name: cfg.name.clone(),
                    iface: cfg.interface.clone(),
                    family: if cfg.ipv6 { "IPv6 link-local" } else { "IPv4" },
                })
            }
        }
    }
}

/// Run one instance until `shutdown` turns true, then resign (priority 0) and release.
/// What an embedding program adds to its instances (see [`crate::Embed`]).
#[derive(Clone, Default)]
pub struct Hooks {
    /// `Some(reason)`: the embedder forbids this node to hold the address
    /// now; the instance is held in FAULT (a master resigns first).
    pub gate: Option<watch::Receiver<Option<String>>>,
    /// Run (as a task) before the addresses are added on becoming master;
    /// meanwhile the instance advertises and hears adverts as master, and a
    /// better master cancels it (the future is dropped). An error leaves
    /// the addresses off: the instance resigns and goes back to BACKUP.
    pub before_master: Option<BeforeMaster>,
}

/// See [`Hooks::before_master`].
pub type BeforeMaster = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

pub async fn run(
    cfg: InstanceConfig,
    net: Net,
    status: watch::Sender<InstanceStatus>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
    hooks: Hooks,
) -> Result<(), RunError> {
    let name = cfg.name.clone();
    let nerr = |err| RunError::Net {
        name: name.clone(),
        err,
    };
    let link = net.link(&cfg.interface).await.map_err(nerr)?;
    let src = source_address(&cfg, &net, link.index).await?;
    // A node killed while master leaves its VIPs behind; never start holding them.
    for v in &cfg.vips {
        match net.del(link.index, *v).await {
            Ok(true) => {
                tracing::warn!(instance = %name, vip = %v, "removed a stale virtual address left from a previous run")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(instance = %name, vip = %v, error = %e, "cannot check for a stale virtual address")
            }
        }
    }
    let multicast = cfg.unicast_peers.is_empty();
    let sock =
        VrrpSocket::open(&cfg.interface, link.index, cfg.ipv6, multicast).map_err(|err| {
            RunError::Socket {
                name: name.clone(),
                iface: cfg.interface.clone(),
                err,
            }
        })?;
    let mac = match link.mac {
        Some(m) => m,
        None if cfg.ipv6 => [0; 6],
        None => {
            return Err(RunError::NoMac {
                name: name.clone(),
                iface: cfg.interface.clone(),
            })
        }
    };
    let announcer = Announcer::open(&cfg.interface, link.index, mac, cfg.ipv6).map_err(|err| {
        RunError::Socket {
            name: name.clone(),
            iface: cfg.interface.clone(),
            err,
        }
    })?;
    let dests: Vec<IpAddr> = if multicast {
        vec![if cfg.ipv6 {
            IpAddr::V6(MCAST_V6)
        } else {
            IpAddr::V4(MCAST_V4)
        }]
    } else {
        cfg.unicast_peers.clone()
    };
    let vip_addrs: Vec<IpAddr> = cfg.vips.iter().map(|v| v.addr).collect();

    // Health: one task per check, one link poller; results come back on a channel.
    let (htx, mut hrx) = mpsc::channel::<HealthMsg>(64);
    let mut tracks: Vec<TrackState> = cfg
        .tracks
        .iter()
        .map(|t| TrackState::new(t.name.clone(), t.weight, t.fall, t.rise))
        .collect();
    let mut link_names = vec![cfg.interface.clone()];
    for t in &cfg.track_interfaces {
        if !link_names.contains(t) {
            link_names.push(t.clone());
        }
    }
    let mut links: Vec<LinkState> = Vec::new();
    for l in &link_names {
        let up = net.link(l).await.map(|i| i.up).unwrap_or(false);
        links.push(LinkState {
            name: l.clone(),
            up,
        });
    }
    let mut helpers = tokio::task::JoinSet::new();
    for (i, t) in cfg.tracks.iter().cloned().enumerate() {
        let tx = htx.clone();
        let runner = cfg.scripts.clone();
        helpers.spawn(async move {
            let mut tick = tokio::time::interval(t.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ok = checks::probe(&t.kind, t.timeout, &runner).await;
                if tx.send(HealthMsg::Track(i, ok)).await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = htx.clone();
        let net = net.clone();
        let names = link_names.clone();
        helpers.spawn(async move {
            loop {
                tokio::time::sleep(LINK_POLL).await;
                for (i, l) in names.iter().enumerate() {
                    let up = net.link(l).await.map(|i| i.up).unwrap_or(false);
                    if tx.send(HealthMsg::Link(i, up)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(htx);

    let mut gate = hooks.gate;
    let before_master = hooks.before_master;
    // The embedder's gate is one more health input: closed means FAULT.
    let health = |tracks: &[TrackState],
                  links: &[LinkState],
                  gate: &Option<watch::Receiver<Option<String>>>| {
        let (delta, fault) = health(tracks, links);
        let closed = gate.as_ref().and_then(|g| g.borrow().clone());
        (delta, fault.or(closed))
    };
    let hooks = NotifyHooks {
        master: cfg.notify_master.clone(),
        backup: cfg.notify_backup.clone(),
        fault: cfg.notify_fault.clone(),
        stop: cfg.notify_stop.clone(),
        generic: cfg.notify.clone(),
        runner: cfg.scripts.clone(),
    };
    let (notifier, notify_task) = Notifier::spawn(name.clone(), hooks);

    let mut mc = cfg.machine_config(src);
    // The embedder's promotion may take a while (service hooks): the
    // instance runs on meanwhile, as master without its addresses.
    mc.confirm_master = before_master.is_some();
    let mut shell = Shell {
        cfg: &cfg,
        machine: Machine::new(mc),
        sock: &sock,
        announcer: &announcer,
        net: &net,
        ifindex: link.index,
        src,
        dests,
        vip_addrs,
        counters: &counters,
        status: &status,
        notifier: &notifier,
        before_master,
        confirm: None,
    };
    tracing::info!(
        instance = %name, interface = %cfg.interface, vrid = cfg.vrid, priority = cfg.priority,
        version = ?cfg.version, source = %src, mode = if multicast { "multicast" } else { "unicast" },
        "starting"
    );
    let (delta, fault) = health(&tracks, &links, &gate);
    let now = std::time::Instant::now();
    let _ = shell.machine.handle_event(
        now,
        Event::Health {
            weight_delta: delta,
            fault,
        },
    );
    let _ = shell.machine.handle_event(now, Event::Startup);
    shell.drain().await;

    loop {
        let deadline = shell.machine.poll_timeout();
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(TokioInstant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            } => {
                shell.machine.handle_timeout(std::time::Instant::now());
            }
            r = async {
                match shell.confirm.as_mut() {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            } => {
                shell.confirm = None;
                let r = r.unwrap_or_else(|e| Err(format!("the promotion task ended: {e}")));
                if let Err(why) = &r {
                    tracing::warn!(instance = %name, "not taking the virtual addresses: {why}");
                }
                let _ = shell.machine.handle_event(std::time::Instant::now(), Event::MasterConfirmed(r));
            }
            r = sock.recv() => {
                if shell.on_packet(r).is_err() {
                    // e.g. the interface vanished: do not spin; link polling reports the fault
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ = async {
                match gate.as_mut() {
                    Some(g) => { if g.changed().await.is_err() { std::future::pending::<()>().await } }
                    None => std::future::pending().await,
                }
            } => {
                let (delta, fault) = health(&tracks, &links, &gate);
                tracing::info!(instance = %name, fault = ?fault, "gate changed");
                let _ = shell.machine.handle_event(std::time::Instant::now(), Event::Health { weight_delta: delta, fault });
                shell.publish(None);
            }
            Some(m) = hrx.recv() => {
                let changed = match m {
                    HealthMsg::Track(i, ok) => tracks.get_mut(i).is_some_and(|t| t.record(ok)),
                    HealthMsg::Link(i, up) => links.get_mut(i).is_some_and(|l| {
                        let c = l.up != up;
                        l.up = up;
                        c
                    }),
                };
                if changed {
                    let (delta, fault) = health(&tracks, &links, &gate);
                    tracing::info!(instance = %name, weight_delta = delta, fault = ?fault, "health changed");
                    let _ = shell.machine.handle_event(std::time::Instant::now(), Event::Health { weight_delta: delta, fault });
                    shell.publish(None);
                }
            }
        }
        shell.drain().await;
    }
    let _ = shell
        .machine
        .handle_event(std::time::Instant::now(), Event::Shutdown);
    shell.drain().await;
    notifier.notify("STOP", shell.machine.effective_priority());
    helpers.shutdown().await;
    drop(shell);
    drop(notifier);
    let _ = tokio::time::timeout(Duration::from_secs(10), notify_task).await;
    tracing::info!(instance = %name, "stopped; virtual addresses released");
    Ok(())
}

struct Shell<'a> {
    cfg: &'a InstanceConfig,
    machine: Machine,
    sock: &'a VrrpSocket,
    announcer: &'a Announcer,
    net: &'a Net,
    ifindex: u32,
    src: IpAddr,
    dests: Vec<IpAddr>,
    vip_addrs: Vec<IpAddr>,
    counters: &'a Counters,
    status: &'a watch::Sender<InstanceStatus>,
    notifier: &'a Notifier,
    before_master: Option<BeforeMaster>,
    /// The embedder's promotion in flight ([`Action::ConfirmMaster`]).
    confirm: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Shell<'_> {
    /// Handle one receive result; `Err(())` only for a socket error.
    fn on_packet(&mut self, r: Result<crate::io::socket::Received, RecvError>) -> Result<(), ()> {
        let name = &self.cfg.name;
        let p = match r {
            Ok(p) => p,
            Err(RecvError::Bad(e)) => {
                self.counters.bad(e.reason());
                tracing::debug!(instance = %name, error = %e, "malformed packet");
                return Ok(());
            }
            Err(RecvError::Io(e)) => {
                tracing::warn!(instance = %name, error = %e, "receive failed");
                return Err(());
            }
        };
        if !self.cfg.unicast_peers.is_empty() && !self.cfg.unicast_peers.contains(&p.src) {
            self.counters.bad("unknown_peer");
            tracing::debug!(instance = %name, src = %p.src, "advert from an address not in unicast_peers");
            return Ok(());
        }
        let adv = match Advert::decode(&p.payload, p.src, p.dst) {
            Ok(a) => a,
            Err(e) => {
                self.counters.bad(e.reason());
                tracing::debug!(instance = %name, src = %p.src, error = %e, "malformed advert");
                return Ok(());
            }
        };
        if adv.vrid != self.cfg.vrid {
            // Another virtual router on the same link: not ours, not an error.
            return Ok(());
        }
        match self.machine.handle_event(
            std::time::Instant::now(),
            Event::Advert {
                src: p.src,
                ttl: p.ttl,
                advert: adv,
            },
        ) {
            Ok(()) => Counters::inc(&self.counters.adverts_received),
            Err(d) => {
                self.counters.bad(d.reason());
                tracing::debug!(instance = %name, src = %p.src, reason = %d, "advert dropped");
            }
        }
        Ok(())
    }

    fn publish(&self, transition: Option<(State, String)>) {
        let m = &self.machine;
        self.status.send_modify(|s| {
            s.effective_priority = m.effective_priority();
            s.master = m.master_ip();
            if let Some((st, reason)) = transition {
                s.state = st;
                s.reason = reason;
                s.since = unix_now();
                s.transitions += 1;
            }
        });
    }

    /// Add every VIP; the first failure (all are attempted) is the cause reported.
    async fn add_all(&self) -> Result<(), String> {
        let mut first = None;
        for v in &self.cfg.vips {
            if let Err(e) = self.net.add(self.ifindex, *v).await {
                Counters::inc(&self.counters.netlink_errors);
                tracing::error!(instance = %self.cfg.name, vip = %v, error = %e, "cannot add virtual address");
                first.get_or_insert(format!("{v} on {}: {e}", self.cfg.interface));
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn remove_all(&self) {
        for v in &self.cfg.vips {
            if let Err(e) = self.net.del(self.ifindex, *v).await {
                Counters::inc(&self.counters.netlink_errors);
                tracing::error!(instance = %self.cfg.name, vip = %v, error = %e, "cannot remove virtual address");
            }
        }
    }

    async fn drain(&mut self) {
        while let Some(a) = self.machine.poll_action() {
            match a {
                Action::SendAdvert { priority } => {
                    let adv = self.machine.advert(priority);
                    for d in &self.dests {
                        match adv.encode(self.src, *d) {
                            Ok(bytes) => match self.sock.send(self.src, *d, &bytes).await {
                                Ok(()) => Counters::inc(&self.counters.adverts_sent),
                                Err(e) => {
                                    Counters::inc(&self.counters.send_errors);
                                    tracing::warn!(instance = %self.cfg.name, dst = %d, error = %e, "advert send failed");
                                }
                            },
                            Err(e) => {
                                tracing::error!(instance = %self.cfg.name, error = %e, "cannot encode advert")
                            }
                        }
                    }
                }
                Action::ConfirmMaster => {
                    // The embedder's promotion comes first (e.g. become the
                    // replication source, export NFS), then the address; it
                    // runs as a task so adverts are still sent and heard.
                    if let Some(old) = self.confirm.take() {
                        old.abort();
                    }
                    let fut = match &self.before_master {
                        Some(hook) => hook(),
                        None => Box::pin(async { Ok(()) }),
                    };
                    self.confirm = Some(tokio::spawn(fut));
                }
                Action::CancelConfirm => {
                    if let Some(t) = self.confirm.take() {
                        tracing::info!(instance = %self.cfg.name, "left MASTER before the promotion finished; cancelling it");
                        t.abort();
                    }
                }
                Action::AddAddresses => {
                    let r = self.add_all().await;
                    // The machine decides: a master without its VIPs goes FAULT.
                    let _ = self
                        .machine
                        .handle_event(std::time::Instant::now(), Event::AddressResult(r));
                }
                Action::ProbeAddresses => {
                    let r = self.add_all().await;
                    // Only a probe: the machine re-adds them if it becomes master.
                    self.remove_all().await;
                    if let Err(e) = &r {
                        tracing::warn!(instance = %self.cfg.name, error = %e, "virtual addresses still cannot be added; staying in FAULT and retrying");
                    }
                    let _ = self
                        .machine
                        .handle_event(std::time::Instant::now(), Event::AddressResult(r));
                }
                Action::RemoveAddresses => self.remove_all().await,
                Action::Announce { count } => match self.announcer.announce(&self.vip_addrs, count)
                {
                    Ok(n) => {
                        self.counters
                            .announcements_sent
                            .fetch_add(u64::from(n), std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        Counters::inc(&self.counters.send_errors);
                        tracing::warn!(instance = %self.cfg.name, error = %e, "gratuitous ARP/NA failed");
                    }
                },
                Action::Transition { from, to, reason } => {
                    tracing::info!(
                        instance = %self.cfg.name, from = %from, to = %to,
                        priority = self.machine.effective_priority(), "{from} -> {to}: {reason}"
                    );
                    if matches!(to, State::Master | State::Backup | State::Fault) {
                        self.notifier
                            .notify(to.as_str(), self.machine.effective_priority());
                    }
                    self.publish(Some((to, reason)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
