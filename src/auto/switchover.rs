//! A planned switchover (`POST /switchover`): fence (demote hook), drain,
//! hand over; un-fence (promote hook) and keep leading if it cannot.

use std::time::Duration;

use syncd_proto::pair::role::{Role, RoleConfig, RoleState};
use tokio::time::Instant;

use super::hooks::After;
use super::{Driver, SwitchoverReply};
use crate::hooks::HookKind;
use crate::stats::unix_now;

/// How long the drain may take before the switchover gives up.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The fence's point in the source's watch (a cookie).
pub(super) struct Fence {
    watch: crate::watch::WatchSync,
    cookie: u64,
    asked: Instant,
}

impl Fence {
    /// Every change made before the fence is counted in the source's
    /// queue. A cookie not seen within a second (its event lost with an
    /// overflow) is asked again: a later one covers everything before it.
    fn reached(&mut self, now: Instant) -> bool {
        if self.watch.reached(self.cookie) {
            return true;
        }
        if now.duration_since(self.asked) >= Duration::from_secs(1) {
            if let Some(c) = self.watch.ask() {
                self.cookie = c;
            }
            self.asked = now;
        }
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Fencing,
    Draining,
    HandingOver,
    Unfencing,
}

pub(super) struct Switch {
    pub(super) reply: Option<SwitchoverReply>,
    pub(super) phase: Phase,
    pub(super) fenced_at: Instant,
    /// When the fence (demote hook) was done, the drain, the address
    /// released (gate closed: VRRP resigns) and the source stopped.
    pub(super) fenced: Option<Instant>,
    pub(super) drained: Option<Instant>,
    pub(super) released: Option<Instant>,
    pub(super) stopped: Option<Instant>,
    /// Drained no earlier than this (changes made just before the fence
    /// are still on their way from inotify and the batcher): the fallback
    /// when the watch has no sync point (`watch`).
    pub(super) settle_until: Instant,
    /// The source's watch and the moment the fence was done: drained only
    /// once every change made before it is in the source's queue.
    pub(super) watch: Option<Fence>,
    pub(super) until: Instant,
}

impl Driver<'_> {
    pub(super) fn reply_switch(&mut self, r: Result<String, String>) {
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
    pub(super) fn start_switchover(&mut self, role: &Role, reply: SwitchoverReply) {
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
            watch: None,
            until: now + DRAIN_TIMEOUT,
        });
        if !self.spawn_hook(HookKind::Demote, After::Fence, role, "planned switchover") {
            tracing::warn!("switchover: no demote hook is configured, so nothing fences writes; a writer still at work while the drain runs may change files after the hand-over (configure [hooks] demote, README: Planned switchover)");
            self.fenced = true;
            self.begin_drain();
        }
    }

    /// Writes are fenced: what was written before now must reach the peer.
    pub(super) fn begin_drain(&mut self) {
        let watch = self.source.as_ref().and_then(|s| s.sync()).and_then(|w| {
            let cookie = w.ask()?;
            Some(Fence {
                watch: w,
                cookie,
                asked: Instant::now(),
            })
        });
        if let Some(sw) = self.switch.as_mut() {
            sw.phase = Phase::Draining;
            sw.fenced = Some(Instant::now());
            sw.watch = watch;
        }
    }

    /// The switchover gives up before handing over: serve again.
    pub(super) fn unfence(&mut self, role: &Role, why: String) {
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
    pub(super) fn check_switchover(&mut self, role: &mut Role) {
        let now = Instant::now();
        let Some((phase, settle_until, until, fenced_at, watched)) =
            self.switch.as_mut().map(|sw| {
                let watched = sw.watch.as_mut().map(|f| f.reached(now));
                (sw.phase, sw.settle_until, sw.until, sw.fenced_at, watched)
            })
        else {
            return;
        };
        match phase {
            Phase::Fencing | Phase::Unfencing => {}
            Phase::Draining => self.drain_step(role, now, watched, settle_until, until),
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

    /// Draining: hand over once every change made before the fence is
    /// acknowledged and the peer holds our generation; give up at `until`.
    fn drain_step(
        &mut self,
        role: &mut Role,
        now: Instant,
        watched: Option<bool>,
        settle_until: Instant,
        until: Instant,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(peer) = role.peer().cloned() else {
            self.unfence(role, "the peer was lost while draining".into());
            return;
        };
        // `lag_ops` (set at each ship) already counts what was queued then;
        // `queue` is fresh. Either nonzero: not drained.
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
        // A session that is down shows as lag (changes unacknowledged), not
        // as drained. Every change made before the fence is counted in `lag`
        // once `collected` (exact, by the watch's sync point; else after a
        // while).
        let collected = watched.unwrap_or(now >= settle_until);
        if collected && lag == 0 && adopted && alive {
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
                "the peer did not catch up within {:?} ({lag} changes unacknowledged, {}, session {}, peer {}, peer generation {}, ours {})",
                DRAIN_TIMEOUT,
                if collected { "all changes collected from the watch" } else { "the watch did not reach the fence" },
                if connected { "up" } else { "down" },
                if alive { "heard" } else { "silent" },
                peer.lineage.gen,
                role.lineage().gen
            );
            self.unfence(role, why);
        }
    }
}
