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
//! | [`intake`] | webhook body → inbox rows and delivery statuses |
//! | [`worker`] | inbox → engine → effects → one committed unit of work |
//! | [`sender`] | outbox → Graph API with retry/backoff |
//! | [`effects`] | `api_call`, `ai_prompt`, and the pluggable [`effects::HostEffects`] |

pub mod admin;
pub mod config;
pub mod effects;
pub mod env;
pub mod error;
pub mod flows;
pub mod http;
pub mod intake;
pub mod openapi;
pub mod ratelimit;
pub mod routing;
pub mod run;
pub mod sender;
pub mod state;
pub mod util;
pub mod worker;
