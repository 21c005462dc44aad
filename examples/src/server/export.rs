//! `GET /api/v1/conversations/{phone}/export?format=chat`: a real conversation as a
//! `.chat` file that `flowctl test` runs against the flow version the session ran on.

use flowcore_store::{LogEntry, StoredSession};
use serde_json::{json, Map};

use super::admin;
use super::error::ApiError;
use super::state::AppState;
use crate::transcript::{chat_from_log, ChatExport};

/// The `.chat` text of the organization's conversation with `phone`; `None` when there is
/// no such conversation.
///
/// The flow version is the active session's; when the session has ended (its state is
/// gone) it is the flow's latest version, and the file's header says so. `@vars` holds the
/// `phone_number` (and `contact_name`) the server gives every session.
pub async fn chat(state: &AppState, org: &str, phone: &str) -> Result<Option<String>, ApiError> {
    let conversations = admin::conversations_of(state, org, phone).await?;
    if conversations.is_empty() {
        return Ok(None);
    }
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut active: Option<StoredSession> = None;
    for (key, _) in &conversations {
        entries.extend(admin::full_history(state, key).await?);
        if active.is_none() {
            active = state.store.active_session(key).await.map_err(ApiError::store)?;
        }
    }
    entries.sort_by_key(|e| (e.at, e.id));

    let mut comments = vec![format!("conversation exported by flowcore-server ({} messages)", entries.len())];
    let mut vars = Map::new();
    vars.insert("phone_number".into(), json!(phone));
    let flow = match &active {
        Some(session) => {
            if let Some(name) = session.session.variable("contact_name") {
                vars.insert("contact_name".into(), name.clone());
            }
            let flow_id = &session.key.flow_id;
            comments.push(format!("flow {flow_id}, version {} (the active session's)", session.flow_version));
            match state.runtime.flows().get(org, flow_id, session.flow_version).await {
                Ok(flow) => Some(flow),
                Err(err) => {
                    comments.push(format!("the flow could not be loaded ({err}): no (end) lines are inferred"));
                    None
                }
            }
        }
        None => match entries.iter().rev().find_map(|e| e.flow_id.clone()) {
            Some(flow_id) => match state.runtime.flows().latest(org, &flow_id).await {
                Ok((version, flow)) => {
                    comments.push(format!("flow {flow_id}, version {version} (the latest: the session has ended)"));
                    Some(flow)
                }
                Err(err) => {
                    comments.push(format!("flow {flow_id} could not be loaded ({err}): no (end) lines are inferred"));
                    None
                }
            },
            None => None,
        },
    };
    let export = ChatExport { comments, flow: flow.as_deref(), vars };
    Ok(Some(chat_from_log(&entries, &export)))
}
