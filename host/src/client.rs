//! A small client for a party's HTTP API, for MPC engines, the demo and the
//! tests: typed submissions, operation and status reads.

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
}

/// A party's API endpoint and token.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    token: String,
    timeout: Duration,
}

/// The answer to `POST /v1/operations`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Accepted {
    /// The receipt id.
    pub id: String,
}

impl Client {
    /// A client for the API at `addr` with bearer `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Client {
            addr,
            token: token.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// A client reading the token from `DATA_DIR/api.token`.
    pub fn from_data_dir(addr: SocketAddr, data_dir: &Path) -> std::io::Result<Self> {
        let token = std::fs::read_to_string(data_dir.join(crate::api::TOKEN_FILE))?;
        Ok(Client::new(addr, token.trim()))
    }

    /// Sends one request and returns the status and body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: self.addr,
            reason,
        };
        let fut = async {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.to_string())
                .header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", self.token),
                )
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| connect_err(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| connect_err(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| connect_err("timed out".into()))?
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, path, body).await?;
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

    /// An operation's status and verdicts, by receipt or operation id.
    pub async fn operation(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, &format!("/v1/operations/{id}"), None)
            .await
    }

    /// The daemon's status.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.json(Method::GET, "/v1/status", None).await
    }
}
