//! The I/O side of one instance: carries out the machine's actions on the
//! socket, the announcer, netlink, the notifier and the status.

use std::net::IpAddr;

use tokio::sync::watch;

use super::BeforeMaster;
use crate::config::InstanceConfig;
use crate::io::arp::Announcer;
use crate::io::netlink::Net;
use crate::io::socket::{RecvError, VrrpSocket};
use crate::machine::{Action, Event, Machine, State};
use crate::metrics::{unix_now, Counters, InstanceStatus};
use crate::notify::Notifier;
use crate::packet::Advert;

pub(super) struct Shell<'a> {
    pub(super) cfg: &'a InstanceConfig,
    pub(super) machine: Machine,
    pub(super) sock: &'a VrrpSocket,
    pub(super) announcer: &'a Announcer,
    pub(super) net: &'a Net,
    pub(super) ifindex: u32,
    pub(super) src: IpAddr,
    pub(super) dests: Vec<IpAddr>,
    pub(super) vip_addrs: Vec<IpAddr>,
    pub(super) counters: &'a Counters,
    pub(super) status: &'a watch::Sender<InstanceStatus>,
    pub(super) notifier: &'a Notifier,
    pub(super) before_master: Option<BeforeMaster>,
    /// The embedder's promotion in flight ([`Action::ConfirmMaster`]).
    pub(super) confirm: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Shell<'_> {
    /// Handle one receive result; `Err(())` only for a socket error.
    pub(super) fn on_packet(
        &mut self,
        r: Result<crate::io::socket::Received, RecvError>,
    ) -> Result<(), ()> {
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

    pub(super) fn publish(&self, transition: Option<(State, String)>) {
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

    /// Carry out every action the machine has queued.
    pub(super) async fn drain(&mut self) {
        while let Some(a) = self.machine.poll_action() {
            match a {
                Action::SendAdvert { priority } => self.send_advert(priority).await,
                Action::ConfirmMaster => self.confirm_master(),
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
                Action::ProbeAddresses => self.probe_addresses().await,
                Action::RemoveAddresses => self.remove_all().await,
                Action::Announce { count } => self.announce(count),
                Action::Transition { from, to, reason } => self.transition(from, to, reason),
            }
        }
    }

    /// One advert to every destination; failures are counted and logged.
    async fn send_advert(&self, priority: u8) {
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

    /// The embedder's promotion comes first (e.g. become the replication
    /// source, export NFS), then the address; it runs as a task so adverts
    /// are still sent and heard.
    fn confirm_master(&mut self) {
        if let Some(old) = self.confirm.take() {
            old.abort();
        }
        let fut = match &self.before_master {
            Some(hook) => hook(),
            None => Box::pin(async { Ok(()) }),
        };
        self.confirm = Some(tokio::spawn(fut));
    }

    /// Only a probe: the machine re-adds the addresses if it becomes master.
    async fn probe_addresses(&mut self) {
        let r = self.add_all().await;
        self.remove_all().await;
        if let Err(e) = &r {
            tracing::warn!(instance = %self.cfg.name, error = %e, "virtual addresses still cannot be added; staying in FAULT and retrying");
        }
        let _ = self
            .machine
            .handle_event(std::time::Instant::now(), Event::AddressResult(r));
    }

    fn announce(&self, count: u32) {
        match self.announcer.announce(&self.vip_addrs, count) {
            Ok(n) => {
                self.counters
                    .announcements_sent
                    .fetch_add(u64::from(n), std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                Counters::inc(&self.counters.send_errors);
                tracing::warn!(instance = %self.cfg.name, error = %e, "gratuitous ARP/NA failed");
            }
        }
    }

    fn transition(&self, from: State, to: State, reason: String) {
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
