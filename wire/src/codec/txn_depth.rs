//! How deeply a `TxnRequest`'s encoded bytes nest transactions, found without decoding them and
//! without recursion, so a hostile request cannot exhaust the stack of whoever decodes it.
//!
//! A txn's ops may be txns (`TxnRequest.success`/`failure` → `RequestOp.request_txn` → ...).
//! etcd bounds that nesting only through `--max-txn-ops` (each level's ops count against what
//! its parent left), so requests nest at most `max_txn_ops` levels; protobuf decoders that
//! recurse need a bound on the bytes they are given before they decode. This walks the wire
//! format with an explicit stack, looking inside only the fields that can hold a txn.

/// `TxnRequest` fields holding `RequestOp`s: success = 2, failure = 3.
const TXN_OPS: [u32; 2] = [2, 3];
/// The `RequestOp` field holding a `TxnRequest`: request_txn = 4.
const OP_TXN: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Txn,
    Op,
}

/// Reads a varint at `*at`; `None` if the bytes end first or it is too long.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The number of txn levels in `buf`, an encoded `TxnRequest` (1 for a txn with no nested txn),
/// counting no further than `stop_after` (the caller's limit: anything above it is refused
/// anyway). Malformed bytes end the walk early: the decoder reports them.
pub fn txn_depth(buf: &[u8], stop_after: usize) -> usize {
    // (kind, end of its bytes) for every message being walked, outermost first.
    let mut stack = vec![(Kind::Txn, buf.len())];
    let (mut levels, mut deepest) = (1, 1);
    let mut at = 0;
    while let Some(&(kind, end)) = stack.last() {
        if at >= end {
            if kind == Kind::Txn {
                levels -= 1;
            }
            stack.pop();
            continue;
        }
        let Some(tag) = varint(buf, &mut at) else { break };
        let (field, wire_type) = ((tag >> 3) as u32, tag & 7);
        let len = match wire_type {
            0 => {
                if varint(buf, &mut at).is_none() {
                    break;
                }
                continue;
            }
            1 => 8,
            5 => 4,
            2 => match varint(buf, &mut at).and_then(|l| usize::try_from(l).ok()) {
                Some(l) => l,
                None => break,
            },
            _ => break,
        };
        let Some(inner_end) = at.checked_add(len).filter(|e| *e <= end) else { break };
        let inner = match (kind, wire_type) {
            (Kind::Txn, 2) if TXN_OPS.contains(&field) => Some(Kind::Op),
            (Kind::Op, 2) if field == OP_TXN => Some(Kind::Txn),
            _ => None,
        };
        match inner {
            Some(k) => {
                stack.push((k, inner_end));
                if k == Kind::Txn {
                    levels += 1;
                    deepest = deepest.max(levels);
                    if deepest > stop_after {
                        return deepest;
                    }
                }
            }
            None => at = inner_end,
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{request_op::Request, PutRequest, RequestOp, TxnRequest};
    use prost::Message;

    fn nested(levels: usize) -> TxnRequest {
        let mut t = TxnRequest {
            success: vec![RequestOp { request: Some(Request::RequestPut(PutRequest::default())) }],
            ..Default::default()
        };
        for _ in 1..levels {
            t = TxnRequest { failure: vec![RequestOp { request: Some(Request::RequestTxn(t)) }], ..Default::default() };
        }
        t
    }

    #[test]
    fn txn_depth_counts_nested_levels() {
        for levels in [1, 2, 10, 300] {
            assert_eq!(txn_depth(&nested(levels).encode_to_vec(), usize::MAX), levels);
        }
        assert_eq!(txn_depth(&nested(300).encode_to_vec(), 64), 65, "the walk stops past the limit");
    }

    proptest::proptest! {
        #[test]
        fn txn_depth_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = txn_depth(&bytes, 1000);
        }
    }
}
