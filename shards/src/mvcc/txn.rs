//! etcd's transaction semantics on one shard's store: compares, branch choice, put checks and
//! execution of ops against the latest state.
//!
//! As in etcd (`txn.go`), every compare of the whole txn tree, nested txns included, is decided
//! on the state *before* the txn runs; put checks (`ignore_value`/`ignore_lease` on a missing
//! key, unknown lease) run on that state too, and fail the whole txn before anything is
//! written. Ops then run in order; a Range after a Put in the same txn sees the Put.

use bytes::Bytes;
use wire::record::batch::Mutation;

use super::store::{Store, Version, LATEST};
use super::types::*;
use crate::error::ShardError;

/// Most bytes of keys and values (and their records' overhead) one write may log on one shard:
/// with the other writes of its batch, a Raft entry stays far below the peer frame limit
/// (checked where the batch limit is defined, `writer/mod.rs`).
pub const MAX_WRITE_BYTES: usize = 128 << 20;
/// What a logged mutation takes besides its key and value bytes (its archived record).
const MUTATION_OVERHEAD: usize = 32;

/// Hands out the revision of a write the first time it changes something, so writes that change
/// nothing (a delete of no keys) take no revision, as in etcd.
pub trait RevisionSource {
    fn revision(&mut self) -> i64;
}

/// A compare's outcome on one shard's keys: `None` if no key of its range exists here.
pub type ComparePart = Option<bool>;

fn cmp_i64(a: i64, b: i64) -> std::cmp::Ordering {
    a.cmp(&b)
}

/// Whether `kv` (or the zero key-value when absent) satisfies `c`.
pub fn compare_kv(c: &Compare, v: Option<&Version>) -> bool {
    let ord = match (&c.target, v) {
        (CompareTarget::Version(x), v) => cmp_i64(v.map_or(0, |v| v.version), *x),
        (CompareTarget::Create(x), v) => cmp_i64(v.map_or(0, |v| v.create_revision), *x),
        (CompareTarget::Mod(x), v) => cmp_i64(v.map_or(0, |v| v.mod_revision), *x),
        (CompareTarget::Lease(x), v) => cmp_i64(v.map_or(0, |v| v.lease), *x),
        (CompareTarget::Value(x), Some(v)) => v.value.as_deref().unwrap_or_default().cmp(x.as_ref()),
        // etcd: comparing the value of a missing key always fails.
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Unrecognized, _) => std::cmp::Ordering::Equal,
    };
    use std::cmp::Ordering::*;
    match c.result {
        CompareResult::Equal => ord == Equal,
        CompareResult::Greater => ord == Greater,
        CompareResult::Less => ord == Less,
        CompareResult::NotEqual => ord != Equal,
        CompareResult::Unrecognized => true,
    }
}

/// Combines the parts of one compare from every shard its range touches.
pub fn combine_compare(c: &Compare, parts: impl IntoIterator<Item = ComparePart>) -> bool {
    let mut any = false;
    for p in parts.into_iter().flatten() {
        any = true;
        if !p {
            return false;
        }
    }
    if any {
        true
    } else {
        compare_kv(c, None)
    }
}

/// The branch decisions of a txn tree, in pre-order: the top txn first, then nested txns of the
/// chosen branch in op order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnPath(pub Vec<bool>);

/// Visits every compare of `t` and its nested txns on the branches the path will take, calling
/// `decide` for each compare list; returns the decisions in pre-order.
pub fn decide_path(t: &TxnSpec, decide: &mut impl FnMut(&[Compare]) -> bool) -> TxnPath {
    fn walk(t: &TxnSpec, decide: &mut impl FnMut(&[Compare]) -> bool, out: &mut Vec<bool>) {
        let ok = decide(&t.compares);
        out.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Op::Txn(n) = op {
                walk(n, decide, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(t, decide, &mut out);
    TxnPath(out)
}

/// Calls `f` on every op the path executes (nested txns' chosen ops included), in order.
pub fn for_each_path_op<'a>(t: &'a TxnSpec, path: &TxnPath, f: &mut impl FnMut(&'a Op)) {
    fn walk<'a>(t: &'a TxnSpec, path: &[bool], i: &mut usize, f: &mut impl FnMut(&'a Op)) {
        let ok = path.get(*i).copied().unwrap_or(false);
        *i += 1;
        for op in if ok { &t.success } else { &t.failure } {
            f(op);
            if let Op::Txn(n) = op {
                walk(n, path, i, f);
            }
        }
    }
    let mut i = 0;
    walk(t, &path.0, &mut i, f);
}

impl Store {
    /// This shard's part of a compare at revision `rev`.
    pub fn compare_part(&self, c: &Compare, rev: i64) -> ComparePart {
        let mut any = false;
        let mut all = true;
        self.scan_at(&c.range, rev, |_, v| {
            any = true;
            all = compare_kv(c, Some(v));
            all
        });
        any.then_some(all)
    }

    /// Checks a put against the latest state: the key must exist for `ignore_value` /
    /// `ignore_lease`, and a lease must be known (`lease_exists`).
    pub fn check_put(&self, p: &PutOp, lease_exists: &impl Fn(i64) -> bool) -> Result<(), ShardError> {
        self.check_puts(std::slice::from_ref(p), lease_exists)
    }

    /// Checks the puts one write makes on this shard (see [`Self::check_put`]), and that the
    /// bytes they log stay under [`MAX_WRITE_BYTES`]: an `ignore_value` put logs the stored value,
    /// which the request size limit does not bound.
    pub fn check_puts(&self, puts: &[PutOp], lease_exists: &impl Fn(i64) -> bool) -> Result<(), ShardError> {
        let mut bytes = 0usize;
        for p in puts {
            self.check_one_put(p, lease_exists)?;
            // Only an ignore_value put logs the stored value; look it up only then.
            let value = if p.ignore_value {
                self.get_at(&p.key, LATEST).and_then(|(_, v)| v.value.as_ref()).map_or(0, |b| b.len())
            } else {
                p.value.len()
            };
            bytes += p.key.len() + value + MUTATION_OVERHEAD;
            if bytes > MAX_WRITE_BYTES {
                return Err(ShardError::TooLarge);
            }
        }
        Ok(())
    }

    fn check_one_put(&self, p: &PutOp, lease_exists: &impl Fn(i64) -> bool) -> Result<(), ShardError> {
        if (p.ignore_value || p.ignore_lease) && self.get_at(&p.key, LATEST).is_none() {
            return Err(ShardError::KeyNotFound);
        }
        if !p.ignore_lease && p.lease != 0 && !lease_exists(p.lease) {
            return Err(ShardError::LeaseNotFound { lease: p.lease });
        }
        Ok(())
    }

    /// Executes a put at the latest state; logs its mutation.
    pub fn exec_put(&mut self, p: &PutOp, rev: &mut dyn RevisionSource, log: &mut Vec<Mutation>) -> OpResult {
        let cur = self.get_at(&p.key, LATEST).map(|(_, v)| (v.value.clone(), v.lease));
        let value = match (&cur, p.ignore_value) {
            (Some((Some(v), _)), true) => v.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&cur, p.ignore_lease) {
            (Some((_, l)), true) => *l,
            _ => p.lease,
        };
        let r = rev.revision();
        log.push(Mutation::Put { key: p.key.to_vec(), value: value.to_vec(), lease });
        let prev = self.put(&p.key, value, lease, r);
        OpResult::Put { prev_kv: if p.prev_kv { prev } else { None } }
    }

    /// Executes a delete at the latest state; takes a revision only if a key is deleted.
    pub fn exec_delete(&mut self, d: &DeleteOp, rev: &mut dyn RevisionSource, log: &mut Vec<Mutation>) -> OpResult {
        if !self.deletes_any(&d.range, d.lease) {
            return OpResult::Delete { deleted: 0, prev_kvs: Vec::new() };
        }
        let r = rev.revision();
        let deleted = self.delete(&d.range, d.lease, r);
        // A range is logged as itself, not as its keys: the record stays small however many
        // keys it deleted (applied in log order, it deletes the same ones).
        log.push(if d.range.is_single() && d.lease == 0 {
            Mutation::Delete { key: d.range.key.to_vec() }
        } else {
            Mutation::DeleteRange { key: d.range.key.to_vec(), end: d.range.end.to_vec(), lease: d.lease }
        });
        OpResult::Delete { deleted: deleted.len() as i64, prev_kvs: if d.prev_kv { deleted } else { Vec::new() } }
    }

    /// A Range inside a write txn: revision 0 reads the latest state, including this txn's own
    /// writes; an explicit revision reads history. `current` is the newest revision that exists
    /// cluster-wide (other shards may be ahead of this one).
    pub fn exec_range(&self, q: &RangeQuery, current: i64) -> Result<OpResult, ShardError> {
        let rev = if q.revision > 0 {
            self.check_readable(q.revision, current.max(self.current_revision()))?;
            q.revision
        } else {
            LATEST
        };
        Ok(OpResult::Range(self.range_at(q, rev)))
    }

    /// Runs a whole txn whose keys all live on this shard; `current` as for [`Self::exec_range`].
    pub fn exec_txn(
        &mut self,
        t: &TxnSpec,
        current: i64,
        lease_exists: &impl Fn(i64) -> bool,
        rev: &mut dyn RevisionSource,
        log: &mut Vec<Mutation>,
    ) -> Result<TxnResult, ShardError> {
        let path = decide_path(t, &mut |cs| cs.iter().all(|c| combine_compare(c, [self.compare_part(c, LATEST)])));
        let mut check = Ok(());
        let mut puts = Vec::new();
        for_each_path_op(t, &path, &mut |op| match op {
            Op::Put(p) => puts.push(p.clone()),
            Op::Range(q) if q.revision > 0 && check.is_ok() => {
                check = self.check_readable(q.revision, current.max(self.current_revision()));
            }
            _ => {}
        });
        self.check_puts(&puts, lease_exists)?;
        check?;
        let mut i = 0;
        self.exec_branch(t, &path, &mut i, current, rev, log)
    }

    fn exec_branch(
        &mut self,
        t: &TxnSpec,
        path: &TxnPath,
        i: &mut usize,
        current: i64,
        rev: &mut dyn RevisionSource,
        log: &mut Vec<Mutation>,
    ) -> Result<TxnResult, ShardError> {
        let succeeded = path.0.get(*i).copied().unwrap_or(false);
        *i += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                Op::Range(q) => self.exec_range(q, current)?,
                Op::Put(p) => self.exec_put(p, rev, log),
                Op::Delete(d) => self.exec_delete(d, rev, log),
                Op::Txn(n) => OpResult::Txn(self.exec_branch(n, path, i, current, rev, log)?),
            });
        }
        Ok(TxnResult { succeeded, results })
    }
}

/// A key as `Bytes`, for tests and callers building ops.
pub fn key(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(i64, Option<i64>);
    impl RevisionSource for Counter {
        fn revision(&mut self) -> i64 {
            *self.1.get_or_insert_with(|| {
                self.0 += 1;
                self.0
            })
        }
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put(PutOp {
            key: key(k),
            value: key(v),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })
    }

    fn cmp_version(k: &str, r: CompareResult, x: i64) -> Compare {
        Compare { range: KeyRange::single(key(k)), result: r, target: CompareTarget::Version(x) }
    }

    fn no_leases(_: i64) -> bool {
        false
    }

    #[test]
    fn txn_compare_missing_key_uses_zero_values() {
        let mut s = Store::new();
        let t = TxnSpec {
            compares: vec![cmp_version("a", CompareResult::Equal, 0)],
            success: vec![put("a", "1")],
            failure: vec![],
        };
        let mut log = Vec::new();
        let r = s.exec_txn(&t, 0, &no_leases, &mut Counter(1, None), &mut log).expect("txn");
        assert!(r.succeeded);
        assert_eq!(log.len(), 1);
        let value_cmp = Compare {
            range: KeyRange::single(key("zz")),
            result: CompareResult::NotEqual,
            target: CompareTarget::Value(key("x")),
        };
        assert!(!combine_compare(&value_cmp, [s.compare_part(&value_cmp, LATEST)]));
    }

    #[test]
    fn txn_nested_compares_see_state_before_txn() {
        let mut s = Store::new();
        let inner = TxnSpec {
            compares: vec![cmp_version("a", CompareResult::Equal, 0)],
            success: vec![put("b", "inner")],
            failure: vec![],
        };
        let t = TxnSpec { compares: vec![], success: vec![put("a", "1"), Op::Txn(inner)], failure: vec![] };
        let mut log = Vec::new();
        let r = s.exec_txn(&t, 0, &no_leases, &mut Counter(1, None), &mut log).expect("txn");
        // The inner compare ran before `a` was put, so it succeeded.
        assert!(matches!(&r.results[1], OpResult::Txn(TxnResult { succeeded: true, .. })));
        assert!(s.get_at(b"b", LATEST).is_some());
        // Both puts share one revision.
        assert_eq!(
            s.get_at(b"a", LATEST).map(|(_, v)| v.mod_revision),
            s.get_at(b"b", LATEST).map(|(_, v)| v.mod_revision)
        );
    }

    #[test]
    fn txn_ignore_value_on_missing_key_fails_whole_txn() {
        let mut s = Store::new();
        let bad = Op::Put(PutOp {
            key: key("x"),
            value: Bytes::new(),
            lease: 0,
            prev_kv: false,
            ignore_value: true,
            ignore_lease: false,
        });
        let t = TxnSpec { compares: vec![], success: vec![put("a", "1"), bad], failure: vec![] };
        let mut log = Vec::new();
        assert_eq!(s.exec_txn(&t, 0, &no_leases, &mut Counter(1, None), &mut log), Err(ShardError::KeyNotFound));
        assert!(log.is_empty());
        assert!(s.get_at(b"a", LATEST).is_none());
    }

    #[test]
    fn txn_delete_of_nothing_takes_no_revision() {
        let mut s = Store::new();
        let t = TxnSpec {
            compares: vec![],
            success: vec![Op::Delete(DeleteOp { range: KeyRange::single(key("none")), prev_kv: false, lease: 0 })],
            failure: vec![],
        };
        let mut c = Counter(1, None);
        let mut log = Vec::new();
        s.exec_txn(&t, 0, &no_leases, &mut c, &mut log).expect("txn");
        assert_eq!(c.1, None);
    }

    fn delete(k: &str, end: &str, lease: i64) -> Op {
        let range = KeyRange { key: key(k), end: Bytes::copy_from_slice(end.as_bytes()) };
        Op::Delete(DeleteOp { range, prev_kv: false, lease })
    }

    #[test]
    fn a_range_delete_logs_one_record_however_many_keys_it_deletes() {
        let mut s = Store::new();
        let mut log = Vec::new();
        let puts = (0..1000).map(|i| put(&format!("k{i:04}"), "v")).collect();
        s.exec_txn(
            &TxnSpec { compares: vec![], success: puts, failure: vec![] },
            0,
            &no_leases,
            &mut Counter(1, None),
            &mut log,
        )
        .expect("txn");
        log.clear();
        let t = TxnSpec { compares: vec![], success: vec![delete("k", "l", 0)], failure: vec![] };
        let r = s.exec_txn(&t, 0, &no_leases, &mut Counter(2, None), &mut log).expect("txn");
        assert!(matches!(&r.results[0], OpResult::Delete { deleted: 1000, .. }));
        assert_eq!(log, vec![Mutation::DeleteRange { key: b"k".to_vec(), end: b"l".to_vec(), lease: 0 }]);
        // A single key stays a single-key record.
        log.clear();
        s.exec_txn(
            &TxnSpec { compares: vec![], success: vec![put("a", "1")], failure: vec![] },
            0,
            &no_leases,
            &mut Counter(3, None),
            &mut log,
        )
        .expect("txn");
        log.clear();
        s.exec_txn(
            &TxnSpec { compares: vec![], success: vec![delete("a", "", 0)], failure: vec![] },
            0,
            &no_leases,
            &mut Counter(4, None),
            &mut log,
        )
        .expect("txn");
        assert_eq!(log, vec![Mutation::Delete { key: b"a".to_vec() }]);
    }

    #[test]
    fn a_lease_scoped_delete_leaves_the_keys_of_other_leases() {
        let mut s = Store::new();
        s.put(&key("a"), key("1"), 7, 2);
        s.put(&key("b"), key("1"), 8, 3);
        s.put(&key("c"), key("1"), 7, 4);
        s.put(&key("c"), key("2"), 0, 5);
        let mut log = Vec::new();
        let r = s.exec_delete(
            &DeleteOp { range: KeyRange { key: key("a"), end: Bytes::from_static(&[0]) }, prev_kv: false, lease: 7 },
            &mut Counter(5, None),
            &mut log,
        );
        assert!(matches!(r, OpResult::Delete { deleted: 1, .. }));
        assert!(s.get_at(b"a", LATEST).is_none());
        assert!(s.get_at(b"b", LATEST).is_some() && s.get_at(b"c", LATEST).is_some());
        // A lease without keys (any more) deletes nothing and takes no revision.
        let mut c = Counter(6, None);
        s.exec_delete(
            &DeleteOp { range: KeyRange { key: key("a"), end: Bytes::from_static(&[0]) }, prev_kv: false, lease: 7 },
            &mut c,
            &mut log,
        );
        assert_eq!(c.1, None);
    }

    /// One write of the replay test: puts on leases 0..3 and deletes of a key, a range or a
    /// lease's keys, alone or together in one txn.
    fn replay_op(kind: u8, a: u8, b: u8, lease: i64) -> Vec<Op> {
        let k = |n: u8| format!("k{n}");
        let put_on = |n: u8| {
            Op::Put(PutOp {
                key: key(&k(n)),
                value: key("v"),
                lease,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
            })
        };
        let (lo, hi) = (a.min(b), a.max(b));
        match kind {
            0 | 1 => vec![put_on(a)],
            2 => vec![delete(&k(a), "", 0)],
            3 => vec![delete(&k(lo), &k(hi), 0)],
            4 => vec![delete("", "\0", lease)],
            // Put, then a range delete over it, at one revision.
            _ => vec![put_on(a), delete(&k(lo), &format!("{}\0", k(hi)), 0)],
        }
    }

    proptest::proptest! {
        /// Applying the logged mutations in order rebuilds exactly the store that executed them
        /// (what followers and recovery do), range and lease deletes included.
        #[test]
        fn applying_the_log_rebuilds_the_executing_store(
            writes in proptest::collection::vec((0u8..6, 0u8..10, 0u8..10, 0i64..3), 1..80)
        ) {
            let (mut leader, mut follower) = (Store::new(), Store::new());
            let all_leases = |_: i64| true;
            for (kind, a, b, lease) in writes {
                let t = TxnSpec { compares: vec![], success: replay_op(kind, a, b, lease), failure: vec![] };
                let mut rev = Counter(leader.current_revision(), None);
                let mut log = Vec::new();
                leader.exec_txn(&t, 0, &all_leases, &mut rev, &mut log).expect("txn");
                if let Some(r) = rev.1 {
                    follower.apply(log, r);
                }
                let top = leader.current_revision();
                proptest::prop_assert_eq!(follower.current_revision(), top);
                proptest::prop_assert_eq!(follower.hash_upto(top), leader.hash_upto(top));
                proptest::prop_assert_eq!(follower.size_bytes(), leader.size_bytes());
                for l in 0..3 {
                    proptest::prop_assert_eq!(follower.lease_keys(l), leader.lease_keys(l));
                }
            }
        }

        /// Rolling back the ranges a write logged restores the store as it was before it.
        #[test]
        fn rolling_back_a_write_restores_the_store(
            before in proptest::collection::vec((0u8..2, 0u8..10, 0u8..10, 0i64..3), 0..30),
            write in (0u8..6, 0u8..10, 0u8..10, 0i64..3),
        ) {
            let mut s = Store::new();
            let all_leases = |_: i64| true;
            let run = |s: &mut Store, (kind, a, b, lease): (u8, u8, u8, i64)| {
                let t = TxnSpec { compares: vec![], success: replay_op(kind, a, b, lease), failure: vec![] };
                let mut log = Vec::new();
                s.exec_txn(&t, 0, &all_leases, &mut Counter(s.current_revision(), None), &mut log).expect("txn");
                log
            };
            for w in before {
                run(&mut s, w);
            }
            let (top, hash, size) = (s.current_revision(), s.hash_upto(i64::MAX), s.size_bytes());
            let leases: Vec<_> = (0..3).map(|l| s.lease_keys(l)).collect();
            let log = run(&mut s, write);
            let ranges: Vec<KeyRange> = log.iter().map(crate::mvcc::store::written_range).collect();
            s.roll_back(&ranges, top);
            proptest::prop_assert_eq!(s.current_revision(), top);
            proptest::prop_assert_eq!(s.hash_upto(i64::MAX), hash);
            proptest::prop_assert_eq!(s.size_bytes(), size);
            for (l, keys) in leases.iter().enumerate() {
                proptest::prop_assert_eq!(&s.lease_keys(l as i64), keys);
            }
        }
    }

    #[test]
    fn txn_range_after_put_sees_put() {
        let mut s = Store::new();
        let t = TxnSpec {
            compares: vec![],
            success: vec![
                put("a", "1"),
                Op::Range(RangeQuery { range: KeyRange::single(key("a")), ..Default::default() }),
            ],
            failure: vec![],
        };
        let mut log = Vec::new();
        let r = s.exec_txn(&t, 0, &no_leases, &mut Counter(1, None), &mut log).expect("txn");
        match &r.results[1] {
            OpResult::Range(rr) => assert_eq!(rr.kvs.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }
}
