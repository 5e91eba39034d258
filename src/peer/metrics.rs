//! etcd's `etcd_network_*` series for the peer transport: bytes sent to and received from each
//! member, and the round trip of Raft heartbeats of group 0 (a heartbeat sent to a member until
//! its response arrives; etcd measures the same figure with a prober of its own).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use raft::eraftpb::{Message, MessageType};

/// The peer transport's series.
pub struct PeerMetrics {
    sent: IntCounterVec,
    received: IntCounterVec,
    rtt: HistogramVec,
    /// When the outstanding heartbeat to each member went out (off the request path: a few
    /// per election timeout).
    heartbeats: Mutex<HashMap<u64, Instant>>,
}

fn id_label(id: u64) -> String {
    format!("{id:x}")
}

impl PeerMetrics {
    pub fn new() -> prometheus::Result<PeerMetrics> {
        Ok(PeerMetrics {
            sent: IntCounterVec::new(
                Opts::new("etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers."),
                &["To"],
            )?,
            received: IntCounterVec::new(
                Opts::new("etcd_network_peer_received_bytes_total", "The total number of bytes received from peers."),
                &["From"],
            )?,
            rtt: HistogramVec::new(
                HistogramOpts::new(
                    "etcd_network_peer_round_trip_time_seconds",
                    "Round-Trip-Time histogram between peers",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
                &["To"],
            )?,
            heartbeats: Mutex::default(),
        })
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.sent.clone()))?;
        registry.register(Box::new(self.received.clone()))?;
        registry.register(Box::new(self.rtt.clone()))
    }

    /// The counter of bytes sent to `to` (resolved once per sender).
    pub fn sent_to(&self, to: u64) -> IntCounter {
        self.sent.with_label_values(&[&id_label(to)])
    }

    /// The counter of bytes received from `from`.
    pub fn received_from(&self, from: u64) -> IntCounter {
        self.received.with_label_values(&[&id_label(from)])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.heartbeats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frame went out to `to` with `messages`: a heartbeat of group 0 starts a round trip.
    pub fn on_sent(&self, to: u64, messages: &[(u16, Message)]) {
        if messages.iter().any(|(g, m)| *g == 0 && m.msg_type == MessageType::MsgHeartbeat as i32) {
            self.lock().entry(to).or_insert_with(Instant::now);
        }
    }

    /// A message of group 0 came in from `from`: a heartbeat response ends its round trip.
    pub fn on_received(&self, from: u64, group: u16, m: &Message) {
        if group != 0 || m.msg_type != MessageType::MsgHeartbeatResponse as i32 {
            return;
        }
        if let Some(sent) = self.lock().remove(&from) {
            self.rtt.with_label_values(&[&id_label(from)]).observe(sent.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_and_its_response_make_one_round_trip() {
        let m = PeerMetrics::new().expect("metrics");
        let r = Registry::new();
        m.register(&r).expect("register");
        let beat = Message { msg_type: MessageType::MsgHeartbeat as i32, ..Default::default() };
        let resp = Message { msg_type: MessageType::MsgHeartbeatResponse as i32, ..Default::default() };
        m.on_sent(7, &[(1, beat.clone())]);
        m.on_received(7, 0, &resp);
        assert_eq!(m.rtt.with_label_values(&["7"]).get_sample_count(), 0, "group 1's heartbeat does not count");
        m.on_sent(7, &[(0, beat)]);
        m.on_received(7, 0, &resp);
        m.on_received(7, 0, &resp);
        assert_eq!(m.rtt.with_label_values(&["7"]).get_sample_count(), 1);
        m.sent_to(7).inc_by(10);
        assert_eq!(m.sent.with_label_values(&["7"]).get(), 10);
    }
}
