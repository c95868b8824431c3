//! One running instance: the thin async shell around [`Machine`].

mod health;
mod shell;
mod source;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant as TokioInstant;

use crate::config::InstanceConfig;
use crate::io::arp::Announcer;
use crate::io::netlink::{Net, NetError};
use crate::io::socket::{Received, RecvError, VrrpSocket};
use crate::machine::{Event, Machine};
use crate::metrics::{Counters, InstanceStatus};
use crate::notify::{Hooks as NotifyHooks, Notifier};
use crate::packet::{MCAST_V4, MCAST_V6};
use health::{Health, HealthMsg};
use shell::Shell;
#[cfg(test)]
use {
    crate::io::netlink::LinkAddr,
    source::{pick_source, SourcePick},
};

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
    let io = Io::open(&cfg, &net).await?;
    let mut health = Health::start(&cfg, &net, hooks.gate).await;
    let (notifier, notify_task) = Notifier::spawn(name.clone(), notify_hooks(&cfg));
    let mut mc = cfg.machine_config(io.src);
    // The embedder's promotion may take a while (service hooks): the
    // instance runs on meanwhile, as master without its addresses.
    mc.confirm_master = hooks.before_master.is_some();
    let mut shell = Shell {
        cfg: &cfg,
        machine: Machine::new(mc),
        sock: &io.sock,
        announcer: &io.announcer,
        net: &net,
        ifindex: io.ifindex,
        src: io.src,
        dests: io.dests.clone(),
        vip_addrs: cfg.vips.iter().map(|v| v.addr).collect(),
        counters: &counters,
        status: &status,
        notifier: &notifier,
        before_master: hooks.before_master,
        confirm: None,
    };
    tracing::info!(
        instance = %name, interface = %cfg.interface, vrid = cfg.vrid, priority = cfg.priority,
        version = ?cfg.version, source = %io.src, mode = if io.multicast { "multicast" } else { "unicast" },
        "starting"
    );
    let (delta, fault) = health.verdict();
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
    event_loop(&mut shell, &mut health, &mut shutdown).await;
    let _ = shell
        .machine
        .handle_event(std::time::Instant::now(), Event::Shutdown);
    shell.drain().await;
    notifier.notify("STOP", shell.machine.effective_priority());
    health.stop().await;
    drop(shell);
    drop(notifier);
    let _ = tokio::time::timeout(Duration::from_secs(10), notify_task).await;
    tracing::info!(instance = %name, "stopped; virtual addresses released");
    Ok(())
}

fn notify_hooks(cfg: &InstanceConfig) -> NotifyHooks {
    NotifyHooks {
        master: cfg.notify_master.clone(),
        backup: cfg.notify_backup.clone(),
        fault: cfg.notify_fault.clone(),
        stop: cfg.notify_stop.clone(),
        generic: cfg.notify.clone(),
        runner: cfg.scripts.clone(),
    }
}

/// The instance's interface, sockets and addresses, opened once.
struct Io {
    ifindex: u32,
    src: IpAddr,
    sock: VrrpSocket,
    announcer: Announcer,
    /// No unicast peers: adverts go to the VRRP group.
    multicast: bool,
    /// The multicast group, or the unicast peers.
    dests: Vec<IpAddr>,
}

impl Io {
    async fn open(cfg: &InstanceConfig, net: &Net) -> Result<Io, RunError> {
        let name = &cfg.name;
        let nerr = |err| RunError::Net {
            name: name.clone(),
            err,
        };
        let sock_err = |err| RunError::Socket {
            name: name.clone(),
            iface: cfg.interface.clone(),
            err,
        };
        let link = net.link(&cfg.interface).await.map_err(nerr)?;
        let src = source::source_address(cfg, net, link.index).await?;
        remove_stale(cfg, net, link.index).await;
        let multicast = cfg.unicast_peers.is_empty();
        let sock =
            VrrpSocket::open(&cfg.interface, link.index, cfg.ipv6, multicast).map_err(sock_err)?;
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
        let announcer =
            Announcer::open(&cfg.interface, link.index, mac, cfg.ipv6).map_err(sock_err)?;
        let dests = match (multicast, cfg.ipv6) {
            (true, true) => vec![IpAddr::V6(MCAST_V6)],
            (true, false) => vec![IpAddr::V4(MCAST_V4)],
            (false, _) => cfg.unicast_peers.clone(),
        };
        Ok(Io {
            ifindex: link.index,
            src,
            sock,
            announcer,
            multicast,
            dests,
        })
    }
}

/// A node killed while master leaves its VIPs behind; never start holding them.
async fn remove_stale(cfg: &InstanceConfig, net: &Net, ifindex: u32) {
    for v in &cfg.vips {
        match net.del(ifindex, *v).await {
            Ok(true) => {
                tracing::warn!(instance = %cfg.name, vip = %v, "removed a stale virtual address left from a previous run")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(instance = %cfg.name, vip = %v, error = %e, "cannot check for a stale virtual address")
            }
        }
    }
}

/// What woke the instance up.
enum Wake {
    Shutdown,
    Timer,
    Confirmed(Result<(), String>),
    Packet(Result<Received, RecvError>),
    Gate,
    Health(HealthMsg),
}

/// Until `shutdown` changes: wait for the next input, hand it to the machine,
/// carry out what it asks.
async fn event_loop(
    shell: &mut Shell<'_>,
    health: &mut Health,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        match next_wake(shell, health, shutdown).await {
            Wake::Shutdown => return,
            Wake::Timer => shell.machine.handle_timeout(std::time::Instant::now()),
            Wake::Confirmed(r) => {
                shell.confirm = None;
                if let Err(why) = &r {
                    tracing::warn!(instance = %shell.cfg.name, "not taking the virtual addresses: {why}");
                }
                let _ = shell
                    .machine
                    .handle_event(std::time::Instant::now(), Event::MasterConfirmed(r));
            }
            Wake::Packet(r) => {
                if shell.on_packet(r).is_err() {
                    // e.g. the interface vanished: do not spin; link polling reports the fault
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Wake::Gate => {
                let (delta, fault) = health.verdict();
                tracing::info!(instance = %shell.cfg.name, fault = ?fault, "gate changed");
                health_event(shell, delta, fault);
            }
            Wake::Health(m) => {
                if health.record(m) {
                    let (delta, fault) = health.verdict();
                    tracing::info!(instance = %shell.cfg.name, weight_delta = delta, fault = ?fault, "health changed");
                    health_event(shell, delta, fault);
                }
            }
        }
        shell.drain().await;
    }
}

fn health_event(shell: &mut Shell<'_>, weight_delta: i32, fault: Option<String>) {
    let _ = shell.machine.handle_event(
        std::time::Instant::now(),
        Event::Health {
            weight_delta,
            fault,
        },
    );
    shell.publish(None);
}

/// Shutdown first, then the machine's timer, then the rest as they come.
async fn next_wake(
    shell: &mut Shell<'_>,
    health: &mut Health,
    shutdown: &mut watch::Receiver<bool>,
) -> Wake {
    let deadline = shell.machine.poll_timeout();
    tokio::select! {
        biased;
        _ = shutdown.changed() => Wake::Shutdown,
        _ = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(TokioInstant::from_std(t)).await,
                None => std::future::pending().await,
            }
        } => Wake::Timer,
        r = async {
            match shell.confirm.as_mut() {
                Some(t) => t.await,
                None => std::future::pending().await,
            }
        } => Wake::Confirmed(r.unwrap_or_else(|e| Err(format!("the promotion task ended: {e}")))),
        r = shell.sock.recv() => Wake::Packet(r),
        _ = async {
            match health.gate.as_mut() {
                Some(g) => { if g.changed().await.is_err() { std::future::pending::<()>().await } }
                None => std::future::pending().await,
            }
        } => Wake::Gate,
        Some(m) = health.rx.recv() => Wake::Health(m),
    }
}

#[cfg(test)]
mod tests;
