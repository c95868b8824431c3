//! State changes: becoming master or backup, faults and recovery, and the
//! health input that drives them.

use std::time::Instant;

use super::{Action, Machine, State, ADDRESS_RETRY};

impl Machine {
    pub(super) fn transition(&mut self, to: State, reason: String) {
        let from = self.state;
        if from == State::Master && to != State::Master && self.confirming {
            self.confirming = false;
            self.actions.push_back(Action::CancelConfirm);
        }
        self.state = to;
        if to != State::Backup {
            self.preempt_at = None;
        }
        self.actions
            .push_back(Action::Transition { from, to, reason });
    }

    pub(super) fn become_master(&mut self, now: Instant, reason: String) {
        self.actions.push_back(Action::SendAdvert {
            priority: self.effective_priority(),
        });
        if self.cfg.confirm_master {
            self.confirming = true;
            self.actions.push_back(Action::ConfirmMaster);
        } else {
            self.add_and_announce(now);
        }
        self.adver_timer = Some(now + self.cfg.advert_int);
        self.master_down_timer = None;
        self.released_by = None;
        self.master_adver_interval = self.cfg.advert_int;
        self.master_ip = Some(self.cfg.primary_ip);
        self.transition(State::Master, reason);
    }

    pub(super) fn add_and_announce(&mut self, now: Instant) {
        self.actions.push_back(Action::AddAddresses);
        self.actions.push_back(Action::Announce {
            count: self.cfg.garp_repeat,
        });
        self.garp_delay_timer = (!self.cfg.garp_delay.is_zero()).then(|| now + self.cfg.garp_delay);
        self.garp_refresh_timer = self.cfg.garp_refresh.map(|r| now + r);
    }

    pub(super) fn on_confirmed(&mut self, now: Instant, r: Result<(), String>) {
        if self.state != State::Master || !self.confirming {
            return; // cancelled meanwhile: a stale answer
        }
        self.confirming = false;
        match r {
            Ok(()) => self.add_and_announce(now),
            Err(why) => {
                // Let a backup take over after Skew_Time; try again only
                // after a whole Master_Down_Interval without a master.
                self.leave_master_resigning();
                self.become_backup(now, format!("mastership refused: {why}"));
            }
        }
    }

    pub(super) fn become_backup(&mut self, now: Instant, reason: String) {
        let was_master = self.state == State::Master;
        self.adver_timer = None;
        self.garp_delay_timer = None;
        self.garp_refresh_timer = None;
        self.master_down_timer = Some(now + self.master_down_interval());
        self.released_by = None;
        if was_master {
            self.actions.push_back(Action::RemoveAddresses);
        }
        self.transition(State::Backup, reason);
    }

    pub(super) fn leave_master_resigning(&mut self) {
        // Priority 0 lets the backup take over after Skew_Time instead of Master_Down_Interval.
        self.actions.push_back(Action::SendAdvert { priority: 0 });
        self.actions.push_back(Action::RemoveAddresses);
        self.adver_timer = None;
        self.garp_delay_timer = None;
        self.garp_refresh_timer = None;
    }

    /// Health fault first (it is what the operator configured), then the address fault.
    pub(super) fn current_fault(&self) -> Option<String> {
        self.fault.clone().or_else(|| {
            self.address_fault
                .as_ref()
                .map(|e| format!("cannot add the virtual addresses: {e}"))
        })
    }

    /// Leave FAULT once nothing is faulty any more.
    pub(super) fn recover(&mut self, now: Instant, reason: &str) {
        if self.effective_priority() == 255 {
            self.become_master(now, format!("{reason}; address owner"));
        } else {
            self.master_adver_interval = self.cfg.advert_int;
            self.become_backup(now, reason.into());
        }
    }

    pub(super) fn on_address_result(&mut self, now: Instant, r: Result<(), String>) {
        match r {
            Err(e) => {
                if !self.started {
                    return;
                }
                let first = self.address_fault.is_none();
                self.address_fault = Some(e.clone());
                self.address_retry_timer = Some(now + ADDRESS_RETRY);
                if self.state == State::Master {
                    // Clients must not be pointed at us: cancel the queued ARP burst,
                    // and resign so the peer takes over after Skew_Time.
                    self.actions
                        .retain(|a| !matches!(a, Action::Announce { .. }));
                    self.leave_master_resigning();
                    self.master_down_timer = None;
                    self.transition(
                        State::Fault,
                        format!(
                            "fault: cannot add the virtual addresses: {e} (retrying every {}s)",
                            ADDRESS_RETRY.as_secs()
                        ),
                    );
                } else if first && self.state != State::Fault {
                    self.master_down_timer = None;
                    self.transition(
                        State::Fault,
                        format!("fault: cannot add the virtual addresses: {e}"),
                    );
                }
            }
            Ok(()) => {
                if self.address_fault.take().is_none() {
                    return;
                }
                self.address_retry_timer = None;
                if self.started && self.state == State::Fault && self.fault.is_none() {
                    self.recover(now, "virtual addresses can be added again");
                }
            }
        }
    }

    pub(super) fn start(&mut self, now: Instant) {
        self.started = true;
        if let Some(f) = self.fault.clone() {
            self.transition(State::Fault, format!("startup while faulty: {f}"));
        } else if self.effective_priority() == 255 {
            self.become_master(now, "startup as address owner (priority 255)".into());
        } else {
            self.master_adver_interval = self.cfg.advert_int;
            let mdi = self.master_down_interval();
            self.become_backup(
                now,
                format!("startup; master down timer {:.3}s", mdi.as_secs_f64()),
            );
        }
    }

    pub(super) fn on_health(&mut self, now: Instant, weight_delta: i32, fault: Option<String>) {
        let old_prio = self.effective_priority();
        self.weight_delta = weight_delta;
        let new_prio = self.effective_priority();
        self.fault = fault;
        if !self.started {
            return;
        }
        match self.current_fault() {
            Some(reason) if self.state != State::Fault => {
                if self.state == State::Master {
                    self.leave_master_resigning();
                }
                self.master_down_timer = None;
                self.transition(State::Fault, format!("fault: {reason}"));
            }
            None if self.state == State::Fault => self.recover(now, "fault cleared"),
            _ => {
                if old_prio != new_prio && self.state == State::Master {
                    // Tell the backup at once so it can preempt if it now outranks us.
                    self.actions
                        .push_back(Action::SendAdvert { priority: new_prio });
                    self.adver_timer = Some(now + self.cfg.advert_int);
                }
            }
        }
    }
}
