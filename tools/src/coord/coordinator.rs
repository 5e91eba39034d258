//! The coordinator: campaigns, and while it leads, publishes what [`plan`] decides in
//! transactions fenced by its election key.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LeaderKey, ResignOptions, Txn, TxnOp};

use super::informer::Informer;
use super::layout::Layout;
use super::plan::{plan, View, Write};
use super::session::Session;
use super::Result;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub prefix: String,
    /// This coordinator's name, the value of its election key.
    pub name: String,
    pub partitions: u32,
    pub ttl_secs: i64,
    /// Writes per transaction (the server's `--max-txn-ops`, 128 by default in etcd): a
    /// publication larger than this goes out as several fenced transactions, each safe alone.
    pub max_txn_ops: usize,
}

/// What a coordinator reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// It won the election; its key was created at `revision`.
    Elected { revision: i64 },
    /// It published `writes` writes at `revision`.
    Published { revision: i64, writes: usize },
    /// Everything published is acknowledged and matches the plan, as of `revision`.
    Settled { revision: i64 },
    /// It stopped leading: `why`.
    Deposed { why: String },
    /// It cannot take part (no lease could be granted: the cluster is unreachable or refuses
    /// it) and tries again every 200 ms; reported once per kind of failure.
    Retrying { why: String },
}

/// Why a term ended.
enum TermEnd {
    Deposed(String),
    Shutdown,
}

/// Campaigns and coordinates until `shutdown` resolves; then resigns and revokes its lease.
pub async fn run_coordinator(
    client: Client,
    config: CoordinatorConfig,
    mut report: impl FnMut(Event),
    shutdown: impl Future<Output = ()>,
) {
    let layout = Layout::new(&config.prefix);
    tokio::pin!(shutdown);
    let mut last_failure = String::new();
    loop {
        let mut session = match Session::grant(&client, config.ttl_secs).await {
            Ok(s) => {
                last_failure.clear();
                s
            }
            Err(e) => {
                let why = format!("cannot grant a lease: {e}");
                if why != last_failure {
                    report(Event::Retrying { why: why.clone() });
                    last_failure = why;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = &mut shutdown => return,
                }
            }
        };
        let mut election = client.election_client();
        let campaign = election.campaign(layout.election(), config.name.clone(), session.lease());
        let leader = tokio::select! {
            won = campaign => match won {
                Ok(mut won) => won.take_leader(),
                Err(_) => None,
            },
            _ = session.ended() => None,
            _ = &mut shutdown => {
                session.revoke(&client).await;
                return;
            }
        };
        let Some(leader) = leader else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        report(Event::Elected { revision: leader.rev() });
        let end = lead(&client, &config, &layout, &mut session, &leader, &mut report, &mut shutdown).await;
        match end {
            TermEnd::Deposed(why) => {
                // Our key, if it is still there, would only hold up the next campaign.
                session.revoke(&client).await;
                report(Event::Deposed { why });
            }
            TermEnd::Shutdown => {
                let _ = client.election_client().resign(Some(ResignOptions::new().with_leader(leader))).await;
                session.revoke(&client).await;
                report(Event::Deposed { why: "shut down".into() });
                return;
            }
        }
    }
}

/// One term: read what is published, publish what the plan says, until deposed.
async fn lead(
    client: &Client,
    config: &CoordinatorConfig,
    layout: &Layout,
    session: &mut Session,
    leader: &LeaderKey,
    report: &mut impl FnMut(Event),
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> TermEnd {
    let (start, end) = layout.range();
    let mut informer = match Informer::start(client.clone(), start, end).await {
        Ok(i) => i,
        Err(e) => return TermEnd::Deposed(format!("cannot read the published state: {e}")),
    };
    // Plans are made only from a view that includes this term's own last publication.
    let mut written = 0;
    let mut settled = false;
    loop {
        if !informer.items().contains_key(leader.key()) {
            return TermEnd::Deposed("the election key is gone".into());
        }
        if informer.revision() >= written {
            let view = View::read(layout, informer.items(), config.partitions);
            let writes = plan(&view, config.partitions);
            let now_settled = writes.is_empty() && view.all_settled();
            if now_settled && !settled {
                report(Event::Settled { revision: informer.revision() });
            }
            settled = now_settled;
            if !writes.is_empty() {
                match publish(client, layout, leader, &writes, config.max_txn_ops).await {
                    Ok(Some(revision)) => {
                        written = revision;
                        report(Event::Published { revision, writes: writes.len() });
                    }
                    Ok(None) => return TermEnd::Deposed("a fenced transaction failed its compare".into()),
                    Err(_) => {
                        // Unknown outcome: read everything again before planning again.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let (start, end) = layout.range();
                        match Informer::start(client.clone(), start, end).await {
                            Ok(fresh) => informer = fresh,
                            Err(e) => return TermEnd::Deposed(format!("cannot read the published state: {e}")),
                        }
                        written = 0;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            _ = session.ended() => return TermEnd::Deposed("the lease may have ended".into()),
            changed = informer.next() => if changed.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            _ = shutdown.as_mut() => return TermEnd::Shutdown,
        }
    }
}

/// Publishes `writes` in transactions of at most `max_ops`, each fenced by the election key.
/// `Ok(None)`: the fence failed (deposed); `Ok(Some(rev))`: the last transaction's revision.
async fn publish(
    client: &Client,
    layout: &Layout,
    leader: &LeaderKey,
    writes: &[Write],
    max_ops: usize,
) -> Result<Option<i64>> {
    let fence = Compare::create_revision(leader.key().to_vec(), CompareOp::Equal, leader.rev());
    let mut revision = 0;
    for chunk in writes.chunks(max_ops.max(1)) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|w| match w {
                Write::Put { worker, share } => TxnOp::put(layout.share(worker), share.encode(), None),
                Write::Delete { worker } => TxnOp::delete(layout.share(worker), None),
            })
            .collect();
        let answer = client.kv_client().txn(Txn::new().when([fence.clone()]).and_then(ops)).await?;
        if !answer.succeeded() {
            return Ok(None);
        }
        revision = answer.header().map_or(0, |h| h.revision());
    }
    Ok(Some(revision))
}
