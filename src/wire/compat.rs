//! Sessions of the previous protocol version: the messages whose encoding
//! differs, translated at the boundary, so the rest of the code speaks only
//! the current messages. Which version differs how is
//! `syncd_proto::version::features`; here is only how the bytes differ.
//!
//! Postcard writes an enum as its variant index (a varint: one byte below
//! 128) followed by the fields. Version 6 lacks `Request::CaughtUp`, index
//! 18, so its `PeerState`, `Ask` and `Answer` are 18, 19 and 20 where the
//! current ones are 19, 20 and 21; every other request, and every reply the
//! previous version knows, is encoded identically.

use super::Request;
use syncd_proto::version::features;

/// `Request::CaughtUp`'s variant index (checked by a test).
const CAUGHT_UP: u8 = 18;
/// Requests version 6 knows: indexes 0..=20.
const V6_REQUESTS: u8 = 21;

fn shifted(version: u32) -> bool {
    features(version).is_some_and(|f| !f.caught_up_variant)
}

/// How a request goes out on a session of some version.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Encoded as the current message.
    Same,
    /// That version has no such message (`CaughtUp` before 7: the standby
    /// takes the generation at the first commit instead).
    Skip,
    /// These bytes instead.
    Bytes(Vec<u8>),
}

/// `r` as a session of `version` expects it.
pub fn encode_request(version: u32, r: &Request) -> Result<Outgoing, postcard::Error> {
    if !shifted(version) {
        return Ok(Outgoing::Same);
    }
    if matches!(r, Request::CaughtUp) {
        return Ok(Outgoing::Skip);
    }
    if !matches!(
        r,
        Request::PeerState { .. } | Request::Ask { .. } | Request::Answer { .. }
    ) {
        return Ok(Outgoing::Same);
    }
    let mut b = postcard::to_stdvec(r)?;
    b[0] -= 1;
    Ok(Outgoing::Bytes(b))
}

/// A request from a peer speaking `version`, as the current message.
pub fn decode_request(version: u32, bytes: &[u8]) -> Result<Request, postcard::Error> {
    if !shifted(version) {
        return postcard::from_bytes(bytes);
    }
    match bytes.first() {
        Some(&i) if i >= V6_REQUESTS => Err(postcard::Error::DeserializeBadEnum),
        Some(&i) if i >= CAUGHT_UP => {
            let mut b = bytes.to_vec();
            b[0] = i + 1;
            postcard::from_bytes(&b)
        }
        _ => postcard::from_bytes(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Purpose, Reply};
    use syncd_proto::pair::lineage::{Lineage, NodeId};

    fn lineage() -> Lineage {
        Lineage {
            commit: 5,
            ..Lineage::default()
        }
    }

    /// Version 6's requests, written out as its encoder produced them
    /// (variant index, then the fields in order).
    #[test]
    fn version_6_bytes_decode_as_the_same_messages() {
        let l = postcard::to_stdvec(&lineage()).unwrap();
        let peer_state: Vec<u8> = [&[18u8, 1][..], &l].concat();
        match decode_request(6, &peer_state).unwrap() {
            Request::PeerState {
                leading,
                lineage: got,
            } => {
                assert!(leading);
                assert_eq!(got, lineage());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_request(6, &[19, 150]).unwrap(),
            Request::Ask { priority: 150 }
        ));
        assert!(matches!(
            decode_request(6, &[20, 1]).unwrap(),
            Request::Answer { grant: true }
        ));
        // Finish (17) and below are the same in both.
        assert!(matches!(decode_request(6, &[17]).unwrap(), Request::Finish));
        assert!(matches!(
            decode_request(6, &[16, 3]).unwrap(),
            Request::Commit { id: 3 }
        ));
        // Version 6 has no 21: not read as this version's Answer.
        assert!(decode_request(6, &[21, 1]).is_err());
        // Under 7 the same bytes are the current messages.
        assert!(matches!(
            decode_request(7, &[18]).unwrap(),
            Request::CaughtUp
        ));
    }

    #[test]
    fn requests_for_version_6_are_encoded_as_it_decodes_them() {
        assert_eq!(
            postcard::to_stdvec(&Request::CaughtUp).unwrap(),
            [CAUGHT_UP]
        );
        assert_eq!(
            encode_request(6, &Request::CaughtUp).unwrap(),
            Outgoing::Skip
        );
        let bytes = |r: &Request| match encode_request(6, r).unwrap() {
            Outgoing::Bytes(b) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(bytes(&Request::Ask { priority: 9 }), [19, 9]);
        assert_eq!(bytes(&Request::Answer { grant: false }), [20, 0]);
        let ps = Request::PeerState {
            leading: false,
            lineage: lineage(),
        };
        let b = bytes(&ps);
        assert_eq!(b[..2], [18, 0]);
        assert!(matches!(
            decode_request(6, &b).unwrap(),
            Request::PeerState { leading: false, .. }
        ));
        let hello = Request::Hello {
            version: 6,
            export_id: "e".into(),
            node_id: "n".into(),
            purpose: Purpose::Peer,
            node: NodeId(3),
            lineage: lineage(),
        };
        let same = postcard::to_stdvec(&hello).unwrap();
        assert_eq!(encode_request(6, &hello).unwrap(), Outgoing::Same);
        // Version 6's Hello: index 0, version, export, node name, purpose
        // (Resync 0, Verify 1, Peer 2), node id, lineage.
        assert_eq!(same[..7], [0, 6, 1, b'e', 1, b'n', 2]);
        assert_eq!(
            encode_request(7, &Request::CaughtUp).unwrap(),
            Outgoing::Same
        );
        for r in [
            Request::Finish,
            Request::Commit { id: 1 },
            Request::List { checksum: true },
        ] {
            assert_eq!(encode_request(6, &r).unwrap(), Outgoing::Same);
        }
    }

    #[test]
    fn every_variant_index_is_one_byte() {
        // The translation rewrites one byte: true while there are under 128.
        let last = postcard::to_stdvec(&Request::Answer { grant: true }).unwrap();
        assert_eq!(last[0], 21);
        let last = postcard::to_stdvec(&Reply::FailuresDropped { id: 0, count: 0 }).unwrap();
        assert_eq!(
            last[0], 10,
            "replies version 6 knows end at FailureChunk (9)"
        );
    }
}
