//! Webhook alerts: a POST to each configured webhook for the events it lists, so someone learns of
//! a failed night, a recovery or a lost snapshot without reading logs. Delivery never delays a
//! backup: `send` only queues, and one background task per webhook delivers its alerts in order
//! (a `recovery` never overtakes the `failure` it follows), retrying what a receiver may take
//! later. Webhook URLs carry their secret in the path or query, so logs only ever show
//! [`redact_url`]'s form.
//!
//! Bodies by `format`:
//! - `json` (the default; a public contract, see [`Alert`]): one object with `event`
//!   (`"stackvault.alert"`), `version` (1), then `kind`, `stack`, `host`, `run_id`, `time`,
//!   `summary`, `snapshot`, `target`, `details`.
//! - `slack`: Slack's incoming-webhook body, `text` (the notification line) and Block Kit
//!   `blocks` (a section with the summary, a section of fields).
//! - `teams`: a Microsoft Teams Workflows message with one Adaptive Card (title, summary, facts);
//!   the retired Office 365 connector MessageCard is not sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// One webhook of `alerts.webhooks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// The events posted to this webhook; `success` only when listed.
    #[serde(default = "default_kinds")]
    pub on: Vec<AlertKind>,
}

fn default_kinds() -> Vec<AlertKind> {
    vec![AlertKind::Failure, AlertKind::Recovery, AlertKind::Lost]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
    Teams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// A run failed, or its snapshot could only be staged.
    Failure,
    /// Backups reach the target again after a failure, and nothing is pending.
    Recovery,
    /// A staged snapshot was given up on: it never reached the target.
    Lost,
    /// A snapshot was stored on the target.
    Success,
}

impl AlertKind {
    fn name(self) -> &'static str {
        match self {
            AlertKind::Failure => "failure",
            AlertKind::Recovery => "recovery",
            AlertKind::Lost => "lost",
            AlertKind::Success => "success",
        }
    }
}

/// One event. With `format: json` it is posted as one JSON object (a public contract, version 1):
///
/// | field | type | meaning |
/// |---|---|---|
/// | `event` | string | always `"stackvault.alert"` |
/// | `version` | number | always `1`; a change that breaks readers gets a new version |
/// | `kind` | string | `failure`, `recovery`, `lost` or `success` |
/// | `stack` | string | the Compose stack backed up |
/// | `host` | string | the host the sidecar runs on |
/// | `run_id` | string | the run, as its log lines name it |
/// | `time` | string | when the event happened, RFC 3339 |
/// | `summary` | string | one line a human reads first |
/// | `snapshot` | string or null | the snapshot id concerned, when there is one |
/// | `target` | string | where the repository is: a path, or a URL without secrets |
/// | `details` | object | figures: `bytes_read`, `bytes_new`, `bytes_uploaded`, `duration_seconds`, `bytes`, `attempts`, … as the event has them |
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub stack: String,
    pub host: String,
    pub run_id: String,
    /// RFC 3339.
    pub time: String,
    /// One line a human reads first.
    pub summary: String,
    pub snapshot: Option<String>,
    /// Where the repository is (a path, or a URL without secrets).
    pub target: String,
    /// Figures: bytes, durations, pending count, error text.
    pub details: serde_json::Value,
}

/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before a retry; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts, a receiver's Retry-After included.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one alert is retried in all before it is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 60);
/// Alerts waiting per webhook; a webhook that far behind is down, and more would only pile up.
const QUEUE: usize = 64;
/// How much of a refusing receiver's body goes into the report (Slack says `invalid_payload`).
const MAX_ERROR_BODY: usize = 200;

type Report = Arc<dyn Fn(String) + Send + Sync>;

/// Delivers alerts to webhooks in the background; see the module documentation.
pub struct Alerter {
    webhooks: Vec<Queue>,
    // Alerts queued or being delivered; `flush` waits for 0.
    in_flight: Arc<watch::Sender<usize>>,
    report: Report,
}

struct Queue {
    on: Vec<AlertKind>,
    redacted: String,
    alerts: mpsc::Sender<Alert>,
}

struct Webhook {
    url: String,
    redacted: String,
    format: WebhookFormat,
}

impl Alerter {
    /// Reports each alert that could not be delivered on stderr, one line each. Must be called
    /// inside a tokio runtime.
    pub fn new(webhooks: Vec<WebhookConfig>) -> Alerter {
        Alerter::with_reporter(webhooks, |message| eprintln!("stackvault: {message}"))
    }

    /// Like `new`, with `report` called once per alert that could not be delivered (given up, or
    /// dropped from a full queue), with a message naming the webhook by its redacted URL and the
    /// status or error. Must be called inside a tokio runtime.
    pub fn with_reporter(webhooks: Vec<WebhookConfig>, report: impl Fn(String) + Send + Sync + 'static) -> Alerter {
        let report: Report = Arc::new(report);
        let in_flight = Arc::new(watch::Sender::new(0));
        let mut queues = Vec::with_capacity(webhooks.len());
        // No client without webhooks: a run without alerts sets up no TLS.
        if !webhooks.is_empty() {
            let client = client();
            for config in webhooks {
                let redacted = redact_url(&config.url);
                let (alerts, queued) = mpsc::channel(QUEUE);
                let webhook = Webhook { url: config.url, redacted: redacted.clone(), format: config.format };
                tokio::spawn(deliver_queued(webhook, client.clone(), queued, in_flight.clone(), report.clone()));
                queues.push(Queue { on: config.on, redacted, alerts });
            }
        }
        Alerter { webhooks: queues, in_flight, report }
    }

    /// Queues the alert for every webhook whose `on` lists its kind; returns at once (never
    /// blocks a backup). Each POST has a 10 s timeout; connection errors, timeouts, 408, 429
    /// (honouring Retry-After seconds, at most 60) and 5xx are retried with exponential backoff
    /// (1 s, 2 s, 4 s … at most 60 s) for up to 5 minutes in all; other statuses are final.
    pub fn send(&self, alert: Alert) {
        for webhook in self.webhooks.iter().filter(|w| w.on.contains(&alert.kind)) {
            self.in_flight.send_modify(|n| *n += 1);
            if let Err(e) = webhook.alerts.try_send(alert.clone()) {
                self.in_flight.send_modify(|n| *n -= 1);
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => format!("{QUEUE} earlier alerts are still waiting for it; check that it answers"),
                    mpsc::error::TrySendError::Closed(_) => "its delivery task has stopped".to_string(),
                };
                (self.report)(format!("{} alert for stack {} not sent to {}: {why}", alert.kind.name(), alert.stack, webhook.redacted));
            }
        }
    }

    /// Waits until queued deliveries are done or `timeout` passes (a daemon calls this before exit).
    pub async fn flush(&self, timeout: Duration) {
        let mut in_flight = self.in_flight.subscribe();
        // Err: the timeout passed; what is left is abandoned with the process.
        let _ = tokio::time::timeout(timeout, in_flight.wait_for(|n| *n == 0)).await;
    }
}

/// The HTTP client of all webhooks: TLS by rustls with ring, as the storage clients.
fn client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        // A redirected POST would resend the alert, secrets and all, to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stackvault/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up HTTPS for webhooks: {}", chain(e)))
}

async fn deliver_queued(
    webhook: Webhook,
    client: Result<reqwest::Client, String>,
    mut queued: mpsc::Receiver<Alert>,
    in_flight: Arc<watch::Sender<usize>>,
    report: Report,
) {
    while let Some(alert) = queued.recv().await {
        let delivered = match &client {
            Ok(client) => deliver(client, &webhook, &alert).await,
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = delivered {
            report(format!("{} alert for stack {} not delivered to {}: {e}", alert.kind.name(), alert.stack, webhook.redacted));
        }
        in_flight.send_modify(|n| *n -= 1);
    }
}

enum Attempt {
    Delivered,
    Retry { problem: String, retry_after: Option<Duration> },
    Final(String),
}

async fn deliver(client: &reqwest::Client, webhook: &Webhook, alert: &Alert) -> Result<(), String> {
    let body = body(webhook.format, alert).map_err(|e| format!("cannot encode the alert: {e}"))?;
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let (problem, retry_after) = match attempt(client, &webhook.url, body.clone()).await {
            Attempt::Delivered => return Ok(()),
            Attempt::Final(problem) => return Err(problem),
            Attempt::Retry { problem, retry_after } => (problem, retry_after),
        };
        let wait = retry_after.unwrap_or(backoff).min(MAX_BACKOFF);
        if started.elapsed() + wait > GIVE_UP_AFTER {
            return Err(format!(
                "{problem} (gave up after {attempts} attempts in {}); check that the receiver is up and reachable from this host",
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
            ));
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn attempt(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Attempt {
    let sent = client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await;
    let mut response = match sent {
        Ok(response) => response,
        Err(e) if e.is_builder() => {
            return Attempt::Final(format!("the URL cannot be used ({}); fix it in alerts.webhooks", chain(e)))
        }
        Err(e) if e.is_timeout() => {
            return Attempt::Retry { problem: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()), retry_after: None }
        }
        Err(e) => return Attempt::Retry { problem: chain(e), retry_after: None },
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut said = Vec::new();
    // The receiver's reason, if it gives one quickly; the status alone says enough otherwise.
    while said.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => said.extend_from_slice(&chunk),
            _ => break,
        }
    }
    said.truncate(MAX_ERROR_BODY);
    let said = one_line(&String::from_utf8_lossy(&said));
    let problem = if said.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {said}") };
    match status.as_u16() {
        408 | 429 | 500..=599 => Attempt::Retry { problem, retry_after },
        300..=399 => Attempt::Final(format!("{problem}: the webhook redirects; set the URL it redirects to in alerts.webhooks")),
        _ => Attempt::Final(format!("{problem}; check this webhook's URL and format in alerts.webhooks")),
    }
}

/// A reqwest error with its causes ("connection refused" is a few sources down), without the
/// URL reqwest puts in its message: that URL holds the webhook's secret.
fn chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(&e);
    while let Some(error) = cause {
        let text = error.to_string();
        // Some layers repeat their source's message; say it once.
        if !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = error.source();
    }
    out
}

/// Text on one line, for log lines and notification lines.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` cut to at most `max` characters, marked with "…" when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if text[end..].chars().nth(1).is_some() => format!("{}…", &text[..end]),
        _ => text.to_string(),
    }
}

#[derive(Serialize)]
struct JsonBody<'a> {
    event: &'static str,
    version: u32,
    #[serde(flatten)]
    alert: &'a Alert,
}

fn body(format: WebhookFormat, alert: &Alert) -> serde_json::Result<Vec<u8>> {
    match format {
        WebhookFormat::Json => serde_json::to_vec(&JsonBody { event: "stackvault.alert", version: 1, alert }),
        WebhookFormat::Slack => serde_json::to_vec(&slack(alert)),
        WebhookFormat::Teams => serde_json::to_vec(&teams(alert)),
    }
}

fn title(alert: &Alert) -> String {
    let what = match alert.kind {
        AlertKind::Failure => "backup failed",
        AlertKind::Recovery => "backups recovered",
        AlertKind::Lost => "snapshot lost",
        AlertKind::Success => "backup stored",
    };
    format!("stackvault: {what} for stack {} on {}", alert.stack, alert.host)
}

fn or_none(value: &str) -> &str {
    if value.is_empty() {
        "none"
    } else {
        value
    }
}

/// Slack's incoming-webhook body: `text` is what notifications show, `blocks` the message.
/// Limits: a section's text 3000 characters, a field's 2000 (clipped well below).
fn slack(alert: &Alert) -> serde_json::Value {
    // Slack reads &, < and > as markup (`<!channel>` pings a whole channel).
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let field = |name: &str, value: &str| {
        serde_json::json!({"type": "mrkdwn", "text": format!("*{name}*\n{}", escape(&clip(or_none(value), 1500)))})
    };
    let summary = one_line(&alert.summary);
    serde_json::json!({
        "text": escape(&clip(&format!("{}: {summary}", title(alert)), 2500)),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*\n{}", escape(&title(alert)), escape(&clip(&summary, 2500)))}},
            {"type": "section", "fields": [
                field("Stack", &alert.stack),
                field("Host", &alert.host),
                field("Snapshot", alert.snapshot.as_deref().unwrap_or_default()),
                field("Target", &alert.target),
                field("Kind", alert.kind.name()),
                field("Run", &alert.run_id),
            ]},
        ],
    })
}

/// A Teams Workflows ("When a Teams webhook request is received") message with one Adaptive Card.
fn teams(alert: &Alert) -> serde_json::Value {
    let fact = |name: &str, value: &str| serde_json::json!({"title": name, "value": clip(or_none(value), 1500)});
    let color = match alert.kind {
        AlertKind::Failure | AlertKind::Lost => "Attention",
        AlertKind::Recovery | AlertKind::Success => "Good",
    };
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": title(alert), "weight": "Bolder", "size": "Medium", "color": color, "wrap": true},
                    {"type": "TextBlock", "text": clip(&one_line(&alert.summary), 2500), "wrap": true},
                    {"type": "FactSet", "facts": [
                        fact("Stack", &alert.stack),
                        fact("Host", &alert.host),
                        fact("Snapshot", alert.snapshot.as_deref().unwrap_or_default()),
                        fact("Target", &alert.target),
                        fact("Kind", alert.kind.name()),
                        fact("Run", &alert.run_id),
                        fact("Time", &alert.time),
                    ]},
                ],
            },
        }],
    })
}

/// A webhook URL fit for logs: scheme, host and port kept, the path reduced to its first segment,
/// the rest of the path, the query and anything after them replaced by "…" (Slack and Teams URLs
/// carry their secret in the path, SAS-like ones in the query); userinfo removed.
///
/// `https://hooks.slack.com/services/T000/B000/XXXX` → `https://hooks.slack.com/services/…`,
/// `https://h.example/hook?sig=abc` → `https://h.example/hook?…`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    // Userinfo ends at the last '@' of the authority (a password may hold '@' only escaped, but be safe).
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let mut out = scheme.map_or_else(String::new, |scheme| format!("{scheme}://"));
    out.push_str(host);
    let dropped = match rest.strip_prefix('/') {
        Some(path) => {
            let end = path.find(['/', '?', '#']).unwrap_or(path.len());
            out.push('/');
            out.push_str(&path[..end]);
            &path[end..]
        }
        None => rest,
    };
    if let Some(separator) = dropped.chars().next() {
        // Keep the separator so "…" reads as the path's rest ("/…"), the query ("?…") or the fragment.
        out.push(separator);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct Received {
        path: String,
        head: String,
        body: serde_json::Value,
        at: Instant,
    }

    type Log = Arc<Mutex<Vec<Received>>>;

    /// A webhook receiver on loopback answering the nth request with `answers[n]` (status, extra
    /// header lines, body), the last one again after that; `delay` before each answer.
    async fn receiver(answers: Vec<(u16, &'static str, &'static str)>, delay: Duration) -> (String, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let log: Log = Arc::default();
        let received = log.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let (head, length) = loop {
                    let read = stream.read(&mut buf).await.expect("read");
                    assert!(read > 0, "request cut short");
                    raw.extend_from_slice(&buf[..read]);
                    if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                        raw.drain(..end + 4);
                        let length = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().expect("length")))
                            .unwrap_or(0);
                        break (head, length);
                    }
                };
                while raw.len() < length {
                    let read = stream.read(&mut buf).await.expect("read body");
                    assert!(read > 0, "body cut short");
                    raw.extend_from_slice(&buf[..read]);
                }
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                let body = serde_json::from_slice(&raw).expect("the body is JSON");
                received.lock().unwrap().push(Received { path, head, body, at: Instant::now() });
                let (status, headers, text) = answers[n.min(answers.len() - 1)];
                n += 1;
                tokio::time::sleep(delay).await;
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{text}", text.len());
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (base, log)
    }

    fn alert(kind: AlertKind) -> Alert {
        Alert {
            kind,
            stack: "shop".into(),
            host: "host1".into(),
            run_id: "a1b2c3".into(),
            time: "2026-05-01T02:00:00Z".into(),
            summary: "backup failed: <target> unreachable &\nretrying".into(),
            snapshot: Some("5f3e".into()),
            target: "/mnt/backup".into(),
            details: serde_json::json!({"bytes_read": 10, "duration_seconds": 1.5}),
        }
    }

    fn webhook(url: String, format: WebhookFormat, on: &[AlertKind]) -> WebhookConfig {
        WebhookConfig { url, format, on: on.to_vec() }
    }

    fn alerter(webhooks: Vec<WebhookConfig>) -> (Alerter, Arc<Mutex<Vec<String>>>) {
        let reports: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = reports.clone();
        (Alerter::with_reporter(webhooks, move |m| sink.lock().unwrap().push(m)), reports)
    }

    #[tokio::test]
    async fn json_body() {
        let (base, log) = receiver(vec![(204, "", "")], Duration::ZERO).await;
        let (alerter, reports) = alerter(vec![webhook(format!("{base}/hook"), WebhookFormat::Json, &default_kinds())]);
        alerter.send(alert(AlertKind::Failure));
        alerter.flush(Duration::from_secs(10)).await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].path, "/hook");
        assert!(log[0].head.starts_with("POST /hook HTTP/1.1\r\n"), "{}", log[0].head);
        assert!(log[0].head.to_ascii_lowercase().contains("content-type: application/json"), "{}", log[0].head);
        let body = &log[0].body;
        assert_eq!(body["event"], "stackvault.alert");
        assert_eq!(body["version"], 1);
        assert_eq!(body["kind"], "failure");
        assert_eq!(body["stack"], "shop");
        assert_eq!(body["host"], "host1");
        assert_eq!(body["run_id"], "a1b2c3");
        assert_eq!(body["time"], "2026-05-01T02:00:00Z");
        assert_eq!(body["summary"], "backup failed: <target> unreachable &\nretrying");
        assert_eq!(body["snapshot"], "5f3e");
        assert_eq!(body["target"], "/mnt/backup");
        assert_eq!(body["details"]["bytes_read"], 10);
        assert_eq!(body.as_object().map(|o| o.len()), Some(11));
        assert!(reports.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn slack_and_teams_bodies() {
        let (base, log) = receiver(vec![(200, "", "ok")], Duration::ZERO).await;
        let (alerter, reports) = alerter(vec![
            webhook(format!("{base}/slack"), WebhookFormat::Slack, &default_kinds()),
            webhook(format!("{base}/teams"), WebhookFormat::Teams, &default_kinds()),
        ]);
        let mut lost = alert(AlertKind::Lost);
        lost.snapshot = None;
        alerter.send(lost);
        alerter.flush(Duration::from_secs(10)).await;
        let log = log.lock().unwrap();
        let slack = &log.iter().find(|r| r.path == "/slack").expect("slack got it").body;
        assert_eq!(slack["text"], "stackvault: snapshot lost for stack shop on host1: backup failed: &lt;target&gt; unreachable &amp; retrying");
        assert_eq!(slack["blocks"][0]["type"], "section");
        assert_eq!(slack["blocks"][0]["text"]["type"], "mrkdwn");
        let fields = slack["blocks"][1]["fields"].as_array().expect("fields");
        let texts: Vec<&str> = fields.iter().filter_map(|f| f["text"].as_str()).collect();
        assert_eq!(texts, ["*Stack*\nshop", "*Host*\nhost1", "*Snapshot*\nnone", "*Target*\n/mnt/backup", "*Kind*\nlost", "*Run*\na1b2c3"]);
        assert!(fields.iter().all(|f| f["type"] == "mrkdwn"));

        let teams = &log.iter().find(|r| r.path == "/teams").expect("teams got it").body;
        assert_eq!(teams["type"], "message");
        let attachment = &teams["attachments"][0];
        assert_eq!(attachment["contentType"], "application/vnd.microsoft.card.adaptive");
        assert!(attachment["contentUrl"].is_null());
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json");
        assert_eq!(card["body"][0]["type"], "TextBlock");
        assert_eq!(card["body"][0]["text"], "stackvault: snapshot lost for stack shop on host1");
        assert_eq!(card["body"][2]["type"], "FactSet");
        assert_eq!(card["body"][2]["facts"][0], serde_json::json!({"title": "Stack", "value": "shop"}));
        assert!(reports.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_kinds_listed_in_on() {
        let (base, log) = receiver(vec![(200, "", "")], Duration::ZERO).await;
        let (alerter, _) = alerter(vec![
            webhook(format!("{base}/lost-only"), WebhookFormat::Json, &[AlertKind::Lost]),
            webhook(format!("{base}/default"), WebhookFormat::Json, &default_kinds()),
        ]);
        for kind in [AlertKind::Success, AlertKind::Failure, AlertKind::Recovery, AlertKind::Lost] {
            alerter.send(alert(kind));
        }
        alerter.flush(Duration::from_secs(10)).await;
        let log = log.lock().unwrap();
        let kinds = |path: &str| log.iter().filter(|r| r.path == path).map(|r| r.body["kind"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>();
        assert_eq!(kinds("/lost-only"), ["lost"]);
        // In the order sent: one task per webhook delivers its alerts one after another.
        assert_eq!(kinds("/default"), ["failure", "recovery", "lost"]);
    }

    #[tokio::test]
    async fn a_500_is_retried_after_a_second() {
        let (base, log) = receiver(vec![(500, "", "busy"), (200, "", "")], Duration::ZERO).await;
        let (alerter, reports) = alerter(vec![webhook(format!("{base}/hook"), WebhookFormat::Json, &default_kinds())]);
        alerter.send(alert(AlertKind::Failure));
        alerter.flush(Duration::from_secs(10)).await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert!(log[1].at - log[0].at >= Duration::from_millis(900));
        assert!(reports.lock().unwrap().is_empty(), "{:?}", reports.lock().unwrap());
    }

    #[tokio::test]
    async fn a_400_is_final_and_reported_without_the_secret() {
        let (base, log) = receiver(vec![(400, "", "invalid_payload"), (200, "", "")], Duration::ZERO).await;
        let (alerter, reports) = alerter(vec![webhook(format!("{base}/services/T000/B000/SECRET"), WebhookFormat::Slack, &default_kinds())]);
        alerter.send(alert(AlertKind::Failure));
        alerter.flush(Duration::from_secs(10)).await;
        assert_eq!(log.lock().unwrap().len(), 1);
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        let report = &reports[0];
        assert!(report.contains(&format!("{base}/services/…")), "{report}");
        assert!(report.contains("HTTP 400 Bad Request: invalid_payload"), "{report}");
        assert!(report.starts_with("failure alert for stack shop not delivered"), "{report}");
        assert!(!report.contains("SECRET") && !report.contains("T000"), "{report}");
    }

    #[tokio::test]
    async fn a_429_waits_as_retry_after_says() {
        let (base, log) = receiver(vec![(429, "Retry-After: 1\r\n", ""), (429, "Retry-After: 1\r\n", ""), (200, "", "")], Duration::ZERO).await;
        let (alerter, reports) = alerter(vec![webhook(format!("{base}/hook"), WebhookFormat::Json, &default_kinds())]);
        alerter.send(alert(AlertKind::Failure));
        alerter.flush(Duration::from_secs(10)).await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 3);
        assert!(log[1].at - log[0].at >= Duration::from_millis(900));
        // The backoff alone would have waited 2 s the second time.
        let second = log[2].at - log[1].at;
        assert!(second >= Duration::from_millis(900) && second < Duration::from_millis(1800), "{second:?}");
        assert!(reports.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried() {
        // A port nobody listens on at first; the receiver comes up on it a moment later.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let (alerter, reports) = alerter(vec![webhook(format!("http://{addr}/hook"), WebhookFormat::Json, &default_kinds())]);
        alerter.send(alert(AlertKind::Failure));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = TcpListener::bind(addr).await.expect("rebind");
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("retried").expect("accept");
        let mut buf = vec![0u8; 65536];
        let _ = stream.read(&mut buf).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        alerter.flush(Duration::from_secs(5)).await;
        assert!(reports.lock().unwrap().is_empty(), "{:?}", reports.lock().unwrap());
    }

    #[tokio::test]
    async fn flush_waits_for_deliveries_and_no_longer_than_told() {
        let (base, log) = receiver(vec![(200, "", "")], Duration::from_millis(400)).await;
        let (first, _) = alerter(vec![webhook(format!("{base}/hook"), WebhookFormat::Json, &default_kinds())]);
        first.send(alert(AlertKind::Failure));
        first.send(alert(AlertKind::Recovery));
        let started = Instant::now();
        first.flush(Duration::from_secs(10)).await;
        assert!(started.elapsed() >= Duration::from_millis(700), "{:?}", started.elapsed());
        assert_eq!(log.lock().unwrap().len(), 2);

        // A receiver that never answers: flush gives up at its timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (unanswered, _) = alerter(vec![webhook(format!("http://{}/hook", silent.local_addr().expect("address")), WebhookFormat::Json, &default_kinds())]);
        unanswered.send(alert(AlertKind::Failure));
        let started = Instant::now();
        unanswered.flush(Duration::from_millis(300)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "{waited:?}");
        // Nothing queued: at once.
        let (idle, _) = alerter(Vec::new());
        idle.send(alert(AlertKind::Failure));
        let started = Instant::now();
        idle.flush(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn redacts_secrets() {
        assert_eq!(redact_url("https://hooks.slack.com/services/T000/B000/XXXX"), "https://hooks.slack.com/services/…");
        assert_eq!(
            redact_url("https://prod-12.westeurope.logic.azure.com:443/workflows/0a1b/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers&sig=SECRET"),
            "https://prod-12.westeurope.logic.azure.com:443/workflows/…"
        );
        assert_eq!(redact_url("https://example.webhook.office.com/webhookb2/abc@def/IncomingWebhook/x/y"), "https://example.webhook.office.com/webhookb2/…");
        assert_eq!(redact_url("https://hooks.example.com/alert?sig=SECRET"), "https://hooks.example.com/alert?…");
        assert_eq!(redact_url("https://hooks.example.com?sig=SECRET"), "https://hooks.example.com?…");
        assert_eq!(redact_url("https://user:pa%40ss@hooks.example.com:8443/a/b"), "https://hooks.example.com:8443/a/…");
        assert_eq!(redact_url("https://token@hooks.example.com/a#frag"), "https://hooks.example.com/a#…");
        assert_eq!(redact_url("http://127.0.0.1:8080/hook"), "http://127.0.0.1:8080/hook");
        assert_eq!(redact_url("https://hooks.example.com/"), "https://hooks.example.com/");
        assert_eq!(redact_url("hooks.example.com/a/b"), "hooks.example.com/a/…");
    }

    #[test]
    fn config() {
        let c: WebhookConfig = serde_json::from_str(r#"{"url": "https://h/x"}"#).expect("minimal");
        assert_eq!(c.format, WebhookFormat::Json);
        assert_eq!(c.on, [AlertKind::Failure, AlertKind::Recovery, AlertKind::Lost]);
        let c: WebhookConfig = serde_json::from_str(r#"{"url": "https://h/x", "format": "teams", "on": ["success"]}"#).expect("full");
        assert_eq!((c.format, c.on), (WebhookFormat::Teams, vec![AlertKind::Success]));
        assert!(serde_json::from_str::<WebhookConfig>(r#"{"url": "https://h/x", "events": []}"#).is_err());
        assert!(serde_json::from_str::<WebhookConfig>(r#"{"url": "https://h/x", "format": "discord"}"#).is_err());
    }

    #[test]
    fn clip_marks_what_it_cuts() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abcd", 4), "abcd");
        assert_eq!(clip("ééééé", 3), "éé…");
    }
}
