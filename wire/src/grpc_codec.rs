//! The gRPC codec of every etcd service: prost's, with one check before decoding — a
//! `TxnRequest` may nest txns at most [`MAX_TXN_DEPTH`] levels deep.
//!
//! prost decodes recursively; with its default recursion limit (100 messages) a txn nested
//! about 50 levels deep failed to decode (`Internal`), where etcd accepts up to
//! `--max-txn-ops` levels and refuses deeper ones as `too many operations`. corekv builds
//! prost without that limit and bounds the depth here instead, from the bytes, before anything
//! recurses (`codec::txn_depth`). Requests of other types do not nest.

use std::any::TypeId;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder};

use crate::codec::txn_depth::txn_depth;
use crate::pb::etcdserverpb::TxnRequest;
use crate::rpctypes;

/// The deepest txn nesting any request may have. etcd's own bound is `--max-txn-ops` (128 by
/// default); this one keeps decoding's recursion within the stack even when that flag is
/// raised.
pub const MAX_TXN_DEPTH: usize = 256;

/// prost's codec with the txn depth check (see the module doc).
#[derive(Debug, Clone)]
pub struct EtcdCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for EtcdCodec<T, U> {
    fn default() -> Self {
        EtcdCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for EtcdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = DepthChecked<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        DepthChecked(self.0.decoder())
    }
}

/// prost's decoder, after the depth check for `TxnRequest`s.
#[derive(Debug)]
pub struct DepthChecked<U>(ProstDecoder<U>);

impl<U: Message + Default + 'static> Decoder for DepthChecked<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<TxnRequest>() {
            let bytes = bytes::Buf::chunk(buf);
            if txn_depth(bytes, MAX_TXN_DEPTH) > MAX_TXN_DEPTH {
                return Err(Status::invalid_argument(rpctypes::TOO_MANY_OPS.message));
            }
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
