//! A linearizability checker for recorded etcd KV histories (Wing & Gong's search with Lowe's
//! memoization, as in porcupine): is there one order of the operations that respects real time
//! (an operation that returned before another was invoked comes first) and in which every
//! response is exactly what a single etcd key-value store with revisions would have answered?
//!
//! The model is etcd's: a store revision that every write transaction raises by exactly one, and
//! per key the value and its mod revision. Reads are checked against the state *and* the header
//! revision, so a read of a stale state is caught even when its values happen to match.
//!
//! An operation whose outcome is unknown (the client saw an error or the server was killed) may
//! take effect at any point after its invocation, or never — or, for a write, use up its
//! revision without taking effect: corekv allocates a write's revision before the write is
//! durable (and, in a cluster, before a majority holds it), and a write that never lands leaves
//! its revision unused rather than handing it out again (COMPATIBILITY.md §3 and §5b). So a
//! revision may be skipped only where some write failed.

use std::collections::HashSet;

/// Keys are small indices; the workload names them (several per shard).
pub const KEYS: usize = 6;

/// A key's value (a unique id per write) and its mod revision.
pub type Cell = Option<(u32, i64)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub revision: i64,
    pub keys: [Cell; KEYS],
}

impl State {
    pub fn new(revision: i64) -> State {
        State { revision, keys: [None; KEYS] }
    }
}

#[derive(Clone, Debug)]
pub enum Input {
    Put {
        key: usize,
        value: u32,
    },
    Get {
        key: usize,
    },
    Delete {
        key: usize,
    },
    /// `if value(compare) == expect then put(put, value) else get(get)`: one txn, possibly
    /// spanning shards.
    Cas {
        compare: usize,
        expect: u32,
        put: usize,
        value: u32,
        get: usize,
    },
    /// A range over every key.
    ReadAll,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Header revision of a put.
    Put {
        revision: i64,
    },
    Get {
        revision: i64,
        cell: Cell,
    },
    Delete {
        revision: i64,
        deleted: bool,
    },
    Cas {
        revision: i64,
        succeeded: bool,
        got: Cell,
    },
    ReadAll {
        revision: i64,
        keys: [Cell; KEYS],
    },
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

/// One operation as a client saw it; times in nanoseconds from a common origin.
#[derive(Clone, Debug)]
pub struct Operation {
    /// Which client ran it (reports only).
    pub client: usize,
    pub call: u64,
    /// When the answer arrived. For an unknown outcome (`output` is `Unknown`): the latest
    /// moment it could have taken effect (the instant the server was killed, or `u64::MAX`).
    pub ret: u64,
    pub input: Input,
    pub output: Output,
}

impl Operation {
    fn unknown(&self) -> bool {
        matches!(self.output, Output::Unknown)
    }
}

/// The model's step: the state after `input` answered with `output`, or `None` if a store in
/// `state` could not have given that answer.
pub fn step(state: &State, input: &Input, output: &Output) -> Option<State> {
    let unknown = matches!(output, Output::Unknown);
    let mut next = *state;
    match input {
        Input::Put { key, value } => {
            next.revision += 1;
            next.keys[*key] = Some((*value, next.revision));
            match output {
                Output::Put { revision } if *revision == next.revision => Some(next),
                _ if unknown => Some(next),
                _ => None,
            }
        }
        Input::Get { key } => match output {
            Output::Get { revision, cell } if *revision == state.revision && *cell == state.keys[*key] => Some(next),
            _ => None,
        },
        Input::Delete { key } => {
            let existed = state.keys[*key].is_some();
            if existed {
                next.revision += 1;
                next.keys[*key] = None;
            }
            match output {
                Output::Delete { revision, deleted } if *revision == next.revision && *deleted == existed => Some(next),
                _ if unknown => Some(next),
                _ => None,
            }
        }
        Input::Cas { compare, expect, put, value, get } => {
            let succeeded = state.keys[*compare].map(|(v, _)| v) == Some(*expect);
            if succeeded {
                next.revision += 1;
                next.keys[*put] = Some((*value, next.revision));
            }
            match output {
                Output::Cas { revision, succeeded: s, got } if *s == succeeded && *revision == next.revision => {
                    (succeeded || *got == state.keys[*get]).then_some(next)
                }
                _ if unknown => Some(next),
                _ => None,
            }
        }
        Input::ReadAll => match output {
            Output::ReadAll { revision, keys } if *revision == state.revision && *keys == state.keys => Some(next),
            _ => None,
        },
    }
}

/// What the check found.
#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    /// No order works. `stuck_at` is the operation (by index in the history) that no search
    /// path could place: the earliest-returning one left over on the deepest path.
    Violation {
        linearized: usize,
        stuck_at: usize,
    },
    /// The search gave up after `steps` model steps.
    Inconclusive {
        steps: u64,
    },
}

/// What an operation is taken to have done, in one order the search tries.
#[derive(Clone, Copy, Debug)]
enum Effect {
    Applied,
    /// An unknown outcome: it never happened.
    Dropped,
    /// An unknown outcome: its revision was used up and nothing changed.
    Skipped,
}

/// Checks `history` from `initial` (the state before any of its operations).
///
/// Depth-first search over orders: the next operation may be any not yet placed that was
/// invoked before the earliest answer still unplaced (Wing & Gong); a (placed set, state) pair
/// already explored is never explored again (Lowe). An operation with an unknown outcome is
/// either applied, dropped, or (a write) skipped — its revision used up, nothing changed — and
/// must be decided by its `ret` bound. Reads with an unknown outcome have no effect and are
/// dropped up front.
pub fn check(initial: State, history: &[Operation], max_steps: u64) -> Verdict {
    let kept: Vec<usize> = (0..history.len())
        .filter(|&i| !(history[i].unknown() && matches!(history[i].input, Input::Get { .. } | Input::ReadAll)))
        .collect();
    let ops: Vec<&Operation> = kept.iter().map(|&i| &history[i]).collect();
    // Candidate moves in invocation order: (operation, what it did). Known operations are always
    // applied; unknown ones are tried applied, then dropped, then skipped.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| ops[i].call);
    let moves: Vec<(usize, Effect)> = order
        .iter()
        .flat_map(|&i| {
            let alternatives: &[Effect] = if ops[i].unknown() {
                &[Effect::Applied, Effect::Dropped, Effect::Skipped]
            } else {
                &[Effect::Applied]
            };
            alternatives.iter().map(move |&effect| (i, effect))
        })
        .collect();
    let mut done = vec![0u64; ops.len().div_ceil(64)];
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let flip = |done: &mut [u64], i: usize| done[i / 64] ^= 1 << (i % 64);
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    // The search path: (operation placed, state before it, the move to resume scanning at).
    let mut path: Vec<(usize, State, usize)> = Vec::new();
    let mut state = initial;
    let mut resume = 0;
    let mut steps = 0u64;
    let mut deepest = (0usize, 0usize);
    loop {
        if path.len() == ops.len() {
            return Verdict::Linearizable;
        }
        // The earliest answer (or decision bound) among the unplaced bounds what may go next.
        let min_ret = (0..ops.len()).filter(|&i| !is_done(&done, i)).map(|i| ops[i].ret).min().unwrap_or(u64::MAX);
        let mut placed = false;
        let mut m = resume;
        while m < moves.len() {
            let (i, effect) = moves[m];
            m += 1;
            if ops[i].call > min_ret {
                break;
            }
            if is_done(&done, i) {
                continue;
            }
            steps += 1;
            if steps > max_steps {
                return Verdict::Inconclusive { steps };
            }
            let next = match effect {
                Effect::Applied => step(&state, &ops[i].input, &ops[i].output),
                Effect::Dropped => Some(state),
                Effect::Skipped => Some(State { revision: state.revision + 1, ..state }),
            };
            let Some(next) = next else { continue };
            flip(&mut done, i);
            if !seen.insert((done.clone(), next)) {
                flip(&mut done, i);
                continue;
            }
            path.push((i, state, m));
            state = next;
            resume = 0;
            placed = true;
            break;
        }
        if placed {
            continue;
        }
        if path.len() >= deepest.0 {
            let stuck = (0..ops.len()).filter(|&i| !is_done(&done, i)).min_by_key(|&i| ops[i].ret).unwrap_or(0);
            deepest = (path.len(), stuck);
        }
        // Nothing fits here: undo the last placement and try the next move after it.
        let Some((i, before, m)) = path.pop() else {
            return Verdict::Violation { linearized: deepest.0, stuck_at: kept.get(deepest.1).copied().unwrap_or(0) };
        };
        flip(&mut done, i);
        state = before;
        resume = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: u64, ret: u64, input: Input, output: Output) -> Operation {
        Operation { client, call, ret, input, output }
    }

    fn put(key: usize, value: u32, revision: i64) -> (Input, Output) {
        (Input::Put { key, value }, Output::Put { revision })
    }

    fn get(key: usize, revision: i64, cell: Cell) -> (Input, Output) {
        (Input::Get { key }, Output::Get { revision, cell })
    }

    /// A put by client 0, invoked first, whose outcome nobody learned.
    fn failed_put(key: usize, value: u32) -> Operation {
        Operation { client: 0, call: 0, ret: u64::MAX, input: Input::Put { key, value }, output: Output::Unknown }
    }

    fn at(client: usize, call: u64, ret: u64, (input, output): (Input, Output)) -> Operation {
        op(client, call, ret, input, output)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![at(0, 0, 1, put(0, 7, 2)), at(0, 2, 3, get(0, 2, Some((7, 2)))), at(1, 4, 5, get(1, 2, None))];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Linearizable));
    }

    #[test]
    fn concurrent_read_may_see_either_side_of_a_write() {
        for seen in [None, Some((7, 2))] {
            let rev = if seen.is_some() { 2 } else { 1 };
            let h = vec![at(0, 0, 10, put(0, 7, 2)), at(1, 1, 9, get(0, rev, seen))];
            assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Linearizable), "{seen:?}");
        }
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let h = vec![at(0, 0, 1, put(0, 7, 2)), at(1, 2, 3, get(0, 1, None))];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Violation { stuck_at: 1, .. }));
        // Right values under a stale header revision are caught too.
        let h = vec![at(0, 0, 1, put(0, 7, 2)), at(1, 2, 3, put(1, 8, 3)), at(1, 4, 5, get(0, 2, Some((7, 2))))];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Violation { .. }));
    }

    #[test]
    fn revisions_must_count_up_by_one_per_write() {
        let h = vec![at(0, 0, 1, put(0, 7, 2)), at(0, 2, 3, put(0, 8, 4))];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Violation { .. }));
    }

    #[test]
    fn a_torn_cross_shard_txn_is_a_violation() {
        // The CAS put key 3 at revision 3; a read of everything at revision 3 must show it.
        let cas = op(
            0,
            10,
            15,
            Input::Cas { compare: 0, expect: 7, put: 3, value: 9, get: 3 },
            Output::Cas { revision: 3, succeeded: true, got: None },
        );
        let mut keys = [None; KEYS];
        keys[0] = Some((7, 2));
        let read = op(1, 20, 25, Input::ReadAll, Output::ReadAll { revision: 3, keys });
        let h = vec![at(0, 0, 5, put(0, 7, 2)), Operation { call: 10, ret: 15, ..cas }, read];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Violation { .. }));
        // The same read showing both halves is fine.
        let mut h = h;
        let mut keys = [None; KEYS];
        keys[0] = Some((7, 2));
        keys[3] = Some((9, 3));
        h[2].output = Output::ReadAll { revision: 3, keys };
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Linearizable));
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let lost = failed_put(0, 7);
        for (rev, cell) in [(1, None), (2, Some((7, 2)))] {
            let h = vec![lost.clone(), at(1, 5, 6, get(0, rev, cell))];
            assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Linearizable), "{cell:?}");
        }
        // ...but not a value it never wrote.
        let h = vec![lost.clone(), at(1, 5, 6, get(0, 2, Some((8, 2))))];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Violation { .. }));
        // Nor can it take effect after the server died (its bound), before a read that missed it.
        let h = vec![
            Operation { ret: 3, ..lost.clone() },
            at(1, 5, 6, get(0, 1, None)),
            at(1, 7, 8, get(0, 2, Some((7, 2)))),
        ];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Violation { .. }));
    }

    #[test]
    fn a_revision_may_be_skipped_only_where_a_write_failed() {
        let failed = failed_put(0, 7);
        // A later write lands at revision 3: the failed write used up 2 without taking effect.
        let later = at(1, 5, 6, put(1, 9, 3));
        let h = vec![failed.clone(), later.clone(), at(2, 7, 8, get(0, 3, None))];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Linearizable));
        // Without a failed write, a skipped revision is a violation.
        let h = vec![later, at(2, 7, 8, get(0, 3, None))];
        assert!(matches!(check(State::new(1), &h, 1_000), Verdict::Violation { .. }));
    }
}
