//! List + watch of a key range, kept exact: the recipe a controller needs instead of polling.
//!
//! The informer lists the range page by page at one revision, then watches from the next
//! revision. A broken stream resumes from the last revision it applied; a resume the server
//! can no longer serve (compacted) lists again. Between calls to [`Informer::next`] the map
//! is the range's exact state at [`Informer::revision`]. Memory: the keys and values, nothing
//! per event.

use std::collections::BTreeMap;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchStream};

use super::{CoordError, Result};

/// One key's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl From<&KeyValue> for Item {
    fn from(kv: &KeyValue) -> Item {
        Item {
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// What one call to [`Informer::next`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Events applied (how many).
    Events(usize),
    /// The watch could not resume (history compacted): the range was listed again.
    Relisted,
    /// The server reported progress: nothing changed up to the new revision.
    Progress,
}

pub struct Informer {
    client: Client,
    start: Vec<u8>,
    end: Vec<u8>,
    page: i64,
    items: BTreeMap<Vec<u8>, Item>,
    revision: i64,
    stream: Option<WatchStream>,
    relists: u64,
}

impl Informer {
    /// Lists `[start, end)` and returns the informer at that revision.
    pub async fn start(client: Client, start: Vec<u8>, end: Vec<u8>) -> Result<Informer> {
        let mut informer =
            Informer { client, start, end, page: 5_000, items: BTreeMap::new(), revision: 0, stream: None, relists: 0 };
        informer.list().await?;
        Ok(informer)
    }

    /// The range's keys and values at [`Informer::revision`].
    pub fn items(&self) -> &BTreeMap<Vec<u8>, Item> {
        &self.items
    }

    /// The store revision the map reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// How many times the range was listed again after a compacted resume.
    pub fn relists(&self) -> u64 {
        self.relists
    }

    /// Drops the watch stream, as a network failure would; the next call resumes.
    pub fn disconnect(&mut self) {
        self.stream = None;
    }

    /// Waits for the next change and applies it. Cancel-safe: dropping the future loses nothing
    /// (a list in progress is built aside and swapped in whole).
    pub async fn next(&mut self) -> Result<Change> {
        loop {
            if self.stream.is_none() {
                let options = WatchOptions::new()
                    .with_range(self.end.clone())
                    .with_start_revision(self.revision + 1)
                    .with_progress_notify();
                self.stream = Some(self.client.watch(self.start.clone(), Some(options)).await?);
            }
            let stream = self.stream.as_mut().expect("opened above");
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.stream = None;
                    return Err(CoordError::WatchEnded(String::from_utf8_lossy(&self.start).into_owned()));
                }
                Err(e) => {
                    self.stream = None;
                    return Err(e.into());
                }
            };
            if message.canceled() {
                self.stream = None;
                if message.compact_revision() > 0 {
                    self.list().await?;
                    self.relists += 1;
                    return Ok(Change::Relisted);
                }
                return Err(CoordError::WatchCancelled {
                    key: String::from_utf8_lossy(&self.start).into_owned(),
                    reason: message.cancel_reason().to_string(),
                });
            }
            if message.created() && message.events().is_empty() {
                continue;
            }
            if message.events().is_empty() {
                let at = message.header().map_or(0, |h| h.revision());
                self.revision = self.revision.max(at);
                return Ok(Change::Progress);
            }
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        self.items.insert(kv.key().to_vec(), Item::from(kv));
                    }
                    EventType::Delete => {
                        self.items.remove(kv.key());
                    }
                }
                self.revision = self.revision.max(kv.mod_revision());
            }
            return Ok(Change::Events(message.events().len()));
        }
    }

    /// Lists the range at one revision, a page at a time.
    async fn list(&mut self) -> Result<()> {
        let mut items = BTreeMap::new();
        let mut cursor = self.start.clone();
        let mut at = 0;
        loop {
            let mut options = GetOptions::new().with_range(self.end.clone()).with_limit(self.page);
            if at > 0 {
                options = options.with_revision(at);
            }
            let mut page = self.client.get(cursor.clone(), Some(options)).await?;
            if at == 0 {
                at = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let kvs = page.take_kvs();
            if let Some(last) = kvs.last() {
                cursor = last.key().to_vec();
                cursor.push(0);
            }
            for kv in &kvs {
                items.insert(kv.key().to_vec(), Item::from(kv));
            }
            if !more || kvs.is_empty() {
                break;
            }
        }
        self.items = items;
        self.revision = at;
        Ok(())
    }
}
