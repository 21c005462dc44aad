//! Performing the engine's effects: `api_call` over HTTP, `ai_prompt` through an
//! OpenAI-compatible chat-completions endpoint, and everything else through a
//! pluggable [`HostEffects`] trait.
//!
//! Every effect ends as an [`EffectOutcome`]: a failure is a value the flow can route on
//! (its `failure` edge), never an error that stops the worker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowcore::{EffectKind, EffectOutcome};
pub use flowcore_store::runtime::EffectContext;
use flowcore_store::runtime::EffectHandler;
use serde_json::{json, Value};

use super::env::AiSettings;

/// Effects the server cannot perform by itself: `database_query`, `script`, `action`,
/// and `ai_prompt` when no chat-completions endpoint is configured.
///
/// Implement it in a host that embeds the server's pieces and pass it to
/// [`Effects::new`]. The default methods fail the effect cleanly with a message that names
/// what is missing, so a flow with a `failure` edge takes it and one without ends the
/// session with [`flowcore::EndReason::EffectFailed`] — the contact is never left waiting.
#[async_trait]
pub trait HostEffects: Send + Sync + 'static {
    /// Runs a database query; the rows (as JSON) are the result.
    async fn database_query(&self, _ctx: &EffectContext, _query: &str, _params: &Value) -> EffectOutcome {
        EffectOutcome::Failure("database_query is not supported by this server".to_owned())
    }

    /// Runs a script; its return value is the result.
    async fn script(&self, _ctx: &EffectContext, _language: Option<&str>, _code: &str) -> EffectOutcome {
        EffectOutcome::Failure("script is not supported by this server".to_owned())
    }

    /// Performs a named action.
    async fn action(&self, _ctx: &EffectContext, action: &str, _params: &Value) -> EffectOutcome {
        EffectOutcome::Failure(format!("action {action:?} is not supported by this server"))
    }

    /// Answers a prompt when no chat-completions endpoint is configured.
    async fn ai_prompt(&self, _ctx: &EffectContext, _prompt: &str, _system: Option<&str>) -> EffectOutcome {
        EffectOutcome::Failure("ai_prompt is not configured (set OPENAI_BASE_URL or OPENAI_API_KEY)".to_owned())
    }
}

/// The documented default: every host-specific effect fails cleanly.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHostEffects;

impl HostEffects for NoHostEffects {}

/// Performs effects for the workers.
#[derive(Clone)]
pub struct Effects {
    http: reqwest::Client,
    timeout: Duration,
    ai: Option<AiSettings>,
    host: Arc<dyn HostEffects>,
}

impl Effects {
    /// `timeout` is `FLOW_EXECUTION_TIMEOUT_MS`: the ceiling of every HTTP effect (a flow's
    /// own `timeoutMs` can only shorten it).
    pub fn new(timeout: Duration, ai: Option<AiSettings>, host: Arc<dyn HostEffects>) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("flowcore-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with static settings builds");
        Effects { http, timeout, ai, host }
    }

    /// Performs one effect. Analytics is handled by the runtime (it is recorded, not run).
    pub async fn perform(&self, ctx: &EffectContext, kind: &EffectKind) -> EffectOutcome {
        match kind {
            EffectKind::ApiCall { method, url, headers, body, timeout_ms } => {
                let timeout = timeout_ms.map(Duration::from_millis).map_or(self.timeout, |t| t.min(self.timeout));
                self.api_call(method, url, headers, body.as_deref(), timeout).await
            }
            EffectKind::AiPrompt { prompt, system, model } => match &self.ai {
                Some(ai) => self.chat_completion(ai, prompt, system.as_deref(), model.as_deref()).await,
                None => self.host.ai_prompt(ctx, prompt, system.as_deref()).await,
            },
            EffectKind::DatabaseQuery { query, params } => self.host.database_query(ctx, query, params).await,
            EffectKind::Script { language, code } => self.host.script(ctx, language.as_deref(), code).await,
            EffectKind::Action { action, params } => self.host.action(ctx, action, params).await,
            EffectKind::Analytics { .. } => EffectOutcome::Success(Value::Null),
            other => EffectOutcome::Failure(format!("effect {other:?} is not supported by this server")),
        }
    }

    async fn api_call(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&str>,
        timeout: Duration,
    ) -> EffectOutcome {
        let method = match reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => m,
            Err(_) => return EffectOutcome::Failure(format!("invalid HTTP method {method:?}")),
        };
        let mut request = self.http.request(method, url).timeout(timeout);
        let mut has_content_type = false;
        for (name, value) in headers {
            has_content_type |= name.eq_ignore_ascii_case("content-type");
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = body {
            // A body that is JSON is sent as JSON unless the flow set its own content type.
            if !has_content_type && serde_json::from_str::<Value>(body).is_ok() {
                request = request.header("content-type", "application/json");
            }
            request = request.body(body.to_owned());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return EffectOutcome::Failure(format!("timed out after {} ms", timeout.as_millis()))
            }
            Err(e) => return EffectOutcome::Failure(format!("request failed: {}", without_url(&e))),
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return EffectOutcome::Failure(format!("reading the response failed: {}", without_url(&e))),
        };
        if !status.is_success() {
            return EffectOutcome::Failure(format!("HTTP {}", status.as_u16()));
        }
        EffectOutcome::Success(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn chat_completion(
        &self,
        ai: &AiSettings,
        prompt: &str,
        system: Option<&str>,
        model: Option<&str>,
    ) -> EffectOutcome {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let body = json!({"model": model.unwrap_or(&ai.model), "messages": messages});
        let mut request = self.http.post(format!("{}/chat/completions", ai.base_url)).timeout(self.timeout).json(&body);
        if !ai.api_key.is_empty() {
            request = request.bearer_auth(&ai.api_key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return EffectOutcome::Failure("ai_prompt timed out".to_owned()),
            Err(e) => return EffectOutcome::Failure(format!("ai_prompt request failed: {}", without_url(&e))),
        };
        let status = response.status();
        let value: Value = match response.json().await {
            Ok(v) => v,
            Err(_) => {
                return EffectOutcome::Failure(format!("ai_prompt: HTTP {} with a non-JSON body", status.as_u16()))
            }
        };
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no message");
            return EffectOutcome::Failure(format!("ai_prompt: HTTP {}: {message}", status.as_u16()));
        }
        match value["choices"][0]["message"]["content"].as_str() {
            Some(content) => EffectOutcome::Success(Value::String(content.to_owned())),
            None => EffectOutcome::Failure("ai_prompt: response has no choices[0].message.content".to_owned()),
        }
    }
}

#[async_trait]
impl EffectHandler for Effects {
    async fn perform(&self, ctx: &EffectContext, kind: &EffectKind) -> EffectOutcome {
        Effects::perform(self, ctx, kind).await
    }
}

/// reqwest's error text without the URL (which can carry tokens in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    last.unwrap_or_else(|| if e.is_connect() { "connection failed".to_owned() } else { "error".to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn ctx() -> EffectContext {
        EffectContext { organization: "acme".into(), flow_id: "f".into(), contact: "1".into() }
    }

    #[tokio::test]
    async fn api_call_returns_json_and_fails_on_status_and_timeout() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/orders/123456"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "shipped"})))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/slow"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
            .mount(&server)
            .await;
        let effects = Effects::new(Duration::from_millis(300), None, Arc::new(NoHostEffects));
        let call = |url: String| EffectKind::ApiCall {
            method: "GET".into(),
            url,
            headers: vec![],
            body: None,
            timeout_ms: None,
        };
        assert_eq!(
            effects.perform(&ctx(), &call(format!("{}/orders/123456", server.uri()))).await,
            EffectOutcome::Success(json!({"status": "shipped"}))
        );
        assert_eq!(
            effects.perform(&ctx(), &call(format!("{}/missing", server.uri()))).await,
            EffectOutcome::Failure("HTTP 404".into())
        );
        match effects.perform(&ctx(), &call(format!("{}/slow", server.uri()))).await {
            EffectOutcome::Failure(m) => assert!(m.contains("timed out"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn ai_prompt_calls_chat_completions() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", "Bearer k"))
            .and(body_partial_json(json!({"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "oi"}]})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"choices": [{"message": {"role": "assistant", "content": "Olá!"}}]})))
            .expect(1)
            .mount(&server)
            .await;
        let ai = AiSettings { base_url: format!("{}/v1", server.uri()), api_key: "k".into(), model: "m".into() };
        let effects = Effects::new(Duration::from_secs(5), Some(ai), Arc::new(NoHostEffects));
        let kind = EffectKind::AiPrompt { prompt: "oi".into(), system: Some("be brief".into()), model: None };
        assert_eq!(effects.perform(&ctx(), &kind).await, EffectOutcome::Success(json!("Olá!")));
    }

    #[tokio::test]
    async fn host_effects_default_to_clean_failures() {
        let effects = Effects::new(Duration::from_secs(1), None, Arc::new(NoHostEffects));
        for kind in [
            EffectKind::DatabaseQuery { query: "select 1".into(), params: Value::Null },
            EffectKind::Script { language: None, code: "1".into() },
            EffectKind::AiPrompt { prompt: "oi".into(), system: None, model: None },
        ] {
            assert!(matches!(effects.perform(&ctx(), &kind).await, EffectOutcome::Failure(_)), "{kind:?}");
        }
    }
}
