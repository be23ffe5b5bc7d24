//! The party's local HTTP API (JSON, versioned under `/v1`).
//!
//! Open only to the party's own MPC engine and operator: it listens on
//! loopback by default and every request but `GET /healthz` must carry
//! `Authorization: Bearer <token>`, the token kept in `DATA_DIR/api.token`
//! (mode 0600, made at first start).
//!
//! Bad requests get a 4xx with a JSON body `{"status", "field", "reason"}`
//! naming what is wrong; unknown ids 404; bodies over [`MAX_BODY`] 413; a
//! missing or wrong token 401. An operation is answered `202` only once it
//! is durable in the outbox, and only while the outbox holds fewer than
//! `party.max_outbox_ops`: beyond, `429` with `Retry-After` and nothing is
//! accepted (backpressure, never 202 and later loss).
//! `POST /v1/operations/bulk` takes up to [`MAX_BULK_OPS`] operations,
//! all or none, in one durable transaction.
//!
//! Plain HTTP by default; HTTPS when `[party]` sets `api_tls` or
//! `api_tls_cert`/`api_tls_key` ([`crate::api_tls`]).
//!
//! [`ROUTES`] lists every route served; `docs/openapi.json` documents them
//! and a system test checks that the two agree.

use crate::daemon::audit::LogQuery;
use crate::daemon::events::{ApiEvent, EventId};
use crate::daemon::status::StatusView;
use crate::daemon::{DaemonHandle, Query, SubmitError, SubmitRefused};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use quorate_firmware::sessions::ops::{CreateSession, OpBody, SessionSpec};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 1 << 20;
/// File name of the API bearer token in the data dir.
pub const TOKEN_FILE: &str = "api.token";
/// Most blocks one `GET /v1/blocks` returns.
pub const MAX_BLOCKS: usize = 256;
/// How often an idle event stream sends a keep-alive comment.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Every route the API serves: (method, path template). `{x}` is a path
/// parameter. The OpenAPI document must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/v1/operations"),
    ("POST", "/v1/operations/bulk"),
    ("GET", "/v1/operations/{id}"),
    ("GET", "/v1/sessions/{id}"),
    ("GET", "/v1/sessions/{id}/messages"),
    ("GET", "/v1/events"),
    ("GET", "/v1/peers"),
    ("GET", "/v1/status"),
    ("GET", "/v1/blocks"),
    ("GET", "/v1/log/checkpoint"),
    ("GET", "/v1/log/entries"),
    ("GET", "/v1/log/proof/inclusion"),
    ("GET", "/v1/log/proof/consistency"),
];

/// Reads the API token from the data dir, making one (0600) if missing.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => {
            let mut raw = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
                .map_err(|_| std::io::Error::other("no randomness for the API token"))?;
            let token = hex::encode(raw);
            crate::fsutil::write_private(&path, format!("{token}\n").as_bytes())?;
            Ok(token)
        }
    }
}

struct ApiState {
    daemon: DaemonHandle,
    token: String,
}

/// Serves the API on `listener` until the task is dropped: plain HTTP, or
/// HTTPS with `tls` (see [`crate::api_tls`]).
pub async fn serve(
    listener: TcpListener,
    daemon: DaemonHandle,
    token: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let state = Arc::new(ApiState { daemon, token });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state, peer).await,
                Some(acceptor) => match crate::api_tls::accept(&acceptor, stream).await {
                    Ok(s) => serve_connection(s, state, peer).await,
                    Err(e) => debug!(%peer, error = %e, "API TLS connection refused"),
                },
            }
        });
    }
}

/// Serves HTTP/1.1 requests on one accepted connection.
async fn serve_connection<I>(io: I, state: Arc<ApiState>, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move {
            let resp = handle(req, &state).await;
            state.daemon.metrics().api_answered(resp.status().as_u16());
            Ok::<_, Infallible>(resp)
        }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        debug!(%peer, error = %e, "API connection ended with an error");
    }
}

/// Binds the API listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

type Resp = Response<BoxBody<Bytes, Infallible>>;

fn body(status: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    body(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error(status: StatusCode, field: Option<&str>, reason: &str) -> Resp {
    json(
        status,
        &serde_json::json!({"status": status.as_u16(), "field": field, "reason": reason}),
    )
}

fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| quorate_firmware::crypto::ct_eq(t.trim().as_bytes(), token.as_bytes()))
}

/// The query string's `key=value` pairs (no percent-decoding: every value
/// the API takes is a number or an id).
fn query_params(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn param<T: std::str::FromStr>(
    params: &[(String, String)],
    name: &str,
) -> Result<Option<T>, Box<Resp>>
where
    T::Err: std::fmt::Display,
{
    match params.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                Some(name),
                &format!("{v:?}: {e}"),
            ))
        }),
    }
}

/// Whether `id` is 64 lowercase or uppercase hex digits.
fn is_hex_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `id` is a receipt id (`r<party>-<seq>`).
fn is_receipt_id(id: &str) -> bool {
    id.strip_prefix('r')
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(p, s)| p.parse::<u32>().is_ok() && s.parse::<u64>().is_ok())
}

fn bad_id(what: &str) -> Resp {
    error(
        StatusCode::BAD_REQUEST,
        Some("id"),
        &format!("not a {what} id: expected 64 hex digits"),
    )
}

async fn handle(req: Request<Incoming>, st: &ApiState) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::GET && path == "/healthz" {
        return json(StatusCode::OK, &serde_json::json!({"ok": true}));
    }
    if !authorized(&req, &st.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            Some("Authorization"),
            "missing or wrong bearer token (see DATA_DIR/api.token)",
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let params = query_params(&req);
    match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "operations"]) => post_operation(req, st).await,
        (&Method::POST, ["v1", "operations", "bulk"]) => post_bulk(req, st).await,
        (&Method::GET, ["v1", "operations", id]) if *id != "bulk" => {
            if !is_hex_id(id) && !is_receipt_id(id) {
                return error(
                    StatusCode::BAD_REQUEST,
                    Some("id"),
                    "not an operation id: expected a receipt id (r<party>-<n>) or 64 hex digits",
                );
            }
            match st.daemon.query(Query::Operation(id.to_string())).await {
                Some(v) => json(StatusCode::OK, &v),
                None => error(
                    StatusCode::NOT_FOUND,
                    Some("id"),
                    "no operation with this id",
                ),
            }
        }
        (&Method::GET, ["v1", "sessions", id]) => {
            if !is_hex_id(id) {
                return bad_id("session");
            }
            match st
                .daemon
                .query(Query::Session(id.to_ascii_lowercase()))
                .await
            {
                Some(v) => json(StatusCode::OK, &v),
                None => error(StatusCode::NOT_FOUND, Some("id"), "no session with this id"),
            }
        }
        (&Method::GET, ["v1", "sessions", id, "messages"]) => {
            if !is_hex_id(id) {
                return bad_id("session");
            }
            let round = match param::<u32>(&params, "round") {
                Ok(r) => r,
                Err(e) => return *e,
            };
            let q = Query::Messages {
                session: id.to_ascii_lowercase(),
                round,
            };
            match st.daemon.query(q).await {
                Some(v) => json(StatusCode::OK, &v),
                None => error(StatusCode::NOT_FOUND, Some("id"), "no session with this id"),
            }
        }
        (&Method::GET, ["v1", "blocks"]) => {
            let from = match param::<u64>(&params, "from") {
                Ok(f) => f.unwrap_or(1),
                Err(e) => return *e,
            };
            let limit = match param::<usize>(&params, "limit") {
                Ok(l) => l.unwrap_or(32),
                Err(e) => return *e,
            };
            if limit == 0 || limit > MAX_BLOCKS {
                return error(
                    StatusCode::BAD_REQUEST,
                    Some("limit"),
                    &format!("must be 1..={MAX_BLOCKS}"),
                );
            }
            match st.daemon.query(Query::Blocks { from, limit }).await {
                Some(v) => json(StatusCode::OK, &v),
                None => unavailable(),
            }
        }
        (&Method::GET, ["v1", "status"]) => match st.daemon.query(Query::Status).await {
            Some(v) => json(StatusCode::OK, &v),
            None => unavailable(),
        },
        (&Method::GET, ["v1", "peers"]) => match status(st).await {
            Some(s) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "party": s.party,
                    "peers_connected": s.peers_connected,
                    "peers_attested": s.peers_attested,
                    "peers": s.peers,
                }),
            ),
            None => unavailable(),
        },
        (&Method::GET, ["metrics"]) => match status(st).await {
            Some(s) => body(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                st.daemon.metrics().render(&s).into_bytes(),
            ),
            None => unavailable(),
        },
        (&Method::GET, ["v1", "events"]) => events(req, st, &params),
        (&Method::GET, ["v1", "log", ..]) => log_route(&req, &segments, &params, st).await,
        _ => {
            let allowed = allowed_methods(&segments);
            if !allowed.is_empty() {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    None,
                    &format!("{method} is not allowed on {path}"),
                );
                // RFC 9110 15.5.6: a 405 lists the methods the resource has.
                if let Ok(v) = hyper::header::HeaderValue::from_str(&allowed.join(", ")) {
                    r.headers_mut().insert(hyper::header::ALLOW, v);
                }
                r
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    None,
                    &format!("no such endpoint: {path}"),
                )
            }
        }
    }
}

/// The audit-log query a `GET /v1/log/...` request asks, or the 400/404
/// answer for a bad one. Pure: the daemon answers 404 for what lies beyond
/// the log.
fn log_query(segments: &[&str], params: &[(String, String)]) -> Result<LogQuery, Box<Resp>> {
    let need = |name: &str| -> Result<u64, Box<Resp>> {
        param::<u64>(params, name)?.ok_or_else(|| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                Some(name),
                "is required (a decimal number)",
            ))
        })
    };
    let bad = |name: &str, why: &str| Box::new(error(StatusCode::BAD_REQUEST, Some(name), why));
    match segments {
        ["v1", "log", "checkpoint"] => Ok(LogQuery::Checkpoint),
        ["v1", "log", "entries"] => {
            let start = need("start")?;
            let end = match param::<u64>(params, "end")? {
                Some(e) => e,
                None => start.saturating_add(crate::daemon::audit::ENTRIES_PAGE),
            };
            if end <= start {
                return Err(bad("end", "must be greater than start"));
            }
            Ok(LogQuery::Entries { start, end })
        }
        ["v1", "log", "proof", "inclusion"] => {
            let (index, size) = (need("index")?, need("size")?);
            if index >= size {
                return Err(bad("index", "must be below size"));
            }
            Ok(LogQuery::Inclusion { index, size })
        }
        ["v1", "log", "proof", "consistency"] => {
            let (old, new) = (need("old")?, need("new")?);
            if old == 0 || old > new {
                return Err(bad("old", "must be 1..=new"));
            }
            Ok(LogQuery::Consistency { old, new })
        }
        _ => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            None,
            "no such endpoint under /v1/log",
        ))),
    }
}

async fn log_route(
    req: &Request<Incoming>,
    segments: &[&str],
    params: &[(String, String)],
    st: &ApiState,
) -> Resp {
    let q = match log_query(segments, params) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    match st.daemon.query(Query::Log(q)).await {
        Some(serde_json::Value::Null) => error(
            StatusCode::NOT_FOUND,
            None,
            match q {
                LogQuery::Checkpoint => "no certified checkpoint yet",
                _ => "beyond the log's current size",
            },
        ),
        Some(v) => {
            let plain = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("text/plain"));
            match (q, v.get("note").and_then(|n| n.as_str())) {
                // The signed note itself, for C2SP tooling.
                (LogQuery::Checkpoint, Some(note)) if plain => body(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    note.as_bytes().to_vec(),
                ),
                _ => json(StatusCode::OK, &v),
            }
        }
        None => unavailable(),
    }
}

/// Whether a path (split in segments) matches a [`ROUTES`] template.
pub fn template_matches(template: &str, segments: &[&str]) -> bool {
    let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    t.len() == segments.len()
        && t.iter()
            .zip(segments)
            .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
}

/// The methods [`ROUTES`] serves on the path `segments` (empty: no such
/// path). A route without parameters wins over templates that also match
/// (OpenAPI's rule): `/v1/operations/bulk` is not `/v1/operations/{id}`.
fn allowed_methods(segments: &[&str]) -> Vec<&'static str> {
    let matching: Vec<&(&str, &str)> = ROUTES
        .iter()
        .filter(|(_, tmpl)| template_matches(tmpl, segments))
        .collect();
    let concrete = matching.iter().any(|(_, t)| !t.contains('{'));
    let mut m: Vec<&'static str> = matching
        .into_iter()
        .filter(|(_, t)| !concrete || !t.contains('{'))
        .map(|(method, _)| *method)
        .collect();
    m.sort_unstable();
    m.dedup();
    m
}

fn unavailable() -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        "the daemon is shutting down",
    )
}

async fn status(st: &ApiState) -> Option<StatusView> {
    let v = st.daemon.query(Query::Status).await?;
    serde_json::from_value(v).ok()
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header):
/// 1..=255 visible ASCII characters, or a 400.
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, String> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || format!("must be 1..={MAX_IDEMPOTENCY_KEY} visible ASCII characters");
    let k = v.to_str().map_err(|_| bad())?;
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(k.to_string()))
}

/// The request body, at most [`MAX_BODY`] bytes, or the 400/413 answer.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_BODY as u64) {
        // The client is still writing the body: read and discard a
        // moderately oversized one (without keeping it) so it can read the
        // answer; past DRAIN_CAP answer at once and let the connection close.
        if n <= DRAIN_CAP as u64 {
            let mut body = req.into_body();
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > DRAIN_CAP {
                    break;
                }
            }
        }
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                error(StatusCode::BAD_REQUEST, None, "could not read the body")
            },
        ),
    }
}

/// The cluster's members, for the checks of `create_session` requests
/// (`None` when the daemon does not answer: the checks are then skipped,
/// consensus still applies them).
async fn members(st: &ApiState, ops: &[OpBody]) -> Option<Vec<u32>> {
    if !ops.iter().any(|op| matches!(op, OpBody::CreateSession(_))) {
        return None;
    }
    let s = status(st).await?;
    Some(
        std::iter::once(s.party)
            .chain(s.peers.iter().map(|p| p.party))
            .collect(),
    )
}

/// A POST's `Idempotency-Key` header and body, or the answer refusing
/// either (400 naming the header; the body's own errors).
async fn key_and_body(req: Request<Incoming>) -> Result<(Option<String>, Bytes), Resp> {
    let key = idempotency_key(&req)
        .map_err(|e| error(StatusCode::BAD_REQUEST, Some("Idempotency-Key"), &e))?;
    Ok((key, read_body(req).await?))
}

async fn post_operation(req: Request<Incoming>, st: &ApiState) -> Resp {
    let (idempotency_key, bytes) = match key_and_body(req).await {
        Ok(kb) => kb,
        Err(r) => return r,
    };
    let op = match parse_operation_body(&bytes) {
        Ok(op) => op,
        Err(e) => return error(StatusCode::BAD_REQUEST, Some(&e.field), &e.reason),
    };
    let members = members(st, std::slice::from_ref(&op)).await;
    if let Err(e) = check_operation(&op, members.as_deref(), st).await {
        return error(StatusCode::UNPROCESSABLE_ENTITY, Some(&e.field), &e.reason);
    }
    match st.daemon.submit_all(vec![op], idempotency_key).await {
        Ok(r) => match r.first() {
            Some(r) => json(StatusCode::ACCEPTED, &serde_json::json!({"id": r.id})),
            None => unavailable(),
        },
        Err(refused) => submit_refused(&refused, false),
    }
}

/// `POST /v1/operations/bulk`: several operations, all or none, durable in
/// one transaction; `202 {"ids": [...]}` in request order.
async fn post_bulk(req: Request<Incoming>, st: &ApiState) -> Resp {
    let (idempotency_key, bytes) = match key_and_body(req).await {
        Ok(kb) => kb,
        Err(r) => return r,
    };
    let ops = match parse_bulk(&bytes) {
        Ok(ops) => ops,
        Err(e) => return error(StatusCode::BAD_REQUEST, Some(&e.field), &e.reason),
    };
    let members = members(st, &ops).await;
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = check_operation(op, members.as_deref(), st).await {
            let e = e.at(i);
            return error(StatusCode::UNPROCESSABLE_ENTITY, Some(&e.field), &e.reason);
        }
    }
    match st.daemon.submit_all(ops, idempotency_key).await {
        Ok(r) => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"ids": r.into_iter().map(|r| r.id).collect::<Vec<_>>()}),
        ),
        Err(refused) => submit_refused(&refused, true),
    }
}

/// Seconds a client refused for backpressure is asked to wait
/// (`Retry-After`): about ten heights at the 100 ms batching tick, long
/// enough for a full batch to be decided and leave the outbox.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The answer to a refused submission; `bulk`: fields are named in the
/// bulk body (`operations[i]`).
fn submit_refused(r: &SubmitRefused, bulk: bool) -> Resp {
    let field = |whole: &str| match (r.index, bulk) {
        (Some(i), true) => format!("operations[{i}]"),
        _ => whole.to_string(),
    };
    let reason = r.error.to_string();
    match &r.error {
        SubmitError::SlotTaken { .. } => error(StatusCode::CONFLICT, Some(&field("body")), &reason),
        SubmitError::KeyReused { .. } => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Idempotency-Key"),
            &reason,
        ),
        SubmitError::NeverFits { .. } => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(if bulk { "operations" } else { "body" }),
            &reason,
        ),
        SubmitError::OutboxFull { .. } => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, None, &reason);
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(RETRY_AFTER_SECS),
            );
            resp
        }
        SubmitError::Unavailable(e) => error(StatusCode::SERVICE_UNAVAILABLE, None, e),
    }
}

/// Largest oversized body drained (read and discarded) before a 413.
const DRAIN_CAP: usize = 4 * MAX_BODY;

fn too_large() -> Resp {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("body"),
        &format!("body larger than {MAX_BODY} bytes"),
    )
}

/// Why a request body is not an operation (or not a list of them): the
/// field at fault and what is wrong with it, answered as a 400 (or, from
/// the checks against the cluster, a 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
#[non_exhaustive]
pub struct BodyError {
    /// The field, as a path into the body: `session.threshold`,
    /// `operations[3].type`, or `body` for the body as a whole.
    pub field: String,
    /// What is wrong, for the person who wrote the request.
    pub reason: String,
}

impl BodyError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        BodyError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error about operation `index` of a bulk body.
    pub fn at(self, index: usize) -> Self {
        let field = match self.field.as_str() {
            "body" => format!("operations[{index}]"),
            f => format!("operations[{index}].{f}"),
        };
        BodyError { field, ..self }
    }
}

/// Most operations one `POST /v1/operations/bulk` carries (the body stays
/// within [`MAX_BODY`] too).
pub const MAX_BULK_OPS: usize = 1024;

/// Parses the body of `POST /v1/operations`: one operation object.
pub fn parse_operation_body(bytes: &[u8]) -> Result<OpBody, BodyError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| BodyError::new("body", format!("not JSON: {e}")))?;
    parse_operation(value)
}

/// Parses the body of `POST /v1/operations/bulk`:
/// `{"operations": [op, ...]}` with 1..=[`MAX_BULK_OPS`] operations, each
/// as `POST /v1/operations` takes it. All or nothing: the first bad one is
/// named by its index (`operations[i].field`).
pub fn parse_bulk(bytes: &[u8]) -> Result<Vec<OpBody>, BodyError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| BodyError::new("body", format!("not JSON: {e}")))?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err(BodyError::new(
            "body",
            "expected a JSON object {\"operations\": [...]}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "operations") {
        return Err(BodyError::new(
            k.as_str(),
            "unknown field (the body has only `operations`)",
        ));
    }
    let ops = match obj.remove("operations") {
        Some(serde_json::Value::Array(a)) => a,
        Some(_) => {
            return Err(BodyError::new(
                "operations",
                "expected an array of operations",
            ))
        }
        None => return Err(BodyError::new("operations", "missing")),
    };
    if ops.is_empty() {
        return Err(BodyError::new(
            "operations",
            "must hold at least one operation",
        ));
    }
    if ops.len() > MAX_BULK_OPS {
        return Err(BodyError::new(
            "operations",
            format!(
                "{} operations: at most {MAX_BULK_OPS} in one request",
                ops.len()
            ),
        ));
    }
    ops.into_iter()
        .enumerate()
        .map(|(i, v)| parse_operation(v).map_err(|e| e.at(i)))
        .collect()
}

/// Parses an operation body, naming the offending field on failure.
pub fn parse_operation(value: serde_json::Value) -> Result<OpBody, BodyError> {
    let Some(obj) = value.as_object() else {
        return Err(BodyError::new("body", "expected a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(_) => return Err(BodyError::new("type", "expected a string")),
        None => return Err(BodyError::new("type", "missing")),
    };
    const API_TYPES: [&str; 7] = [
        "create_session",
        "verdict",
        "session_message",
        "session_result",
        "abort_session",
        "evidence",
        "blame",
    ];
    if !API_TYPES.contains(&kind.as_str()) {
        return Err(BodyError::new(
            "type",
            format!(
                "{kind:?} is not an operation the API takes (one of: {})",
                API_TYPES.join(", ")
            ),
        ));
    }
    serde_json::from_value::<OpBody>(value).map_err(|e| {
        let msg = e.to_string();
        // serde names the field in backticks: "missing field `session`",
        // "unknown field `x`, expected ...".
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .map(str::to_string)
            .unwrap_or_else(|| "body".into());
        BodyError::new(field, msg)
    })
}

/// Checks what the API can check before accepting an operation, so an
/// operator learns at once of a request consensus would reject.
/// `members` are the cluster's (see [`members`]).
async fn check_operation(
    op: &OpBody,
    members: Option<&[u32]>,
    st: &ApiState,
) -> Result<(), BodyError> {
    let OpBody::CreateSession(c) = op else {
        return Ok(());
    };
    let Some(members) = members else {
        return Ok(());
    };
    let (field, parties, deadline) = match &c.session {
        SessionSpec::Keygen(k) => {
            if k.threshold == 0 || usize::from(k.threshold) > k.participants.len() {
                return Err(BodyError::new(
                    "session.threshold",
                    format!(
                        "must be 1..={} (the number of participants)",
                        k.participants.len()
                    ),
                ));
            }
            ("session.participants", &k.participants, k.deadline_secs)
        }
        SessionSpec::Signing(s) => ("session.signers", &s.signers, s.deadline_secs),
        _ => return session_rules(c, st).await,
    };
    if parties.is_empty() {
        return Err(BodyError::new(field, "must not be empty"));
    }
    if let Some(p) = parties.iter().find(|p| !members.contains(&p.0)) {
        return Err(BodyError::new(
            field,
            format!("{p} is not a member of the cluster"),
        ));
    }
    let mut sorted: Vec<u32> = parties.iter().map(|p| p.0).collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
        return Err(BodyError::new(field, "lists a party twice"));
    }
    if deadline == 0 {
        return Err(BodyError::new("session.deadline_secs", "must be positive"));
    }
    session_rules(c, st).await
}

/// The session rules checked against the daemon's decided state (unknown
/// or busy key, a signer without a share, an excluded party, a digest the
/// scheme cannot sign...): what consensus would refuse now, answered before
/// the request is accepted.
async fn session_rules(c: &CreateSession, st: &ApiState) -> Result<(), BodyError> {
    let Some(v) = st
        .daemon
        .query(Query::CheckSession(Box::new(c.session.clone())))
        .await
    else {
        return Ok(());
    };
    let text = |k: &str| v.get(k).and_then(|x| x.as_str());
    match text("reason") {
        Some(reason) => Err(BodyError::new(
            "session",
            format!("refused by rule {}: {reason}", text("rule").unwrap_or("?")),
        )),
        None => Ok(()),
    }
}

/// A streaming body fed by a channel (the event stream).
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// One event in Server-Sent Events form.
pub fn sse_frame(e: &ApiEvent) -> Bytes {
    // `data` is JSON text already: embedded as it is.
    let kind = serde_json::to_string(&e.kind).unwrap_or_else(|_| "\"\"".into());
    Bytes::from(format!(
        "id: {id}\nevent: {}\ndata: {{\"id\":\"{id}\",\"kind\":{kind},\"time_ms\":{},\"data\":{}}}\n\n",
        e.kind,
        e.time_ms,
        e.data,
        id = e.id,
    ))
}

fn events(req: Request<Incoming>, st: &ApiState, params: &[(String, String)]) -> Resp {
    // Resume after Last-Event-ID (header) or ?after=; neither: new events only.
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let after = match (header, params.iter().find(|(k, _)| k == "after")) {
        (Some(h), _) => match h.parse::<EventId>() {
            Ok(id) => Some(id),
            Err(e) => return error(StatusCode::BAD_REQUEST, Some("Last-Event-ID"), &e),
        },
        (None, Some((_, a))) => match a.parse::<EventId>() {
            Ok(id) => Some(id),
            Err(e) => return error(StatusCode::BAD_REQUEST, Some("after"), &e),
        },
        (None, None) => None,
    };
    let log_handle = st.daemon.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // Subscribe before reading the ring: nothing falls in between.
    let mut live = log_handle.events().subscribe();
    let start = match after {
        Some(a) => Some(a),
        None => Some(log_handle.events().last_id().unwrap_or(EventId {
            height: 0,
            index: 0,
        })),
    };
    tokio::spawn(async move {
        let log = log_handle.events();
        let mut last = start;
        // Replays from the ring after `last`; false once the reader is gone.
        async fn replay(
            log: &crate::daemon::events::EventLog,
            last: &mut Option<EventId>,
            tx: &mpsc::Sender<Bytes>,
        ) -> bool {
            loop {
                let r = log.after(*last, 1024);
                if r.truncated {
                    let gap = format!(
                        "event: gap\ndata: {{\"after\": \"{}\", \"reason\": \"older events left the in-memory ring; re-read state with GET /v1/operations and /v1/sessions\"}}\n\n",
                        last.map(|l| l.to_string()).unwrap_or_default()
                    );
                    if tx.send(Bytes::from(gap)).await.is_err() {
                        return false;
                    }
                }
                if r.events.is_empty() {
                    return true;
                }
                for e in &r.events {
                    if tx.send(sse_frame(e)).await.is_err() {
                        return false;
                    }
                    *last = Some(e.id);
                }
            }
        }
        if !replay(log, &mut last, &tx).await {
            return;
        }
        loop {
            let next = tokio::time::timeout(SSE_KEEPALIVE, live.recv()).await;
            let ok = match next {
                Err(_) => tx
                    .send(Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_ok(),
                Ok(Ok(e)) => {
                    if last.is_none_or(|l| e.id > l) {
                        last = Some(e.id);
                        tx.send(sse_frame(&e)).await.is_ok()
                    } else {
                        true
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    replay(log, &mut last, &tx).await
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => false,
            };
            if !ok {
                return;
            }
        }
    });
    let mut r = Response::new(ChannelBody { rx }.boxed());
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_their_templates() {
        assert!(template_matches(
            "/v1/sessions/{id}",
            &["v1", "sessions", "ab"]
        ));
        assert!(!template_matches(
            "/v1/sessions/{id}",
            &["v1", "sessions", ""]
        ));
        assert!(template_matches(
            "/v1/sessions/{id}/messages",
            &["v1", "sessions", "ab", "messages"]
        ));
        assert!(!template_matches("/v1/status", &["v1", "status", "x"]));
        assert_eq!(allowed_methods(&["v1", "operations"]), ["POST"]);
        assert_eq!(allowed_methods(&["v1", "operations", "bulk"]), ["POST"]);
        assert_eq!(allowed_methods(&["v1", "operations", "r1-1"]), ["GET"]);
        assert_eq!(allowed_methods(&["v1", "sessions", "ab"]), ["GET"]);
        assert!(allowed_methods(&["v1", "nothing"]).is_empty());
    }

    #[test]
    fn log_arguments_are_checked_before_lookup() {
        let p = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let seg = |s: &'static str| s.trim_start_matches('/').split('/').collect::<Vec<_>>();
        let ok = |s: &'static str, kv: &[(&str, &str)]| log_query(&seg(s), &p(kv)).ok();
        let status = |s: &'static str, kv: &[(&str, &str)]| {
            log_query(&seg(s), &p(kv)).err().map(|r| r.status())
        };
        assert_eq!(ok("/v1/log/checkpoint", &[]), Some(LogQuery::Checkpoint));
        assert_eq!(
            ok("/v1/log/entries", &[("start", "5")]),
            Some(LogQuery::Entries {
                start: 5,
                end: 5 + crate::daemon::audit::ENTRIES_PAGE
            })
        );
        assert_eq!(
            ok("/v1/log/proof/inclusion", &[("index", "3"), ("size", "4")]),
            Some(LogQuery::Inclusion { index: 3, size: 4 })
        );
        assert_eq!(
            ok("/v1/log/proof/consistency", &[("old", "4"), ("new", "4")]),
            Some(LogQuery::Consistency { old: 4, new: 4 })
        );
        let bad = Some(StatusCode::BAD_REQUEST);
        assert_eq!(status("/v1/log/entries", &[]), bad);
        assert_eq!(status("/v1/log/entries", &[("start", "x")]), bad);
        assert_eq!(
            status("/v1/log/entries", &[("start", "5"), ("end", "5")]),
            bad
        );
        assert_eq!(
            status("/v1/log/proof/inclusion", &[("index", "4"), ("size", "4")]),
            bad
        );
        assert_eq!(
            status("/v1/log/proof/inclusion", &[("index", "-1"), ("size", "4")]),
            bad
        );
        assert_eq!(
            status("/v1/log/proof/consistency", &[("old", "0"), ("new", "4")]),
            bad
        );
        assert_eq!(
            status("/v1/log/proof/consistency", &[("old", "5"), ("new", "4")]),
            bad
        );
        assert_eq!(
            status("/v1/log/proof/other", &[]),
            Some(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn ids_are_checked_before_lookup() {
        assert!(is_receipt_id("r1-42"));
        assert!(!is_receipt_id("r1-"));
        assert!(!is_receipt_id("x1-2"));
        assert!(is_hex_id(&"ab".repeat(32)));
        assert!(!is_hex_id(&"zz".repeat(32)));
        assert!(!is_hex_id("abcd"));
    }

    #[test]
    fn operation_errors_name_the_field() {
        let e = parse_operation(serde_json::json!([1])).unwrap_err();
        assert_eq!(e.field, "body");
        let e = parse_operation(serde_json::json!({"session": {}})).unwrap_err();
        assert_eq!(e.field, "type");
        let e = parse_operation(serde_json::json!({"type": "attestation_record"})).unwrap_err();
        assert_eq!(e.field, "type");
        let e = parse_operation(serde_json::json!({"type": "create_session"})).unwrap_err();
        assert_eq!(e.field, "session", "{e:?}");
        let ok = parse_operation(serde_json::json!({"type": "create_session", "session": {
            "kind": "keygen", "participants": [1, 2, 3], "threshold": 2,
            "scheme": "frost-secp256k1", "deadline_secs": 120}}));
        assert!(ok.is_ok(), "{ok:?}");
    }

    fn keygen_json() -> serde_json::Value {
        serde_json::json!({"type": "create_session", "session": {
            "kind": "keygen", "participants": [1, 2, 3], "threshold": 2,
            "scheme": "frost-secp256k1", "deadline_secs": 120}})
    }

    #[test]
    fn a_bulk_body_is_parsed_whole_or_its_first_bad_operation_named() {
        let bulk = |ops: Vec<serde_json::Value>| {
            serde_json::to_vec(&serde_json::json!({ "operations": ops })).unwrap()
        };
        let ok = parse_bulk(&bulk(vec![keygen_json(), keygen_json()])).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(matches!(ok[1], OpBody::CreateSession(_)));
        // The first bad operation, by index and field.
        let mut bad = keygen_json();
        bad["session"].as_object_mut().unwrap().remove("scheme");
        let e = parse_bulk(&bulk(vec![keygen_json(), bad, serde_json::json!(1)])).unwrap_err();
        assert_eq!(e.field, "operations[1].scheme", "{e}");
        let e = parse_bulk(&bulk(vec![keygen_json(), serde_json::json!("x")])).unwrap_err();
        assert_eq!(e.field, "operations[1]", "{e}");
        let e = parse_bulk(&bulk(vec![
            serde_json::json!({"type": "attestation_record"}),
        ]))
        .unwrap_err();
        assert_eq!(e.field, "operations[0].type", "{e}");
        // The envelope.
        for (body, field) in [
            (&b"not json"[..], "body"),
            (b"[]", "body"),
            (b"{}", "operations"),
            (b"{\"operations\": {}}", "operations"),
            (b"{\"operations\": []}", "operations"),
            (b"{\"operations\": [], \"extra\": 1}", "extra"),
        ] {
            let e = parse_bulk(body).unwrap_err();
            assert_eq!(e.field, field, "{}: {e}", String::from_utf8_lossy(body));
        }
        // Bounded.
        let many = vec![keygen_json(); MAX_BULK_OPS + 1];
        let e = parse_bulk(&bulk(many)).unwrap_err();
        assert_eq!(e.field, "operations");
        assert!(e.reason.contains("at most 1024"), "{e}");
        assert_eq!(
            parse_bulk(&bulk(vec![keygen_json(); MAX_BULK_OPS]))
                .unwrap()
                .len(),
            MAX_BULK_OPS
        );
    }

    #[test]
    fn body_parsers_return_errors_on_garbage_and_never_panic() {
        // Truncations and byte flips of valid bodies, deep nesting and
        // random bytes (a seeded generator: reproducible).
        let good = serde_json::to_vec(&serde_json::json!({
            "operations": [keygen_json(), {"type": "verdict", "target": "ab", "decision": "approve"}]
        }))
        .unwrap();
        let mut inputs: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut b = good.clone();
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
            inputs.push(b);
            inputs.push((0..(next() % 64)).map(|_| next() as u8).collect());
        }
        inputs.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
        inputs.push(
            format!(
                "{{\"operations\": [{}]}}",
                "{\"type\": \"verdict\"},".repeat(2000) + "1"
            )
            .into_bytes(),
        );
        for input in &inputs {
            let _ = parse_bulk(input);
            let _ = parse_operation_body(input);
        }
    }

    #[tokio::test]
    async fn backpressure_is_a_429_with_retry_after_and_the_usual_error_body() {
        let r = submit_refused(
            &SubmitRefused {
                index: None,
                error: SubmitError::OutboxFull {
                    queued: 8,
                    limit: 8,
                },
            },
            true,
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(hyper::header::RETRY_AFTER).unwrap(),
            &RETRY_AFTER_SECS.to_string()
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 429);
        assert!(v["field"].is_null());
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("max_outbox_ops is 8"),
            "{v}"
        );
        let r = submit_refused(
            &SubmitRefused {
                index: Some(3),
                error: SubmitError::SlotTaken {
                    slot: "s".into(),
                    existing: "r1-1".into(),
                },
            },
            true,
        );
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.headers().get(hyper::header::RETRY_AFTER).is_none());
    }

    #[test]
    fn sse_frames_carry_the_id() {
        let e = ApiEvent {
            id: EventId {
                height: 5,
                index: 2,
            },
            kind: "executed".into(),
            time_ms: 1,
            data: serde_json::json!({"executed": {"op": "ab"}})
                .to_string()
                .into(),
        };
        let f = String::from_utf8(sse_frame(&e).to_vec()).unwrap();
        assert!(f.starts_with("id: 5:2\nevent: executed\ndata: {"), "{f}");
        assert!(f.ends_with("\n\n"));
        let line = f.lines().nth(2).unwrap().strip_prefix("data: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], "5:2");
        assert_eq!(v["kind"], "executed");
        assert_eq!(v["time_ms"], 1);
        assert_eq!(v["data"]["executed"]["op"], "ab");
    }
}
