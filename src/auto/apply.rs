//! Carrying out the role machine's actions, then publishing the result:
//! the role log, VRRP's gate and its wait for our promotion, our state to
//! the peer, `/status`.

use syncd_proto::pair::lineage::{Generation, Relation};
use syncd_proto::pair::role::{Action, Role, RoleState};
use tokio::time::Instant;

use super::hooks::After;
use super::switchover::{Phase, Switch};
use super::Driver;
use crate::generation::Record;
use crate::hooks::HookKind;
use crate::stats::{unix_now, PairView};
use crate::wire::Request;

impl Driver<'_> {
    /// Carries out what the role machine asks, until it asks nothing more.
    pub(super) async fn apply(&mut self, role: &mut Role) {
        while let Some(a) = role.poll_action() {
            self.carry_out(role, a).await;
        }
        self.log_changes(role);
        self.send_gate(role);
        self.answer_vrrp(role);
        let heard = role.peer().is_some();
        if self.heard && !heard {
            self.redial.send_modify(|n| *n += 1);
        }
        self.heard = heard;
        self.publish_state(role);
        self.publish_view(role);
    }

    async fn carry_out(&mut self, role: &mut Role, a: Action) {
        match a {
            Action::Persist { lineage, peer_seen } => {
                self.persist(role, Record { lineage, peer_seen })
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
            Action::Promote { gen } => self.promote(role, gen),
            Action::Demote { why } => self.demote(role, why).await,
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

    fn persist(&mut self, role: &mut Role, record: Record) {
        if let Err(e) = self.record.save_record(record) {
            // Never lead on a generation that is not on disk.
            tracing::error!("{e}");
            if role.state() == RoleState::Promoting {
                role.handle_promote_failed(&e.to_string(), std::time::Instant::now());
            }
        }
    }

    fn promote(&mut self, role: &mut Role, gen: Generation) {
        tracing::info!(generation = %gen, "promoting: becoming the replication source");
        self.source = Some(super::start_source(self.cfg, self.stats.clone()));
        self.promoting = Some((self.vrrp_asked.take(), Instant::now()));
        // Serve (NFS export) before the address; the answer comes back as
        // an event (`on_hook`).
        if !self.spawn_hook(HookKind::Promote, After::Promote, role, "promotion") {
            self.log_promoted(None);
            role.handle_promoted(std::time::Instant::now());
        }
    }

    async fn demote(&mut self, role: &mut Role, why: String) {
        tracing::info!("demoting: {why}");
        self.cut_hook_short().await;
        self.switch_overtaken(&why);
        // Stop serving first (unless the switchover's fence did).
        if self.fenced || !self.spawn_hook(HookKind::Demote, After::Demote, role, &why) {
            if self.handing_over() {
                // Tell the peer we no longer lead and stop the source
                // without blocking (seen taking 7.7 s): the peer's VRRP
                // takes over meanwhile and its promotion, which we consent
                // to, closes our source's session.
                self.publish_state(role);
                self.stop_source_in_background();
            } else {
                self.finish_demote(role).await;
            }
        }
    }

    /// A demotion overtakes a promotion (or a switchover) still in its
    /// hook: that hook is killed (its task dropped), then the demote hook
    /// undoes what it did.
    async fn cut_hook_short(&mut self) {
        let Some(p) = self.hook.take() else {
            return;
        };
        tracing::warn!(
            "stopping the running service hook ({:?}): demoting",
            p.after
        );
        // An un-fence cut short may have served again: the demote hook
        // must run.
        if matches!(p.after, After::Unfence(_)) {
            self.fenced = false;
        }
        p.task.abort();
        let _ = p.task.await;
    }

    /// A switchover that a demotion overtakes fails, unless the demotion is
    /// its hand-over.
    fn switch_overtaken(&mut self, why: &str) {
        let Some(mut sw) = self.switch.take() else {
            return;
        };
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

    /// Role changes to the log, the role log, the counter and systemd.
    fn log_changes(&mut self, role: &mut Role) {
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
    }

    /// Answers VRRP: the address once we lead; a refusal once we will not.
    fn answer_vrrp(&mut self, role: &Role) {
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
    }

    /// The pair's part of `/status` and `/metrics`.
    fn publish_view(&self, role: &Role) {
        let data = match role.relation() {
            None => "unknown (peer not heard)",
            Some(Relation::Same) => "current",
            Some(Relation::Ahead) => "ahead of the peer",
            Some(Relation::Behind { .. }) => "behind the peer",
            Some(Relation::Diverged { .. }) => "diverged from the peer",
        };
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
