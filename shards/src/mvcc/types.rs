//! Request and result types of the MVCC layer, independent of the gRPC messages they come from
//! (the router converts etcd's protobufs into these after validating them).

use bytes::Bytes;
pub use wire::pb::mvccpb::KeyValue;

/// `end` as etcd spells it: empty = the single key `key`; `[0]` = every key ≥ `key`;
/// otherwise the half-open interval `[key, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Bytes,
    pub end: Bytes,
}

impl KeyRange {
    pub fn single(key: impl Into<Bytes>) -> Self {
        KeyRange { key: key.into(), end: Bytes::new() }
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }

    /// True when `end` means "no upper bound".
    pub fn unbounded(&self) -> bool {
        self.end.as_ref() == [0]
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        range_contains(&self.key, &self.end, k)
    }
}

/// Whether `k` is in the range `key`/`end` spelled as etcd does (see [`KeyRange`]); for holders
/// of a range that keep it in other types than `Bytes`.
pub fn range_contains(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    if end.is_empty() {
        return k == key;
    }
    k >= key && (end == [0] || k < end)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A Range request, as etcd's `RangeRequest` minus `serializable` (a router concern).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub range: KeyRange,
    /// The revision to read at; 0 = the reader's current revision.
    pub revision: i64,
    pub limit: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// A Range answer: `count` counts every key in the range at the revision, before filters and
/// limit, as etcd does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: i64,
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOp {
    pub key: Bytes,
    pub value: Bytes,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteOp {
    pub range: KeyRange,
    pub prev_kv: bool,
    /// 0: every key of the range; otherwise only the keys whose live version is attached to
    /// this lease (a lease revoke deleting its keys).
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
    /// A result value etcd does not define: such a compare always succeeds, as in etcd.
    Unrecognized,
}

/// What a compare looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Bytes),
    Lease(i64),
    /// A target value etcd does not define: etcd compares nothing and finds the two equal.
    Unrecognized,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub range: KeyRange,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnSpec {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// One operation of a write request or of a txn branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Range(RangeQuery),
    Put(PutOp),
    Delete(DeleteOp),
    Txn(TxnSpec),
}

impl Op {
    /// True when the op, or any op nested in it, may write.
    pub fn may_write(&self) -> bool {
        match self {
            Op::Range(_) => false,
            Op::Put(_) | Op::Delete(_) => true,
            Op::Txn(t) => t.success.iter().chain(&t.failure).any(Op::may_write),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub results: Vec<OpResult>,
}

/// The result of one op; write results carry the revision in the answer header, not here.
#[derive(Clone, Debug, PartialEq)]
pub enum OpResult {
    Range(RangeResult),
    Put { prev_kv: Option<KeyValue> },
    Delete { deleted: i64, prev_kvs: Vec<KeyValue> },
    Txn(TxnResult),
}
