//! rkyv records stored inside frames. One file per record family:
//! - [`wal`]: what a WAL segment holds (Raft log entries and hard state);
//! - [`batch`]: the payload of a Raft entry — the writes a shard made durable in one batch;
//! - [`snapshot`]: what a shard snapshot file holds;
//! - [`backup`]: what Maintenance.Snapshot streams (a whole node's keys at one revision);
//! - [`auth`]: the auth store's users and roles, and changes to them.
//!
//! Records from disk or the network are read with validated `rkyv::access` (bytecheck) after the
//! frame's crc has been checked; never with unchecked access.

pub mod auth;
pub mod backup;
pub mod batch;
pub mod snapshot;
pub mod wal;

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// Why a payload is not a valid archive of the expected record type.
#[derive(Debug, thiserror::Error)]
#[error("invalid record archive: {0}")]
pub struct RecordError(pub(crate) String);

impl From<rancor::Error> for RecordError {
    fn from(e: rancor::Error) -> Self {
        RecordError(e.to_string())
    }
}

/// Gives a record type its frame-payload codec: `to_bytes` (an rkyv archive) and
/// `from_bytes` (validated `rkyv::access`, then deserialize), the same for every record family.
macro_rules! record_codec {
    ($ty:ident, $archived:ident) => {
        $crate::record::record_codec!($ty, $archived, |r: $ty| Ok(r));
    };
    // `$check` runs on the decoded record (e.g. a format check).
    ($ty:ident, $archived:ident, $check:expr) => {
        impl $ty {
            /// Serializes into an rkyv archive for a frame payload.
            pub fn to_bytes(&self) -> Vec<u8> {
                match rkyv::to_bytes::<rkyv::rancor::Error>(self) {
                    Ok(v) => v.into_vec(),
                    Err(e) => {
                        panic!(concat!("invariant: serializing a ", stringify!($ty), " into memory cannot fail: {}"), e)
                    }
                }
            }

            /// Validates a frame payload and reads it in place, without copying (the archive
            /// must start at a 16-byte aligned address, as frame payloads read into an aligned
            /// buffer do; an unaligned one is refused).
            pub fn access(bytes: &[u8]) -> Result<&$archived, $crate::record::RecordError> {
                Ok(rkyv::access::<$archived, rkyv::rancor::Error>(bytes)?)
            }

            /// Validates a frame payload and deserializes it.
            pub fn from_bytes(bytes: &[u8]) -> Result<$ty, $crate::record::RecordError> {
                let aligned = $crate::record::Aligned::new(bytes);
                let archived = rkyv::access::<$archived, rkyv::rancor::Error>(aligned.bytes())?;
                let check: fn($ty) -> Result<$ty, $crate::record::RecordError> = $check;
                check(rkyv::deserialize::<$ty, rkyv::rancor::Error>(archived)?)
            }
        }
    };
}
pub(crate) use record_codec;

/// Bytes copied into a 16-byte aligned buffer when the source is not aligned, so that
/// `rkyv::access` may read them in place.
pub enum Aligned<'a> {
    Borrowed(&'a [u8]),
    Owned(AlignedVec<16>),
}

impl<'a> Aligned<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        if (bytes.as_ptr() as usize).is_multiple_of(16) {
            Aligned::Borrowed(bytes)
        } else {
            let mut v = AlignedVec::<16>::with_capacity(bytes.len());
            v.extend_from_slice(bytes);
            Aligned::Owned(v)
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Aligned::Borrowed(b) => b,
            Aligned::Owned(v) => v.as_slice(),
        }
    }
}
