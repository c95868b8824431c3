//! What ends a session, from each layer's error.

use std::net::SocketAddr;
use std::time::Duration;

use syncd_proto::sender::SenderError;

use super::super::reply::ReplyError;
use super::super::stream::StreamError;
use crate::tls;
use crate::wire;
use syncd_proto::pair::lineage::Lineage;

impl From<StreamError> for ClientError {
    fn from(e: StreamError) -> ClientError {
        match e {
            StreamError::Fatal(r) => ClientError::Fatal(r),
            StreamError::Closed => ClientError::Protocol("standby closed the session".into()),
            StreamError::Wire(w) => ClientError::Wire(w),
            StreamError::Timeout(d) => ClientError::Timeout(d),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot connect to standby {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("standby refused the session: {0}")]
    Refused(String, Option<Lineage>),
    #[error("standby reported a fatal error: {0}")]
    Fatal(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("local export: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "no reply from the standby within {0:?}: it is hung or overloaded; ending the session"
    )]
    Timeout(Duration),
}

impl From<SenderError> for ClientError {
    fn from(e: SenderError) -> ClientError {
        match e {
            SenderError::Refused { reason, lineage } => ClientError::Refused(reason, lineage),
            SenderError::Fatal(r) => ClientError::Fatal(r),
            SenderError::Timeout(d) => ClientError::Timeout(d),
            SenderError::Ended => ClientError::Protocol("standby closed the session".into()),
            e => ClientError::Protocol(e.to_string()),
        }
    }
}

impl From<ReplyError> for ClientError {
    fn from(e: ReplyError) -> ClientError {
        match e {
            ReplyError::Stream(e) => e.into(),
            ReplyError::Sender(e) => e.into(),
        }
    }
}

pub use syncd_proto::sender::{MAX_LIST_BYTES, MAX_LIST_ENTRIES};

pub(crate) fn record_error(e: crate::generation::RecordError) -> ClientError {
    ClientError::Io(std::io::Error::other(e.to_string()))
}
