//! Offline leases (rule 23) against the real binary: a lease signed through the
//! domain verifies with nothing but the JWK set that `GET /.well-known/jwks.json`
//! serves (checked by an independent JWT library), the key is shared by every
//! process of a deployment and survives restarts, a rotation keeps the old key
//! published for as long as its leases last, and the operator's key file is the
//! key published.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Duration;
use daypass_domain::leases::{self, LeaseClaims};
use daypass_domain::{AccessSource, Clock, Db, DomainError, SystemClock};
use daypass_tests::server::{OPERATOR_KEY, daypass_binary};
use daypass_tests::{Api, TestDb, TestServer};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration as StdDuration;

const OP: Option<&str> = Some(OPERATOR_KEY);
const TEST_CLOCK: (&str, &str) = ("DAYPASS_TEST_CLOCK", "1");

/// A lease as an open would ask for it, issued now for an hour.
fn claims(session: &str, source: AccessSource) -> LeaseClaims {
    let now = SystemClock.now();
    LeaseClaims {
        account_id: 7,
        user_id: 42,
        product_code: "CAD".into(),
        source,
        session_id: session.into(),
        issued_at: now,
        expires_at: now + Duration::hours(1),
    }
}

/// A FLEX lease signed through its own handle on `database_url` (a process of the
/// deployment other than the server).
async fn lease_from(database_url: &str, session: &str) -> String {
    let db = Db::connect(database_url).await.expect("connect");
    leases::issue_lease(&db, &claims(session, AccessSource::Flex))
        .await
        .expect("a lease")
}

/// The JWK set as served, its answer checked: 200, JSON, cacheable for 5 minutes.
async fn fetch_jwks(s: &TestServer) -> Value {
    let resp = s
        .client()
        .get(format!("{}/.well-known/jwks.json", s.base_url))
        .send()
        .await
        .expect("GET /.well-known/jwks.json");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("cache-control"), "public, max-age=300");
    let content_type = header("content-type");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let set: Value = resp.json().await.expect("a JSON body");
    for key in set["keys"].as_array().expect("keys") {
        assert_eq!(key["kty"], "OKP", "{key}");
        assert_eq!(key["crv"], "Ed25519", "{key}");
        assert_eq!(key["alg"], "EdDSA", "{key}");
        assert_eq!(key["use"], "sig", "{key}");
        let x = URL_SAFE_NO_PAD
            .decode(key["x"].as_str().expect("x"))
            .expect("x is base64url");
        assert_eq!(x.len(), 32, "{key}");
        assert!(key["d"].is_null(), "no private part is published: {key}");
    }
    set
}

fn kids(set: &Value) -> Vec<String> {
    set["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT header")
        .kid
        .expect("a kid")
}

/// Verifies `token` with nothing but `set`, as a product offline would: the key
/// the header's `kid` names, EdDSA only, `exp` checked. Returns the claims.
fn verify(token: &str, set: &Value) -> Result<Value, String> {
    let set: JwkSet = serde_json::from_value(set.clone()).map_err(|e| e.to_string())?;
    let kid = kid_of(token);
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not published"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_required_spec_claims(&["exp", "iat", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

/// `token` with its claims replaced, the signature kept.
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

async fn advance(s: &TestServer, hours: i64) {
    s.ok(
        OP,
        "mutation($h: Int!) { advanceClock(hours: $h) }",
        json!({"h": hours}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_verifies_with_nothing_but_the_published_keys() {
    let s = TestServer::start_with(&[]).await;
    let db = Db::connect(&s.database_url).await.expect("connect");
    let asked = claims("session-1", AccessSource::Flex);
    let lease = leases::issue_lease(&db, &asked).await.expect("a lease");

    let header = jsonwebtoken::decode_header(&lease).expect("a JWT header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let set = fetch_jwks(&s).await;
    assert_eq!(kids(&set), [header.kid.expect("a kid")]);

    let verified = verify(&lease, &set).expect("the lease verifies");
    assert_eq!(
        verified,
        json!({
            "acct": "7", "sub": "42", "prod": "CAD", "src": "FLEX", "sid": "session-1",
            "iat": asked.issued_at.timestamp(), "exp": asked.expires_at.timestamp(),
        })
    );
    // A lease changed after signing is refused.
    let mut forged = verified.clone();
    forged["acct"] = json!("8");
    assert!(verify(&with_claims(&lease, &forged), &set).is_err());

    let sub = leases::issue_lease(&db, &claims("session-2", AccessSource::Subscription))
        .await
        .expect("a lease");
    assert_eq!(verify(&sub, &set).expect("verifies")["src"], "SUBSCRIPTION");

    // A lease past its end is refused by the verifier; one longer than 24 hours is
    // never signed.
    let mut expired = claims("session-3", AccessSource::Flex);
    expired.issued_at -= Duration::hours(3);
    expired.expires_at = expired.issued_at + Duration::hours(1);
    let expired = leases::issue_lease(&db, &expired).await.expect("a lease");
    assert!(verify(&expired, &set).unwrap_err().contains("Expired"));
    let mut too_long = claims("session-4", AccessSource::Flex);
    too_long.expires_at = too_long.issued_at + Duration::hours(24) + Duration::seconds(1);
    assert!(matches!(
        leases::issue_lease(&db, &too_long).await,
        Err(DomainError::Internal(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_survives_a_restart() {
    let (url, _dir) = TestDb::fresh_url().await;
    let mut first = TestServer::start_on(&url, &[]).await;
    let set = fetch_jwks(&first).await;
    assert_eq!(kids(&set).len(), 1);
    let lease = lease_from(&url, "before-restart").await;
    assert_eq!(kid_of(&lease), kids(&set)[0]);
    assert!(first.terminate(StdDuration::from_secs(30)).await.is_some());

    let second = TestServer::start_on(&url, &[]).await;
    let again = fetch_jwks(&second).await;
    assert_eq!(again, set, "the same key is published after a restart");
    verify(&lease, &again).expect("a lease from before the restart verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_together_on_a_new_database_publish_one_key() {
    let (url, _dir) = TestDb::fresh_url().await;
    let (a, b) = tokio::join!(
        TestServer::start_on(&url, &[]),
        TestServer::start_on(&url, &[])
    );
    // Neither has a key yet: both make the first one at once.
    let (set_a, set_b) = tokio::join!(fetch_jwks(&a), fetch_jwks(&b));
    assert_eq!(kids(&set_a).len(), 1, "{set_a}");
    assert_eq!(set_a, set_b, "both processes publish the same key");
    let lease = lease_from(&url, "shared").await;
    verify(&lease, &set_a).expect("verifies with the first process's set");
    verify(&lease, &set_b).expect("verifies with the second process's set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_that_need_the_first_key_at_once_make_one() {
    let t = TestDb::new().await;
    let mut handles = vec![t.db.clone()];
    for _ in 0..5 {
        handles.push(Db::connect(&t.url).await.expect("connect"));
    }
    let now = SystemClock.now();
    let sets = futures::future::join_all(handles.iter().map(|db| leases::jwk_set(db, now))).await;
    let sets: Vec<Value> = sets.into_iter().map(|s| s.expect("a set")).collect();
    assert_eq!(kids(&sets[0]).len(), 1, "{}", sets[0]);
    assert!(sets.iter().all(|s| *s == sets[0]), "{sets:?}");
    let asked = claims("s", AccessSource::Flex);
    let leases =
        futures::future::join_all(handles.iter().map(|db| leases::issue_lease(db, &asked))).await;
    for lease in leases {
        verify(&lease.expect("a lease"), &sets[0]).expect("verifies");
    }
}

/// `daypass rotate-signing-key` on `database_url`, with `env` added; its stdout.
async fn rotate_by_cli(database_url: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(daypass_binary());
    cmd.arg("rotate-signing-key")
        .env("DAYPASS_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("DAYPASS_SIGNING_KEY_FILE")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(StdDuration::from_secs(60), cmd.output())
        .await
        .expect("rotate-signing-key finishes")
        .expect("run daypass rotate-signing-key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_the_old_key_published_while_its_leases_last() {
    let s = TestServer::start_with(&[TEST_CLOCK]).await;
    let old = kids(&fetch_jwks(&s).await).remove(0);
    let old_lease = lease_from(&s.database_url, "before-rotation").await;
    assert_eq!(kid_of(&old_lease), old);

    let out = rotate_by_cli(&s.database_url, &[]).await;
    assert!(
        out.status.success(),
        "rotate-signing-key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let new = stdout.trim().to_owned();
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout is the kid alone: {stdout:?}"
    );
    assert_ne!(new, old);

    // The running server publishes the new key first, and still the old one.
    let set = fetch_jwks(&s).await;
    assert_eq!(kids(&set), [new.clone(), old.clone()]);
    verify(&old_lease, &set).expect("a lease of the old key still verifies");
    // A process that reads the key now signs with the new one.
    let new_lease = lease_from(&s.database_url, "after-rotation").await;
    assert_eq!(kid_of(&new_lease), new);
    verify(&new_lease, &set).expect("a lease of the new key verifies");

    // The old key's last leases end 24 hours after it was retired (and a minute's
    // margin): until then it stays published, then it goes.
    advance(&s, 23).await;
    assert_eq!(kids(&fetch_jwks(&s).await), [new.clone(), old.clone()]);
    advance(&s, 2).await;
    let later = fetch_jwks(&s).await;
    assert_eq!(kids(&later), [new]);
    assert!(
        verify(&old_lease, &later)
            .unwrap_err()
            .contains("not published")
    );
}

/// An Ed25519 private key as PKCS#8 DER and PEM, written by hand (RFC 8410: a fixed
/// prefix, then the 32-byte seed), so the server's parser is checked against the
/// standard rather than against itself.
fn pkcs8_key(seed: &[u8; 32]) -> (Vec<u8>, String) {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(&der)
    );
    (der, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_file_is_the_published_key() {
    let (url, _dir) = TestDb::fresh_url().await;
    let files = tempfile::tempdir().expect("temp dir");
    let (der, pem) = pkcs8_key(&rand::random());
    let path = files.path().join("lease-key.pem");
    std::fs::write(&path, pem).expect("write the key file");
    let path = path.to_str().expect("a UTF-8 path");

    // A deployment that made its own key before the operator gave one.
    let mut plain = TestServer::start_on(&url, &[]).await;
    let generated = kids(&fetch_jwks(&plain).await).remove(0);
    assert!(plain.terminate(StdDuration::from_secs(30)).await.is_some());

    let mut with_file = TestServer::start_on(&url, &[("DAYPASS_SIGNING_KEY_FILE", path)]).await;
    let set = fetch_jwks(&with_file).await;
    let published = kids(&set);
    assert_eq!(published.len(), 2, "{set}");
    assert_eq!(
        published[1], generated,
        "the generated key is retired, still published"
    );
    let file_kid = published[0].clone();

    // The published key is the file's: a token signed here with the file's key, by
    // the independent library, verifies with it.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(file_kid.clone());
    let exp = (SystemClock.now() + Duration::hours(1)).timestamp();
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "1", "iat": exp - 3600, "exp": exp}),
        &EncodingKey::from_ed_der(&der),
    )
    .expect("sign with the file's key");
    verify(&token, &set).expect("the file's key is the published one");
    let lease = lease_from(&url, "with-file").await;
    assert_eq!(
        kid_of(&lease),
        file_kid,
        "leases are signed with the file's key"
    );

    // Starting again with the same file changes nothing.
    assert!(
        with_file
            .terminate(StdDuration::from_secs(30))
            .await
            .is_some()
    );
    let again = TestServer::start_on(&url, &[("DAYPASS_SIGNING_KEY_FILE", path)]).await;
    assert_eq!(fetch_jwks(&again).await, set);

    // With a key file, a rotation would be undone by the next start: it is refused.
    let out = rotate_by_cli(&url, &[("DAYPASS_SIGNING_KEY_FILE", path)]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DAYPASS_SIGNING_KEY_FILE"));
    assert_eq!(fetch_jwks(&again).await, set);
}

/// `daypass serve` with `DAYPASS_SIGNING_KEY_FILE=path`, expected to fail: its stderr.
async fn failed_start(database_url: &str, path: &Path) -> String {
    let out = tokio::time::timeout(
        StdDuration::from_secs(60),
        tokio::process::Command::new(daypass_binary())
            .arg("serve")
            .env("DAYPASS_DATABASE_URL", database_url)
            .env("DAYPASS_LISTEN", "127.0.0.1:0")
            .env("DAYPASS_SIGNING_KEY_FILE", path)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a start with a bad key file ends")
    .expect("run daypass serve");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started: {stdout}");
    assert!(!stdout.contains("listening on"), "{stdout}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_file_that_holds_no_key_fails_the_start() {
    let (url, _dir) = TestDb::fresh_url().await;
    let files = tempfile::tempdir().expect("temp dir");
    let missing = files.path().join("missing.pem");
    let stderr = failed_start(&url, &missing).await;
    assert!(
        stderr.contains("DAYPASS_SIGNING_KEY_FILE") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let (der, _) = pkcs8_key(&[7; 32]);
    for (name, text) in [
        ("garbage.pem", "not a key\n".to_owned()),
        // A key cut short.
        (
            "truncated.pem",
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                STANDARD.encode(&der[..40])
            ),
        ),
    ] {
        let path = files.path().join(name);
        std::fs::write(&path, text).expect("write the key file");
        let stderr = failed_start(&url, &path).await;
        assert!(
            stderr.contains("DAYPASS_SIGNING_KEY_FILE") && stderr.contains("PKCS#8"),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(name), "the file is named: {stderr}");
    }
}

/// Rule 23 through the binary: an open and a heartbeat that ask for a lease get one
/// stating the account, user, product, source and session, expiring with the window
/// (pay-as-you-go) or the subscription; it verifies with nothing but the JWK set,
/// also as served after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_leases_of_opens_and_heartbeats_verify_after_a_restart() {
    let (url, _dir) = TestDb::fresh_url().await;
    let mut first = TestServer::start_on(&url, &[TEST_CLOCK]).await;
    let s = &first;
    let d = s
        .ok(OP, "mutation { createAccount(input: {name: \"Offco\", adminEmail: \"a@offco.test\", adminName: \"A\"}) { account { id } admin { id } adminApiKey } }", json!({}))
        .await;
    let account = d["createAccount"]["account"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_id = d["createAccount"]["admin"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = d["createAccount"]["adminApiKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = s.upsert_product("OFF-CAD", 10).await;
    s.upsert_product("OFF-SUB", 10).await;
    pay_as_you_go_with_tokens(s, &admin, &admin_id).await;
    let open =
        "mutation($c: String!, $o: Boolean) { openProduct(input: {productCode: $c, offline: $o}) {
                  granted windowEndsAt offlineLease session { id } } }";
    let opened = s
        .ok(Some(&admin), open, json!({"c": "OFF-CAD", "o": true}))
        .await["openProduct"]
        .clone();
    let lease = opened["offlineLease"].as_str().expect("a lease").to_owned();
    let plain = s.ok(Some(&admin), open, json!({"c": "OFF-CAD"})).await["openProduct"].clone();
    assert!(plain["offlineLease"].is_null(), "only when asked for");
    let sid = opened["session"]["id"].as_str().unwrap().to_owned();
    let claims = verify(&lease, &fetch_jwks(s).await).expect("verifies");
    assert_eq!(claims["acct"], account);
    assert_eq!(claims["sub"], admin_id);
    assert_eq!(claims["prod"], "OFF-CAD");
    assert_eq!(claims["src"], "FLEX");
    assert_eq!(claims["sid"], sid);
    let window_end =
        chrono::DateTime::parse_from_rfc3339(opened["windowEndsAt"].as_str().unwrap()).unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap(),
        window_end.timestamp(),
        "the window's end (24 hours)"
    );

    // Later in the window: the heartbeat's lease ends with the window, sooner than a day.
    advance(s, 20).await;
    let beat = s
        .ok(Some(&admin), "mutation($s: ID!) { heartbeat(input: {sessionId: $s, active: true, offline: true}) { granted offlineLease } }", json!({"s": sid}))
        .await["heartbeat"]["offlineLease"]
        .as_str()
        .expect("a heartbeat lease")
        .to_owned();
    let beat_claims = verify(&beat, &fetch_jwks(s).await).expect("verifies");
    assert_eq!(beat_claims["exp"].as_i64().unwrap(), window_end.timestamp());
    assert!(
        beat_claims["exp"].as_i64().unwrap() - beat_claims["iat"].as_i64().unwrap()
            <= 4 * 3600 + 60
    );

    // A subscription lease ends with the subscription.
    let now = chrono::DateTime::parse_from_rfc3339(
        s.ok(OP, "mutation { advanceClock(hours: 0) }", json!({}))
            .await["advanceClock"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let ends = (now + Duration::hours(2)).to_rfc3339();
    let products = s.ok(OP, "{ products { id code } }", json!({})).await;
    let sub_product = products["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "OFF-SUB")
        .unwrap()["id"]
        .clone();
    assert_ne!(sub_product, json!(product));
    let sub = s
        .ok(Some(&admin), "mutation($p: ID!, $e: DateTime!) { addSubscription(input: {productId: $p, planLevel: STANDARD, seats: 1, startsAt: \"2000-01-01T00:00:00Z\", endsAt: $e}) { id } }",
            json!({"p": sub_product, "e": ends}))
        .await["addSubscription"]["id"].clone();
    s.ok(Some(&admin), "mutation($s: ID!, $u: ID!) { assignSubscription(subscriptionId: $s, userId: $u, assigned: true) { id } }", json!({"s": sub, "u": admin_id})).await;
    let seat = s
        .ok(Some(&admin), open, json!({"c": "OFF-SUB", "o": true}))
        .await["openProduct"]
        .clone();
    let seat_claims = verify(seat["offlineLease"].as_str().unwrap(), &fetch_jwks(s).await).unwrap();
    assert_eq!(seat_claims["src"], "SUBSCRIPTION");
    assert_eq!(
        seat_claims["exp"].as_i64().unwrap(),
        (now + Duration::hours(2)).timestamp()
    );

    // After a restart, with nothing but the JWK set the new process serves.
    assert!(first.terminate(StdDuration::from_secs(30)).await.is_some());
    let second = TestServer::start_on(&url, &[TEST_CLOCK]).await;
    let set = fetch_jwks(&second).await;
    for token in [&lease, &beat] {
        verify(token, &set).expect("a lease from before the restart verifies");
    }
}

/// The admin `admin_id` (key `admin`) on pay-as-you-go, with 100 tokens bought.
async fn pay_as_you_go_with_tokens(s: &TestServer, admin: &str, admin_id: &impl serde::Serialize) {
    s.ok(
        Some(admin),
        "mutation($u: [ID!]!) { assignFlex(userIds: $u, assigned: true) { id } }",
        json!({"u": [admin_id]}),
    )
    .await;
    s.ok(
        Some(admin),
        "mutation { purchaseTokens(input: {quantity: 100, idempotencyKey: \"k\"}) { id } }",
        json!({}),
    )
    .await;
}

async fn open_refco(s: &TestServer, admin: &str) -> Value {
    s.ok(
        Some(admin),
        "mutation { openProduct(input: {productCode: \"REF-CAD\"}) { tokensCharged session { id } } }",
        json!({}),
    )
    .await["openProduct"]
    .clone()
}

async fn idle_beat(s: &TestServer, admin: &str, sid: &str) -> Value {
    s.ok(
        Some(admin),
        "mutation($s: ID!) { heartbeat(input: {sessionId: $s, active: false, offline: true}) { granted windowEndsAt offlineLease } }",
        json!({"s": sid}),
    )
    .await["heartbeat"]
    .clone()
}

/// A pay-as-you-go session with no window left (the last charge was refunded as a
/// short launch) gets no lease: there is nothing paid to work offline on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_once_a_refund_has_closed_the_window() {
    let s = TestServer::start_with(&[TEST_CLOCK]).await;
    let d = s
        .ok(OP, "mutation { createAccount(input: {name: \"Refco\", adminEmail: \"a@refco.test\", adminName: \"A\"}) { admin { id } adminApiKey } }", json!({}))
        .await;
    let admin = d["createAccount"]["adminApiKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_id = d["createAccount"]["admin"]["id"].clone();
    s.upsert_product("REF-CAD", 10).await;
    pay_as_you_go_with_tokens(&s, &admin, &admin_id).await;
    assert_eq!(open_refco(&s, &admin).await["tokensCharged"], 10);
    // A session started late in the window, kept open idle past its end.
    advance(&s, 23).await;
    let late = open_refco(&s, &admin).await;
    assert_eq!(late["tokensCharged"], 0);
    let late = late["session"]["id"].as_str().unwrap().to_owned();
    advance(&s, 2).await;
    let beat = idle_beat(&s, &admin, &late).await;
    assert_eq!(beat["granted"], true);
    assert!(beat["offlineLease"].is_null(), "the window has ended");
    // Another launch charges a new window: the idle session may work offline in it.
    let short = open_refco(&s, &admin).await;
    assert_eq!(short["tokensCharged"], 10);
    let beat = idle_beat(&s, &admin, &late).await;
    assert!(beat["offlineLease"].is_string(), "inside the new window");
    // That launch closes at once: refunded, its window gone, and no lease.
    let closed = s
        .ok(
            Some(&admin),
            "mutation($s: ID!) { closeProduct(sessionId: $s) { charges { refunded } } }",
            json!({"s": short["session"]["id"]}),
        )
        .await;
    assert_eq!(closed["closeProduct"]["charges"][0]["refunded"], true);
    let beat = idle_beat(&s, &admin, &late).await;
    assert_eq!(beat["granted"], true, "an idle product is never stopped");
    assert!(beat["windowEndsAt"].is_null());
    assert!(beat["offlineLease"].is_null(), "no window, no lease");
}
