//! Byte-level encodings: the frame that wraps every record on disk.
pub mod frame;
