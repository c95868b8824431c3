//! The VRRP state machine (RFC 3768 §6.4, RFC 5798 §6.4), sans-IO.
//!
//! Driven by `(now, event)`: feed it [`Machine::handle_event`] and
//! [`Machine::handle_timeout`], drain [`Machine::poll_action`], and wake it
//! up at [`Machine::poll_timeout`]. It never reads a clock and never does I/O.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::packet::{Advert, Auth, Version};
use crate::timers::{from_cs, master_down_interval, skew_time};

mod adverts;
mod transitions;

/// Protocol state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl State {
    /// Upper-case name as keepalived prints it (used in logs, notify arguments and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How often a node in FAULT because its virtual addresses could not be added
/// tries again ([`Action::ProbeAddresses`]).
pub const ADDRESS_RETRY: Duration = Duration::from_secs(5);

/// Parameters of one virtual router, as the state machine needs them.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub version: Version,
    pub vrid: u8,
    /// Configured priority 1..=255 (255 = address owner).
    pub priority: u8,
    /// Our advertisement interval.
    pub advert_int: Duration,
    /// Preempt a lower-priority master (RFC default true; keepalived `nopreempt` = false).
    pub preempt: bool,
    /// keepalived `preempt_delay`: a backup that sees a lower-priority master
    /// keeps accepting it for this long before preempting.
    pub preempt_delay: Duration,
    /// Our primary address (source of adverts), used for the equal-priority tie-break.
    pub primary_ip: IpAddr,
    /// v2 authentication we send and require.
    pub auth: Auth,
    /// Virtual addresses carried in adverts.
    pub vips: Vec<IpAddr>,
    /// Check TTL = 255 (multicast mode). keepalived skips it for unicast.
    pub check_ttl: bool,
    /// Accept adverts whose address list differs from [`MachineConfig::vips`]
    /// (keepalived `vrrp_skip_check_adv_addr`). Off by default: a mismatch means
    /// a misconfigured or spoofed peer.
    pub skip_check_adv_addr: bool,
    /// Gratuitous ARP / NA burst size on becoming master (keepalived `garp_master_repeat`, 5).
    pub garp_repeat: u32,
    /// Delay of the second burst (keepalived `garp_master_delay`, 5 s); zero disables it.
    pub garp_delay: Duration,
    /// Periodic refresh (keepalived `garp_master_refresh`, default off).
    pub garp_refresh: Option<Duration>,
    /// An embedder confirms each mastership before the addresses are added
    /// ([`Action::ConfirmMaster`]); meanwhile the machine runs on as master
    /// without them: it advertises, hears adverts, and yields to a better
    /// master (which cancels the confirmation).
    pub confirm_master: bool,
}

impl MachineConfig {
    /// Convenience constructor with keepalived defaults for the optional knobs.
    pub fn new(
        version: Version,
        vrid: u8,
        priority: u8,
        advert_int: Duration,
        primary_ip: IpAddr,
    ) -> Self {
        MachineConfig {
            version,
            vrid,
            priority,
            advert_int,
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary_ip,
            auth: Auth::None,
            vips: Vec::new(),
            check_ttl: true,
            skip_check_adv_addr: false,
            garp_repeat: 5,
            garp_delay: Duration::from_secs(5),
            garp_refresh: None,
            confirm_master: false,
        }
    }
}

/// Input to the machine.
#[derive(Debug, Clone)]
pub enum Event {
    /// Start the router (leaves Initialize).
    Startup,
    /// Stop: a master sends priority 0 and releases its addresses.
    Shutdown,
    /// A received advertisement (already decoded and checksum-verified).
    Advert {
        src: IpAddr,
        ttl: u8,
        advert: Advert,
    },
    /// New health verdict: sum of track weights, and a fault reason if any
    /// tracked item is in a fault-causing state.
    Health {
        weight_delta: i32,
        fault: Option<String>,
    },
    /// Outcome of [`Action::AddAddresses`] or [`Action::ProbeAddresses`]:
    /// `Err` carries the cause (e.g. the netlink error) for the log.
    AddressResult(Result<(), String>),
    /// The embedder's answer to [`Action::ConfirmMaster`]: `Err(why)`
    /// refuses the mastership (we resign and go back to BACKUP).
    MasterConfirmed(Result<(), String>),
}

/// Output of the machine; the I/O layer performs these in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0 = resigning).
    SendAdvert { priority: u8 },
    /// Add the virtual addresses to the interface.
    AddAddresses,
    /// Remove the virtual addresses.
    RemoveAddresses,
    /// Add the virtual addresses and remove them again at once, then report with
    /// [`Event::AddressResult`]: a FAULT caused by a failed add checks whether adding works again.
    ProbeAddresses,
    /// Send `count` gratuitous ARPs / unsolicited NAs for every virtual address.
    Announce { count: u32 },
    /// Ask the embedder to confirm this mastership (`confirm_master`);
    /// answer with [`Event::MasterConfirmed`]. The addresses and the
    /// announcements wait for it.
    ConfirmMaster,
    /// The confirmation asked for is moot (we left MASTER): stop it.
    CancelConfirm,
    /// A state change, with its reason (to log, notify and publish).
    Transition {
        from: State,
        to: State,
        reason: String,
    },
}

/// Why an advertisement was dropped. [`DropReason::reason`] gives a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("VRID {0} is not ours")]
    OtherVrid(u8),
    #[error("version {got:?} but this instance runs {want:?}")]
    VersionMismatch { got: Version, want: Version },
    #[error("TTL {0} != 255 on a multicast advert")]
    BadTtl(u8),
    #[error("authentication mismatch")]
    AuthMismatch,
    #[error("v2 advertisement interval {got_cs} cs differs from ours {want_cs} cs")]
    IntervalMismatch { got_cs: u16, want_cs: u16 },
    #[error("addresses {got:?} differ from our virtual addresses {want:?}")]
    AddressMismatch { got: Vec<IpAddr>, want: Vec<IpAddr> },
    #[error("our own advert looped back")]
    Own,
    #[error("not running (state {0})")]
    NotRunning(State),
}

impl DropReason {
    pub fn reason(&self) -> &'static str {
        match self {
            DropReason::OtherVrid(_) => "other_vrid",
            DropReason::VersionMismatch { .. } => "version_mismatch",
            DropReason::BadTtl(_) => "bad_ttl",
            DropReason::AuthMismatch => "auth_mismatch",
            DropReason::IntervalMismatch { .. } => "interval_mismatch",
            DropReason::AddressMismatch { .. } => "address_mismatch",
            DropReason::Own => "own_advert",
            DropReason::NotRunning(_) => "not_running",
        }
    }
}

/// One virtual router.
#[derive(Debug)]
pub struct Machine {
    cfg: MachineConfig,
    state: State,
    weight_delta: i32,
    fault: Option<String>,
    /// Set when adding the virtual addresses failed: a master without its VIPs
    /// blackholes traffic while its adverts keep the peer in BACKUP, so it goes FAULT.
    address_fault: Option<String>,
    address_retry_timer: Option<Instant>,
    master_adver_interval: Duration,
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    garp_delay_timer: Option<Instant>,
    garp_refresh_timer: Option<Instant>,
    preempt_at: Option<Instant>,
    last_reannounce: Option<Instant>,
    master_ip: Option<IpAddr>,
    /// The master that released with priority 0 (the down timer then runs
    /// for Skew_Time only), so the takeover's reason says so.
    released_by: Option<IpAddr>,
    started: bool,
    /// MASTER, waiting for [`Event::MasterConfirmed`]: no addresses yet.
    confirming: bool,
    actions: VecDeque<Action>,
}

impl Machine {
    pub fn new(cfg: MachineConfig) -> Self {
        let mai = cfg.advert_int;
        Machine {
            cfg,
            state: State::Initialize,
            weight_delta: 0,
            fault: None,
            address_fault: None,
            address_retry_timer: None,
            master_adver_interval: mai,
            adver_timer: None,
            master_down_timer: None,
            garp_delay_timer: None,
            garp_refresh_timer: None,
            preempt_at: None,
            last_reannounce: None,
            master_ip: None,
            released_by: None,
            started: false,
            confirming: false,
            actions: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Address of the current master as last seen (ourselves when master).
    pub fn master_ip(&self) -> Option<IpAddr> {
        self.master_ip
    }

    /// Master_Adver_Interval (learned from the master in v3).
    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Priority after track weights: the owner (255) is never adjusted;
    /// others are clamped to 1..=254 like keepalived.
    pub fn effective_priority(&self) -> u8 {
        if self.cfg.priority == 255 {
            return 255;
        }
        (i32::from(self.cfg.priority) + self.weight_delta).clamp(1, 254) as u8
    }

    /// Current Master_Down_Interval for our effective priority.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(
            self.cfg.version,
            self.effective_priority(),
            self.master_adver_interval,
        )
    }

    /// v3 Master_Adver_Interval learned from an advert, capped at our own
    /// advert_int: adverts are unauthenticated, and a spoofed 40.95 s interval
    /// would otherwise stretch failover to about two minutes.
    fn learned_interval(&self, interval_cs: u16) -> Duration {
        from_cs(interval_cs).min(self.cfg.advert_int)
    }

    fn skew(&self) -> Duration {
        skew_time(
            self.cfg.version,
            self.effective_priority(),
            self.master_adver_interval,
        )
    }

    /// Next action to perform, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Earliest instant at which [`Machine::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.adver_timer,
            self.master_down_timer,
            self.garp_delay_timer,
            self.garp_refresh_timer,
            self.address_retry_timer,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// MASTER with the addresses (not waiting for a confirmation).
    pub fn holds_addresses(&self) -> bool {
        self.state == State::Master && !self.confirming
    }

    /// Feed one event.
    pub fn handle_event(&mut self, now: Instant, event: Event) -> Result<(), DropReason> {
        match event {
            Event::Startup => {
                if self.state == State::Initialize && !self.started {
                    self.start(now);
                }
                Ok(())
            }
            Event::Shutdown => {
                self.started = false;
                self.address_fault = None;
                self.address_retry_timer = None;
                match self.state {
                    State::Master => {
                        self.leave_master_resigning();
                        self.transition(State::Initialize, "shutdown: sent priority 0".into());
                    }
                    State::Backup | State::Fault => {
                        self.master_down_timer = None;
                        self.transition(State::Initialize, "shutdown".into());
                    }
                    State::Initialize => {}
                }
                Ok(())
            }
            Event::Health {
                weight_delta,
                fault,
            } => {
                self.on_health(now, weight_delta, fault);
                Ok(())
            }
            Event::Advert { src, ttl, advert } => self.on_advert(now, src, ttl, advert),
            Event::AddressResult(r) => {
                self.on_address_result(now, r);
                Ok(())
            }
            Event::MasterConfirmed(r) => {
                self.on_confirmed(now, r);
                Ok(())
            }
        }
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.address_retry_timer.is_some_and(|t| t <= now) {
            self.address_retry_timer = Some(now + ADDRESS_RETRY);
            if self.started && self.state == State::Fault {
                self.actions.push_back(Action::ProbeAddresses);
            }
        }
        if self.master_down_timer.is_some_and(|t| t <= now) && self.state == State::Backup {
            let why = match (self.released_by, self.master_ip) {
                (Some(ip), _) => format!(
                    "the master {ip} released the addresses (priority 0); Skew_Time ({:.3}s) passed",
                    self.skew().as_secs_f64()
                ),
                (None, Some(ip)) => format!(
                    "master down timer expired ({:.3}s without an acceptable advert from {ip})",
                    self.master_down_interval().as_secs_f64()
                ),
                (None, None) => format!(
                    "master down timer expired ({:.3}s without any master)",
                    self.master_down_interval().as_secs_f64()
                ),
            };
            self.become_master(now, why);
        }
        if self.state != State::Master {
            self.adver_timer = None;
            self.garp_delay_timer = None;
            self.garp_refresh_timer = None;
            return;
        }
        if self.adver_timer.is_some_and(|t| t <= now) {
            self.actions.push_back(Action::SendAdvert {
                priority: self.effective_priority(),
            });
            self.adver_timer = Some(now + self.cfg.advert_int);
        }
        if self.garp_delay_timer.is_some_and(|t| t <= now) {
            self.garp_delay_timer = None;
            self.actions.push_back(Action::Announce {
                count: self.cfg.garp_repeat,
            });
        }
        if let Some(r) = self.cfg.garp_refresh {
            if self.garp_refresh_timer.is_some_and(|t| t <= now) {
                self.garp_refresh_timer = Some(now + r);
                self.actions.push_back(Action::Announce { count: 1 });
            }
        }
    }
}

#[cfg(test)]
mod tests;
