//! A minimal C2SP tlog-witness for the test suite, written from the spec
//! (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature): one
//! `POST /add-checkpoint` endpoint over plain HTTP/1.1 on loopback
//! (std::net, a thread per connection, one request each).
//!
//! For each known origin it trusts the log's keys — here a Quorate
//! cluster's vote keys, whose `…/P<n>/vote` lines sign the checkpoint — and
//! keeps the latest checkpoint it cosigned. A request is answered as the
//! spec says: 404 for an unknown origin, 403 when no trusted signature
//! verifies, 400 when the old size exceeds the checkpoint's, 409 with
//! `text/x.tlog.size` when the old size is not the size it holds, 422 when
//! the consistency proof does not verify, 409 when the same size has
//! another root; otherwise it records the checkpoint (atomically with the
//! checks) and answers 200 with one `cosignature/v1` line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use quorate_firmware::audit::checkpoint::{verify_cosignature as verify_vote_line, SignerRole};
use quorate_firmware::audit::merkle::{verify_consistency, TreeSize};
use quorate_firmware::crypto::PublicKey;
use quorate_firmware::types::{PartyId, Sha256Digest};
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::witness::{cosign, parse_add_checkpoint, WitnessKey, MAX_BODY};

/// What the witness holds per origin: the trusted keys and the latest
/// cosigned (size, root).
struct Log {
    keys: BTreeMap<PartyId, PublicKey>,
    latest: Option<(u64, Sha256Digest)>,
}

struct Inner {
    name: String,
    key: Ed25519KeyPair,
    logs: Mutex<BTreeMap<String, Log>>,
    /// Requests answered, by status.
    answered: Mutex<Vec<u16>>,
}

/// A running minimal witness. Dropping it leaves the listener thread
/// blocked in `accept` until the process ends (test use only).
pub struct TestWitness {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl TestWitness {
    /// Starts a witness named `name` with a fresh Ed25519 key on a free
    /// loopback port.
    pub fn start(name: &str) -> std::io::Result<TestWitness> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| std::io::Error::other("key generation failed"))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| std::io::Error::other("key parse failed"))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            name: name.to_string(),
            key,
            logs: Mutex::new(BTreeMap::new()),
            answered: Mutex::new(Vec::new()),
        });
        let shared = inner.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let inner = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(&inner, conn);
                });
            }
        });
        Ok(TestWitness { addr, inner })
    }

    /// Its submission prefix, e.g. `http://127.0.0.1:4321`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its verifier key.
    pub fn key(&self) -> WitnessKey {
        WitnessKey {
            name: self.inner.name.clone(),
            key: self
                .inner
                .key
                .public_key()
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]),
        }
    }

    /// Trusts the log `origin`, signed by the cluster's vote keys.
    pub fn trust(&self, origin: &str, keys: BTreeMap<PartyId, PublicKey>) {
        let mut logs = self.inner.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.insert(origin.to_string(), Log { keys, latest: None });
    }

    /// The latest (size, root) cosigned for `origin`.
    pub fn latest(&self, origin: &str) -> Option<(u64, Sha256Digest)> {
        let logs = self.inner.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.get(origin).and_then(|l| l.latest)
    }

    /// Every status answered so far, in order.
    pub fn answered(&self) -> Vec<u16> {
        self.inner
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn serve(inner: &Inner, conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(usize::MAX);
            }
        }
    }
    let (status, ctype, body) = if method != "POST" || path != "/add-checkpoint" {
        (404, "text/plain", "not found\n".to_string())
    } else if length > MAX_BODY {
        (400, "text/plain", "body too large\n".to_string())
    } else {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        add_checkpoint(inner, &body)
    };
    inner
        .answered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(status);
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    out.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        _ => "Error",
    }
}

fn add_checkpoint(inner: &Inner, body: &[u8]) -> (u16, &'static str, String) {
    let text = |s: &str| (400, "text/plain", format!("{s}\n"));
    let req = match parse_add_checkpoint(body) {
        Ok(r) => r,
        Err(e) => return text(&e.to_string()),
    };
    let cp = &req.checkpoint.checkpoint;
    // Checks and update under one lock: atomic, as the spec requires.
    let mut logs = inner.logs.lock().unwrap_or_else(|p| p.into_inner());
    let Some(log) = logs.get_mut(&cp.origin) else {
        return (404, "text/plain", "unknown origin\n".into());
    };
    let msg = cp.cosign_message();
    let trusted = req.checkpoint.signatures.iter().any(|l| {
        matches!(l.signer(&cp.origin), Some((p, SignerRole::Cosign))
            if log.keys.get(&p).is_some_and(|k| verify_vote_line(l, p, k, &msg).is_ok()))
    });
    if !trusted {
        return (403, "text/plain", "no trusted signature verifies\n".into());
    }
    let held = log.latest.map(|(s, _)| s).unwrap_or(0);
    if req.old != held {
        return (409, "text/x.tlog.size", format!("{held}\n"));
    }
    let refusal = match log.latest {
        None if !req.proof.is_empty() => Some((422, "the proof must be empty from size 0\n")),
        Some((size, root)) if size == cp.size.0 && root != cp.root => {
            Some((409, "another root at the same size\n"))
        }
        Some((size, root))
            if size != cp.size.0
                && verify_consistency(TreeSize(size), &root, cp.size, &cp.root, &req.proof)
                    .is_err() =>
        {
            Some((422, "the consistency proof does not verify\n"))
        }
        _ => None,
    };
    if let Some((status, why)) = refusal {
        return (status, "text/plain", why.to_string());
    }
    log.latest = Some((cp.size.0, cp.root));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let line = cosign(&inner.key, &inner.name, cp, now);
    let note = quorate_firmware::audit::checkpoint::SignedCheckpoint {
        checkpoint: cp.clone(),
        signatures: vec![line],
    }
    .format();
    let lines = note.split_once("\n\n").map(|(_, l)| l).unwrap_or("");
    (200, "text/plain", lines.to_string())
}
