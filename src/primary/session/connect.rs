//! Connecting: QUIC with mTLS, then the Hello and the standby's Welcome.

use super::*;

impl Session {
    /// Opens a session as `me` (our node and generation, sent in the Hello).
    pub async fn connect(
        cfg: &Config,
        purpose: Purpose,
        me: &Leading,
    ) -> Result<Session, ClientError> {
        Session::connect_as(cfg, purpose, me.node, &me.record.lineage).await
    }

    /// [`Session::connect`] with the node and lineage given directly.
    /// Speaks the highest protocol version both nodes do.
    pub async fn connect_as(
        cfg: &Config,
        purpose: Purpose,
        node: NodeId,
        lineage: &Lineage,
    ) -> Result<Session, ClientError> {
        use syncd_proto::version::{refused_for_version, VersionError};
        let ours = Speaks::OURS;
        let first = match LAST_SPOKEN.load(Ordering::Relaxed) {
            v if ours.contains(v) => v,
            _ => ours.max,
        };
        match Session::connect_speaking(cfg, purpose.clone(), node, lineage, first).await {
            // Release 6 refuses any version but its own (it closed this
            // connection): speak its version on a new one, if we can.
            Err(ClientError::Refused(reason, None)) => match refused_for_version(&reason) {
                Some(v) if ours.contains(v) && v != first => {
                    tracing::info!("the standby runs an older release: speaking protocol {v}");
                    Session::connect_speaking(cfg, purpose, node, lineage, v).await
                }
                Some(v) if !ours.contains(v) => {
                    let theirs = Speaks::only(v);
                    let e = VersionError::TooOld { theirs, ours };
                    Err(ClientError::Refused(e.to_string(), None))
                }
                _ => Err(ClientError::Refused(reason, None)),
            },
            r => r,
        }
    }

    /// Opens a session whose Hello says `version` (all a release before
    /// ranges reads) followed by every version we speak.
    async fn connect_speaking(
        cfg: &Config,
        purpose: Purpose,
        node: NodeId,
        lineage: &Lineage,
        version: u32,
    ) -> Result<Session, ClientError> {
        let speaks = Speaks::OURS;
        let (endpoint, conn, send, recv) = dial(cfg).await?;
        let sender = Sender::new(SenderConfig {
            reply_deadline: cfg.sync.reply_timeout,
            ..SenderConfig::default()
        });
        let mut ctl = Stream::new(send, recv);
        // The deadline is the Sender core's.
        ctl.deadline = None;
        let mut s = Session {
            peer: None,
            peer_version: (0, String::new()),
            peer_speaks: speaks,
            transfers: Transfers::new(conn.clone(), cfg.export.clone(), cfg.sync.reply_timeout),
            conn,
            ctl,
            _endpoint: endpoint,
            delta_bytes: 0,
            files_tx: 0,
            files_rx: 0,
            sender,
            standby_policy: None,
            committed: Default::default(),
            commits_awaited: 0,
        };
        // Our versions trail the Hello; a release that predates ranges
        // reads only `version` and ignores them.
        let hello = Request::Hello {
            version,
            export_id: cfg.export_id.clone(),
            node_id: cfg.node_id.clone(),
            purpose,
            node,
            lineage: lineage.clone(),
        };
        let frame = postcard::to_stdvec(&(&hello, &speaks)).map_err(wire::WireError::from)?;
        s.send_frame(&frame).await?;
        s.sender.expect(Expect::Welcome, Instant::now());
        // A refusal (another version, another export, newer data) is the
        // Sender's error value, with the standby's reason and generation.
        match s.answer().await? {
            (
                Answer::Welcome {
                    node,
                    lineage,
                    version,
                },
                StreamReply::Welcome(node_id),
            ) => {
                if !speaks.contains(version) {
                    let e = format!(
                        "the standby chose protocol version {version}; this node speaks {speaks}"
                    );
                    return Err(ClientError::Protocol(e));
                }
                s.peer = Some((node, lineage));
                s.peer_version = (version, node_id);
                let frame = s.ctl.last_frame();
                let bad = |e| ClientError::Protocol(format!("after the standby's Welcome: {e}"));
                s.standby_policy = wire::welcome_policy(frame).map_err(bad)?;
                let theirs = wire::welcome_speaks(frame).map_err(bad)?;
                s.peer_speaks = theirs.unwrap_or(Speaks::only(version));
                LAST_SPOKEN.store(version, Ordering::Relaxed);
                Ok(s)
            }
            (other, _) => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }
}

/// A QUIC connection to the standby and its first (control) stream.
async fn dial(
    cfg: &Config,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ),
    ClientError,
> {
    let peer = cfg.require_peer()?;
    let id = Identity::from_config(cfg)?;
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(peer)
    } else {
        "[::]:0".parse().unwrap_or(peer)
    };
    let mut endpoint =
        tls::endpoint(bind, None).map_err(|e| ClientError::Connect(peer, e.to_string()))?;
    endpoint.set_default_client_config(tls::client_config(&id)?);
    let conn = endpoint
        .connect(peer, "syncd")
        .map_err(|e| ClientError::Connect(peer, e.to_string()))?;
    let conn = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .map_err(|_| {
            ClientError::Connect(
                peer,
                "no answer within 10 s (is the standby running and the port open?)".into(),
            )
        })?
        .map_err(|e| ClientError::Connect(peer, e.to_string()))?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connect(peer, e.to_string()))?;
    Ok((endpoint, conn, send, recv))
}
