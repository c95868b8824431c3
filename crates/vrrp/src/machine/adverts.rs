//! Adverts: checking a received one, acting on it, building ours.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Action, DropReason, Machine, State};
use crate::packet::{Advert, Auth, Version};

impl Machine {
    pub(super) fn validate(&self, src: IpAddr, ttl: u8, a: &Advert) -> Result<(), DropReason> {
        if a.vrid != self.cfg.vrid {
            return Err(DropReason::OtherVrid(a.vrid));
        }
        if a.version != self.cfg.version {
            return Err(DropReason::VersionMismatch {
                got: a.version,
                want: self.cfg.version,
            });
        }
        if self.cfg.check_ttl && ttl != crate::packet::VRRP_TTL {
            return Err(DropReason::BadTtl(ttl));
        }
        if src == self.cfg.primary_ip {
            return Err(DropReason::Own);
        }
        if self.cfg.version == Version::V2 {
            if a.auth != self.cfg.auth {
                return Err(DropReason::AuthMismatch);
            }
            let want_cs = (self.cfg.advert_int.as_millis() / 10) as u16;
            if a.interval_cs != want_cs && a.priority != 0 {
                return Err(DropReason::IntervalMismatch {
                    got_cs: a.interval_cs,
                    want_cs,
                });
            }
        }
        if !self.cfg.skip_check_adv_addr {
            // As keepalived: one or more VIPs of the VRID differ from the master's
            // advert. Compared as sets of the packet's family, since an advert only
            // carries addresses of its own family (see `Advert::encode`).
            let mut got = a.addrs.clone();
            got.sort();
            got.dedup();
            let mut want: Vec<IpAddr> = self
                .cfg
                .vips
                .iter()
                .copied()
                .filter(|v| v.is_ipv4() == src.is_ipv4())
                .collect();
            want.sort();
            want.dedup();
            if got != want {
                return Err(DropReason::AddressMismatch { got, want });
            }
        }
        Ok(())
    }

    pub(super) fn on_advert(
        &mut self,
        now: Instant,
        src: IpAddr,
        ttl: u8,
        a: Advert,
    ) -> Result<(), DropReason> {
        self.validate(src, ttl, &a)?;
        let ours = self.effective_priority();
        match self.state {
            State::Initialize | State::Fault => Err(DropReason::NotRunning(self.state)),
            State::Backup => {
                if a.priority == 0 {
                    self.master_down_timer = Some(now + self.skew());
                    self.released_by = Some(src);
                    return Ok(());
                }
                let lower = a.priority < ours;
                let mut accept = !self.cfg.preempt || !lower;
                if !accept && !self.cfg.preempt_delay.is_zero() {
                    let at = *self.preempt_at.get_or_insert(now + self.cfg.preempt_delay);
                    accept = now < at;
                }
                if accept {
                    if self.cfg.version == Version::V3 {
                        self.master_adver_interval = self.learned_interval(a.interval_cs);
                    }
                    self.master_ip = Some(src);
                    self.master_down_timer = Some(now + self.master_down_interval());
                    self.released_by = None;
                }
                // else: discard, so the master down timer fires and we preempt.
                Ok(())
            }
            State::Master => {
                if a.priority == 0 {
                    self.actions
                        .push_back(Action::SendAdvert { priority: ours });
                    self.adver_timer = Some(now + self.cfg.advert_int);
                    return Ok(());
                }
                let higher = a.priority > ours
                    || (a.priority == ours && ip_greater(src, self.cfg.primary_ip));
                if higher {
                    if self.cfg.version == Version::V3 {
                        self.master_adver_interval = self.learned_interval(a.interval_cs);
                    }
                    self.master_ip = Some(src);
                    let why = if a.priority > ours {
                        format!("higher priority master {src} ({} > {ours})", a.priority)
                    } else {
                        format!("equal priority {ours}, master {src} has the higher address")
                    };
                    self.become_backup(now, why);
                } else {
                    // Split brain resolving: assert ourselves at once and refresh
                    // neighbours' ARP caches, which may point at the other node.
                    self.actions
                        .push_back(Action::SendAdvert { priority: ours });
                    self.adver_timer = Some(now + self.cfg.advert_int);
                    let due = !self.confirming
                        && self
                            .last_reannounce
                            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
                    if due {
                        self.last_reannounce = Some(now);
                        self.actions.push_back(Action::Announce {
                            count: self.cfg.garp_repeat,
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// Build the advertisement to send for [`Action::SendAdvert`].
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            interval_cs: (self.cfg.advert_int.as_millis() / 10).clamp(1, 4095) as u16,
            auth: if self.cfg.version == Version::V2 {
                self.cfg.auth
            } else {
                Auth::None
            },
            addrs: self.cfg.vips.clone(),
        }
    }
}

fn ip_greater(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) > u32::from(b),
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) > u128::from(b),
        _ => false,
    }
}
