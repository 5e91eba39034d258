//! Checks client requests as etcd does (`v3rpc/key.go`) and converts them into the shards'
//! request types. Nothing reaches a shard before passing here.

use bytes::Bytes;
use prost::Message;
use shards::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteOp, KeyRange, Op, PutOp, RangeQuery, SortOrder, SortTarget, TxnSpec,
};
use wire::pb::etcdserverpb as pb;

use crate::error::ApiError;

/// Request limits from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

fn range_of(key: Bytes, end: Bytes) -> Result<KeyRange, ApiError> {
    if key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(KeyRange { key, end })
}

pub fn range(r: pb::RangeRequest) -> Result<RangeQuery, ApiError> {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    let range = range_of(r.key, r.range_end)?;
    let sort_order = match O::try_from(r.sort_order).map_err(|_| ApiError::InvalidSortOption)? {
        O::None => SortOrder::None,
        O::Ascend => SortOrder::Ascend,
        O::Descend => SortOrder::Descend,
    };
    let sort_target = match T::try_from(r.sort_target).map_err(|_| ApiError::InvalidSortOption)? {
        T::Key => SortTarget::Key,
        T::Version => SortTarget::Version,
        T::Create => SortTarget::Create,
        T::Mod => SortTarget::Mod,
        T::Value => SortTarget::Value,
    };
    Ok(RangeQuery {
        range,
        revision: r.revision,
        limit: r.limit,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put(r: pb::PutRequest) -> Result<PutOp, ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(PutOp {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

pub fn delete(r: pb::DeleteRangeRequest) -> Result<DeleteOp, ApiError> {
    Ok(DeleteOp { range: range_of(r.key, r.range_end)?, prev_kv: r.prev_kv, lease: 0 })
}

fn compare(c: pb::Compare) -> Result<Compare, ApiError> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => CompareResult::Equal,
        Ok(R::Greater) => CompareResult::Greater,
        Ok(R::Less) => CompareResult::Less,
        Ok(R::NotEqual) => CompareResult::NotEqual,
        Err(_) => CompareResult::Unrecognized,
    };
    // As etcd's getters: the operand of the declared target, zero when another variant is set.
    let u = c.target_union;
    let target = match T::try_from(c.target) {
        Ok(T::Create) => CompareTarget::Create(if let Some(U::CreateRevision(v)) = u { v } else { 0 }),
        Ok(T::Mod) => CompareTarget::Mod(if let Some(U::ModRevision(v)) = u { v } else { 0 }),
        Ok(T::Value) => CompareTarget::Value(if let Some(U::Value(v)) = u { v } else { Bytes::new() }),
        Ok(T::Lease) => CompareTarget::Lease(if let Some(U::Lease(v)) = u { v } else { 0 }),
        Ok(T::Version) => CompareTarget::Version(if let Some(U::Version(v)) = u { v } else { 0 }),
        Err(_) => CompareTarget::Unrecognized,
    };
    Ok(Compare { range: range_of(c.key, c.range_end)?, result, target })
}

/// etcd's `checkTxnRequest`: `max_ops` bounds the compares and each branch; a nested txn gets
/// what its parent left (`max_ops` minus the parent's largest list).
fn txn_spec(t: pb::TxnRequest, max_ops: usize) -> Result<TxnSpec, ApiError> {
    let most = t.compare.len().max(t.success.len()).max(t.failure.len());
    if most > max_ops {
        return Err(ApiError::TooManyOps);
    }
    let compares = t.compare.into_iter().map(compare).collect::<Result<_, _>>()?;
    let nested = max_ops - most;
    let ops = |v: Vec<pb::RequestOp>| v.into_iter().map(|o| request_op(o, nested)).collect::<Result<Vec<_>, _>>();
    let success = ops(t.success)?;
    let failure = ops(t.failure)?;
    check_intervals(&success)?;
    check_intervals(&failure)?;
    Ok(TxnSpec { compares, success, failure })
}

fn request_op(o: pb::RequestOp, max_ops: usize) -> Result<Op, ApiError> {
    use pb::request_op::Request;
    match o.request {
        Some(Request::RequestRange(r)) => Ok(Op::Range(range(r)?)),
        Some(Request::RequestPut(p)) => Ok(Op::Put(put(p)?)),
        Some(Request::RequestDeleteRange(d)) => Ok(Op::Delete(delete(d)?)),
        Some(Request::RequestTxn(t)) => Ok(Op::Txn(txn_spec(t, max_ops)?)),
        // etcd's checkRequestOp answers an empty op with "key not found".
        None => Err(ApiError::EmptyOp),
    }
}

/// Validates a whole Txn request. As in etcd, the size limit applies only to a txn that may
/// write (a read-only txn is never proposed), and after the content checks.
pub fn txn(t: pb::TxnRequest, limits: Limits) -> Result<TxnSpec, ApiError> {
    let len = t.encoded_len();
    let spec = txn_spec(t, limits.max_txn_ops)?;
    // etcd's isTxnReadonly: any top-level op other than a Range (a nested txn too) is a write.
    let writes = spec.success.iter().chain(&spec.failure).any(|op| !matches!(op, Op::Range(_)));
    if writes && len > limits.max_request_bytes {
        return Err(ApiError::RequestTooLarge);
    }
    Ok(spec)
}

/// The encoded size of a request, as etcd measures proposals against `--max-request-bytes`.
pub fn encoded_len(m: &impl Message) -> usize {
    m.encoded_len()
}

/// Checks a write request's encoded size (taken before conversion) against the limit.
pub fn size(len: usize, limits: Limits) -> Result<(), ApiError> {
    if len > limits.max_request_bytes {
        return Err(ApiError::RequestTooLarge);
    }
    Ok(())
}

/// A delete's key interval (an affine point for a single key). As in etcd's checkIntervals, a
/// `range_end` of "\0" is taken literally (an interval ending at "\0", empty for any real key):
/// only the empty string means "no upper bound" there, and a range_end is never empty here.
fn interval(r: &KeyRange) -> (&[u8], Option<&[u8]>) {
    if r.is_single() {
        (&r.key, None)
    } else {
        (&r.key, Some(&r.end))
    }
}

fn dels_hit(dels: &[(Vec<u8>, Option<Vec<u8>>)], k: &[u8]) -> bool {
    dels.iter().any(|(start, end)| match end {
        None => start.as_slice() == k,
        Some(e) => k >= start.as_slice() && k < e.as_slice(),
    })
}

type Puts = std::collections::HashSet<Vec<u8>>;
type Dels = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// etcd's `checkIntervals`: no key may be put twice, or put and deleted, in one branch path;
/// puts in the `then` and `else` of one nested txn may coincide (only one runs).
fn check_intervals(ops: &[Op]) -> Result<(Puts, Dels), ApiError> {
    let mut dels: Dels = Vec::new();
    for op in ops {
        if let Op::Delete(d) = op {
            let (s, e) = interval(&d.range);
            dels.push((s.to_vec(), e.map(<[u8]>::to_vec)));
        }
    }
    let mut puts = Puts::new();
    for op in ops {
        let Op::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels_hit(&dels, k) {
                return Err(ApiError::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels_hit(&dels, k) {
                return Err(ApiError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Op::Put(p) = op else { continue };
        if puts.contains(p.key.as_ref()) || dels_hit(&dels, &p.key) {
            return Err(ApiError::DuplicateKey);
        }
        puts.insert(p.key.to_vec());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_request_bytes: 1 << 20, max_txn_ops: 128 };

    fn put_op(k: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: Bytes::from(k.to_string()),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: Bytes::from(k.to_string()),
                range_end: Bytes::from(end.to_string()),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn validate_txn_duplicate_put_is_rejected() {
        let t = pb::TxnRequest { success: vec![put_op("a"), put_op("a")], ..Default::default() };
        assert_eq!(txn(t, LIMITS), Err(ApiError::DuplicateKey));
    }

    #[test]
    fn validate_txn_put_inside_deleted_range_is_rejected() {
        let t = pb::TxnRequest { success: vec![del_op("a", "c"), put_op("b")], ..Default::default() };
        assert_eq!(txn(t, LIMITS), Err(ApiError::DuplicateKey));
    }

    #[test]
    fn validate_txn_same_put_in_then_and_else_is_allowed() {
        let nested = pb::TxnRequest { success: vec![put_op("x")], failure: vec![put_op("x")], ..Default::default() };
        let t = pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestTxn(nested)) }],
            ..Default::default()
        };
        assert!(txn(t, LIMITS).is_ok());
    }

    #[test]
    fn validate_txn_empty_op_is_key_not_found_like_etcd() {
        let t = pb::TxnRequest { success: vec![pb::RequestOp { request: None }], ..Default::default() };
        assert_eq!(txn(t, LIMITS), Err(ApiError::EmptyOp));
    }

    #[test]
    fn validate_txn_nested_gets_what_parent_left_of_max_ops() {
        let nested =
            pb::TxnRequest { success: (0..2).map(|i| put_op(&format!("n{i}"))).collect(), ..Default::default() };
        let limits = Limits { max_request_bytes: 1 << 20, max_txn_ops: 3 };
        let ops = |n: usize| -> Vec<pb::RequestOp> {
            let mut v: Vec<pb::RequestOp> = (0..n).map(|i| put_op(&format!("k{i}"))).collect();
            v.push(pb::RequestOp { request: Some(pb::request_op::Request::RequestTxn(nested.clone())) });
            v
        };
        // Parent has 2 ops: the nested txn may use 1, and has 2.
        assert_eq!(txn(pb::TxnRequest { success: ops(1), ..Default::default() }, limits), Err(ApiError::TooManyOps));
        // Parent has 1 op (the nested txn itself): 2 are left.
        assert!(txn(pb::TxnRequest { success: ops(0), ..Default::default() }, limits).is_ok());
    }

    #[test]
    fn validate_txn_delete_to_nul_end_does_not_collide_with_puts_like_etcd() {
        let t = pb::TxnRequest { success: vec![del_op("a", "\0"), put_op("b")], ..Default::default() };
        assert!(txn(t, LIMITS).is_ok());
    }

    #[test]
    fn validate_compare_operand_comes_from_the_declared_target() {
        let c = pb::Compare {
            key: Bytes::from("k"),
            target: pb::compare::CompareTarget::Create as i32,
            target_union: Some(pb::compare::TargetUnion::Version(5)),
            ..Default::default()
        };
        assert_eq!(compare(c).expect("valid").target, CompareTarget::Create(0));
    }

    #[test]
    fn validate_compare_with_unknown_enums_decides_as_etcd() {
        use shards::mvcc::txn::compare_kv;
        let c = |result: i32, target: i32| {
            compare(pb::Compare { key: Bytes::from("k"), result, target, ..Default::default() }).expect("valid")
        };
        // etcd: an unknown result always holds; an unknown target compares equal.
        assert!(compare_kv(&c(99, pb::compare::CompareTarget::Version as i32), None));
        assert!(compare_kv(&c(pb::compare::CompareResult::Equal as i32, 99), None));
        assert!(!compare_kv(&c(pb::compare::CompareResult::NotEqual as i32, 99), None));
    }

    #[test]
    fn validate_txn_too_many_ops() {
        let t = pb::TxnRequest { success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(), ..Default::default() };
        assert_eq!(txn(t, LIMITS), Err(ApiError::TooManyOps));
    }

    #[test]
    fn validate_put_checks_in_etcd_order() {
        assert_eq!(put(pb::PutRequest::default()), Err(ApiError::EmptyKey));
        let p =
            pb::PutRequest { key: Bytes::from("k"), value: Bytes::from("v"), ignore_value: true, ..Default::default() };
        assert_eq!(put(p), Err(ApiError::ValueProvided));
        let p = pb::PutRequest { key: Bytes::from("k"), lease: 5, ignore_lease: true, ..Default::default() };
        assert_eq!(put(p), Err(ApiError::LeaseProvided));
    }
}
