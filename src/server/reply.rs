//! Answers the server sends as bytes encoded once: the server side's
//! `GetNodesResponse` (`build.rs` maps the message to [`EncodedReply`] for
//! the server only; clients keep the generated type).
//!
//! A cached answer ([`super::read_cache`]) is the encoded message itself,
//! written to the wire as it is: no conversion, no allocation, no
//! encoding per call.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost::encoding::{DecodeContext, WireType};

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

    /// A server never decodes its own answers; a field is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
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
}
