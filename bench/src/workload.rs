//! What one request of each benchmark does, and the per-client state it reuses.
//!
//! A [`ClientOps`] belongs to exactly one client task. It keeps its key buffers, random
//! generator and (for `txn-put`) last seen revision across requests, so the only per-request
//! allocations are the owned key/value copies that etcd-client's API takes and the request
//! message itself.
//!
//! Keys are fixed-width, zero-padded decimal numbers (`00012345`), so byte order equals numeric
//! order and a range `[k, k + width)` covers exactly `width` key numbers.

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::error::BenchError;

/// How many puts run at once while preloading keys for a read benchmark.
const PRELOAD_CONCURRENCY: u64 = 64;

/// Read consistency, named as in etcd's benchmark tool (`--consistency l|s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// Linearizable: the server confirms it is still leader before answering.
    L,
    /// Serializable: the server answers from its local state.
    S,
}

impl Consistency {
    fn options(self) -> GetOptions {
        match self {
            Self::L => GetOptions::new(),
            Self::S => GetOptions::new().with_serializable(),
        }
    }
}

/// The request types the generator sends; reports count completed requests per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put,
    Get,
    Range,
    Delete,
    Txn,
}

impl OpKind {
    /// Every kind, in report order; `index` is the position here.
    pub const ALL: [Self; 5] = [Self::Put, Self::Get, Self::Range, Self::Delete, Self::Txn];

    pub fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::Range => "range",
            Self::Delete => "delete",
            Self::Txn => "txn",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The result of one successful request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OpKind,
    /// A `txn-put` whose compare failed: a successful response, but no write happened.
    pub cas_failed: bool,
}

impl Outcome {
    const fn done(kind: OpKind) -> Self {
        Self { kind, cas_failed: false }
    }
}

/// Relative weights of the `mixed` benchmark's request kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixWeights {
    pub put: u32,
    pub get: u32,
    pub range: u32,
    pub delete: u32,
}

impl MixWeights {
    /// Rejects a mix that can never pick anything.
    pub fn new(put: u32, get: u32, range: u32, delete: u32) -> Result<Self, BenchError> {
        let weights = Self { put, get, range, delete };
        if weights.total() == 0 {
            return Err(BenchError::EmptyMix);
        }
        Ok(weights)
    }

    fn total(self) -> u32 {
        self.put.saturating_add(self.get).saturating_add(self.range).saturating_add(self.delete)
    }

    /// Maps `roll` in `0..total()` to a kind, each with probability weight / total.
    fn pick(self, roll: u32) -> OpKind {
        let mut roll = roll;
        for (weight, kind) in [(self.put, OpKind::Put), (self.get, OpKind::Get), (self.range, OpKind::Range)] {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        OpKind::Delete
    }
}

/// The numbered keys a benchmark draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpace {
    width: usize,
    space: u64,
    sequential: bool,
}

impl KeySpace {
    /// Keys `0..space`, each written as `width` decimal digits.
    pub fn new(width: usize, space: u64, sequential: bool) -> Result<Self, BenchError> {
        if space == 0 {
            return Err(BenchError::ZeroOption { option: "key-space" });
        }
        let needed = decimal_digits(space - 1);
        if width < needed {
            return Err(BenchError::KeySizeTooSmall { key_size: width, key_space: space, needed });
        }
        Ok(Self { width, space, sequential })
    }

    /// The key number for the request holding `ticket`: the ticket itself (wrapped) with
    /// `--seq-keys`, so the run writes keys in order like etcd's `--sequential-keys`, else
    /// uniform random.
    fn pick(self, ticket: u64, rng: &mut SmallRng) -> u64 {
        if self.sequential {
            ticket % self.space
        } else {
            rng.random_range(0..self.space)
        }
    }

    /// The largest number that still fits the key width, used to clamp range ends.
    fn max_number(self) -> u64 {
        u32::try_from(self.width).ok().and_then(|w| 10u64.checked_pow(w)).map_or(u64::MAX, |limit| limit - 1)
    }

    fn write(self, n: u64, buf: &mut Vec<u8>) {
        write_padded(n, self.width, buf);
    }
}

/// Number of decimal digits of `n` (at least 1).
fn decimal_digits(n: u64) -> usize {
    let mut digits = 1;
    let mut rest = n / 10;
    while rest > 0 {
        digits += 1;
        rest /= 10;
    }
    digits
}

/// Replaces `buf` with `n` in decimal, left-padded with `0` to `width` bytes, without
/// allocating once `buf` has grown to the key width.
fn write_padded(n: u64, width: usize, buf: &mut Vec<u8>) {
    let len = width.max(decimal_digits(n));
    buf.clear();
    buf.resize(len, b'0');
    let mut rest = n;
    for slot in buf.iter_mut().rev() {
        if rest == 0 {
            break;
        }
        // `rest % 10` is below 10, so the cast cannot truncate.
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// A benchmark: which requests the clients send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Put a `--val-size` value under a key from the key space.
    Put,
    /// Read one key, or with `prefix_keys` the prefix covering that many preloaded keys.
    Range { key: Vec<u8>, prefix_keys: Option<u64>, consistency: Consistency },
    /// Compare-and-swap: a Txn putting the client's own key only if its mod revision is still
    /// the one this client last wrote or saw.
    TxnPut,
    /// A Txn putting two keys of the client's own: its decimal key and the same behind a `q`
    /// (on corekv's default boundaries, the first on shard 0 and the second on shard 1 of two),
    /// so with two or more shards every request is a cross-shard write and clients never
    /// touch the same keys.
    TxnCross,
    /// Puts, single-key gets, short ranges and deletes over the key space.
    Mixed { weights: MixWeights, range_width: u64, consistency: Consistency },
}

impl Workload {
    /// Writes the keys a read benchmark expects to find, before measuring starts.
    pub async fn preload(&self, conns: &[Client], value: &Arc<[u8]>) -> Result<(), BenchError> {
        let Self::Range { key, prefix_keys, .. } = self else {
            return Ok(());
        };
        let Some(first) = conns.first() else {
            return Ok(());
        };
        let Some(count) = *prefix_keys else {
            let mut kv = first.kv_client();
            return kv
                .put(key.as_slice(), &value[..], None)
                .await
                .map(drop)
                .map_err(|source| BenchError::Preload { keys: 1, source });
        };
        let width = decimal_digits(count.saturating_sub(1));
        let tasks = count.min(PRELOAD_CONCURRENCY);
        let mut set = JoinSet::new();
        for (task, conn) in (0..tasks).zip(conns.iter().cycle()) {
            let mut kv = conn.kv_client();
            let prefix = key.clone();
            let value = Arc::clone(value);
            set.spawn(async move {
                let mut key = Vec::with_capacity(prefix.len() + width);
                let mut suffix = Vec::with_capacity(width);
                for i in (task..count).step_by(usize::try_from(tasks).unwrap_or(1)) {
                    write_padded(i, width, &mut suffix);
                    key.clear();
                    key.extend_from_slice(&prefix);
                    key.extend_from_slice(&suffix);
                    kv.put(key.as_slice(), &value[..], None).await?;
                }
                Ok::<(), etcd_client::Error>(())
            });
        }
        while let Some(joined) = set.join_next().await {
            joined?.map_err(|source| BenchError::Preload { keys: count, source })?;
        }
        Ok(())
    }

    /// The request loop state for client number `client`.
    pub fn client_ops(&self, kv: KvClient, keys: KeySpace, value: Arc<[u8]>, client: u64) -> ClientOps {
        let mut fixed_key = Vec::new();
        let plan = match self {
            Self::Put => Plan::Put,
            Self::Range { key, prefix_keys, consistency } => {
                fixed_key.clone_from(key);
                Plan::Read { consistency: *consistency, prefix: prefix_keys.is_some() }
            }
            Self::TxnPut => {
                // One key per client, so clients only conflict (and report CAS failures) when
                // --key-space is smaller than --clients.
                keys.write(client % keys.space, &mut fixed_key);
                Plan::TxnPut
            }
            Self::TxnCross => {
                keys.write(client % keys.space, &mut fixed_key);
                Plan::TxnCross
            }
            Self::Mixed { weights, range_width, consistency } => {
                Plan::Mixed { weights: *weights, range_width: *range_width, consistency: *consistency }
            }
        };
        ClientOps {
            kv,
            plan,
            keys,
            value,
            rng: SmallRng::seed_from_u64(0x9e37_79b9_7f4a_7c15 ^ client),
            key_buf: Vec::new(),
            end_buf: Vec::new(),
            fixed_key,
            txn_rev: 0,
        }
    }
}

/// The per-client copy of a [`Workload`]'s parameters (`Copy`, so matching on it does not
/// borrow the client state the request needs mutably).
#[derive(Clone, Copy, Debug)]
enum Plan {
    Put,
    Read { consistency: Consistency, prefix: bool },
    TxnPut,
    TxnCross,
    Mixed { weights: MixWeights, range_width: u64, consistency: Consistency },
}

/// One client's request state; see the module docs.
pub struct ClientOps {
    kv: KvClient,
    plan: Plan,
    keys: KeySpace,
    /// The value every write sends, shared by all clients.
    value: Arc<[u8]>,
    rng: SmallRng,
    key_buf: Vec<u8>,
    end_buf: Vec<u8>,
    /// The key of `range` and of this client's `txn-put` and `txn-cross`.
    fixed_key: Vec<u8>,
    /// `txn-put`: the mod revision this client expects its key to have (0 = absent).
    txn_rev: i64,
}

impl ClientOps {
    /// Sends the request for `ticket` and waits for its answer.
    pub async fn run(&mut self, ticket: u64) -> Result<Outcome, etcd_client::Error> {
        match self.plan {
            Plan::Put => self.put(ticket).await,
            Plan::Read { consistency, prefix } => {
                let options = consistency.options();
                let options = if prefix { options.with_prefix() } else { options };
                self.kv.get(self.fixed_key.as_slice(), Some(options)).await?;
                Ok(Outcome::done(if prefix { OpKind::Range } else { OpKind::Get }))
            }
            Plan::TxnPut => self.txn_put().await,
            Plan::TxnCross => {
                let key = self.fixed_key.as_slice();
                self.key_buf.clear();
                self.key_buf.push(b'q');
                self.key_buf.extend_from_slice(key);
                let puts = [
                    TxnOp::put(key, &self.value[..], None),
                    TxnOp::put(self.key_buf.as_slice(), &self.value[..], None),
                ];
                self.kv.txn(Txn::new().and_then(puts)).await?;
                Ok(Outcome::done(OpKind::Txn))
            }
            Plan::Mixed { weights, range_width, consistency } => {
                let kind = weights.pick(self.rng.random_range(0..weights.total()));
                match kind {
                    OpKind::Put => self.put(ticket).await,
                    OpKind::Get => {
                        self.pick_key(ticket);
                        self.kv.get(self.key_buf.as_slice(), Some(consistency.options())).await?;
                        Ok(Outcome::done(kind))
                    }
                    OpKind::Range => {
                        let start = self.pick_key(ticket);
                        let end = start.saturating_add(range_width).min(self.keys.max_number());
                        self.keys.write(end, &mut self.end_buf);
                        let options = consistency.options().with_range(self.end_buf.as_slice());
                        self.kv.get(self.key_buf.as_slice(), Some(options)).await?;
                        Ok(Outcome::done(kind))
                    }
                    OpKind::Delete | OpKind::Txn => {
                        self.pick_key(ticket);
                        self.kv.delete(self.key_buf.as_slice(), None).await?;
                        Ok(Outcome::done(OpKind::Delete))
                    }
                }
            }
        }
    }

    /// Fills `key_buf` with the key for `ticket` and returns its number.
    fn pick_key(&mut self, ticket: u64) -> u64 {
        let n = self.keys.pick(ticket, &mut self.rng);
        self.keys.write(n, &mut self.key_buf);
        n
    }

    async fn put(&mut self, ticket: u64) -> Result<Outcome, etcd_client::Error> {
        self.pick_key(ticket);
        self.kv.put(self.key_buf.as_slice(), &self.value[..], None).await?;
        Ok(Outcome::done(OpKind::Put))
    }

    async fn txn_put(&mut self) -> Result<Outcome, etcd_client::Error> {
        let key = self.fixed_key.as_slice();
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, self.txn_rev)])
            .and_then([TxnOp::put(key, &self.value[..], None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.kv.txn(txn).await?;
        let cas_failed = !response.succeeded();
        self.txn_rev = if cas_failed {
            // Someone else wrote the key (or it predates this run): adopt what the else
            // branch read, so the next attempt can succeed.
            response
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
                    _ => None,
                })
                .unwrap_or(0)
        } else {
            // The put is the Txn's only write, so the key's new mod revision is the header's.
            response.header().map_or(0, |header| header.revision())
        };
        Ok(Outcome { kind: OpKind::Txn, cas_failed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_padded_fills_width_and_keeps_order() {
        let mut buf = Vec::new();
        write_padded(42, 8, &mut buf);
        assert_eq!(buf, b"00000042");
        write_padded(0, 3, &mut buf);
        assert_eq!(buf, b"000");
        write_padded(12_345, 3, &mut buf);
        assert_eq!(buf, b"12345");
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_padded(9, 5, &mut a);
        write_padded(10, 5, &mut b);
        assert!(a < b);
    }

    #[test]
    fn key_space_too_narrow_is_rejected() {
        assert!(matches!(KeySpace::new(4, 100_000, false), Err(BenchError::KeySizeTooSmall { needed: 5, .. })));
        assert!(KeySpace::new(5, 100_000, false).is_ok());
        assert!(matches!(KeySpace::new(8, 0, false), Err(BenchError::ZeroOption { .. })));
    }

    #[test]
    fn key_space_sequential_wraps_ticket() {
        let keys = KeySpace::new(3, 10, true).expect("valid key space");
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(keys.pick(3, &mut rng), 3);
        assert_eq!(keys.pick(13, &mut rng), 3);
        assert_eq!(keys.max_number(), 999);
    }

    #[test]
    fn mix_pick_honours_weights() {
        let mix = MixWeights::new(40, 40, 10, 10).expect("non-empty mix");
        let mut counts = [0u32; 5];
        for roll in 0..mix.total() {
            counts[mix.pick(roll).index()] += 1;
        }
        assert_eq!(counts, [40, 40, 10, 10, 0]);
        assert!(matches!(MixWeights::new(0, 0, 0, 0), Err(BenchError::EmptyMix)));
        let only_delete = MixWeights::new(0, 0, 0, 3).expect("non-empty mix");
        assert_eq!(only_delete.pick(2), OpKind::Delete);
    }

    #[test]
    fn decimal_digits_counts() {
        assert_eq!(decimal_digits(0), 1);
        assert_eq!(decimal_digits(9), 1);
        assert_eq!(decimal_digits(10), 2);
        assert_eq!(decimal_digits(99_999), 5);
        assert_eq!(decimal_digits(u64::MAX), 20);
    }
}
