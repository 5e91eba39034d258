//! The hub: one task that merges the shards' event batches into whole revisions and hands each
//! to the ring once the visibility frontier covers it.
//!
//! Shards send a batch before releasing its revisions, so after reading the frontier `F` and
//! then draining the channel, the hub holds every event at or below `F`: revision R is moved to
//! the ring only when all of it (every shard of a cross-shard write) has arrived, and never
//! before it is durable everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use shards::RevisionClock;
use wire::pb::mvccpb::Event;

use super::ring::{EventRing, RevisionEvents};

/// Runs until every shard's sender is gone (the shards stopped).
pub async fn run(batches: flume::Receiver<Vec<Event>>, clock: Arc<RevisionClock>, ring: Arc<EventRing>) {
    let mut pending: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    loop {
        let frontier = clock.visible();
        loop {
            match batches.try_recv() {
                Ok(batch) => add(&mut pending, batch),
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => return,
            }
        }
        let later = pending.split_off(&(frontier + 1));
        let ready = std::mem::replace(&mut pending, later);
        ring.push(ready.into_iter().map(|(revision, events)| RevisionEvents { revision, events }).collect(), frontier);
        let next = match pending.first_key_value() {
            None => batches.recv_async().await,
            Some((&lowest, _)) => tokio::select! {
                b = batches.recv_async() => b,
                () = clock.wait_visible(lowest) => continue,
            },
        };
        match next {
            Ok(batch) => add(&mut pending, batch),
            Err(_) => return,
        }
    }
}

fn add(pending: &mut BTreeMap<i64, Vec<Event>>, batch: Vec<Event>) {
    for e in batch {
        let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        pending.entry(rev).or_default().push(e);
    }
}
