//! The service hooks as tasks whose results come back as events, so the
//! peer session and the standby are heard while a hook runs.

use std::time::Duration;

use syncd_proto::pair::lineage::Lineage;
use syncd_proto::pair::role::Role;

use super::role_log::RoleLog;
use super::Driver;
use crate::config::Config;
use crate::hooks::{HookEnv, HookKind, HookRun, Outcome};
use crate::stats::{unix_now, Stats};

/// A hook run in flight, and what its result continues.
pub(super) struct Pending {
    pub(super) after: After,
    pub(super) task: tokio::task::JoinHandle<HookRun>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum After {
    /// Promotion: then the address (or, failed, the promotion is undone).
    Promote,
    /// Demotion: then the source stops.
    Demote,
    /// Switchover: writes fenced, then drain.
    Fence,
    /// Switchover abandoned (why): serving again, keep leading.
    Unfence(String),
}

impl Driver<'_> {
    /// Starts the hook for `kind` as a task; `false` if none is configured.
    pub(super) fn spawn_hook(
        &mut self,
        kind: HookKind,
        after: After,
        role: &Role,
        why: &str,
    ) -> bool {
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
    pub(super) async fn on_hook(&mut self, role: &mut Role, after: After, run: HookRun) {
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
                    self.begin_drain();
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
    pub(super) fn log_promoted(&mut self, hook: Option<Duration>) {
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

    /// Stopping: let a demotion's hook finish (it is bounded by its timeout).
    pub(super) async fn finish_hooks(&mut self, role: &mut Role) {
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
}

pub(super) fn hook_env(cfg: &Config, lineage: &Lineage, why: &str) -> HookEnv {
    HookEnv {
        export: cfg.export.display().to_string(),
        export_id: cfg.export_id.clone(),
        node: cfg.node_id.clone(),
        generation: lineage.gen.to_string(),
        reason: why.to_string(),
    }
}

/// Counts a hook run and writes it to the role log.
pub(super) fn record_hook(log: &RoleLog, stats: &Stats, r: &HookRun) {
    stats.record_hook(r);
    log.write(format!("{} hook: {r}", unix_now()));
}
