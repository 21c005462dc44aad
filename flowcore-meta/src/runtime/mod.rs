//! WhatsApp for flowcore's durable pipeline (feature `runtime`): [`WhatsAppDelivery`] sends
//! the runtime's replies through the Cloud API, paced per business number and classified by
//! Meta's retry table, and [`accept_webhook`] writes a verified webhook body's messages and
//! statuses into a [`Runtime`](flowcore_store::runtime::Runtime).
//!
//! The runtime itself lives in `flowcore-store` (it is the store's unit of work that makes
//! it durable); this module is the WhatsApp side of it, so `flowcore-store` never depends on
//! Meta's formats.

mod delivery;
mod intake;

pub use delivery::{outcome_of, split_message, WhatsAppDelivery};
pub use intake::{accept_webhook, IntakeReport};
