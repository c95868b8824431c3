//! The peer session of our own (the second heartbeat), and the protocol
//! the peer speaks, remembered while it is one we may not lead beside.

use syncd_proto::pair::lineage::{Lineage, NodeId};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::primary::Session;
use crate::standby::StandbyEvent;
use crate::wire::{Purpose, Request};

pub(super) fn may_lead_beside(v: u32) -> bool {
    syncd_proto::version::features(v).is_some_and(|f| f.may_lead_beside)
}

/// The peer's protocol, kept across restarts while it is one this node may
/// not lead beside: a node that followed a previous-release peer took its
/// generation before the catch-up was complete, and a restart must not make
/// that data leadable (until a peer of this release is heard).
pub(super) const PEER_PROTOCOL_FILE: &str = "peer_protocol";

pub(super) fn load_peer_protocol(state_dir: &std::path::Path) -> u32 {
    let current = crate::wire::PROTOCOL_VERSION;
    match crate::state::read_private(&state_dir.join(PEER_PROTOCOL_FILE)) {
        Ok(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                tracing::warn!(
                    "{PEER_PROTOCOL_FILE} in the state directory is not a number; ignored"
                );
                current
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => current,
        Err(e) => {
            tracing::warn!("cannot read {PEER_PROTOCOL_FILE} in the state directory: {e}; ignored");
            current
        }
    }
}

pub(super) fn save_peer_protocol(state_dir: &std::path::Path, v: u32) -> std::io::Result<()> {
    use std::io::Write;
    let path = state_dir.join(PEER_PROTOCOL_FILE);
    if may_lead_beside(v) {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut f = crate::state::create_private(&path)?;
    f.write_all(format!("{v}\n").as_bytes())?;
    f.sync_all()
}

pub(super) fn older_peer(v: u32) -> String {
    format!(
        "the peer speaks protocol {v}, this node {}: this node follows it but does not take the lead beside it (a follower of protocol {v} takes a generation before its catch-up is complete, so data cannot be judged); upgrade the peer too (README: Upgrading)",
        crate::wire::Speaks::OURS
    )
}

/// Our side of the peer session: connect, then send our state at every
/// change and at least every heartbeat, and the role machine's questions
/// and answers. Reconnects on any failure.
pub(super) async fn peer_link(
    cfg: Config,
    me: NodeId,
    mut state: watch::Receiver<(bool, Lineage)>,
    mut out: mpsc::Receiver<Request>,
    mut redial: watch::Receiver<u64>,
    events: mpsc::Sender<StandbyEvent>,
) {
    let heartbeat = cfg.pair.heartbeat;
    loop {
        if state.has_changed().is_err() {
            return; // stopping, and the peer is not reachable anyway
        }
        let lineage = state.borrow().1.clone();
        // A dead host never answers: give up at the heartbeat timeout, not
        // the session's 10 s, so a returning peer is heard at once.
        let attempt = Session::connect_as(&cfg, Purpose::Peer, me, &lineage);
        let r = match tokio::time::timeout(cfg.pair.heartbeat_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(crate::primary::ClientError::Protocol("no answer".into())),
        };
        let mut s = match r {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("peer session: {e}");
                // Questions asked meanwhile are moot: the peer is not heard.
                while out.try_recv().is_ok() {}
                tokio::time::sleep(heartbeat).await;
                continue;
            }
        };
        tracing::info!("peer session up");
        // What the peer runs is known now, whichever side dials first: an
        // older peer's own session may come much later.
        let _ = events.try_send(StandbyEvent::PeerProtocol(s.peer_speaks.max));
        let conn = s.connection();
        // Ok(()): we are stopping.
        let r: Result<(), crate::primary::ClientError> = async {
            loop {
                let (leading, lineage) = state.borrow_and_update().clone();
                s.send(&Request::PeerState { leading, lineage }).await?;
                s.flush().await?;
                tokio::select! {
                    m = out.recv() => match m {
                        Some(m) => { s.send(&m).await?; s.flush().await?; }
                        None => return Ok(()), // stopping
                    },
                    r = state.changed() => if r.is_err() {
                        return Ok(()); // stopping: our last state is sent
                    },
                    _ = tokio::time::sleep(heartbeat) => {}
                    _ = redial.changed() => return Err(crate::primary::ClientError::Protocol("the peer fell silent; dialling again".into())),
                    e = conn.closed() => return Err(crate::primary::ClientError::Protocol(e.to_string())),
                }
            }
        }
        .await;
        s.close().await;
        match r {
            Ok(()) => return,
            Err(e) => tracing::info!("peer session ended: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_release_peer_is_remembered_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let current = crate::wire::PROTOCOL_VERSION;
        assert_eq!(load_peer_protocol(d.path()), current, "nothing heard yet");
        save_peer_protocol(d.path(), 6).unwrap();
        assert_eq!(load_peer_protocol(d.path()), 6, "a restart keeps it");
        assert!(!may_lead_beside(load_peer_protocol(d.path())));
        save_peer_protocol(d.path(), current).unwrap();
        assert_eq!(
            load_peer_protocol(d.path()),
            current,
            "a current peer clears it"
        );
        assert!(!d.path().join(PEER_PROTOCOL_FILE).exists());
        std::fs::write(d.path().join(PEER_PROTOCOL_FILE), "six").unwrap();
        assert_eq!(load_peer_protocol(d.path()), current, "garbage is ignored");
    }
}
