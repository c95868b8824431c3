//! Connections and sessions: the Hello and its verdict (version, export,
//! generation), one writing session at a time, and the peer session.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{lock, session, Shared, StandbyEvent, MAX_VERIFY_SESSIONS};
use crate::config::Config;
use crate::generation;
use crate::wire::{self, Purpose, Reply, Request, Speaks};
use syncd_proto::pair::lineage::{Lineage, NodeId};
use syncd_proto::receiver::{check_hello, check_verify_slot, HelloError};
use syncd_proto::version::{features, Features};

/// One writing session at a time. A new session from the (authenticated)
/// primary supersedes the current one, which is most likely a primary that
/// died without closing: waiting for its idle timeout would only add lag.
#[derive(Default)]
pub(super) struct Busy {
    lock: tokio::sync::Mutex<()>,
    pub(super) current: Mutex<Option<quinn::Connection>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Conn(#[from] quinn::ConnectionError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error(transparent)]
    Rules(#[from] syncd_proto::receiver::ReceiverError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A session the Hello let in.
pub(super) struct Hello {
    pub(super) purpose: Purpose,
    /// The protocol version of this session: the highest both speak.
    pub(super) version: u32,
    pub(super) features: Features,
    peer: NodeId,
    /// The primary's generation, and whether to keep what catching up with
    /// it overwrites (a writing session).
    pub(super) follow: Option<(Lineage, bool)>,
    /// Held for a verify session's whole life.
    pub(super) _verify: Option<VerifySlot>,
}

/// A running verify session, counted against [`MAX_VERIFY_SESSIONS`].
pub(super) struct VerifySlot(Arc<Shared>);

impl Drop for VerifySlot {
    fn drop(&mut self) {
        self.0.verifies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One incoming connection, from handshake to close.
pub(super) async fn connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    cfg: Config,
    busy: Arc<Busy>,
) {
    let remote = incoming.remote_address();
    match incoming.await {
        Ok(conn) => {
            if let Err(e) = session(conn, shared, cfg, busy).await {
                tracing::warn!(peer = %remote, "session ended: {e}");
            }
        }
        Err(e) => tracing::warn!(peer = %remote, "refused connection: {e}"),
    }
}

async fn session(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    cfg: Config,
    busy: Arc<Busy>,
) -> Result<(), SessionError> {
    let stats = shared.stats.clone();
    let since = std::sync::atomic::AtomicU64::new(0);
    let r = session_inner(&conn, shared, cfg, &busy, &since).await;
    if let Err(e) = &r {
        stats.error(e);
    }
    // Only the writing session that set it clears it: a verify or peer
    // session ending, or a superseded one, says nothing about the current
    // one; and in `--role auto` this node's own source shares the field.
    let mine = since.load(Ordering::Relaxed);
    if mine != 0 {
        let _ =
            stats
                .connected_since
                .compare_exchange(mine, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
    // Let the primary read our last reply and close first; do not hang on a dead one.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed()).await;
    let mut cur = lock(&busy.current);
    if cur.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
        *cur = None;
    }
    r
}

async fn session_inner(
    conn: &quinn::Connection,
    shared: Arc<Shared>,
    cfg: Config,
    busy: &Busy,
    since: &std::sync::atomic::AtomicU64,
) -> Result<(), SessionError> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut rbuf = Vec::new();
    let hello = match wire::read_msg(&mut recv, &mut rbuf).await? {
        Some(h @ Request::Hello { .. }) => h,
        _ => return Err(SessionError::Protocol("expected Hello".into())),
    };
    let speaks = match wire::hello_speaks(&rbuf) {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("malformed protocol versions after the Hello: {e}");
            return refuse(&mut send, reason, None).await;
        }
    };
    let hello = match judge(&shared, &cfg, hello, speaks) {
        Ok(h) => h,
        Err((reason, newer)) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(peer = %conn.remote_address(), "refused a primary: {reason}");
            return refuse(&mut send, reason, newer).await;
        }
    };
    since.store(announce(conn, &shared, &hello), Ordering::Relaxed);
    let _guard = if hello.purpose != Purpose::Resync {
        None // read-only: runs beside a writing session
    } else {
        match take_turn(conn, busy).await {
            Some(g) => Some(g),
            None => {
                let reason = "the previous session did not end within 30 s".to_string();
                return refuse(&mut send, reason, None).await;
            }
        }
    };
    // This node may have been promoted while the session waited its turn.
    if let Some((primary, _)) = &hello.follow {
        let now = shared.lineage();
        if let generation::Verdict::Refuse(reason) = generation::judge(shared.node, &now, primary) {
            tracing::error!(peer = %conn.remote_address(), "refused a primary: {reason}");
            return refuse(&mut send, reason, Some(now)).await;
        }
    }
    let welcome = Reply::Welcome {
        version: hello.version,
        node_id: cfg.node_id.clone(),
        node: shared.node,
        lineage: shared.lineage(),
    };
    // The policy and our versions trail the Welcome in the same frame (see
    // `wire::welcome_policy`, `wire::welcome_speaks`); older primaries
    // ignore them.
    let mut wbuf = Vec::new();
    let frame = (&welcome, &shared.root.policy(), &Speaks::OURS);
    wire::write_msg(&mut send, &frame, &mut wbuf).await?;
    if hello.purpose == Purpose::Peer {
        return peer_session(&mut recv, &mut rbuf, &shared, &hello).await;
    }
    session::run(conn, (send, recv), shared, &cfg, hello).await
}

/// The Hello's verdict: let in, or refused with a reason (and this node's
/// generation when it is the newer one).
fn judge(
    shared: &Arc<Shared>,
    cfg: &Config,
    hello: Request,
    speaks: Option<Speaks>,
) -> Result<Hello, (String, Option<Lineage>)> {
    let Request::Hello {
        version,
        export_id,
        purpose,
        node,
        lineage,
        ..
    } = hello
    else {
        return Err(("expected Hello".into(), None));
    };
    let refused = |e: HelloError| (e.to_string(), None);
    // A release that predates ranges speaks exactly the version it sent.
    let theirs = speaks.unwrap_or(Speaks::only(version));
    let chosen = check_hello(theirs, &export_id, Speaks::OURS, &cfg.export_id);
    // The peer daemon's own session says what it runs (a `pair check` or
    // `verify` may come from a binary upgraded under a daemon still old);
    // also when no version is common: `--role auto` cannot judge that peer.
    if purpose == Purpose::Peer {
        let v = *chosen.as_ref().unwrap_or(&theirs.max);
        shared.emit(StandbyEvent::PeerProtocol(v));
    }
    let version = chosen.map_err(refused)?;
    let Some(features) = features(version) else {
        return Err((
            format!("protocol version {version} has no rules here"),
            None,
        ));
    };
    if version != wire::PROTOCOL_VERSION {
        tracing::info!(
            version,
            "the primary runs an older release: speaking protocol {version}"
        );
    }
    let mut h = Hello {
        purpose,
        version,
        features,
        peer: node,
        follow: None,
        _verify: None,
    };
    match &h.purpose {
        Purpose::Verify => {
            // Read-only: any generation may compare; but each one hashes
            // the whole export, so only a few at once.
            let running = shared.verifies.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = check_verify_slot(running, MAX_VERIFY_SESSIONS) {
                shared.verifies.fetch_sub(1, Ordering::AcqRel);
                return Err(refused(e));
            }
            h._verify = Some(VerifySlot(shared.clone()));
        }
        Purpose::Peer => {} // changes nothing: any generation may talk
        Purpose::Resync => {
            let ours = shared.lineage();
            match generation::judge(shared.node, &ours, &lineage) {
                generation::Verdict::Refuse(why) => return Err((why, Some(ours))),
                generation::Verdict::Follow { preserve } => {
                    shared.stats.set_generation(&ours, Some(&lineage));
                    h.follow = Some((lineage, preserve));
                }
            }
        }
    }
    Ok(h)
}

/// Logs the session; a writing one marks the standby connected. Returns
/// the `connected_since` it stored (0 if none).
fn announce(conn: &quinn::Connection, shared: &Shared, hello: &Hello) -> u64 {
    let peer = conn.remote_address();
    if hello.purpose == Purpose::Peer {
        tracing::debug!(%peer, node = %hello.peer, "peer session");
        return 0;
    }
    tracing::info!(%peer, node = %hello.peer, purpose = ?hello.purpose, "primary connected");
    if hello.purpose != Purpose::Resync {
        return 0;
    }
    shared.stats.connects.fetch_add(1, Ordering::Relaxed);
    let now = crate::stats::unix_now().max(1);
    shared.stats.connected_since.store(now, Ordering::Relaxed);
    now
}

/// Supersedes the current writing session and waits (30 s at most) for it
/// to end; `None` if it does not.
async fn take_turn<'b>(
    conn: &quinn::Connection,
    busy: &'b Busy,
) -> Option<tokio::sync::MutexGuard<'b, ()>> {
    let old = lock(&busy.current).replace(conn.clone());
    if let Some(old) = old {
        tracing::warn!(old = %old.remote_address(), "a new primary session supersedes the current one");
        old.close(1u32.into(), wire::SUPERSEDED.as_bytes());
    }
    let wait = std::time::Duration::from_secs(30);
    tokio::time::timeout(wait, busy.lock.lock()).await.ok()
}

async fn refuse(
    send: &mut quinn::SendStream,
    reason: String,
    lineage: Option<Lineage>,
) -> Result<(), SessionError> {
    let r = Reply::Refused {
        reason: reason.clone(),
        lineage,
    };
    wire::write_msg(send, &r, &mut Vec::new()).await?;
    let _ = send.finish();
    Err(SessionError::Refused(reason))
}

/// A peer session: the peer's own state and questions, forwarded to the
/// embedder; nothing here touches the export.
async fn peer_session(
    recv: &mut quinn::RecvStream,
    rbuf: &mut Vec<u8>,
    shared: &Shared,
    hello: &Hello,
) -> Result<(), SessionError> {
    let node = hello.peer;
    shared.peer_sessions.fetch_add(1, Ordering::AcqRel);
    let r = loop {
        let msg = match wire::read_request(recv, rbuf, hello.version).await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        shared.emit(match msg {
            Request::PeerState { leading, lineage } => StandbyEvent::PeerState {
                node,
                leading,
                lineage,
            },
            Request::Ask { priority } => StandbyEvent::Ask { priority },
            Request::Answer { grant } => StandbyEvent::Answer { grant },
            other => {
                let name = session::input(&other).name();
                break Err(SessionError::Protocol(format!("{name} on a peer session")));
            }
        });
    };
    if shared.peer_sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.emit(StandbyEvent::PeerGone);
    }
    r
}
