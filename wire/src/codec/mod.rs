//! Byte-level encodings: the frame that wraps every record on disk, the peer transport's, and
//! a bounded look into encoded txn requests.
pub mod frame;
pub mod peer;
pub mod txn_depth;
