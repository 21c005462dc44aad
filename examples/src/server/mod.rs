//! The bundled WhatsApp bot server (`flowcore-server`): config, routing, the durable
//! webhook → inbox → engine → outbox pipeline, and the admin API.
//!
//! The binary is a thin `main` around [`run::start`]; tests build the HTTP app with
//! [`http::app`] and drive it without a socket, or start the whole server on a loopback
//! port with `FLOWCORE_ADDR=127.0.0.1:0`.
//!
//! | module | what |
//! |---|---|
//! | [`env`] | settings from the environment (every variable, with defaults) |
//! | [`config`] | the tenant TOML: organizations, flows, chatbots, numbers |
//! | [`routing`] | business number → chatbot → flow (A/B by stable hash) |
//! | [`http`] | the axum router; [`admin`] its admin API, [`openapi`] its document |
//! | [`versions`] | the flow versions API: list, read, diff, roll back |
//! | [`export`] | a conversation as a `.chat` file for `flowctl test` |
//! | [`delivery`] | how replies leave: the Graph API (paced, retried) or the log |
//! | [`effects`] | `api_call`, `ai_prompt`, and the pluggable [`effects::HostEffects`] |
//! | [`flows`] | the config's flows, compiled at start |
//!
//! The pipeline itself — webhook body → inbox → worker → engine → effects → commit →
//! outbox → sender, the janitor and graceful shutdown — is the library's
//! [`flowcore_store::runtime`]; this module configures it from the environment and the TOML.

pub mod admin;
pub mod config;
pub mod delivery;
pub mod effects;
pub mod env;
pub mod error;
pub mod export;
pub mod flows;
pub mod http;
pub mod openapi;
pub mod routing;
pub mod run;
pub mod state;
pub mod util;
pub mod versions;
