//! Into the inbox: inbound messages and delivery statuses, as a channel adapter read them.

use flowcore::Timestamp;
use tracing::debug;

use super::payload::InboundPayload;
use super::stats::Stats;
use super::Runtime;
use crate::{ConversationKey, DeliveryStatus, InboxInsert, NewInboxEvent, StoreResult};

impl Runtime {
    /// Writes one inbound message to the inbox, keyed by its `wamid` (a repeat is reported
    /// as a duplicate and written nowhere), and wakes a worker. Answer the channel (Meta's
    /// `200`) only once every message of a delivery returned `Ok`: from then on nothing is
    /// lost, whatever crashes.
    pub async fn accept(&self, conversation: ConversationKey, message: &InboundPayload) -> StoreResult<InboxInsert> {
        let payload = serde_json::to_value(message).map_err(|e| crate::StoreError::InvalidInput(e.to_string()))?;
        let row = NewInboxEvent::message(conversation, message.wamid.clone(), payload, self.0.clock.now());
        let inserted = self.0.store.insert_inbox(row).await?;
        if inserted.is_duplicate() {
            Stats::bump(&self.0.stats.duplicates);
            debug!(wamid = %message.wamid, "duplicate delivery ignored");
        } else {
            Stats::bump(&self.0.stats.messages_accepted);
            self.0.inbox_ready.notify_one();
        }
        Ok(inserted)
    }

    /// Merges a delivery status the channel reported for one of the organization's replies
    /// (a lower status never replaces a higher one); false when no reply has that id.
    pub async fn accept_status(
        &self,
        org_id: &str,
        message_id: &str,
        status: DeliveryStatus,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let known = self.0.store.record_delivery(org_id, message_id, status, at).await?;
        if known {
            Stats::bump(&self.0.stats.statuses);
        }
        Ok(known)
    }
}
