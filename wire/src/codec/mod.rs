//! Byte-level encodings: the frame that wraps every record on disk, and the peer transport's.
pub mod frame;
pub mod peer;
