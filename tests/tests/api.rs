//! System tests of the party API: every endpoint's success and failure
//! cases against one real three-party cluster (each party with its own
//! swtpm), authentication, the event stream's resumption without gaps, the
//! OpenAPI document against the served routes, and malformed requests that
//! must not hurt the daemon.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use hyper::{Method, StatusCode};
use quorate_host::api_tls::{CertFingerprint, ServerTrust};
use quorate_host::client::{Client, ClientError, EventStream, StreamEvent};
use quorate_tests::cluster::TestCluster;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn keygen(scheme: &str) -> Value {
    json!({"type": "create_session", "session": {"kind": "keygen", "participants": [1, 2, 3],
        "threshold": 2, "scheme": scheme, "deadline_secs": 600}})
}

/// Polls an operation until it is no longer pending.
async fn settled(c: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.operation(id).await.unwrap();
        if v["status"] != "pending" {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "operation {id} stayed pending: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expect_error(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    status: StatusCode,
    field: Option<&str>,
) -> Value {
    let (s, b) = c.raw(method.clone(), path, body).await.unwrap();
    let v: Value = serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {b:?}"));
    assert_eq!(s, status, "{method} {path}: {v}");
    assert_eq!(v["status"], status.as_u16(), "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    if let Some(f) = field {
        assert_eq!(v["field"], f, "{method} {path}: {v}");
    }
    v
}

async fn next_event(s: &mut EventStream) -> StreamEvent {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("no event within 30 s")
        .unwrap()
        .expect("stream closed")
}

/// Reads events until one satisfies `stop`; returns all read.
async fn read_until(s: &mut EventStream, stop: impl Fn(&StreamEvent) -> bool) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    loop {
        let e = next_event(s).await;
        let done = stop(&e);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn executed_event_of(op: &str) -> impl Fn(&StreamEvent) -> bool + '_ {
    move |e: &StreamEvent| e.event == "executed" && e.data["data"]["executed"]["op"] == op
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_party_api_end_to_end() {
    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    // Party 3 runs only FROST key generations: a request for another scheme
    // is rejected with its reason.
    let cfg3 = c.parties[2].config.clone();
    let mut text = std::fs::read_to_string(&cfg3).unwrap();
    text.push_str("\n[party.local_policy]\nallowed_schemes = [\"frost-secp256k1\"]\n");
    std::fs::write(&cfg3, text).unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let p1 = c.client(1).unwrap();
    let clients: Vec<Client> = (1..=3).map(|id| c.client(id).unwrap()).collect();

    // --- Authentication ---------------------------------------------------
    let anon = Client::new(c.parties[0].api, "");
    let wrong = Client::new(c.parties[0].api, "0".repeat(64));
    assert!(anon.healthy().await, "healthz needs no token");
    // Every route but /healthz, before anything is looked up or parsed.
    for who in [&anon, &wrong] {
        for (m, path) in quorate_host::api::ROUTES {
            if *path == "/healthz" {
                continue;
            }
            expect_error(
                who,
                m.parse().unwrap(),
                &path.replace("{id}", &"ab".repeat(32)),
                Some(keygen("frost-secp256k1").to_string().into_bytes()),
                StatusCode::UNAUTHORIZED,
                Some("Authorization"),
            )
            .await;
        }
    }

    // --- Events: open a stream before anything is decided ------------------
    let mut stream = p1.events(None).await.unwrap();

    // --- POST /v1/operations and GET /v1/operations/{id} --------------------
    let accepted = p1.submit_json(&keygen("frost-secp256k1")).await.unwrap();
    assert!(accepted.id.starts_with("r1-"), "{accepted:?}");
    let op = settled(&p1, &accepted.id).await;
    assert_eq!(op["status"], "executed", "{op}");
    let verdicts = op["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 3, "{op}");
    for v in verdicts {
        assert_eq!(v["approve"], true, "{op}");
        assert!(v["reason"].is_null(), "{op}");
    }
    let op_id = op["op_id"].as_str().unwrap().to_string();
    // Every party knows it by its operation id, identically.
    for cl in &clients {
        let v = cl.operation(&op_id).await.unwrap();
        assert_eq!(v["status"], "executed");
        assert_eq!(v["record"], op["record"]);
    }
    let session = op["record"]["session"].as_str().unwrap().to_string();

    // The event stream saw the operation and its execution.
    let seen = read_until(&mut stream, executed_event_of(&op_id)).await;
    assert!(seen.iter().any(|e| e.event == "operation"), "{seen:?}");

    // --- A request one party's policy refuses: rejected with its reason ----
    let refused = p1.submit_json(&keygen("gg18-secp256k1")).await.unwrap();
    let v = settled(&p1, &refused.id).await;
    assert_eq!(v["status"], "rejected", "{v}");
    let v3 = v["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["party"] == 3)
        .unwrap_or_else(|| panic!("no verdict of party 3: {v}"))
        .clone();
    assert_eq!(v3["approve"], false, "{v}");
    assert_eq!(v3["reason"]["code"], "scheme_not_allowed", "{v}");

    // --- Sessions and round messages, seen identically by all --------------
    let s = p1.session(&session).await.unwrap();
    assert_eq!(s["phase_label"], "active", "{s}");
    let mut receipts = Vec::new();
    for (i, cl) in clients.iter().enumerate() {
        let r = cl
            .submit_json(
                &json!({"type": "session_message", "session": session, "round": 1,
                "broadcast": format!("{:02x}{}", i + 1, "ab".repeat(16))}),
            )
            .await
            .unwrap();
        receipts.push((i, r.id));
    }
    for (i, r) in &receipts {
        let v = settled(&clients[*i], r).await;
        assert_eq!(v["status"], "executed", "{v}");
    }
    c.wait_quiescent(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let mut views = Vec::new();
    for cl in &clients {
        let m = cl.messages(&session, Some(1)).await.unwrap();
        assert_eq!(m["messages"].as_array().unwrap().len(), 3, "{m}");
        views.push(m["messages"].clone());
        let none = cl.messages(&session, Some(7)).await.unwrap();
        assert_eq!(none["messages"].as_array().unwrap().len(), 0);
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
    let senders: BTreeSet<u64> = views[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["from"].as_u64().unwrap())
        .collect();
    assert_eq!(senders, BTreeSet::from([1, 2, 3]));

    // --- Unknown and malformed ids ------------------------------------------
    let unknown = "ab".repeat(32);
    for path in [
        format!("/v1/operations/{unknown}"),
        "/v1/operations/r1-999999".to_string(),
        format!("/v1/sessions/{unknown}"),
        format!("/v1/sessions/{unknown}/messages"),
    ] {
        expect_error(
            &p1,
            Method::GET,
            &path,
            None,
            StatusCode::NOT_FOUND,
            Some("id"),
        )
        .await;
    }
    for path in [
        "/v1/operations/nope",
        "/v1/sessions/xyz",
        "/v1/sessions/xyz/messages",
    ] {
        expect_error(
            &p1,
            Method::GET,
            path,
            None,
            StatusCode::BAD_REQUEST,
            Some("id"),
        )
        .await;
    }
    expect_error(
        &p1,
        Method::GET,
        &format!("/v1/sessions/{session}/messages?round=x"),
        None,
        StatusCode::BAD_REQUEST,
        Some("round"),
    )
    .await;
    expect_error(
        &p1,
        Method::GET,
        "/v1/nothing",
        None,
        StatusCode::NOT_FOUND,
        None,
    )
    .await;
    expect_error(
        &p1,
        Method::DELETE,
        "/v1/status",
        None,
        StatusCode::METHOD_NOT_ALLOWED,
        None,
    )
    .await;

    // --- Bad operation bodies ----------------------------------------------
    let post = |b: &str| Some(b.as_bytes().to_vec());
    let bad: [(&str, StatusCode, &str); 8] = [
        ("{not json", StatusCode::BAD_REQUEST, "body"),
        ("[1, 2]", StatusCode::BAD_REQUEST, "body"),
        ("{\"session\": {}}", StatusCode::BAD_REQUEST, "type"),
        ("{\"type\": \"launch\"}", StatusCode::BAD_REQUEST, "type"),
        ("{\"type\": \"attestation_record\", \"binds_height\": 1, \"evidence\": \"00\"}", StatusCode::BAD_REQUEST, "type"),
        ("{\"type\": \"create_session\"}", StatusCode::BAD_REQUEST, "session"),
        (
            "{\"type\": \"create_session\", \"session\": {\"kind\": \"keygen\", \"participants\": [1, 2, 3], \"threshold\": 0, \"scheme\": \"frost-secp256k1\", \"deadline_secs\": 60}}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "session.threshold",
        ),
        (
            "{\"type\": \"create_session\", \"session\": {\"kind\": \"keygen\", \"participants\": [1, 2, 9], \"threshold\": 2, \"scheme\": \"frost-secp256k1\", \"deadline_secs\": 60}}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "session.participants",
        ),
    ];
    for (body, status, field) in bad {
        expect_error(
            &p1,
            Method::POST,
            "/v1/operations",
            post(body),
            status,
            Some(field),
        )
        .await;
    }
    let big = vec![b' '; quorate_host::api::MAX_BODY + 1];
    expect_error(
        &p1,
        Method::POST,
        "/v1/operations",
        Some(big),
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("body"),
    )
    .await;

    // --- Status, peers, blocks, metrics -------------------------------------
    let st = p1.status_json().await.unwrap();
    assert_eq!(st["party"], 1);
    assert!(st["height"].as_u64().unwrap() > 0, "{st}");
    assert!(st["peers_attested"].is_u64(), "{st}");
    let peers = p1.peers().await.unwrap();
    assert_eq!(peers["party"], 1);
    let list = peers["peers"].as_array().unwrap();
    assert_eq!(
        list.iter()
            .map(|p| p["party"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(list.iter().all(|p| p["connected"] == true), "{peers}");
    assert!(list.iter().all(|p| p["attested"].is_boolean()), "{peers}");
    assert!(peers["peers_attested"].is_u64());

    let blocks = p1.blocks(1, 5).await.unwrap();
    let bl = blocks["blocks"].as_array().unwrap();
    assert!(!bl.is_empty(), "{blocks}");
    for (i, b) in bl.iter().enumerate() {
        assert_eq!(b["height"], i as u64 + 1);
        let signers = b["certificate"]["signers"].as_array().unwrap();
        assert!(signers.len() >= 3, "a byzantine quorum of 3 signs: {b}");
        assert_eq!(b["certificate"]["block"], b["hash"]);
        if i > 0 {
            assert_eq!(b["parent"], bl[i - 1]["hash"]);
        }
    }
    // The same history at another party.
    // The same chain at another party (its certificates may hold other
    // signer sets: each party assembles its own from the precommits it saw).
    let other = clients[2].blocks(1, 5).await.unwrap();
    let chain = |v: &Value| -> Vec<(Value, Value)> {
        v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["hash"].clone(), b["parent"].clone()))
            .collect()
    };
    assert_eq!(chain(&other), chain(&blocks));
    for q in ["limit=0", "limit=100000", "from=x", "limit=-1"] {
        let field = q.split('=').next().unwrap();
        expect_error(
            &p1,
            Method::GET,
            &format!("/v1/blocks?{q}"),
            None,
            StatusCode::BAD_REQUEST,
            Some(field),
        )
        .await;
    }

    let metrics = p1.metrics().await.unwrap();
    for needle in [
        "quorate_height ",
        "quorate_decisions_total ",
        "quorate_commit_latency_seconds_bucket{le=\"+Inf\"} ",
        "quorate_tpm_sign_latency_seconds_count ",
        "quorate_peers_attested ",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    let decisions: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quorate_decisions_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(decisions > 0, "{metrics}");

    // --- The event stream resumes after a reconnect without gaps ------------
    let before = read_until(&mut stream, |_| true).await; // whatever is next
    let last_seen = before.last().unwrap().id.clone();
    drop(stream);
    // Decided while nobody is listening:
    let missed = p1.submit_json(&keygen("frost-secp256k1")).await.unwrap();
    let missed_op = settled(&p1, &missed.id).await["op_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut resumed = p1.events(Some(&last_seen)).await.unwrap();
    let got = read_until(&mut resumed, executed_event_of(&missed_op)).await;
    // The full history from the start, for comparison.
    let mut full = p1.events(Some("0:0")).await.unwrap();
    let all = read_until(&mut full, executed_event_of(&missed_op)).await;
    let pos = all
        .iter()
        .position(|e| e.id == last_seen)
        .expect("the last id seen is in the history");
    let expected: Vec<&String> = all[pos + 1..].iter().map(|e| &e.id).collect();
    let resumed_ids: Vec<&String> = got.iter().map(|e| &e.id).collect();
    assert_eq!(resumed_ids, expected, "resumption lost or repeated events");
    // Ids are strictly increasing and contiguous within each block.
    let parsed: Vec<(u64, u32)> = all
        .iter()
        .map(|e| {
            let (h, i) = e.id.split_once(':').unwrap();
            (h.parse().unwrap(), i.parse().unwrap())
        })
        .collect();
    for w in parsed.windows(2) {
        assert!(
            (w[1].0 == w[0].0 && w[1].1 == w[0].1 + 1) || (w[1].0 > w[0].0 && w[1].1 == 0),
            "gap between {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    expect_error(
        &p1,
        Method::GET,
        "/v1/events?after=garbage",
        None,
        StatusCode::BAD_REQUEST,
        Some("after"),
    )
    .await;
    let (s, b) = p1
        .events(Some("12:x"))
        .await
        .map(|_| (StatusCode::OK, String::new()))
        .unwrap_or_else(|e| match e {
            ClientError::Status { status, body } => (status, body),
            e => panic!("{e}"),
        });
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b.contains("Last-Event-ID"), "{b}");

    // --- The OpenAPI document lists exactly the served routes ---------------
    let documented = documented_routes();
    let served: BTreeSet<(String, String)> = quorate_host::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.json and api::ROUTES differ"
    );
    every_documented_route_succeeds(&p1, &op_id, &session).await;
    // The event stream is text/event-stream (read the head only: a stream
    // never ends).
    let (s, _) = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tcp = tokio::net::TcpStream::connect(c.parties[0].api)
            .await
            .unwrap();
        let token = std::fs::read_to_string(c.parties[0].data_dir.join("api.token")).unwrap();
        tcp.write_all(
            format!(
                "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                token.trim()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 256];
        let n = tcp.read(&mut buf).await.unwrap();
        (String::from_utf8_lossy(&buf[..n]).to_string(), ())
    })
    .await
    .unwrap();
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    assert!(s.to_ascii_lowercase().contains("text/event-stream"), "{s}");

    // --- No request, however malformed, hurts the daemon --------------------
    let accepted_before = p1.submit_json(&keygen("frost-secp256k1")).await.unwrap();
    let nasty: Vec<Vec<u8>> = vec![
        vec![],
        b"null".to_vec(),
        b"\"create_session\"".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        "[".repeat(10_000).into_bytes(),
        format!("{}{}", "{\"a\":".repeat(5_000), "}".repeat(5_000)).into_bytes(),
        b"{\"type\": \"session_message\", \"session\": \"zz\", \"round\": -1, \"to\": 5, \"payload\": 1}".to_vec(),
        b"{\"type\": \"verdict\", \"target\": \"00\", \"decision\": {\"reject\": {}}}".to_vec(),
        b"{\"type\": \"create_session\", \"session\": {\"kind\": \"keygen\", \"participants\": [4294967295], \"threshold\": 65535, \"scheme\": \"\", \"deadline_secs\": 4294967295}}".to_vec(),
        b"{\"type\": \"create_session\", \"session\": {\"kind\": \"signing\"}}".to_vec(),
    ];
    for round in 0..20u8 {
        for (i, body) in nasty.iter().enumerate() {
            let mut b = body.clone();
            if round > 0 {
                b.push(round);
            }
            let (s, _) = p1
                .raw(Method::POST, "/v1/operations", Some(b))
                .await
                .unwrap();
            assert!(s.is_client_error(), "nasty body {i}: {s}");
        }
    }
    // Raw garbage that is not even HTTP.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/operations HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(c.parties[0].api)
            .await
            .unwrap();
        let _ = tcp.write_all(junk).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut sink)).await;
    }
    assert!(c.running(1), "party 1 died:\n{}", c.log(1));
    let v = settled(&p1, &accepted_before.id).await;
    assert_eq!(
        v["status"], "executed",
        "an accepted operation was lost: {v}"
    );
    let after = p1.status().await.unwrap();
    assert!(after.height >= st["height"].as_u64().unwrap());
}

/// The (method, path) pairs docs/openapi.json documents.
fn documented_routes() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            documented.insert((m.to_uppercase(), path.clone()));
        }
    }
    documented
}

/// Every documented route answers `c` with a success (a real handler, not
/// the fallback), `{id}` filled with the operation or session given.
async fn every_documented_route_succeeds(c: &Client, op_id: &str, session: &str) {
    for (m, path) in documented_routes() {
        let concrete = if path.starts_with("/v1/operations/") {
            path.replace("{id}", op_id)
        } else {
            path.replace("{id}", session)
        };
        if concrete == "/v1/events" {
            // A stream never ends: opening it (200, text/event-stream) is
            // what can be checked here.
            let mut ev = c.events(Some("0:0")).await.unwrap();
            assert_eq!(next_event(&mut ev).await.id, "1:0");
            continue;
        }
        let method: Method = m.parse().unwrap();
        if concrete.starts_with("/v1/log/") {
            // The audit log's routes take their arguments in the query; a
            // 404 from the handler (nothing certified or logged yet) is
            // not the fallback's "no such endpoint".
            let q = format!("{concrete}?start=0&index=0&size=1&old=1&new=1");
            let (s, b) = c.raw(method, &q, None).await.unwrap();
            let text = String::from_utf8_lossy(&b);
            assert!(
                s.is_success()
                    || (s == StatusCode::NOT_FOUND && !text.contains("no such endpoint")),
                "{m} {q}: {s} {text}"
            );
            continue;
        }
        let op = keygen("frost-secp256k1");
        let op = if concrete == "/v1/operations/bulk" {
            json!({ "operations": [op] })
        } else {
            op
        };
        let body = (method == Method::POST).then(|| op.to_string().into_bytes());
        let (s, b) = c.raw(method, &concrete, body).await.unwrap();
        assert!(
            s.is_success(),
            "{m} {concrete}: {s} {}",
            String::from_utf8_lossy(&b)
        );
    }
}

/// Processes whose command line mentions `dir` (daemons, swtpm instances).
fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorate_dev_with_api_tls_starts_restarts_and_stops_a_cluster_cleanly() {
    let bin = quorate_tests::cluster::quorate_bin().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = std::process::Command::new(&bin)
        .args([
            "dev",
            "--parties",
            "3",
            "--restart-after-secs",
            "1",
            "--api-tls",
            "--dir",
        ])
        .arg(&dir)
        .env("TSS2_LOG", "all+none")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // cluster.json lists every party with a pid once all APIs answer.
    let deadline = Instant::now() + Duration::from_secs(120);
    let cluster = loop {
        assert!(dev.try_wait().unwrap().is_none(), "quorate dev exited");
        if let Ok(c) = quorate_host::dev::DevCluster::read(&dir) {
            let mut up = c.parties.len() == 3 && c.parties.iter().all(|p| p.pid != 0);
            for p in &c.parties {
                up &= match c.client(p.id) {
                    Ok(cl) => cl.status().await.is_ok(),
                    Err(_) => false,
                };
            }
            if up {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "the dev cluster did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for p in &cluster.parties {
        assert_eq!(p.api_url, format!("https://{}", p.api_addr));
        assert!(p.token_file.exists());
        // cluster.json names each party's certificate and its fingerprint.
        let cert = p.api_cert.as_ref().unwrap();
        let fp = CertFingerprint::of_pem_file(cert).unwrap();
        assert_eq!(p.api_cert_sha256.as_deref(), Some(fp.to_string().as_str()));
        let s = cluster.client(p.id).unwrap().status().await.unwrap();
        assert_eq!(s.party, p.id);
    }
    // The dev cluster decides, over TLS.
    let c1 = cluster.client(1).unwrap();
    assert!(c1.base_url().starts_with("https://"));
    let r = c1.submit_json(&keygen("frost-secp256k1")).await.unwrap();
    let op = settled(&c1, &r.id).await;
    assert_eq!(op["status"], "executed");
    let op_id = op["op_id"].as_str().unwrap();
    let session = op["record"]["session"].as_str().unwrap();

    // --- The API over TLS --------------------------------------------------
    let p1 = &cluster.parties[0];
    let token = std::fs::read_to_string(&p1.token_file).unwrap();
    // Every route works over TLS.
    every_documented_route_succeeds(&c1, op_id, session).await;
    // A client that takes the certificate as its CA file works too.
    let by_ca = Client::new(p1.api_addr, token.trim())
        .with_tls(&ServerTrust::ca_file(p1.api_cert.as_ref().unwrap()).unwrap())
        .unwrap();
    assert_eq!(by_ca.status().await.unwrap().party, 1);
    // Authentication is still enforced.
    let pin = ServerTrust::Pinned(p1.api_cert_sha256.as_ref().unwrap().parse().unwrap());
    for token in ["", &"0".repeat(64)] {
        let who = Client::new(p1.api_addr, token).with_tls(&pin).unwrap();
        assert!(who.healthy().await, "healthz needs no token");
        for (m, path) in [
            (Method::GET, "/v1/status"),
            (Method::GET, "/v1/events"),
            (Method::POST, "/v1/operations"),
        ] {
            expect_error(
                &who,
                m,
                path,
                Some(keygen("frost-secp256k1").to_string().into_bytes()),
                StatusCode::UNAUTHORIZED,
                Some("Authorization"),
            )
            .await;
        }
    }
    // A client pinning another certificate (party 2's) is refused before
    // it sends anything; so is one trusting another CA.
    let other = ServerTrust::Pinned(
        cluster.parties[1]
            .api_cert_sha256
            .as_ref()
            .unwrap()
            .parse()
            .unwrap(),
    );
    let wrong_pin = Client::new(p1.api_addr, token.trim())
        .with_tls(&other)
        .unwrap();
    match wrong_pin.status().await {
        Err(ClientError::Tls { .. }) => {}
        other => panic!("a wrong pin was not refused by TLS: {other:?}"),
    }
    let other_ca = ServerTrust::ca_file(cluster.parties[1].api_cert.as_ref().unwrap()).unwrap();
    let wrong_ca = Client::new(p1.api_addr, token.trim())
        .with_tls(&other_ca)
        .unwrap();
    assert!(matches!(
        wrong_ca.status().await,
        Err(ClientError::Tls { .. })
    ));
    // Plain HTTP to the TLS listener: a clear 400 saying to use https://,
    // then the connection closes.
    let plain = Client::new(p1.api_addr, token.trim());
    let (s, b) = plain.raw(Method::GET, "/v1/status", None).await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(v["reason"].as_str().unwrap().contains("https://"), "{v}");
    // Garbage and half-finished handshakes do not hurt the daemon either.
    for junk in [&b"\x16\x03\x01\x00\x05hello"[..], b"\x16", b"\x00\x00\x00"] {
        let mut tcp = tokio::net::TcpStream::connect(p1.api_addr).await.unwrap();
        let _ = tcp.write_all(junk).await;
        drop(tcp);
    }
    assert_eq!(c1.status().await.unwrap().party, 1);
    let r = c1.submit_json(&keygen("frost-secp256k1")).await.unwrap();
    assert_eq!(settled(&c1, &r.id).await["status"], "executed");

    // A party killed with SIGKILL is restarted by the supervisor.
    let old = cluster.parties[1].pid;
    std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = quorate_host::dev::DevCluster::read(&dir).unwrap();
        let p = &c.parties[1];
        if p.pid != 0 && p.pid != old && c.client(2).unwrap().status().await.is_ok() {
            assert_eq!(p.starts, 2);
            // The restarted daemon rebuilt its event history from its
            // store: a reader can resume from any id, even from the start.
            let mut ev = c.client(2).unwrap().events(Some("0:0")).await.unwrap();
            assert_eq!(next_event(&mut ev).await.id, "1:0");
            break;
        }
        assert!(Instant::now() < deadline, "party 2 was not restarted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM stops everything: no daemon, no swtpm left.
    std::process::Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dev.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "quorate dev did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let left = processes_under(&dir);
    assert!(left.is_empty(), "stray processes: {left:?}");
    let after = quorate_host::dev::DevCluster::read(&dir).unwrap();
    assert!(after.parties.iter().all(|p| p.pid == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_decides_by_posting_a_verdict() {
    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    // Party 2's operator approves every request by hand.
    let cfg2 = c.parties[1].config.clone();
    let mut text = std::fs::read_to_string(&cfg2).unwrap();
    text.push_str("\n[party.local_policy]\nmanual_approval = true\n");
    std::fs::write(&cfg2, text).unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let p1 = c.client(1).unwrap();
    let p2 = c.client(2).unwrap();

    // Waits until the request is decided and holds the automatic verdicts
    // of parties 1 and 3; party 2's daemon waits for its operator.
    async fn awaiting_operator(p1: &Client, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = p1.operation(id).await.unwrap();
            if v["decided"] == true && v["verdicts"].as_array().unwrap().len() == 2 {
                assert_eq!(v["status"], "pending", "{v}");
                assert!(v["verdicts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|x| x["party"] != 2));
                return v["op_id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "not awaiting the operator: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let a = p1.submit_json(&keygen("frost-secp256k1")).await.unwrap();
    let op = awaiting_operator(&p1, &a.id).await;
    // Still pending a while later: nothing decides for the operator.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p1.operation(&a.id).await.unwrap()["status"], "pending");
    let approve = json!({"type": "verdict", "target": op, "decision": "approve"});
    let first = p2.submit_json(&approve).await.unwrap();
    // A retry of the same verdict is the same operation: its first receipt.
    assert_eq!(p2.submit_json(&approve).await.unwrap().id, first.id);
    // A different verdict on the same target would make party 2 an
    // equivocator (two signed operations for one slot): refused, 409.
    let reject = json!({"type": "verdict", "target": op, "decision":
        {"reject": {"code": "operator_rejected", "text": "changed my mind"}}});
    match p2.submit_json(&reject).await {
        Err(ClientError::Status { status, body }) => {
            assert_eq!(status.as_u16(), 409, "{body}");
            assert!(
                body.contains(&first.id),
                "names the verdict that holds the slot: {body}"
            );
        }
        other => panic!("a second, different verdict was not refused: {other:?}"),
    }
    let v = settled(&p1, &a.id).await;
    assert_eq!(v["status"], "executed", "{v}");
    assert_eq!(v["verdicts"].as_array().unwrap().len(), 3, "{v}");
    // Once decided, the same verdict again still answers as done, and the
    // log holds no evidence against party 2.
    assert!(p2.submit_json(&approve).await.is_ok());
    assert!(p2.submit_json(&reject).await.is_err());

    // An Idempotency-Key makes a create_session retry safe: the same key
    // and body get the first receipt and one session; the key with another
    // body is refused (422); a malformed key is refused (400).
    let once = p1
        .submit_json_once(&keygen("frost-secp256k1"), "req-7")
        .await
        .unwrap();
    let again = p1
        .submit_json_once(&keygen("frost-secp256k1"), "req-7")
        .await
        .unwrap();
    assert_eq!(once.id, again.id);
    match p1.submit_json_once(&keygen("frost-ed25519"), "req-7").await {
        Err(ClientError::Status { status, body }) => {
            assert_eq!(status.as_u16(), 422, "{body}");
            assert!(body.contains(&once.id), "{body}");
        }
        other => panic!("a reused idempotency key was not refused: {other:?}"),
    }
    match p1.submit_json_once(&keygen("frost-secp256k1"), "a b").await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status.as_u16(), 400),
        other => panic!("a malformed idempotency key was accepted: {other:?}"),
    }
    let _ = awaiting_operator(&p1, &once.id).await;

    let b = p1.submit_json(&keygen("frost-secp256k1")).await.unwrap();
    let op = awaiting_operator(&p1, &b.id).await;
    p2.submit_json(&json!({"type": "verdict", "target": op, "decision":
        {"reject": {"code": "operator_rejected", "text": "not during the freeze"}}}))
        .await
        .unwrap();
    let v = settled(&p1, &b.id).await;
    assert_eq!(v["status"], "rejected", "{v}");
    let v2 = v["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["party"] == 2)
        .unwrap()
        .clone();
    assert_eq!(v2["approve"], false);
    assert_eq!(v2["reason"]["code"], "operator_rejected");
    assert_eq!(v2["reason"]["text"], "not during the freeze");

    // A verdict on an unknown target is accepted (it is an operation like
    // any other) and rejected by consensus, identically everywhere.
    let bogus = p2
        .submit_json(&json!({"type": "verdict", "target": "cd".repeat(32), "decision": "approve"}))
        .await
        .unwrap();
    assert_eq!(settled(&p2, &bogus.id).await["status"], "rejected");
}

/// `quorate_machine_sessions` (or another gauge) from a metrics page.
fn gauge(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics")) as u64
}

/// Without its height (which moves on).
fn sans_height(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("height");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sessions_leave_memory_and_stay_readable_from_the_store() {
    let mut c = TestCluster::provision(3, "byzantine").unwrap();
    c.start_all().unwrap();
    for id in 1..=3 {
        c.wait_api(id, Duration::from_secs(30)).await.unwrap();
    }
    let p1 = c.client(1).unwrap();
    let ed = json!({"type": "create_session", "session": {"kind": "keygen", "participants": [1, 2, 3],
        "threshold": 2, "scheme": "frost-ed25519", "deadline_secs": 600}});
    // A key generation run for real by the three engines, to completion.
    let first = p1.submit_json(&ed).await.unwrap();
    let sid = quorate_tests::mpc::created_session(&p1, &first.id, Duration::from_secs(60))
        .await
        .unwrap();
    let done = quorate_tests::mpc::session_end(&p1, &sid, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["phase_label"], "completed", "{done}");
    let ended_at = p1.status().await.unwrap().height;
    let session = sans_height(p1.session(&sid).await.unwrap());
    let op = p1.operation(&first.id).await.unwrap();
    let op_by_id = p1.operation(op["op_id"].as_str().unwrap()).await.unwrap();
    let round2 = p1.messages(&sid, Some(2)).await.unwrap();
    assert!(!round2["messages"].as_array().unwrap().is_empty());
    // More work, until the first session finished more than
    // RETIRE_AFTER_HEIGHTS heights ago.
    let retire = quorate_firmware::sessions::machine::RETIRE_AFTER_HEIGHTS;
    let mut created = 1;
    while p1.status().await.unwrap().height <= ended_at + retire + 1 {
        let r = p1.submit_json(&ed).await.unwrap();
        let s = quorate_tests::mpc::created_session(&p1, &r.id, Duration::from_secs(60))
            .await
            .unwrap();
        if let Err(e) = quorate_tests::mpc::session_end(&p1, &s, Duration::from_secs(60)).await {
            panic!("{e}; party 1:\n{}", c.log(1));
        }
        created += 1;
    }
    let in_memory = gauge(&p1.metrics().await.unwrap(), "quorate_machine_sessions");
    assert!(
        in_memory < created,
        "{in_memory} of {created} finished sessions still in memory"
    );
    // Served from the store now, exactly as from memory before.
    let check = |p: Client| {
        let (session, op, op_by_id, round2, sid, id) = (
            session.clone(),
            op.clone(),
            op_by_id.clone(),
            round2.clone(),
            sid.clone(),
            first.id.clone(),
        );
        async move {
            assert_eq!(sans_height(p.session(&sid).await.unwrap()), session);
            assert_eq!(p.operation(&id).await.unwrap(), op);
            let hex = op["op_id"].as_str().unwrap();
            assert_eq!(p.operation(hex).await.unwrap(), op_by_id);
            assert_eq!(
                sans_height(p.messages(&sid, Some(2)).await.unwrap()),
                sans_height(round2)
            );
        }
    };
    check(c.client(1).unwrap()).await;
    // And after a restart, which replays the chain and retires it again.
    c.stop(1).unwrap();
    c.start(1).unwrap();
    c.wait_api(1, Duration::from_secs(60)).await.unwrap();
    check(c.client(1).unwrap()).await;
}
