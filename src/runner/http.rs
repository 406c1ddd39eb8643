//! A tiny HTTP/1.1 server for `/healthz` and `/metrics`, and the client side of
//! `stackvault healthcheck`. Two fixed GET endpoints need no HTTP framework: this speaks just
//! enough HTTP/1.1 (one request per connection, `Connection: close`, Content-Length) on plain
//! tokio, and bounds what a client can make it hold: a request head of 8 KiB read within 5 s, and
//! at most `MAX_CONNECTIONS` connections at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::metrics::Metrics;

/// The longest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head, and then to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once, so a flood cannot exhaust file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// The most of a response `probe` reads: `/healthz` answers one line.
const MAX_PROBE_RESPONSE: u64 = 64 * 1024;

const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

/// Serves until the task is dropped/aborted (its connections end with it): GET /healthz → 200
/// "ok: <reason>\n" or 503 "unhealthy: <reason>\n"; GET /metrics → 200 in the Prometheus text
/// format 0.0.4; HEAD the same without the body; any other path 404; other methods 405.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with(listener, metrics, IO_TIMEOUT).await
}

async fn serve_with(listener: TcpListener, metrics: Arc<Metrics>, io_timeout: Duration) {
    // Owning the connection tasks in a JoinSet aborts them when this task is aborted.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                    connections.spawn(connection(stream, metrics.clone(), io_timeout));
                }
                Ok(_) => {} // over the limit: dropping the stream closes it
                // Out of file descriptors and the like: wait rather than spin on the error.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Response {
        Response { status, reason, content_type: TEXT_TYPE, body: body.into() }
    }
}

async fn connection(mut stream: TcpStream, metrics: Arc<Metrics>, io_timeout: Duration) {
    let (response, with_body) = match tokio::time::timeout(io_timeout, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => respond(&head, &metrics),
        Ok(Ok(None)) => (Response::text(431, "Request Header Fields Too Large", "request head over 8 KiB\n"), true),
        // Silent, too slow, or gone: the connection is only closed.
        Err(_) | Ok(Err(_)) => return,
    };
    if let Ok(Ok(())) = tokio::time::timeout(io_timeout, write_response(&mut stream, &response, with_body)).await {
        linger(&mut stream).await;
    }
}

/// Reads what the client still sends (a body, the rest of an oversize head) until it closes, for a
/// moment at most: closing a socket with unread input resets it, and the client may then lose
/// the response it has not read yet.
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The request head up to its blank line (which ends it, so a body sent with it is ignored), or
/// `None` when it runs past `MAX_HEAD`.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // Look for the end again from a little before the new bytes: it may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head[from..], b"\r\n\r\n").map(|i| from + i).or_else(|| find(&head[from..], b"\n\n").map(|i| from + i)) {
            head.truncate(end);
            return Ok(if end > MAX_HEAD { None } else { Some(String::from_utf8_lossy(&head).into_owned()) });
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The response to a request head, and whether its body is sent (not for HEAD).
fn respond(head: &str, metrics: &Metrics) -> (Response, bool) {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return (Response::text(400, "Bad Request", "malformed request line\n"), true);
    };
    if !version.starts_with("HTTP/1.") {
        return (Response::text(505, "HTTP Version Not Supported", "only HTTP/1.x is served\n"), true);
    }
    let with_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return (Response::text(405, "Method Not Allowed", "only GET and HEAD are served\n"), true);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let now = SystemTime::now();
    let response = match path {
        "/healthz" => match metrics.health(now) {
            Ok(reason) => Response::text(200, "OK", format!("ok: {reason}\n")),
            Err(reason) => Response::text(503, "Service Unavailable", format!("unhealthy: {reason}\n")),
        },
        "/metrics" => Response { status: 200, reason: "OK", content_type: METRICS_TYPE, body: metrics.render(now) },
        _ => Response::text(404, "Not Found", "not found: the paths are /healthz and /metrics\n"),
    };
    (response, with_body)
}

async fn write_response(stream: &mut TcpStream, response: &Response, with_body: bool) -> std::io::Result<()> {
    let allow = if response.status == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(response.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// For `stackvault healthcheck` (a container HEALTHCHECK without curl): GET
/// http://addr/healthz with a 5 s timeout; Ok(body) on 200, Err(message) otherwise.
pub async fn probe(addr: SocketAddr) -> Result<String, String> {
    match tokio::time::timeout(IO_TIMEOUT, get_healthz(addr)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "http://{addr}/healthz gave no answer within {}s; the daemon may be stuck, see its log",
            IO_TIMEOUT.as_secs()
        )),
    }
}

async fn get_healthz(addr: SocketAddr) -> Result<String, String> {
    let url = format!("http://{addr}/healthz");
    let mut stream = TcpStream::connect(addr).await.map_err(|e| {
        format!("cannot connect to {url}: {e}; is `stackvault daemon` running with `listen` set to this address?")
    })?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: stackvault-healthcheck\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request to {url}: {e}"))?;
    let mut raw = Vec::new();
    (&mut stream).take(MAX_PROBE_RESPONSE).read_to_end(&mut raw).await.map_err(|e| format!("reading the answer of {url}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{url} answered something that is not HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split(' ').nth(1).ok_or_else(|| format!("{url} answered a malformed status line: {status:?}"))?;
    match code {
        "200" => Ok(body.to_string()),
        // The server's own 503 body starts with "unhealthy: "; the caller says that already.
        "503" => Err(body.trim_end().strip_prefix("unhealthy: ").unwrap_or(body.trim_end()).to_string()),
        _ => Err(format!("{url} answered {status}: {}", body.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::metrics::HealthRule;

    const DAY: Duration = Duration::from_secs(86400);

    async fn server(metrics: Arc<Metrics>, io_timeout: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        (addr, tokio::spawn(serve_with(listener, metrics, io_timeout)))
    }

    fn metrics(started: SystemTime) -> Arc<Metrics> {
        Metrics::new("shop".into(), HealthRule { period: DAY, grace: Duration::from_secs(3600) }, started)
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn probe_healthy_and_unhealthy() {
        let (addr, task) = server(metrics(SystemTime::now()), IO_TIMEOUT).await;
        let body = probe(addr).await.expect("healthy");
        assert!(body.starts_with("ok: no success yet"), "{body}");
        task.abort();

        let (addr, task) = server(metrics(SystemTime::now() - 2 * DAY), IO_TIMEOUT).await;
        let err = probe(addr).await.unwrap_err();
        assert!(err.starts_with("no success since the start 2days"), "{err}");
        task.abort();
    }

    #[tokio::test]
    async fn probe_without_a_server() {
        // Bind and drop to find a port nobody listens on.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let err = probe(addr).await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[tokio::test]
    async fn metrics_head_and_errors() {
        let (addr, task) = server(metrics(SystemTime::now()), IO_TIMEOUT).await;
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        assert!(body.contains("stackvault_healthy{stack=\"shop\"} 1\n"), "{body}");

        let response = exchange(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\n"), "{response}");
        assert!(!response.contains("Content-Length: 0\r\n"), "HEAD gives the length of GET: {response}");

        let response = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.contains("\r\n\r\nok: "), "{response}");
        let response = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{response}");
        let response = exchange(addr, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && response.contains("Allow: GET, HEAD\r\n"), "{response}");
        let response = exchange(addr, b"nonsense\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{response}");
        // A head in many small pieces, its end split between two of them.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        for piece in [&b"GET /hea"[..], b"lthz HTTP/1.1\r\nHost: x\r\n\r", b"\n"] {
            stream.write_all(piece).await.expect("send");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        task.abort();
    }

    #[tokio::test]
    async fn oversize_head_gets_431() {
        let (addr, task) = server(metrics(SystemTime::now()), IO_TIMEOUT).await;
        let mut request = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        request.extend_from_slice(b"\r\n\r\n");
        let response = exchange(addr, &request).await;
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
        task.abort();
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped() {
        let (addr, task) = server(metrics(SystemTime::now()), Duration::from_millis(200)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
        assert!(matches!(read, Ok(Ok(0))), "closed without an answer: {read:?} {out:?}");
        // The server still answers others.
        assert!(probe(addr).await.is_ok());
        task.abort();
    }

    #[tokio::test]
    async fn aborting_the_server_closes_its_connections() {
        let (addr, task) = server(metrics(SystemTime::now()), IO_TIMEOUT).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed too");
    }
}
