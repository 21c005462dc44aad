//! WhatsApp Cloud API adapter for flowcore: webhooks in, messages out.
//!
//! Everything on the webhook side is a pure function over bytes — no HTTP framework, no
//! clock, no I/O — so a server (or a fuzzer) calls it directly:
//!
//! | step | call | on failure |
//! |---|---|---|
//! | `GET` subscription handshake | [`verify_subscription`] → the challenge | [`VerifyError::http_status`]: 400 / 403 |
//! | `POST` signature | [`verify_signature`] (several secrets, for rotation) | [`SignatureError::http_status`]: 401 |
//! | parse | [`parse`] → [`Webhook`] of [`Event`]s, each with its [`DedupKey`] | only a non-object body fails ([`ParseError`]); a bad item is [`Event::Unparsed`] |
//! | into the engine | [`to_input`] → [`flowcore::Input`] | never fails: unknown types become `Input::Unsupported` |
//! | out of the engine | [`to_outgoing`] → [`outgoing::OutgoingMessage`]s | [`outgoing::BuildError`] naming the field and limit |
//! | send | [`MetaClient::send`] / [`MetaClient::send_with_retry`] | [`ApiError`] with [`ApiError::class`], [`ApiError::may_have_been_sent`], [`RetryPolicy::advise`] |
//! | pace | [`NumberPacer`] (per number) and [`PairLimiter`] (per recipient) before each send | [`Pace::WaitUntil`] |
//!
//! # The types
//!
//! - [`webhook`]: the typed payload. [`Event::Message`] carries the business number
//!   ([`webhook::Business`]), the sender's [`webhook::Contact`] (joined by id, not position) and
//!   a [`webhook::Message`] whose [`webhook::Content`] covers every type Meta sends; strings
//!   borrow from the body; every item keeps its raw JSON ([`webhook::Raw`]).
//! - [`outgoing`]: builders that check every Meta limit at construction, counting Unicode
//!   scalar values; insta snapshots pin their JSON.
//! - [`MetaClient`] over a [`Transport`] you can implement for any HTTP stack
//!   ([`ReqwestTransport`] with the `reqwest` feature); [`Sleeper`] and [`Jitter`] are
//!   injected so retries are testable without sleeping.
//! - [`classify`] maps Meta's error codes to an [`ErrorClass`]; [`RetryPolicy`] turns an
//!   error into a [`RetryAdvice`] (resend after, reconcile, fail, pause).
//! - Phone numbers, tokens and raw bodies are redacted in every `Debug` output; the crate
//!   does no logging.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `reqwest` | yes | [`ReqwestTransport`] (reqwest, rustls) and [`TokioSleeper`]; pulls in tokio |
//!
//! Without default features the crate has no async runtime dependency at all.
//!
//! # Example: a webhook delivery, end to end
//!
//! ```
//! use flowcore_meta::{parse, sign, to_input, verify_signature, Event};
//!
//! let secret = "app-secret";
//! let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"102","changes":[{"field":"messages","value":{
//!   "messaging_product":"whatsapp","metadata":{"display_phone_number":"13125550100","phone_number_id":"106"},
//!   "contacts":[{"profile":{"name":"Ana"},"wa_id":"12025550101"}],
//!   "messages":[{"from":"12025550101","id":"wamid.IN1","timestamp":"1780300800","type":"interactive",
//!     "interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Sim"}}}]}}]}]}"#;
//! let header = sign(body, secret.as_bytes()); // what Meta puts in X-Hub-Signature-256
//!
//! verify_signature(body, Some(&header), &[secret]).expect("signed by Meta");
//! for event in parse(body).expect("a JSON object") {
//!     let key = event.dedup_key().map(|k| k.to_string()); // the inbox key
//!     if let Event::Message(m) = &event {
//!         assert_eq!(key.as_deref(), Some("message:wamid.IN1"));
//!         assert_eq!(m.conversation_key(), Some(("106", "12025550101")));
//!         assert_eq!(to_input(m), flowcore::Input::Choice { id: "yes".into(), title: Some("Sim".into()) });
//!     }
//! }
//! ```
//!
//! # Example: answering through the client with retries
//!
//! ```
//! use std::time::Duration;
//! use flowcore_meta::outgoing::Recipient;
//! use flowcore_meta::*;
//!
//! struct Fake; // a Transport that accepts everything
//! #[async_trait::async_trait]
//! impl Transport for Fake {
//!     async fn execute(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
//!         assert_eq!(req.url, "https://graph.facebook.com/v21.0/106/messages");
//!         Ok(HttpResponse::new(200, vec![], br#"{"messages":[{"id":"wamid.OUT"}]}"#.to_vec()))
//!     }
//! }
//! struct NoSleep;
//! #[async_trait::async_trait]
//! impl Sleeper for NoSleep {
//!     async fn sleep(&self, _: Duration) {}
//! }
//!
//! let to = Recipient::phone("+1 202 555 0101")?;
//! let replies = to_outgoing(&to, &flowcore::Message::Text { text: "Olá!".into() })?;
//! let client = MetaClient::new(Fake, "token");
//! let policy = RetryPolicy::default();
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! for reply in &replies {
//!     let receipt = client.send_with_retry("106", reply, &policy, &NoSleep).await.unwrap();
//!     assert_eq!(receipt.wamid, "wamid.OUT");
//! }
//! # });
//! # Ok::<(), flowcore_meta::outgoing::BuildError>(())
//! ```
#![forbid(unsafe_code)]

mod bridge;
mod client;
mod error;
pub mod outgoing;
mod pacing;
mod retry;
#[cfg(feature = "runtime")]
pub mod runtime;
mod signature;
mod transport;
mod verify;
pub mod webhook;

pub use bridge::{event_to_input, message_to_input, split_text, to_input, to_outgoing};
pub use client::{MediaInfo, MetaClient, SendFailure, SendReceipt, DEFAULT_API_VERSION, DEFAULT_BASE_URL};
pub use error::{classify, ApiError, ErrorClass, GraphError};
pub use pacing::{NumberPacer, Pace, PairLimiter};
#[cfg(feature = "reqwest")]
pub use retry::TokioSleeper;
pub use retry::{
    parse_retry_after, response_date, FixedJitter, Jitter, RetryAdvice, RetryPolicy, Scope, Sleeper, StdJitter,
};
pub use signature::{sign, verify_signature, SignatureError, SIGNATURE_HEADER};
#[cfg(feature = "reqwest")]
pub use transport::ReqwestTransport;
pub use transport::{HttpRequest, HttpResponse, Method, RecordingTransport, Transport, TransportError};
pub use verify::{verify_subscription, SubscriptionQuery, VerifyError};
pub use webhook::{parse, DedupKey, Event, MessageEvent, ParseError, StatusEvent, Webhook};
