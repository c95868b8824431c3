//! The instance's health inputs: track checks and link states, polled by
//! helper tasks that report on a channel, plus the embedder's gate.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{InstanceConfig, Track};
use crate::io::checks;
use crate::io::netlink::Net;
use crate::script_security::ScriptRunner;
use crate::track::{health, LinkState, TrackState};

const LINK_POLL: Duration = Duration::from_millis(200);

/// One helper's report.
pub(super) enum HealthMsg {
    Track(usize, bool),
    Link(usize, bool),
}

/// Weight delta and the fault reason, if any.
pub(super) type Verdict = (i32, Option<String>);

pub(super) struct Health {
    tracks: Vec<TrackState>,
    links: Vec<LinkState>,
    /// `Some(reason)` inside: the embedder forbids holding the address.
    pub(super) gate: Option<watch::Receiver<Option<String>>>,
    pub(super) rx: mpsc::Receiver<HealthMsg>,
    helpers: JoinSet<()>,
}

impl Health {
    /// Read the links once, then start one task per check and one link poller.
    pub(super) async fn start(
        cfg: &InstanceConfig,
        net: &Net,
        gate: Option<watch::Receiver<Option<String>>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<HealthMsg>(64);
        let tracks = cfg
            .tracks
            .iter()
            .map(|t| TrackState::new(t.name.clone(), t.weight, t.fall, t.rise))
            .collect();
        let link_names = link_names(cfg);
        let mut links = Vec::new();
        for l in &link_names {
            let up = net.link(l).await.map(|i| i.up).unwrap_or(false);
            links.push(LinkState {
                name: l.clone(),
                up,
            });
        }
        let mut helpers = JoinSet::new();
        for (i, t) in cfg.tracks.iter().cloned().enumerate() {
            helpers.spawn(run_check(i, t, cfg.scripts.clone(), tx.clone()));
        }
        helpers.spawn(poll_links(link_names, net.clone(), tx));
        Health {
            tracks,
            links,
            gate,
            rx,
            helpers,
        }
    }

    /// The embedder's gate is one more health input: closed means FAULT.
    pub(super) fn verdict(&self) -> Verdict {
        let (delta, fault) = health(&self.tracks, &self.links);
        let closed = self.gate.as_ref().and_then(|g| g.borrow().clone());
        (delta, fault.or(closed))
    }

    /// Record a report; true when it changes the verdict's inputs.
    pub(super) fn record(&mut self, m: HealthMsg) -> bool {
        match m {
            HealthMsg::Track(i, ok) => self.tracks.get_mut(i).is_some_and(|t| t.record(ok)),
            HealthMsg::Link(i, up) => self.links.get_mut(i).is_some_and(|l| {
                let c = l.up != up;
                l.up = up;
                c
            }),
        }
    }

    pub(super) async fn stop(mut self) {
        self.helpers.shutdown().await;
    }
}

/// The instance interface first, then the tracked ones, each once.
fn link_names(cfg: &InstanceConfig) -> Vec<String> {
    let mut names = vec![cfg.interface.clone()];
    for t in &cfg.track_interfaces {
        if !names.contains(t) {
            names.push(t.clone());
        }
    }
    names
}

async fn run_check(i: usize, t: Track, runner: ScriptRunner, tx: mpsc::Sender<HealthMsg>) {
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = checks::probe(&t.kind, t.timeout, &runner).await;
        if tx.send(HealthMsg::Track(i, ok)).await.is_err() {
            return;
        }
    }
}

async fn poll_links(names: Vec<String>, net: Net, tx: mpsc::Sender<HealthMsg>) {
    loop {
        tokio::time::sleep(LINK_POLL).await;
        for (i, l) in names.iter().enumerate() {
            let up = net.link(l).await.map(|i| i.up).unwrap_or(false);
            if tx.send(HealthMsg::Link(i, up)).await.is_err() {
                return;
            }
        }
    }
}
