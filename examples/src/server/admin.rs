//! The admin API: conversations, manual messages, analytics and flow publishing, always
//! scoped to the organization whose bearer token the request carries.
//!
//! A conversation is addressed by the contact's id exactly as Meta sent it (`wa_id`
//! digits, or a BSUID). An organization with several business numbers can have one
//! conversation per number with the same contact; the API merges them by time.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flowcore::{Message, Timestamp};
use flowcore_store::{
    Content, ConversationKey, Direction, FlowMetrics, LogEntry, MetricsQuery, NewLogEntry, NewOutboxMessage, Page,
    SessionStatus,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::error::{rejection, ApiError};
use super::http::Org;
use super::routing;
use super::state::AppState;
use super::util;
use flowcore_store::runtime::{compile, declared_id, OutboxPayload};

/// `skip` / `limit` query parameters.
#[derive(Debug, Deserialize)]
pub struct Paging {
    #[serde(default)]
    skip: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    50
}

/// `GET /api/v1/conversations?skip&limit`.
pub async fn list_conversations(
    State(state): State<AppState>,
    Org(org): Org,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(paging) = paging.map_err(rejection)?;
    if paging.limit == 0 || paging.limit > Page::MAX_LIMIT {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {}", Page::MAX_LIMIT)));
    }
    let page = Page { offset: paging.skip, limit: paging.limit };
    let rows = state.store.list_conversations(&org, page).await.map_err(ApiError::store)?;
    let total = count_conversations(&state, &org).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|c| {
            json!({
                "phone_number": c.conversation.contact_id,
                "business_phone_number_id": c.conversation.business_number_id,
                "message_count": c.message_count,
                "first_message_at": util::rfc3339(c.first_message_at),
                "last_message_at": util::rfc3339(c.last_message_at),
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "skip": paging.skip, "limit": paging.limit, "total": total})))
}

async fn count_conversations(state: &AppState, org: &str) -> Result<u64, ApiError> {
    // The store has no count query; page through at the largest page size.
    let mut page = Page::first(Page::MAX_LIMIT);
    let mut total = 0u64;
    loop {
        let rows = state.store.list_conversations(org, page).await.map_err(ApiError::store)?;
        total += rows.len() as u64;
        if rows.len() < page.limit as usize {
            return Ok(total);
        }
        page = page.next();
    }
}

/// The conversations an organization has with `phone` (one per business number that
/// talked to it), most recently active first. Empty when there is none.
pub(super) async fn conversations_of(
    state: &AppState,
    org: &str,
    phone: &str,
) -> Result<Vec<(ConversationKey, i64)>, ApiError> {
    let mut found = Vec::new();
    for number in state.tenants.numbers_of(org) {
        let key = ConversationKey::new(org, number, phone);
        let last =
            state.store.history(&key, Page { offset: 0, limit: Page::MAX_LIMIT }).await.map_err(ApiError::store)?;
        let sessions = state.store.conversation_sessions(&key).await.map_err(ApiError::store)?;
        if last.is_empty() && sessions.is_empty() {
            continue;
        }
        let latest = last.last().map(|e| e.at.as_unix_millis()).unwrap_or(0);
        found.push((key, latest));
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.1));
    Ok(found)
}

pub(super) async fn full_history(state: &AppState, key: &ConversationKey) -> Result<Vec<LogEntry>, ApiError> {
    let mut page = Page::first(Page::MAX_LIMIT);
    let mut all = Vec::new();
    loop {
        let rows = state.store.history(key, page).await.map_err(ApiError::store)?;
        let n = rows.len();
        all.extend(rows);
        if n < page.limit as usize {
            return Ok(all);
        }
        page = page.next();
    }
}

/// The text of a logged message: the text itself, or a structured message's body.
pub fn entry_text(content: &Content) -> String {
    match content {
        Content::Text(t) => t.clone(),
        Content::Json(v) => ["text", "body", "caption", "name"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string()),
    }
}

fn is_system_note(content: &Content) -> bool {
    matches!(content, Content::Json(v) if v.get("system").is_some())
}

struct Transcript {
    phone: String,
    flow_id: Option<String>,
    messages: Vec<LogEntry>,
}

async fn transcript(state: &AppState, org: &str, phone: &str) -> Result<Transcript, ApiError> {
    let conversations = conversations_of(state, org, phone).await?;
    if conversations.is_empty() {
        return Err(ApiError::NotFound("conversation".to_owned()));
    }
    let mut messages = Vec::new();
    let mut flow_id = None;
    for (key, _) in &conversations {
        if flow_id.is_none() {
            let sessions = state.store.conversation_sessions(key).await.map_err(ApiError::store)?;
            flow_id = sessions.iter().find(|s| s.status == SessionStatus::Active).map(|s| s.key.flow_id.clone());
        }
        // System notes (handoff, analytics) are bookkeeping, not messages.
        messages.extend(full_history(state, key).await?.into_iter().filter(|e| !is_system_note(&e.content)));
    }
    messages.sort_by_key(|e| (e.at, e.id));
    if flow_id.is_none() {
        flow_id = messages.iter().rev().find_map(|e| e.flow_id.clone());
    }
    Ok(Transcript { phone: phone.to_owned(), flow_id, messages })
}

fn transcript_json(t: &Transcript) -> Value {
    let messages: Vec<Value> = t
        .messages
        .iter()
        .map(|e| {
            json!({
                "type": if e.direction == Direction::Inbound { "user" } else { "bot" },
                "text": entry_text(&e.content),
                "timestamp": util::rfc3339(e.at),
            })
        })
        .collect();
    json!({"phone_number": t.phone, "flow_id": t.flow_id, "messages": messages})
}

/// `GET /api/v1/conversations/{phone}`.
pub async fn get_conversation(
    State(state): State<AppState>,
    Org(org): Org,
    Path(phone): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(transcript_json(&transcript(&state, &org, &phone).await?)))
}

/// `format=json|csv|chat`.
#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/v1/conversations/{phone}/export?format=json|csv|chat` (`chat`: a `.chat`
/// file for `flowctl test`, see [`super::export`]).
pub async fn export_conversation(
    State(state): State<AppState>,
    Org(org): Org,
    Path(phone): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let format = query.format.as_deref().unwrap_or("json");
    if !["json", "csv", "chat"].contains(&format) {
        return Err(ApiError::BadRequest("format must be json, csv or chat".to_owned()));
    }
    let disposition = format!("attachment; filename=\"conversation-{}.{format}\"", sanitize_filename(&phone));
    if format == "chat" {
        let text =
            super::export::chat(&state, &org, &phone).await?.ok_or(ApiError::NotFound("conversation".to_owned()))?;
        let headers = [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ];
        return Ok((headers, text).into_response());
    }
    let t = transcript(&state, &org, &phone).await?;
    if format == "json" {
        return Ok(([(header::CONTENT_DISPOSITION, disposition)], Json(transcript_json(&t))).into_response());
    }
    let mut csv = String::from("timestamp,type,text,flow_id\n");
    for e in &t.messages {
        let kind = if e.direction == Direction::Inbound { "user" } else { "bot" };
        csv.push_str(&format!(
            "{},{},{},{}\n",
            util::rfc3339(e.at),
            kind,
            csv_field(&entry_text(&e.content)),
            csv_field(e.flow_id.as_deref().unwrap_or(""))
        ));
    }
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        csv,
    )
        .into_response())
}

fn sanitize_filename(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').collect()
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet
/// does not run a contact's message as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The body of `POST /api/v1/conversations/{phone}/send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    text: String,
}

/// `POST /api/v1/conversations/{phone}/send`: a manual message, through the outbox.
pub async fn send_message(
    State(state): State<AppState>,
    Org(org): Org,
    Path(phone): Path<String>,
    body: Result<Json<SendBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(rejection)?;
    if body.text.trim().is_empty() || body.text.chars().count() > 4096 {
        return Err(ApiError::BadRequest("text must be 1 to 4096 characters".to_owned()));
    }
    let conversations = conversations_of(&state, &org, &phone).await?;
    let Some((key, _)) = conversations.into_iter().next() else {
        return Err(ApiError::NotFound("conversation".to_owned()));
    };
    let now = state.now();
    let message = Message::Text { text: body.text.clone() };
    let payload = OutboxPayload { message: message.clone(), node: None, manual: true };
    let ids = state
        .store
        .enqueue_outbox(
            &org,
            &[NewOutboxMessage {
                conversation: key.clone(),
                payload: serde_json::to_value(&payload).expect("plain data"),
                due_at: now,
                inbox_id: None,
            }],
        )
        .await
        .map_err(ApiError::store)?;
    state
        .store
        .append_log(
            &org,
            &[NewLogEntry {
                conversation: key,
                flow_id: None,
                direction: Direction::Outbound,
                content: Content::Text(body.text),
                node_id: None,
                wamid: None,
                at: now,
                metadata: json!({"manual": true, "outbox_id": ids.first()}),
            }],
        )
        .await
        .map_err(ApiError::store)?;
    state.runtime.notify_outbox();
    info!(org = %org, "manual message queued");
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "queued", "outbox_id": ids.first()}))).into_response())
}

/// `POST /api/v1/conversations/{phone}/close`: ends the conversation's active sessions
/// (including a handoff); the next message starts the flow afresh.
pub async fn close_conversation(
    State(state): State<AppState>,
    Org(org): Org,
    Path(phone): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let conversations = conversations_of(&state, &org, &phone).await?;
    if conversations.is_empty() {
        return Err(ApiError::NotFound("conversation".to_owned()));
    }
    let now = state.now();
    let mut closed = 0;
    for (key, _) in conversations {
        for session in state.store.conversation_sessions(&key).await.map_err(ApiError::store)? {
            if session.status == SessionStatus::Active
                && state.store.close_session(&session.key, now).await.map_err(ApiError::store)?
            {
                closed += 1;
            }
        }
    }
    info!(org = %org, closed, "conversation closed through the API");
    Ok(Json(json!({"status": "closed", "closed_sessions": closed})))
}

/// `from` / `to` in Unix milliseconds.
#[derive(Debug, Deserialize)]
pub struct Window {
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    to: Option<i64>,
}

impl Window {
    fn query(&self) -> MetricsQuery {
        MetricsQuery { from: self.from.map(Timestamp::from_unix_millis), to: self.to.map(Timestamp::from_unix_millis) }
    }
}

/// `GET /api/v1/analytics/conversations`: sessions per flow and per A/B variant.
pub async fn analytics_conversations(
    State(state): State<AppState>,
    Org(org): Org,
    window: Result<Query<Window>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(window) = window.map_err(rejection)?;
    let m = state.store.metrics(&org, window.query()).await.map_err(ApiError::store)?;
    let per_flow: Vec<Value> = m.per_flow.iter().map(|f| flow_counts_json(&f.flow_id, Some(f))).collect();
    let ab_tests: Vec<Value> = state
        .tenants
        .ab_tests
        .iter()
        .filter(|(o, _, _)| *o == org)
        .map(|(_, chatbot, variants)| {
            // Counted per cohort, not per flow: a variant's flow may also run for other
            // chatbots, whose sessions are not part of the test.
            let variants: Vec<Value> = variants
                .iter()
                .map(|flow| {
                    let cohort = routing::ab_cohort(chatbot, flow);
                    let counts = m.per_cohort.iter().find(|c| c.cohort == cohort);
                    let total = counts.map_or(0, |c| c.conversations_total);
                    let active = counts.map_or(0, |c| c.conversations_active);
                    json!({"flow_id": flow, "conversations": total, "active": active, "closed": total - active})
                })
                .collect();
            json!({"chatbot": chatbot, "variants": variants})
        })
        .collect();
    let per_day: Vec<Value> =
        m.per_day.iter().map(|d| json!({"day": d.day, "conversations_started": d.conversations_started})).collect();
    Ok(Json(json!({
        "total": m.conversations_total,
        "active": m.conversations_active,
        "per_flow": per_flow,
        "ab_tests": ab_tests,
        "per_day": per_day,
    })))
}

/// One flow's counts as analytics JSON; a flow with no sessions yet counts zero.
fn flow_counts_json(flow_id: &str, counts: Option<&FlowMetrics>) -> Value {
    json!({"flow_id": flow_id,
           "conversations": counts.map_or(0, |f| f.conversations_total),
           "active": counts.map_or(0, |f| f.conversations_active),
           "messages_in": counts.map_or(0, |f| f.messages_in),
           "messages_out": counts.map_or(0, |f| f.messages_out)})
}

/// `GET /api/v1/analytics/metrics`: message counts, per day, and this instance's counters.
pub async fn analytics_metrics(
    State(state): State<AppState>,
    Org(org): Org,
    window: Result<Query<Window>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(window) = window.map_err(rejection)?;
    let m = state.store.metrics(&org, window.query()).await.map_err(ApiError::store)?;
    let per_day: Vec<Value> = m
        .per_day
        .iter()
        .map(|d| json!({"day": d.day, "messages_in": d.messages_in, "messages_out": d.messages_out}))
        .collect();
    Ok(Json(json!({
        "messages_in": m.messages_in,
        "messages_out": m.messages_out,
        "conversations_total": m.conversations_total,
        "conversations_active": m.conversations_active,
        "per_day": per_day,
        // Process-wide counters: they cover every organization of this instance, so only
        // totals that reveal no other tenant's content are shown.
        "instance": state.stats_snapshot(),
    })))
}

/// `flow_id` override for `POST /api/v1/flows`.
#[derive(Debug, Deserialize)]
pub struct PublishQuery {
    #[serde(default)]
    flow_id: Option<String>,
}

/// `POST /api/v1/flows`: publishes the body (flow JSON) as a new version.
pub async fn publish_flow(
    State(state): State<AppState>,
    Org(org): Org,
    query: Result<Query<PublishQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest("body is not UTF-8".to_owned()))?;
    let flow_id = query
        .flow_id
        .or_else(|| declared_id(text))
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("the flow needs an \"id\" (or ?flow_id=)".to_owned()))?;
    let compiled = compile(text).map_err(|p| ApiError::InvalidFlow(p.json))?;
    let warnings: Vec<String> = compiled.warnings().iter().map(ToString::to_string).collect();
    let version = state.runtime.flows().publish(&org, &flow_id, text, compiled).await.map_err(ApiError::store)?;
    info!(org = %org, flow_id = %flow_id, version, "flow published");
    Ok((StatusCode::CREATED, Json(json!({"flow_id": flow_id, "version": version, "warnings": warnings})))
        .into_response())
}
