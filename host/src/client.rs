//! A small client for a party's HTTP API, for MPC engines, the demo and the
//! tests: typed calls for every endpoint and the event stream.
//!
//! An API served over TLS (`api_tls` in `[party]`) is reached with
//! [`Client::with_tls`]: pin the certificate's fingerprint, or trust a CA
//! file.
//!
//! ```no_run
//! # async fn f() -> Result<(), quorate_host::client::ClientError> {
//! use quorate_host::client::Client;
//! let c = Client::new("127.0.0.1:7001".parse().unwrap(), "token");
//! let r = c.submit_json(&serde_json::json!({"type": "create_session", "session": {
//!     "kind": "keygen", "participants": [1, 2, 3], "threshold": 2,
//!     "scheme": "frost-secp256k1", "deadline_secs": 120}})).await?;
//! let mut events = c.events(None).await?;
//! while let Some(e) = events.next().await? {
//!     println!("{} {}", e.id, e.event);
//! }
//! println!("{}", c.operation(&r.id).await?["status"]);
//! # Ok(()) }
//! ```

use crate::daemon::status::StatusView;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use quorate_firmware::sessions::ops::OpBody;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::api_tls::ServerTrust;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The API could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Connect {
        /// The API address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The API answered with an error status.
    #[error("{status}: {body}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The JSON error body.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The TLS handshake with the API failed: the certificate is not the
    /// one pinned or not trusted, or the API does not speak TLS.
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The API address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A party's API endpoint and token.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    token: String,
    timeout: Duration,
    tls: Option<ClientTls>,
}

/// How the client speaks TLS to the API.
#[derive(Debug, Clone)]
struct ClientTls {
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

/// The answer to `POST /v1/operations`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Accepted {
    /// The receipt id.
    pub id: String,
}

/// The answer to `POST /v1/operations/bulk`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct AcceptedBulk {
    /// The receipt ids, in request order.
    pub ids: Vec<String>,
}

impl Client {
    /// A client for the API at `addr` with bearer `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Client {
            addr,
            token: token.into(),
            timeout: Duration::from_secs(10),
            tls: None,
        }
    }

    /// The same client speaking TLS, trusting the server as `trust` says
    /// (with roots, the name checked is the address's IP; see
    /// [`Client::with_server_name`]).
    pub fn with_tls(mut self, trust: &ServerTrust) -> Result<Self, ClientError> {
        let config = trust.client_config().map_err(|e| ClientError::Tls {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        self.tls = Some(ClientTls {
            config,
            server_name: crate::api_tls::server_name_of(self.addr),
        });
        Ok(self)
    }

    /// With TLS, the server name to check against its certificate (a DNS
    /// name or an IP address) instead of the dialed address.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, ClientError> {
        let parsed = rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| {
            ClientError::Tls {
                addr: self.addr,
                reason: format!("{name:?} is not a server name: {e}"),
            }
        })?;
        if let Some(t) = &mut self.tls {
            t.server_name = parsed;
        }
        Ok(self)
    }

    /// The API's base URL (`http://ADDR` or `https://ADDR`).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A client reading the token from `DATA_DIR/api.token`.
    pub fn from_data_dir(addr: SocketAddr, data_dir: &Path) -> std::io::Result<Self> {
        let token = std::fs::read_to_string(data_dir.join(crate::api::TOKEN_FILE))?;
        Ok(Client::new(addr, token.trim()))
    }

    fn connect_err(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Connect {
            addr: self.addr,
            reason: reason.to_string(),
        }
    }

    /// Connects, sends `req` with the Host and bearer-token headers added,
    /// and returns the response once its head arrives.
    async fn send(
        &self,
        req: hyper::http::request::Builder,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| self.connect_err(e))?;
        let mut sender = match &self.tls {
            None => self.handshake(stream).await?,
            Some(tls) => {
                let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|e| ClientError::Tls {
                        addr: self.addr,
                        reason: e.to_string(),
                    })?;
                self.handshake(stream).await?
            }
        };
        let req = req
            .header(hyper::header::HOST, self.addr.to_string())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Full::new(body))
            .map_err(|e| self.connect_err(e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.connect_err(e))
    }

    /// Starts HTTP/1.1 on a connected stream (its connection task spawned).
    async fn handshake<I>(
        &self,
        io: I,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_err(e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends one request and returns the status and body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.raw_with(method, path, body, &[]).await
    }

    /// [`Client::raw`] with extra request headers.
    pub async fn raw_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, _, bytes) = self.raw_full(method, path, body, headers).await?;
        Ok((status, bytes))
    }

    /// [`Client::raw_with`], with the answer's headers (`Retry-After` of a
    /// 429, say).
    pub async fn raw_full(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        let fut = async {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::CONTENT_TYPE, "application/json");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = self
                .send(req, Bytes::from(body.unwrap_or_default()))
                .await?;
            let status = resp.status();
            let head = resp.headers().clone();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.connect_err(e))?
                .to_bytes();
            Ok((status, head, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| self.connect_err("timed out"))?
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        self.json_with(method, path, body, &[]).await
    }

    async fn json_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw_with(method, path, body, headers).await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Submits an operation; returns its receipt once it is durable.
    pub async fn submit(&self, op: &OpBody) -> Result<Accepted, ClientError> {
        let body = serde_json::to_vec(op).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.json(Method::POST, "/v1/operations", Some(body)).await
    }

    /// Submits an operation given as JSON.
    pub async fn submit_json(&self, op: &serde_json::Value) -> Result<Accepted, ClientError> {
        let body = serde_json::to_vec(op).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.json(Method::POST, "/v1/operations", Some(body)).await
    }

    /// Submits an operation given as JSON with an `Idempotency-Key`: the
    /// same key and body again get the first receipt.
    pub async fn submit_json_once(
        &self,
        op: &serde_json::Value,
        key: &str,
    ) -> Result<Accepted, ClientError> {
        let body = serde_json::to_vec(op).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.json_with(
            Method::POST,
            "/v1/operations",
            Some(body),
            &[("Idempotency-Key", key)],
        )
        .await
    }

    /// Submits several operations given as JSON in one request, all or
    /// none (`POST /v1/operations/bulk`); their receipts, in order, once
    /// every one is durable.
    pub async fn submit_bulk_json(
        &self,
        ops: &[serde_json::Value],
    ) -> Result<AcceptedBulk, ClientError> {
        let body = serde_json::to_vec(&serde_json::json!({ "operations": ops }))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.json(Method::POST, "/v1/operations/bulk", Some(body))
            .await
    }

    /// An operation's status and verdicts, by receipt or operation id.
    pub async fn operation(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, &format!("/v1/operations/{id}"), None)
            .await
    }

    /// The daemon's status.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.json(Method::GET, "/v1/status", None).await
    }

    /// The status as raw JSON (with any fields this client does not know).
    pub async fn status_json(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/status", None).await
    }

    /// A session (hex id) with its phase, messages and results.
    pub async fn session(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await
    }

    /// A session's decided messages, of one round or of all.
    pub async fn messages(
        &self,
        id: &str,
        round: Option<u32>,
    ) -> Result<serde_json::Value, ClientError> {
        let q = round.map(|r| format!("?round={r}")).unwrap_or_default();
        self.json(Method::GET, &format!("/v1/sessions/{id}/messages{q}"), None)
            .await
    }

    /// Decided blocks from height `from`, at most `limit`, with their
    /// commit certificates.
    pub async fn blocks(&self, from: u64, limit: usize) -> Result<serde_json::Value, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/blocks?from={from}&limit={limit}"),
            None,
        )
        .await
    }

    /// The audit log's latest certified checkpoint (JSON, with the signed
    /// note in `note`).
    pub async fn log_checkpoint(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/log/checkpoint", None).await
    }

    /// A page of audit entries `start .. end` (base64, with leaf hashes).
    pub async fn log_entries(
        &self,
        start: u64,
        end: u64,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/log/entries?start={start}&end={end}"),
            None,
        )
        .await
    }

    /// The inclusion proof of leaf `index` in the tree of `size` entries.
    pub async fn log_inclusion(
        &self,
        index: u64,
        size: u64,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/log/proof/inclusion?index={index}&size={size}"),
            None,
        )
        .await
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub async fn log_consistency(
        &self,
        old: u64,
        new: u64,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/log/proof/consistency?old={old}&new={new}"),
            None,
        )
        .await
    }

    /// The peers and their connection and attestation state.
    pub async fn peers(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/peers", None).await
    }

    /// The Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, bytes) = self.raw(Method::GET, "/metrics", None).await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Whether the daemon answers `GET /healthz`.
    pub async fn healthy(&self) -> bool {
        matches!(self.raw(Method::GET, "/healthz", None).await, Ok((s, _)) if s.is_success())
    }

    /// Opens the event stream: decided operations and session events after
    /// `last_event_id` (`"height:index"`, as sent in each event's `id`), or
    /// only new ones if `None`. Reconnect with the last id seen to resume
    /// without gaps.
    pub async fn events(&self, last_event_id: Option<&str>) -> Result<EventStream, ClientError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri("/v1/events")
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(self.timeout, self.send(req, Bytes::new()))
            .await
            .map_err(|_| self.connect_err("timed out"))??;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ClientError::Status { status, body });
        }
        Ok(EventStream {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

/// One Server-Sent Event from `GET /v1/events`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// Its id (`"height:index"`); empty for a `gap` notice.
    pub id: String,
    /// Its name: `operation`, a session event (`executed`, `message`, ...)
    /// or `gap` (events the server no longer holds were skipped).
    pub event: String,
    /// Its data (`{"id", "kind", "time_ms", "data"}`).
    pub data: serde_json::Value,
}

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the server closed the stream.
    /// Keep-alive comments are skipped.
    pub async fn next(&mut self) -> Result<Option<StreamEvent>, ClientError> {
        loop {
            if let Some(end) = find_frame_end(&self.buf) {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(e) = parse_sse(&frame)? {
                    return Ok(Some(e));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Decode(format!("event stream: {e}"))),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

fn find_frame_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

fn parse_sse(frame: &[u8]) -> Result<Option<StreamEvent>, ClientError> {
    let text = String::from_utf8_lossy(frame);
    let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_string();
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
    if event.is_empty() && data.is_empty() {
        return Ok(None); // a comment (keep-alive)
    }
    let data = serde_json::from_str(&data).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(Some(StreamEvent { id, event, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_skips_comments() {
        assert_eq!(parse_sse(b": keep-alive\n\n").unwrap(), None);
        let e = parse_sse(b"id: 3:1\nevent: executed\ndata: {\"a\": 1}\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(e.id, "3:1");
        assert_eq!(e.event, "executed");
        assert_eq!(e.data["a"], 1);
        assert!(parse_sse(b"event: x\ndata: {nope\n\n").is_err());
        assert_eq!(find_frame_end(b"id: 1\n\nid: 2"), Some(5));
    }
}
