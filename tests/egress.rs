//! What a connector can reach over HTTP, and what it cannot: requests go only to granted origins,
//! a granted name cannot be pointed at the machine's own network, rules reach nothing, the host
//! adds credentials the plugin never holds, and a connection's rate budget holds.
//!
//! Each test runs a listener on loopback that counts every connection made to it, so "refused"
//! means no connection reached it, not merely that an error came back.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{plugin, HTTP_PROBE, HTTP_RULE};
use duplex::host::http::{Budget, Grant, HeaderRule, Origin, Secret, Secrets, Signature};
use duplex::host::Grants;
use duplex::plugin::{CallError, Conflict, Resolution, Side, Value, WitError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const CANARY: &str = "canary-7c41d2e9-never-print-me";

/// A loopback HTTP server that answers every request with what it saw: the path, and whether
/// the credential the test expects arrived. It counts connections and records when requests
/// arrived. `status` answers the first `fail_first` requests with 429 and `Retry-After: 1`.
#[derive(Clone)]
struct Listener {
    port: u16,
    connections: Arc<Mutex<usize>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Listener {
    async fn start(fail_first: usize) -> Listener {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let listener = Listener {
            port,
            connections: Arc::default(),
            arrivals: Arc::default(),
        };
        let l = listener.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = socket.accept().await else {
                    return;
                };
                *l.connections.lock().unwrap() += 1;
                let l = l.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let n = {
                        let mut a = l.arrivals.lock().unwrap();
                        a.push(Instant::now());
                        a.len()
                    };
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let auth = head.lines().any(|line| {
                        line.to_ascii_lowercase().starts_with("authorization:")
                            && line.ends_with(&format!("Bearer {CANARY}"))
                    });
                    let (status, extra) = if n <= fail_first {
                        ("429 Too Many Requests", "Retry-After: 1\r\n")
                    } else {
                        ("200 OK", "")
                    };
                    let header = |name: &str| {
                        head.lines().find_map(|line| {
                            let (n, v) = line.split_once(':')?;
                            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                    };
                    let mut body = format!("path={path} credential={auth}");
                    if let (Some(sig), Some(ts)) = (header("x-signature"), header("x-timestamp")) {
                        body.push_str(&format!(" signature={sig} timestamp={ts}"));
                    }
                    let response = format!(
                        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        listener
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

fn grants(origins: &[String]) -> Grants {
    let mut secrets = Secrets::default();
    secrets.insert("token", Secret::new(CANARY));
    let origins: Vec<Origin> = origins.iter().map(|o| Origin::parse(o).unwrap()).collect();
    let headers = origins
        .iter()
        .map(|o| {
            HeaderRule::new(o.clone(), "Authorization", "Bearer {token}", &|n| {
                n == "token"
            })
            .unwrap()
        })
        .collect();
    Grants {
        sql: Vec::new(),
        http: Grant {
            origins,
            headers,
            secrets,
            budgets: Vec::new(),
            oauth: None,
            signatures: Vec::new(),
        },
    }
}

/// Runs the probe's `check` against `url` with `grants`: Ok(body) when the server answered 200.
async fn probe(grants: &Grants, url: &str) -> Result<String, CallError> {
    probe_with(grants, serde_json::json!({ "url": url })).await
}

/// [`probe`] with the fixture's whole config (`url`, `repeat`, `before`).
async fn probe_with(grants: &Grants, config: serde_json::Value) -> Result<String, CallError> {
    let host = common::host();
    let p = host
        .load_connector_file(&plugin(HTTP_PROBE), "crm", grants)
        .await
        .expect("the probe loads");
    let err = p
        .session()
        .await?
        .check(&config.to_string())
        .await
        .unwrap_err();
    match err.plugin_error() {
        Some(WitError::Permanent(m)) if m.starts_with("answered: ") => {
            Ok(m["answered: ".len()..].to_owned())
        }
        _ => Err(err),
    }
}

fn auth_message(err: &CallError) -> String {
    match err.plugin_error() {
        Some(WitError::Auth(m)) => m.clone(),
        _ => panic!("expected an auth error, got {err}"),
    }
}

#[tokio::test]
async fn a_granted_origin_is_reached_with_credentials_the_plugin_never_holds() {
    let server = Listener::start(0).await;
    let answered = probe(&grants(&[server.url("")]), &server.url("/v1/ping"))
        .await
        .unwrap();
    assert_eq!(answered, "path=/v1/ping credential=true");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn an_origin_not_granted_is_refused_before_any_connection() {
    let server = Listener::start(0).await;
    let other = Listener::start(0).await;
    let err = probe(&grants(&[other.url("")]), &server.url("/"))
        .await
        .unwrap_err();
    let message = auth_message(&err);
    assert!(message.contains("grants.http"), "{message}");
    assert!(!format!("{err}").contains(CANARY));
    assert_eq!(server.connections(), 0, "nothing may reach the listener");
    assert_eq!(other.connections(), 0);
}

#[tokio::test]
async fn a_granted_name_that_resolves_to_a_private_address_is_refused() {
    let server = Listener::start(0).await;
    let by_name = format!("http://localhost:{}", server.port);
    let err = probe(
        &grants(std::slice::from_ref(&by_name)),
        &format!("{by_name}/"),
    )
    .await
    .unwrap_err();
    let message = auth_message(&err);
    assert!(message.contains("private or loopback"), "{message}");
    assert_eq!(server.connections(), 0, "nothing may reach the listener");
}

#[tokio::test]
async fn https_is_not_http_and_a_path_prefix_narrows_the_grant() {
    let server = Listener::start(0).await;
    let https = format!("https://127.0.0.1:{}", server.port);
    let err = probe(&grants(&[https]), &server.url("/"))
        .await
        .unwrap_err();
    auth_message(&err);
    let narrowed = grants(&[server.url("/api")]);
    let err = probe(&narrowed, &server.url("/apix")).await.unwrap_err();
    auth_message(&err);
    assert_eq!(server.connections(), 0);
    let answered = probe(&narrowed, &server.url("/api/contacts"))
        .await
        .unwrap();
    assert_eq!(answered, "path=/api/contacts credential=true");
}

/// One session is one plugin call after another in the same store, whose handle table is
/// capped: every request, answered, refused or failed, must give its handles back, or a long
/// read or a recovery that looks up many records fails with "resource table has no free keys".
#[tokio::test]
async fn a_long_session_of_requests_leaves_no_handles_behind() {
    let server = Listener::start(0).await;
    let refused = Listener::start(0).await;
    let granted = grants(&[server.url("")]);
    let answered = probe_with(
        &granted,
        serde_json::json!({ "url": server.url("/last"), "repeat": 1500 }),
    )
    .await
    .unwrap();
    assert_eq!(answered, "path=/last credential=true");
    assert_eq!(server.connections(), 1501);
    let answered = probe_with(
        &granted,
        serde_json::json!({ "url": server.url("/last"), "repeat": 1500, "before": refused.url("/") }),
    )
    .await
    .unwrap();
    assert_eq!(answered, "path=/last credential=true");
    assert_eq!(refused.connections(), 0);
    // A port nobody listens on: every request fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let answered = probe_with(
        &grants(&[server.url(""), dead.clone()]),
        serde_json::json!({ "url": server.url("/last"), "repeat": 1500, "before": format!("{dead}/") }),
    )
    .await
    .unwrap();
    assert_eq!(answered, "path=/last credential=true");
}

#[tokio::test]
async fn a_rule_can_never_use_http() {
    let server = Listener::start(0).await;
    let host = common::host();
    let rule = host
        .load_resolver_file(&plugin(HTTP_RULE), "customers")
        .await
        .expect("a rule importing wasi:http loads: it is linked granting nothing");
    let side = |v: &str| Side {
        name: "crm".into(),
        value: Value::Text(v.into()),
        changed_at: None,
    };
    let resolutions = rule
        .resolve(vec![Conflict {
            sync: "customers".into(),
            field: "note".into(),
            base: None,
            left: side(&server.url("/")),
            right: side("x"),
            others: Vec::new(),
        }])
        .await
        .unwrap();
    let [Resolution::Manual(why)] = &resolutions[..] else {
        panic!("expected the rule to leave it to a person, got {resolutions:?}")
    };
    assert!(
        why.starts_with("refused: ") && why.contains("Auth"),
        "{why}"
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn the_rate_budget_spaces_requests_and_a_429_pauses_the_connection() {
    let server = Listener::start(1).await;
    let mut g = grants(&[server.url("")]);
    g.http.budgets = vec![Budget::parse("2 per 1s", None).unwrap()];
    let host = common::host();
    let p = host
        .load_connector_file(&plugin(HTTP_PROBE), "crm", &g)
        .await
        .unwrap();
    let config = serde_json::json!({ "url": server.url("/") }).to_string();
    let start = Instant::now();
    // The first answer is a 429 with Retry-After: 1: the plugin sees it as a rate limit.
    let first = p.session().await.unwrap().check(&config).await.unwrap_err();
    assert!(
        matches!(first.plugin_error(), Some(WitError::RateLimited(r)) if r.retry_after_ms == 1000),
        "{first}"
    );
    for _ in 0..4 {
        let err = p.session().await.unwrap().check(&config).await.unwrap_err();
        assert!(format!("{err}").contains("answered"), "{err}");
    }
    let arrivals = server.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 5);
    // Nothing arrived within the second after the 429.
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_millis(950),
        "{arrivals:?}"
    );
    // No window of one second holds more than two requests.
    for w in arrivals.windows(3) {
        assert!(w[2] - w[0] >= Duration::from_millis(950), "{arrivals:?}");
    }
    assert!(start.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn the_host_signs_requests_with_a_key_the_plugin_never_holds() {
    use hmac::Mac;
    let server = Listener::start(0).await;
    let mut g = grants(&[server.url("")]);
    g.http
        .secrets
        .insert("signing_key", Secret::new("k3y-canary"));
    g.http.signatures.push(
        Signature::new(
            Origin::parse(&server.url("")).unwrap(),
            "X-Signature",
            "signing_key",
            "{method}\n{path}\n{timestamp}\n{body}",
            "hex",
            "sha256=",
            Some("X-Timestamp"),
            &|n| n == "signing_key",
        )
        .unwrap(),
    );
    let answered = probe(&g, &server.url("/hooks?x=1")).await.unwrap();
    let (_, rest) = answered.split_once(" signature=sha256=").expect(&answered);
    let (signature, timestamp) = rest.split_once(" timestamp=").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"k3y-canary").unwrap();
    mac.update(format!("GET\n/hooks?x=1\n{timestamp}\n").as_bytes());
    assert_eq!(signature, hex::encode(mac.finalize().into_bytes()));
}
