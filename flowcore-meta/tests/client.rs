//! `MetaClient` against wiremock as a fake Graph API: every path, no real sleeping.

use std::sync::Mutex;
use std::time::Duration;

use flowcore_meta::outgoing::{MarkRead, OutgoingMessage, Recipient, Text};
use flowcore_meta::{
    ApiError, ErrorClass, FixedJitter, MetaClient, ReqwestTransport, RetryAdvice, RetryPolicy, Scope, Sleeper,
    TransportError,
};
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const PNID: &str = "106000000000001";
const TOKEN: &str = "EAAG-test-token-secret";

/// Records requested sleeps instead of sleeping.
#[derive(Default)]
struct RecordingSleeper(Mutex<Vec<Duration>>);

#[async_trait::async_trait]
impl Sleeper for RecordingSleeper {
    async fn sleep(&self, duration: Duration) {
        self.0.lock().unwrap().push(duration);
    }
}

impl RecordingSleeper {
    fn slept(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

/// Answers with the given responses in order, then repeats the last.
struct Sequence(Mutex<Vec<ResponseTemplate>>);

impl Sequence {
    fn new(responses: Vec<ResponseTemplate>) -> Self {
        Sequence(Mutex::new(responses.into_iter().rev().collect()))
    }
}

impl Respond for Sequence {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut stack = self.0.lock().unwrap();
        if stack.len() > 1 {
            stack.pop().unwrap()
        } else {
            stack[0].clone()
        }
    }
}

fn client(server: &MockServer) -> MetaClient<ReqwestTransport> {
    MetaClient::new(ReqwestTransport::new(), TOKEN).with_base_url(server.uri()).with_api_version("v21.0")
}

fn text_to(number: &str) -> OutgoingMessage {
    OutgoingMessage::new(Recipient::phone(number).unwrap(), Text::new("Olá").unwrap())
}

fn sent(wamid: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": "12025550101", "wa_id": "12025550101" }],
        "messages": [{ "id": wamid, "message_status": "accepted" }]
    }))
}

fn graph_error(status: u16, code: i64) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {
            "message": format!("(#{code}) error"),
            "type": "OAuthException",
            "code": code,
            "error_subcode": 2494010,
            "error_data": { "messaging_product": "whatsapp", "details": "details here" },
            "fbtrace_id": "AbCdEf"
        }
    }))
}

fn policy() -> RetryPolicy {
    RetryPolicy::default().with_jitter(FixedJitter(0.5))
}

async fn received(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

#[tokio::test]
async fn success_posts_the_message_with_the_bearer_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{PNID}/messages")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({ "messaging_product": "whatsapp", "to": "12025550101", "type": "text" })))
        .respond_with(sent("wamid.OUT1"))
        .expect(1)
        .mount(&server)
        .await;
    let receipt = client(&server).send(PNID, &text_to("+1 202 555 0101")).await.unwrap();
    assert_eq!(receipt.wamid, "wamid.OUT1");
    assert_eq!(receipt.message_status.as_deref(), Some("accepted"));
}

#[tokio::test]
async fn a_400_is_permanent_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(graph_error(400, 131026)).mount(&server).await;
    let sleeper = RecordingSleeper::default();
    let failure =
        client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap_err();
    assert_eq!(failure.attempts, 1);
    assert_eq!(failure.advice, RetryAdvice::Fail);
    assert_eq!(failure.error.class(), ErrorClass::Recipient);
    assert!(!failure.error.may_have_been_sent());
    let ApiError::Graph { status, error, .. } = &failure.error else { panic!("{:?}", failure.error) };
    assert_eq!((*status, error.code, error.error_subcode), (400, 131026, Some(2494010)));
    assert_eq!((error.details.as_deref(), error.fbtrace_id.as_deref()), (Some("details here"), Some("AbCdEf")));
    assert!(sleeper.slept().is_empty());
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn a_500_on_send_is_may_have_been_sent_and_left_to_the_outbox() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence::new(vec![graph_error(500, 131000), sent("wamid.OUT2")]))
        .mount(&server)
        .await;
    let sleeper = RecordingSleeper::default();
    let failure =
        client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap_err();
    assert!(failure.error.may_have_been_sent());
    assert_eq!(failure.advice, RetryAdvice::Reconcile);
    assert_eq!(received(&server).await, 1, "a send that may have gone out is not resent");
    // The outbox decides to resend (say, after reconciling): the next attempt succeeds.
    let receipt = client(&server).send(PNID, &text_to("12025550101")).await.unwrap();
    assert_eq!(receipt.wamid, "wamid.OUT2");
}

#[tokio::test]
async fn a_500_then_success_is_retried_for_idempotent_calls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{PNID}/messages")))
        .and(body_partial_json(json!({ "status": "read", "typing_indicator": { "type": "text" } })))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(500).set_body_string(""),
            ResponseTemplate::new(200).set_body_json(json!({ "success": true })),
        ]))
        .mount(&server)
        .await;
    let client = client(&server);
    let mark = MarkRead::new("wamid.IN").unwrap().typing_indicator();
    let policy = policy();
    let first = client.mark_read(PNID, &mark).await.unwrap_err();
    assert_eq!(first.class(), ErrorClass::Transient);
    let RetryAdvice::RetryAfter { after, .. } = policy.advise(&first, 0, true) else { panic!() };
    assert_eq!(after, Duration::from_millis(500));
    client.mark_read(PNID, &mark).await.unwrap();
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(429).insert_header("Retry-After", "7").set_body_string("slow down"),
            graph_error(400, 130429),
            sent("wamid.OUT3"),
        ]))
        .mount(&server)
        .await;
    let sleeper = RecordingSleeper::default();
    let receipt = client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap();
    assert_eq!(receipt.wamid, "wamid.OUT3");
    // 429 → Retry-After 7 s; 130429 without the header → full-jitter backoff (attempt 1: 0.5 · 2 s).
    assert_eq!(sleeper.slept(), [Duration::from_secs(7), Duration::from_secs(1)]);
    assert_eq!(received(&server).await, 3);
}

/// A `Retry-After` given as an HTTP date is a wait until that date, measured against the
/// response's own `Date` (so a local clock that is off does not matter).
#[tokio::test]
async fn a_429_with_a_retry_after_date_waits_until_that_date() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(429)
                .insert_header("Date", "Sun, 22 Nov 2026 15:00:00 GMT")
                .insert_header("Retry-After", "Sun, 22 Nov 2026 15:00:42 GMT")
                .set_body_string("slow down"),
            sent("wamid.OUT4"),
        ]))
        .mount(&server)
        .await;
    let sleeper = RecordingSleeper::default();
    let receipt = client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap();
    assert_eq!(receipt.wamid, "wamid.OUT4");
    assert_eq!(sleeper.slept(), [Duration::from_secs(42)]);
}

#[tokio::test]
async fn pair_limit_on_one_recipient_while_others_flow() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({ "to": "12025550101" })))
        .respond_with(Sequence::new(vec![graph_error(400, 131056), graph_error(400, 131056), sent("wamid.A")]))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({ "to": "12025550102" })))
        .respond_with(sent("wamid.B"))
        .mount(&server)
        .await;
    let client = client(&server);
    let (sleep_a, sleep_b) = (RecordingSleeper::default(), RecordingSleeper::default());
    let policy = policy();
    let (to_a, to_b) = (text_to("12025550101"), text_to("12025550102"));
    let (a, b) = tokio::join!(
        client.send_with_retry(PNID, &to_a, &policy, &sleep_a),
        client.send_with_retry(PNID, &to_b, &policy, &sleep_b),
    );
    assert_eq!(a.unwrap().wamid, "wamid.A");
    assert_eq!(b.unwrap().wamid, "wamid.B");
    assert_eq!(sleep_a.slept(), [Duration::from_secs(1), Duration::from_secs(4)], "1 s, then 4 s");
    assert!(sleep_b.slept().is_empty(), "the other recipient never waited");

    // Advice scope says only the recipient is held back.
    let e = client.send(PNID, &text_to("12025550101")).await;
    assert!(e.is_ok());
    let pair = ApiError::Graph {
        status: 400,
        error: Box::new(flowcore_meta::GraphError::from_body(br#"{"error":{"code":131056}}"#).unwrap()),
        retry_after: None,
    };
    assert!(matches!(policy.advise(&pair, 0, false), RetryAdvice::RetryAfter { scope: Scope::Recipient, .. }));
}

#[tokio::test]
async fn a_timeout_is_may_have_been_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sent("wamid.LATE").set_delay(Duration::from_millis(800)))
        .mount(&server)
        .await;
    let client = client(&server).with_timeout(Duration::from_millis(100));
    let sleeper = RecordingSleeper::default();
    let failure = client.send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap_err();
    assert_eq!(failure.error, ApiError::Transport(TransportError::Timeout));
    assert!(failure.error.may_have_been_sent());
    assert_eq!(failure.advice, RetryAdvice::Reconcile);
    assert_eq!(failure.attempts, 1);
}

#[tokio::test]
async fn malformed_json_on_success_is_an_unexpected_response() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"messages\": ["))
        .mount(&server)
        .await;
    let error = client(&server).send(PNID, &text_to("12025550101")).await.unwrap_err();
    assert!(matches!(error, ApiError::UnexpectedResponse { status: 200, .. }), "{error:?}");
    assert!(error.may_have_been_sent(), "Meta probably accepted it");

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": []})))
        .mount(&server)
        .await;
    let error = client(&server).send(PNID, &text_to("12025550101")).await.unwrap_err();
    assert!(matches!(error, ApiError::UnexpectedResponse { .. }));
}

#[tokio::test]
async fn an_html_error_page() {
    let server = MockServer::start().await;
    let page = "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>";
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502).insert_header("content-type", "text/html").set_body_string(page))
        .mount(&server)
        .await;
    let sleeper = RecordingSleeper::default();
    let failure =
        client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap_err();
    let ApiError::Http { status: 502, ref body_start, retry_after: None } = failure.error else {
        panic!("{failure:?}")
    };
    assert!(body_start.contains("Bad Gateway"));
    assert!(failure.error.may_have_been_sent());
    assert_eq!(failure.advice, RetryAdvice::Reconcile);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_string("<html>nope</html>"))
        .mount(&server)
        .await;
    let failure =
        client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap_err();
    assert_eq!(failure.advice, RetryAdvice::Fail, "an unknown 4xx is not retried");
}

#[tokio::test]
async fn maintenance_retries_every_20_seconds_until_the_budget_ends() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(graph_error(400, 131057)).mount(&server).await;
    let sleeper = RecordingSleeper::default();
    let failure =
        client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap_err();
    assert_eq!(failure.attempts, 5);
    assert_eq!(sleeper.slept(), vec![Duration::from_secs(20); 4]);
    assert!(matches!(failure.advice, RetryAdvice::RetryAfter { .. }), "the outbox may reschedule");
    assert_eq!(received(&server).await, 5);
}

#[tokio::test]
async fn spam_limit_131048_is_never_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(graph_error(400, 131048)).mount(&server).await;
    let sleeper = RecordingSleeper::default();
    let failure =
        client(&server).send_with_retry(PNID, &text_to("12025550101"), &policy(), &sleeper).await.unwrap_err();
    assert_eq!(failure.advice, RetryAdvice::Pause { scope: Scope::Number, hold: None });
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn media_upload_info_and_download() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{PNID}/media")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(|req: &Request| {
            let ct = req.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            let body = String::from_utf8_lossy(&req.body);
            ct.starts_with("multipart/form-data; boundary=flowcore-")
                && body.contains("name=\"messaging_product\"\r\n\r\nwhatsapp")
                && body.contains("filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\nPNGBYTES")
        })
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": "1450000000000099" })))
        .expect(1)
        .mount(&server)
        .await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/v21.0/1450000000000099"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp", "url": format!("{base}/whatsapp_business/attachments/?mid=99"),
            "mime_type": "image/png", "sha256": "abc", "file_size": 8, "id": "1450000000000099"
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/whatsapp_business/attachments/"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"PNGBYTES".to_vec()))
        .mount(&server)
        .await;

    let client = client(&server);
    let id = client.upload_media(PNID, b"PNGBYTES", "image/png", "p.png").await.unwrap();
    assert_eq!(id, "1450000000000099");
    let info = client.media_info(&id).await.unwrap();
    assert_eq!((info.mime_type.as_deref(), info.file_size), (Some("image/png"), Some(8)));
    assert_eq!(client.download_media(&info.url).await.unwrap(), b"PNGBYTES");
}

#[tokio::test]
async fn the_token_is_only_sent_to_meta_hosts() {
    let server = MockServer::start().await;
    let client = client(&server);
    for url in [
        "https://evil.example.com/steal",
        "https://graph.facebook.com.evil.example/x",
        "https://graph.facebook.com@evil.example/x",
        "http://lookaside.fbsbx.com/plain-http",
    ] {
        let error = client.download_media(url).await.unwrap_err();
        assert!(matches!(error, ApiError::UntrustedHost { .. } | ApiError::InvalidArgument { .. }), "{url}: {error:?}");
    }
    assert_eq!(received(&server).await, 0, "nothing was requested");
    assert!(matches!(client.media_info("../../me").await, Err(ApiError::InvalidArgument { .. })));
    assert!(matches!(client.send("106/../x", &text_to("12025550101")).await, Err(ApiError::InvalidArgument { .. })));
}

#[test]
fn debug_output_hides_the_token() {
    let client = MetaClient::new(ReqwestTransport::new(), TOKEN);
    let debug = format!("{client:?}");
    assert!(!debug.contains(TOKEN) && debug.contains("redacted"), "{debug}");
    let mut request = flowcore_meta::HttpRequest::new(flowcore_meta::Method::Post, "https://graph.facebook.com/x");
    request.headers.push(("Authorization".into(), format!("Bearer {TOKEN}")));
    request.body = br#"{"to":"12025550101"}"#.to_vec();
    let debug = format!("{request:?}");
    assert!(!debug.contains(TOKEN) && !debug.contains("12025550101"), "{debug}");
}
