//! Watch streams held open through a cluster history: each records every event it carries, and
//! at the end each must equal the history itself (read back by a fresh watch from the same start
//! revision) — nothing missed, nothing twice, nothing rolled back, in revision order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};

/// One event as a watcher sees it: (revision, key, value, whether a put).
pub type Seen = (i64, Vec<u8>, Vec<u8>, bool);

/// A watch stream over every key from `start`, recording in the background until it ends.
pub struct Recording {
    pub member: usize,
    events: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Opens a watch of every key from revision `start` on `client`, recording its events.
pub async fn record(member: usize, client: &mut etcd_client::Client, start: i64) -> Recording {
    let options = WatchOptions::new().with_all_keys().with_start_revision(start);
    let mut stream = client.watch("", Some(options)).await.expect("watch every key");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let mut sink = sink.lock().expect("recording");
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                sink.push((
                    kv.mod_revision(),
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    e.event_type() == EventType::Put,
                ));
            }
        }
    });
    Recording { member, events, task }
}

impl Recording {
    /// The events recorded up to revision `upto`, once the stream reached it (within `within`);
    /// `None` if the stream ended before.
    pub async fn upto(&self, upto: i64, within: Duration) -> Option<Vec<Seen>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let events = self.events.lock().expect("recording");
                if events.last().is_some_and(|e| e.0 >= upto) {
                    return Some(events.iter().filter(|e| e.0 <= upto).cloned().collect());
                }
            }
            if self.task.is_finished() || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first difference between a stream's events and the history's, described.
pub fn first_difference(stream: &[Seen], history: &[Seen]) -> Option<String> {
    let show = |e: Option<&Seen>| {
        e.map_or("nothing".to_string(), |(r, k, v, put)| {
            format!(
                "{} {}={} at {r}",
                if *put { "put" } else { "delete" },
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )
        })
    };
    let at = (0..stream.len().max(history.len())).find(|&i| stream.get(i) != history.get(i))?;
    Some(format!("event {at}: the stream carried {}, the history has {}", show(stream.get(at)), show(history.get(at))))
}
