//! Messages the server sends as bytes encoded once: the server side's
//! `GetNodesResponse` ([`EncodedReply`]) and `WatchEvent`
//! ([`SharedEvent`]); `build.rs` maps the messages to these types for the
//! server only, and clients keep the generated ones.
//!
//! A cached answer ([`super::read_cache`]) is the encoded message itself,
//! written to the wire as it is: no conversion, no allocation, no
//! encoding per call. A change is encoded once for every watch stream
//! that gets it; each stream adds only its own sequence number.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost::encoding::{DecodeContext, WireType};

/// `Message::merge_field` of a type the server only sends: it never
/// decodes one, so a field is skipped.
macro_rules! never_decoded {
    () => {
        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    };
}

/// A message's fields, already encoded (without the length prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedReply(pub Bytes);

impl EncodedReply {
    /// `message`, encoded.
    pub fn of(message: &impl Message) -> Self {
        Self(message.encode_to_vec().into())
    }
}

impl Message for EncodedReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    never_decoded!();

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// A `WatchEvent` encoded without its `sequence` (shared by every stream
/// that sends it), and the stream's `sequence`, written after it: protobuf
/// fields may come in any order, so the two decode as one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedEvent {
    /// Every field but `sequence`, encoded.
    pub body: Bytes,
    /// The event's position in its stream.
    pub sequence: u64,
}

/// `WatchEvent.sequence`'s field number.
const SEQUENCE_TAG: u32 = 6;

impl Message for SharedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.body);
        if self.sequence != 0 {
            prost::encoding::uint64::encode(SEQUENCE_TAG, &self.sequence, buf);
        }
    }

    never_decoded!();

    fn encoded_len(&self) -> usize {
        let sequence = if self.sequence == 0 {
            0
        } else {
            prost::encoding::uint64::encoded_len(SEQUENCE_TAG, &self.sequence)
        };
        self.body.len() + sequence
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1 as pb;

    #[test]
    fn decodes_as_the_message_it_was_made_of() {
        let message = pb::GetNodesResponse {
            nodes: vec![pb::Node {
                node_name: "n1".into(),
                port: 80,
                ..Default::default()
            }],
        };
        let wire = EncodedReply::of(&message).encode_to_vec();
        assert_eq!(pb::GetNodesResponse::decode(&wire[..]).unwrap(), message);
    }

    #[test]
    fn a_shared_event_decodes_with_its_streams_sequence() {
        let event = pb::WatchEvent {
            service_group: "g".into(),
            revision: 7,
            ..Default::default()
        };
        let body: Bytes = event.encode_to_vec().into();
        for sequence in [1, 300, u64::MAX] {
            let shared = SharedEvent {
                body: body.clone(),
                sequence,
            };
            let wire = shared.encode_to_vec();
            assert_eq!(wire.len(), shared.encoded_len());
            let decoded = pb::WatchEvent::decode(&wire[..]).unwrap();
            assert_eq!(
                decoded,
                pb::WatchEvent {
                    sequence,
                    ..event.clone()
                }
            );
        }
    }
}
