//! Housekeeping: leases of a crashed process's claims return to pending; expired sessions
//! and old finished rows are purged.

use std::sync::Arc;

use flowcore::Timestamp;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Shared;
use crate::PurgePolicy;

pub(super) async fn run(rt: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let policy = PurgePolicy { session_ttl: rt.options.session_ttl, ..PurgePolicy::default() };
    let reclaim_every =
        rt.options.lease.min(std::time::Duration::from_secs(5)).max(std::time::Duration::from_millis(100));
    let purge_every = i64::try_from(rt.options.purge_interval.as_millis()).unwrap_or(i64::MAX);
    let mut last_purge: Option<Timestamp> = None;
    loop {
        let now = rt.clock.now();
        if let Err(e) = rt.store.reclaim_inbox(None, now).await {
            warn!(error = %e, "reclaiming inbox leases failed");
        }
        if let Err(e) = rt.store.reclaim_outbox(None, now).await {
            warn!(error = %e, "reclaiming outbox leases failed");
        }
        if last_purge.is_none_or(|at| now.millis_since(at) >= purge_every) {
            last_purge = Some(now);
            for org in &rt.organizations {
                match rt.store.purge(org, now, policy).await {
                    Ok(report) if report.expired_sessions > 0 => {
                        info!(org = %org, expired = report.expired_sessions, "expired sessions purged")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(org = %org, error = %e, "purge failed"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(reclaim_every) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}
