//! A lease kept alive in the background, with a local deadline the holder fences itself by.
//!
//! The deadline is the send time of the last answered keep-alive plus 4/5 of the TTL the server
//! answered. The server restarts its countdown when it receives the keep-alive, after we sent
//! it, so the lease cannot end at the server before the local deadline passes (clocks running
//! at the same rate; the fifth is the margin for scheduling delays and drift).

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Result;

pub struct Session {
    lease: i64,
    deadline: watch::Receiver<Option<Instant>>,
    keeper: JoinHandle<()>,
}

fn fence_after(sent: Instant, ttl_secs: i64) -> Instant {
    sent + Duration::from_millis(ttl_secs.max(0) as u64 * 800)
}

impl Session {
    /// Grants a lease of `ttl_secs` and starts keeping it alive.
    pub async fn grant(client: &Client, ttl_secs: i64) -> Result<Session> {
        let sent = Instant::now();
        let granted = client.lease_client().grant(ttl_secs, None).await?;
        let (tx, deadline) = watch::channel(Some(fence_after(sent, granted.ttl())));
        let keeper = tokio::spawn(keep_alive(client.clone(), granted.id(), granted.ttl(), tx));
        Ok(Session { lease: granted.id(), deadline, keeper })
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Whether the local deadline has not passed.
    pub fn live(&self) -> bool {
        self.deadline.borrow().is_some_and(|d| Instant::now() < d)
    }

    /// Resolves once the local deadline passes without a renewal (or the server reports the
    /// lease gone). Cancel-safe.
    pub async fn ended(&mut self) {
        loop {
            let Some(at) = *self.deadline.borrow_and_update() else { return };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {
                    if *self.deadline.borrow() == Some(at) {
                        return;
                    }
                }
                changed = self.deadline.changed() => {
                    if changed.is_err() {
                        // The keeper stopped (lease gone): wait out the deadline we had.
                        tokio::time::sleep_until(at).await;
                        return;
                    }
                }
            }
        }
    }

    /// Stops renewing and revokes the lease (its keys go at once).
    pub async fn revoke(self, client: &Client) {
        self.keeper.abort();
        let _ = client.lease_client().revoke(self.lease).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews every TTL/5, giving each answer TTL/5 to arrive; a broken stream is reopened.
async fn keep_alive(client: Client, lease: i64, ttl_secs: i64, deadline: watch::Sender<Option<Instant>>) {
    let step = Duration::from_millis((ttl_secs.max(1) as u64 * 1000) / 5);
    let mut stream = None;
    loop {
        tokio::time::sleep(step).await;
        if stream.is_none() {
            match tokio::time::timeout(step, client.lease_client().keep_alive(lease)).await {
                Ok(Ok(s)) => stream = Some(s),
                _ => continue,
            }
        }
        let (keeper, answers) = stream.as_mut().expect("opened above");
        let sent = Instant::now();
        if keeper.keep_alive().await.is_err() {
            stream = None;
            continue;
        }
        match tokio::time::timeout(step, answers.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                let _ = deadline.send(Some(fence_after(sent, answer.ttl())));
            }
            Ok(Ok(Some(_))) => {
                // TTL 0: the server no longer has the lease.
                let _ = deadline.send(None);
                return;
            }
            _ => stream = None,
        }
    }
}
