//! Replies, read through the Sender core: it says which reply completes
//! what was asked and how long to wait; the shell keeps the payloads
//! (manifest entries, signatures) it does not need to see.

use std::time::Instant;

use syncd_proto::sender::{self, Answer, Sender, SenderError};

use super::stream::{Stream, StreamError};
use crate::wire::{Entry, Kind, Reply};

/// What the shell keeps of a reply; the Sender core sees only its shape.
pub(super) enum StreamReply {
    None,
    Welcome(String),
    Entries(Vec<Entry>),
    Signature(Vec<u8>),
    Digests(Vec<syncd_proto::digest::Answer>),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ReplyError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Sender(#[from] SenderError),
}

/// Reads replies on `st` until the Sender core `tx` has an answer, never
/// waiting past its deadline.
pub(super) async fn answer(
    st: &mut Stream,
    tx: &mut Sender,
) -> Result<(Answer, StreamReply), ReplyError> {
    let mut kept = StreamReply::None;
    loop {
        if let Some(a) = tx.poll_answer() {
            return Ok((a, kept));
        }
        let read = st.reply();
        let r = match tx.poll_timeout() {
            Some(t) => match tokio::time::timeout_at(t.into(), read).await {
                Ok(r) => r,
                Err(_) => {
                    // A partial frame may be lost with the read: the
                    // session ends here either way.
                    tx.handle_timeout(Instant::now().max(t))?;
                    return Err(SenderError::Ended.into());
                }
            },
            None => read.await,
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                tx.handle_lost();
                return Err(e.into());
            }
        };
        let (r, k) = split(r);
        if !matches!(k, StreamReply::None) {
            kept = k;
        }
        tx.handle_reply(r, Instant::now())?;
    }
}

/// A reply as the Sender core sees it, and what the shell keeps of it.
fn split(r: Reply) -> (sender::Reply, StreamReply) {
    use sender::Reply as R;
    let none = StreamReply::None;
    match r {
        Reply::Welcome {
            version,
            node_id,
            node,
            lineage,
        } => (
            R::Welcome {
                version,
                node,
                lineage,
            },
            StreamReply::Welcome(node_id),
        ),
        Reply::Refused { reason, lineage } => (R::Refused { reason, lineage }, none),
        Reply::ListChunk { entries } => {
            let bytes = entries.iter().map(name_bytes).sum();
            let n = entries.len();
            (
                R::ListChunk { entries: n, bytes },
                StreamReply::Entries(entries),
            )
        }
        Reply::ListEnd => (R::ListEnd, none),
        // Digest answers count against the manifest's bounds, name by name.
        Reply::Digests { answers } => {
            let (n, bytes) = answers.iter().fold((answers.len(), 0), |(n, b), a| {
                let (an, ab) = a.size();
                (n + an, b + ab + a.path.len() as u64)
            });
            (
                R::ListChunk { entries: n, bytes },
                StreamReply::Digests(answers),
            )
        }
        Reply::Signature { data, .. } => (R::Signature, StreamReply::Signature(data)),
        Reply::NoSignature { .. } => (R::NoSignature, none),
        Reply::BarrierDone { id, failures } => (R::BarrierDone { id, failures }, none),
        Reply::Finished { committed } => (R::Finished { committed }, none),
        Reply::Fatal { reason } => (R::Fatal { reason }, none),
        Reply::FailureChunk { id, failures } => (R::FailureChunk { id, failures }, none),
        Reply::FailuresDropped { id, count } => (R::FailuresDropped { id, count }, none),
    }
}

/// Bytes of an entry's name and target, counted against the manifest cap.
fn name_bytes(e: &Entry) -> u64 {
    let extra = match &e.kind {
        Kind::Symlink { target } => target.len(),
        Kind::HardLink { leader } => leader.as_bytes().len(),
        _ => 0,
    };
    (e.path.as_bytes().len() + extra) as u64
}
