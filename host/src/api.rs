//! The party's local HTTP API (JSON, versioned under `/v1`).
//!
//! Open only to the party's own MPC engine and operator: it listens on
//! loopback by default and every request but `GET /healthz` must carry
//! `Authorization: Bearer <token>`, the token kept in `DATA_DIR/api.token`
//! (mode 0600, made at first start).
//!
//! Bad requests get a 4xx with a JSON body naming what is wrong; an
//! operation is answered `202` only once it is durable in the outbox.

use crate::daemon::{DaemonHandle, Query};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use quorate_firmware::sessions::ops::OpBody;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 1 << 20;
/// File name of the API bearer token in the data dir.
pub const TOKEN_FILE: &str = "api.token";

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

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, daemon: DaemonHandle, token: String) {
    let state = Arc::new(ApiState { daemon, token });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &state).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// Binds the API listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, field: Option<&str>, reason: &str) -> Resp {
    json(
        status,
        &serde_json::json!({"error": {"status": status.as_u16(), "field": field, "reason": reason}}),
    )
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| quorate_firmware::crypto::ct_eq(t.trim().as_bytes(), token.as_bytes()))
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
    match (method.clone(), segments.as_slice()) {
        (Method::POST, ["v1", "operations"]) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return if e
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            None,
                            &format!("body larger than {MAX_BODY} bytes"),
                        )
                    } else {
                        error(StatusCode::BAD_REQUEST, None, "could not read the body")
                    };
                }
            };
            let op: OpBody = match serde_json::from_slice(&body) {
                Ok(op) => op,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        Some("body"),
                        &format!("not a valid operation: {e}"),
                    )
                }
            };
            match st.daemon.submit(op).await {
                Ok(r) => json(StatusCode::ACCEPTED, &serde_json::json!({"id": r.id})),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, None, &e),
            }
        }
        (Method::GET, ["v1", "operations", id]) => {
            match st.daemon.query(Query::Operation(id.to_string())).await {
                Some(v) => json(StatusCode::OK, &v),
                None => error(
                    StatusCode::NOT_FOUND,
                    Some("id"),
                    "no operation with this id",
                ),
            }
        }
        (Method::GET, ["v1", "status"]) => match st.daemon.query(Query::Status).await {
            Some(v) => json(StatusCode::OK, &v),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the daemon is shutting down",
            ),
        },
        (_, ["v1", "operations"]) | (_, ["v1", "status"]) | (_, ["v1", "operations", _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            None,
            &format!("no such endpoint: {path}"),
        ),
    }
}
