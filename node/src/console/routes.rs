//! The console's routes (all under `/console`; `/` redirects there) and their handlers.
//!
//! Pages (GET) need a session and send a browser without one to the login page. The JSON
//! calls answer `{"error": "..."}` with an HTTP status when they refuse, which the page
//! shows in `#message`. Every POST needs the header `X-Synod-Console: 1`: a page of another
//! site cannot send a custom header without a CORS preflight, which this server never
//! grants, and the session cookie is `SameSite=Strict` besides; together they stop
//! cross-site request forgery.
//!
//! What a session may read is judged by [`Caller::console_session`] through
//! `Node::serve_client`, exactly as the API judges that operator. What it may write is
//! nothing by itself: an approval or denial is a command carrying the passkey's assertion
//! over the request's statement, which every node verifies when it applies it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use synod_proto::api::{ClientRequest, RequestFilter, RequestInfo, RequestStatus};
use synod_proto::authz::{approval_bytes, denial_bytes, ApprovalSignature};
use synod_proto::webauthn::{self, Assertion, CoseKey, Registration, WebAuthnConfig};
use synod_proto::{Command, NodeError, OperatorKey};

use super::pages::{self, ListedRequest, RequestView, TrailLine};
use super::session::{ChallengeError, Purpose, Session, Sessions, COOKIE_NAME, NONCE_BYTES, SESSION_LIFE_MS};
use super::{BODY_BYTES_MAX, REQUEST_TIMEOUT};
use crate::caller::{Caller, VerifiedOperator};
use crate::node::{ClientResponse, Node};
use crate::state::ClusterState;

/// The header every POST must carry (see the module documentation).
pub const CSRF_HEADER: &str = "x-synod-console";
/// The most pending requests the list page shows (the newest first).
const LIST_LIMIT: usize = 200;
/// The longest denial reason (as `synod request deny` takes).
const REASON_BYTES_MAX: usize = 1024;

/// The console of one node: the node, and its sessions in memory.
pub struct Console {
    pub node: Arc<Node>,
    pub sessions: Sessions,
}

/// The client's address, which [`crate::api::serve`] puts in every request's extensions;
/// absent when a test calls the router directly.
type Peer = Option<axum::Extension<crate::api::PeerAddr>>;

/// The console's routes over `node`, with its deadline, body limit, security headers and
/// request counting.
pub fn router(node: Arc<Node>) -> Router {
    // The challenges' HMAC key, drawn once: a restart voids every open challenge.
    let sessions = Sessions::new(random(&node));
    let console = Arc::new(Console { node, sessions });
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(login_page))
        .route("/console/login/begin", post(login_begin))
        .route("/console/login/finish", post(login_finish))
        .route("/console/register", get(register_page))
        .route("/console/register/begin", post(register_begin))
        .route("/console/register/finish", post(register_finish))
        .route("/console/logout", post(logout))
        .route("/console/requests", get(requests_page))
        .route("/console/requests/{id}", get(request_page))
        .route("/console/requests/{id}/statement", get(statement))
        .route("/console/requests/{id}/approve", post(approve))
        .route("/console/requests/{id}/deny", post(deny))
        .route("/console/static/console.js", get(script))
        .route("/console/static/console.css", get(style))
        .fallback(|| async {
            refusal(StatusCode::NOT_FOUND, "no such console page; start at /console").into_response()
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(console.clone(), count_requests))
        .layer(middleware::from_fn(guard))
        .with_state(console)
}

/// Why a console call is not served.
enum Refusal {
    /// `{"error": "..."}` with a status, as the page's script reads it.
    Json(StatusCode, String),
    /// A page asked for without a session: the browser goes to the login page.
    ToLogin,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Json(status, error) => (status, Json(serde_json::json!({ "error": error }))).into_response(),
            Refusal::ToLogin => Redirect::to("/console/login").into_response(),
        }
    }
}

fn refusal(status: StatusCode, error: impl Into<String>) -> Refusal {
    Refusal::Json(status, error.into())
}

/// A node's refusal with the status the API would give it.
fn node_refusal(error: NodeError) -> Refusal {
    refusal(crate::api::http_status(&error), error.to_string())
}

type Answer = Result<Response, Refusal>;

/// Every response's headers (no framing, no inline script, nothing cached, no referrer),
/// the CSRF header on POSTs, and the request deadline.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST
        && request.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1")
    {
        return refusal(
            StatusCode::FORBIDDEN,
            format!("console calls must carry the header {CSRF_HEADER}: 1 (the console's own pages send it)"),
        )
        .into_response();
    }
    let mut response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => refusal(
            StatusCode::REQUEST_TIMEOUT,
            format!("the console call took longer than {} s; try again", REQUEST_TIMEOUT.as_secs()),
        )
        .into_response(),
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cache-control", "no-store");
    response
}

/// Counts answered console requests by route template and status code.
async fn count_requests(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    let code = response.status().as_u16().to_string();
    console.node.metrics().counter("synod_console_requests_total", &[("route", &route), ("code", &code)]).increment(1);
    response
}

/// N bytes from the node's RNG seam.
fn random<const N: usize>(node: &Node) -> [u8; N] {
    let mut bytes = [0u8; N];
    rand_core::RngCore::fill_bytes(&mut *node.seams().rng.lock().expect("rng lock"), &mut bytes);
    bytes
}

/// A challenge's nonce.
fn nonce(node: &Node) -> [u8; NONCE_BYTES] {
    random(node)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        refusal(StatusCode::BAD_REQUEST, format!("the request body is not {what} ({e}); reload the console page"))
    })
}

/// The session cookie's value, if the browser sent one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE_NAME).then(|| value.to_string())
    })
}

/// A logged-in operator as the applied state knows it now (roles and passkeys may have
/// changed since the login; a removed operator's session reads nothing).
struct Me {
    session: Session,
    caller: Caller,
}

impl Me {
    fn operator(&self) -> &str {
        &self.session.operator
    }
}

/// The session of this request, or why not. A session lasts only while its operator still
/// has the passkey it logged in with, as added then: removing the passkey or the operator, or
/// a new RP ID (which drops every passkey), ends it at its next request.
fn me(console: &Console, headers: &HeaderMap) -> Result<Me, String> {
    let now_ms = console.node.now_ms();
    let not_logged_in = "you are not logged in (or your session ended); log in at /console/login";
    let id = cookie(headers).ok_or(not_logged_in)?;
    let session = console.sessions.get(&id, now_ms).ok_or(not_logged_in)?;
    let applied = console.node.state().read();
    let passkey = applied.state.passkey_for(&session.operator, &session.credential_id);
    if passkey.is_none_or(|p| p.added_at_ms != session.passkey_added_at_ms) {
        console.sessions.logout(&id);
        return Err(format!(
            "the passkey you logged in with is no longer one of operator {}'s (an admin removed it or the operator, \
             or changed the cluster's passkey settings); log in again at /console/login",
            session.operator
        ));
    }
    let operator = applied.state.operators.get(&session.operator).ok_or_else(|| {
        format!("operator {} is no longer in the cluster; log in as another operator", session.operator)
    })?;
    let verified = VerifiedOperator {
        name: operator.name.clone(),
        // An operator with no Ed25519 key (an SSH or passkey approver) made no request with one;
        // the all-zero key, which signs nothing, stands in.
        key: operator.key.unwrap_or(OperatorKey([0; 32])),
        roles: operator.roles.clone(),
    };
    Ok(Me { session, caller: Caller::console_session(verified) })
}

/// [`me`] for a page: a browser without a session goes to the login page.
fn me_or_login(console: &Console, headers: &HeaderMap) -> Result<Me, Refusal> {
    me(console, headers).map_err(|_| Refusal::ToLogin)
}

/// [`me`] for a JSON call: 401 without a session.
fn me_or_401(console: &Console, headers: &HeaderMap) -> Result<Me, Refusal> {
    me(console, headers).map_err(|why| refusal(StatusCode::UNAUTHORIZED, why))
}

/// The cluster's relying-party settings, or a refusal saying who sets them.
fn webauthn_config(state: &ClusterState) -> Result<WebAuthnConfig, Refusal> {
    state.webauthn.clone().ok_or_else(|| {
        refusal(
            StatusCode::PRECONDITION_FAILED,
            "this cluster has no passkey settings yet (RP ID and console origins); the admins set them first \
             with `synod cluster webauthn set`",
        )
    })
}

async fn home(State(console): State<Arc<Console>>, headers: HeaderMap) -> Redirect {
    match me(&console, &headers) {
        Ok(_) => Redirect::to("/console/requests"),
        Err(_) => Redirect::to("/console/login"),
    }
}

async fn login_page() -> maud::Markup {
    pages::login_page()
}

async fn register_page() -> maud::Markup {
    pages::register_page()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Begin {
    operator: String,
}

/// `POST /console/login/begin {operator}`: a login challenge for that operator. It answers
/// alike whether or not the operator exists or has passkeys, and names no credential (the
/// browser offers the passkeys it holds for this RP ID), so it tells nobody who is an
/// operator; the finish refuses an unknown operator as it refuses a wrong passkey.
async fn login_begin(State(console): State<Arc<Console>>, body: Bytes) -> Answer {
    let Begin { operator } = parse(&body, "{\"operator\": NAME}")?;
    let config = webauthn_config(&console.node.state().read().state)?;
    let challenge = console.sessions.begin(&operator, Purpose::Login, nonce(&console.node), console.node.now_ms());
    let credential_ids: [String; 0] = [];
    Ok(Json(serde_json::json!({ "challenge": challenge, "rp_id": config.rp_id, "credential_ids": credential_ids }))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginFinish {
    operator: String,
    assertion: Assertion,
}

/// The status of a challenge refusal: `otherwise`, or 429 when the node remembers too many
/// answered challenges to take another now.
fn challenge_status(error: &ChallengeError, otherwise: StatusCode) -> StatusCode {
    match error {
        ChallengeError::Busy => StatusCode::TOO_MANY_REQUESTS,
        _ => otherwise,
    }
}

/// The challenge a browser's client data carries (base64url), to find the one this node drew.
fn challenge_of(client_data_json: &str) -> Result<String, Refusal> {
    #[derive(Deserialize)]
    struct ClientData {
        challenge: String,
    }
    let bad = || refusal(StatusCode::BAD_REQUEST, "the passkey's client data is not WebAuthn client data");
    let json = webauthn::from_b64url(client_data_json).map_err(|_| bad())?;
    if json.len() > webauthn::CLIENT_DATA_BYTES_MAX {
        return Err(bad());
    }
    let data: ClientData = serde_json::from_slice(&json).map_err(|_| bad())?;
    Ok(data.challenge)
}

/// `POST /console/login/finish {operator, assertion}`: checks the assertion against the
/// operator's approved passkey and starts a session (the cookie). A login approves nothing.
async fn login_finish(State(console): State<Arc<Console>>, body: Bytes) -> Answer {
    let LoginFinish { operator, assertion } = parse(&body, "a login (operator and assertion)")?;
    let node = &console.node;
    let now_ms = node.now_ms();
    let text = challenge_of(&assertion.client_data_json)?;
    let challenge = console
        .sessions
        .take(&text, &operator, Purpose::Login, now_ms)
        .map_err(|e| refusal(challenge_status(&e, StatusCode::UNAUTHORIZED), format!("login refused: {e}")))?;
    let (credential_id, added_at_ms) = {
        let applied = node.state().read();
        let config = webauthn_config(&applied.state)?;
        // One message for an unknown operator and a passkey that is not theirs (see login_begin).
        let passkey = applied.state.passkey_for(&operator, &assertion.credential_id).ok_or_else(|| {
            refusal(
                StatusCode::UNAUTHORIZED,
                format!(
                    "login refused: this passkey is not an approved passkey of an operator named {operator}; check \
                     the name, or register a passkey at /console/register and ask an admin to approve it"
                ),
            )
        })?;
        let refused = |why: String| refusal(StatusCode::UNAUTHORIZED, format!("login refused: {why}"));
        let key = webauthn::from_b64url(&passkey.public_key)
            .and_then(|bytes| CoseKey::from_cose(&bytes))
            .map_err(|e| refused(e.to_string()))?;
        let facts = webauthn::verify_assertion(&config, &key, &assertion, &challenge, true)
            .map_err(|e| refused(e.to_string()))?;
        // The rule the state applies to approvals: when either side keeps a counter, it must
        // be above the stored one, or the authenticator may have been cloned. A login does not
        // advance the stored counter (only an applied approval or denial does, in the log), so
        // logins in a row pass as long as each is above the last approval's.
        if (facts.counter != 0 || passkey.counter != 0) && facts.counter <= passkey.counter {
            return Err(refused(format!(
                "the passkey's signature counter {} is not above the {} the cluster holds; it may have been cloned, \
                 tell the admins",
                facts.counter, passkey.counter
            )));
        }
        (passkey.credential_id.clone(), passkey.added_at_ms)
    };
    let id = console.sessions.login(&operator, &credential_id, added_at_ms, random(node), now_ms);
    tracing::info!(operator = %operator, "console login");
    let cookie = format!(
        "{COOKIE_NAME}={id}; HttpOnly; Secure; SameSite=Strict; Path=/console; Max-Age={}",
        SESSION_LIFE_MS / 1000
    );
    let mut response = Json(serde_json::json!({ "operator": operator })).into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ASCII cookie"));
    Ok(response)
}

/// `POST /console/logout`: ends the session and clears the cookie.
async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        console.sessions.logout(&id);
    }
    let mut response = Json(serde_json::json!({ "logged_out": true })).into_response();
    let clear = format!("{COOKIE_NAME}=; HttpOnly; Secure; SameSite=Strict; Path=/console; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&clear).expect("ASCII cookie"));
    response
}

/// `POST /console/register/begin {operator}`: a registration challenge, the relying party,
/// and the operator's user handle. It answers alike for a name that is no operator (see
/// login_begin); the finish says so, after a real authenticator's ceremony and within the
/// registration budget, which keeps guessing names slow.
async fn register_begin(State(console): State<Arc<Console>>, body: Bytes) -> Answer {
    let Begin { operator } = parse(&body, "{\"operator\": NAME}")?;
    let (config, user_id) = {
        let applied = console.node.state().read();
        let config = webauthn_config(&applied.state)?;
        // A stable handle per cluster and operator, so an authenticator keeps one passkey per
        // operator; it names nobody outside this cluster.
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(applied.state.cluster_id.as_deref().unwrap_or_default().as_bytes());
        hash.update([0]);
        hash.update(operator.as_bytes());
        (config, webauthn::b64url(&hash.finalize()[..16]))
    };
    let challenge = console.sessions.begin(&operator, Purpose::Register, nonce(&console.node), console.node.now_ms());
    Ok(Json(serde_json::json!({
        "challenge": challenge,
        "rp_id": config.rp_id,
        "rp_name": config.rp_name,
        "user_id": user_id,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterFinish {
    operator: String,
    label: String,
    registration: Registration,
}

/// `POST /console/register/finish {operator, label, registration}`: checks the registration
/// against the challenge this node drew and against what every node will check when it
/// applies it ([`ClusterState::check_register_passkey`]), then commits it as a pending
/// passkey within this node's registration budget; the admins approve it by its fingerprint.
/// A registration the cluster would refuse, or one over the budget, costs no log entry.
async fn register_finish(State(console): State<Arc<Console>>, peer: Peer, body: Bytes) -> Answer {
    let RegisterFinish { operator, label, registration } = parse(&body, "a registration")?;
    let node = &console.node;
    let now_ms = node.now_ms();
    let refused = |status: StatusCode, why: String| refusal(status, format!("registration refused: {why}"));
    let text = challenge_of(&registration.client_data_json)?;
    let challenge = console
        .sessions
        .take(&text, &operator, Purpose::Register, now_ms)
        .map_err(|e| refused(challenge_status(&e, StatusCode::BAD_REQUEST), e.to_string()))?;
    let credential = {
        let applied = node.state().read();
        let config = webauthn_config(&applied.state)?;
        webauthn::read_registration(&config, &registration, Some(&challenge))
            .map_err(|e| refused(StatusCode::BAD_REQUEST, e.to_string()))?;
        applied.state.check_register_passkey(&operator, &registration).map_err(|why| {
            let status = if why.starts_with("too many") { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::CONFLICT };
            refused(status, why)
        })?
    };
    let ip = peer.map(|axum::Extension(crate::api::PeerAddr(addr))| addr.ip());
    console.sessions.admit_registration(ip, now_ms).map_err(|limit| {
        tracing::debug!(operator = %operator, ?ip, %limit, "console: registration over the budget, not written");
        refused(StatusCode::TOO_MANY_REQUESTS, limit.to_string())
    })?;
    let command = Command::RegisterPasskey { node_id: node.id, operator: operator.clone(), label, registration };
    node.write_as_node(command).await.map_err(node_refusal)?;
    tracing::info!(operator = %operator, fingerprint = %credential.fingerprint, "console: passkey registered, waiting for the admins");
    let message = format!(
        "Ask an admin to approve passkey {fp} (synod operator passkey approve {operator} {fp})",
        fp = credential.fingerprint
    );
    Ok(Json(serde_json::json!({ "fingerprint": credential.fingerprint, "message": message })).into_response())
}

/// The operator's name for `key`, or the key itself when no operator has it.
fn requester_name(state: &ClusterState, key: &OperatorKey) -> String {
    state.operators.values().find(|op| op.key.as_ref() == Some(key)).map_or_else(|| key.to_hex(), |op| op.name.clone())
}

/// `GET /console/requests`: the requests waiting for this operator.
async fn requests_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Answer {
    let me = me_or_login(&console, &headers)?;
    let filter = RequestFilter {
        status: Some(RequestStatus::AwaitingApproval),
        awaiting_my_approval: true,
        limit: LIST_LIMIT,
        ..RequestFilter::default()
    };
    let list = match console.node.serve_client(&me.caller, ClientRequest::ListRequests { filter }).await {
        Ok(ClientResponse::Requests(list)) => list,
        Ok(_) => {
            return Err(refusal(StatusCode::INTERNAL_SERVER_ERROR, "the node answered the list with something else"))
        }
        Err(e) => return Err(node_refusal(e)),
    };
    let listed: Vec<ListedRequest> = {
        let applied = console.node.state().read();
        list.requests
            .into_iter()
            .map(|info| ListedRequest { requester: requester_name(&applied.state, &info.requester), info })
            .collect()
    };
    Ok(pages::list_page(me.operator(), &listed, console.node.now_ms()).into_response())
}

/// The request as this session may read it (the API's rules), or the node's refusal.
async fn read_request(console: &Console, me: &Me, request_id: &str) -> Result<RequestInfo, Refusal> {
    let request = ClientRequest::GetRequest { request_id: request_id.to_string(), wait_ms: 0 };
    match console.node.serve_client(&me.caller, request).await {
        Ok(ClientResponse::Request(info)) => Ok(*info),
        Ok(_) => Err(refusal(StatusCode::INTERNAL_SERVER_ERROR, "the node answered the request with something else")),
        Err(e) => Err(node_refusal(e)),
    }
}

/// The statement of `info` (its approval or denial bytes) as every node rebuilds it.
fn statement_bytes(state: &ClusterState, info: &RequestInfo, denial: bool) -> Result<Vec<u8>, Refusal> {
    let cluster_id = state
        .cluster_id
        .as_deref()
        .ok_or_else(|| refusal(StatusCode::PRECONDITION_FAILED, "this node has no cluster yet"))?;
    let statement = info.approval_statement(cluster_id);
    Ok(if denial { denial_bytes(&statement) } else { approval_bytes(&statement) })
}

/// `GET /console/requests/{id}`: one request, its statement hash and its trail.
async fn request_page(State(console): State<Arc<Console>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let me = me_or_login(&console, &headers)?;
    let info = read_request(&console, &me, &id).await?;
    let view = {
        let applied = console.node.state().read();
        let state = &applied.state;
        let statement = statement_bytes(state, &info, false)?;
        let record = state.requests.get(&id);
        let asked = info.status == RequestStatus::AwaitingApproval
            && record.is_some_and(|r| me.caller.operator.as_ref().is_some_and(|op| op.is_asked_to_approve(state, r)));
        RequestView {
            requester: requester_name(state, &info.requester),
            statement_sha256: hex::encode(webauthn::statement_challenge(&statement)),
            trail: record.map(|r| trail(state, r)).unwrap_or_default(),
            asked,
            info,
        }
    };
    Ok(pages::request_page(me.operator(), &view, console.node.now_ms()).into_response())
}

/// What the state recorded of a request, in order: its creation, approvals, denials and end.
/// (The audit log holds the rest, refused commands included: `synod audit export`.)
fn trail(state: &ClusterState, record: &crate::state::RequestRecord) -> Vec<TrailLine> {
    let how = |signature: &ApprovalSignature| match signature {
        ApprovalSignature::Ed25519 { .. } => "operator key",
        ApprovalSignature::Ssh { .. } => "SSH key",
        ApprovalSignature::WebAuthn { .. } => "passkey",
    };
    let mut lines = vec![TrailLine {
        at_ms: record.created_at_ms,
        index: Some(record.created_index),
        what: format!("requested by {} ({})", requester_name(state, &record.requester), record.purpose),
    }];
    for approval in &record.approvals {
        lines.push(TrailLine {
            at_ms: approval.at_ms,
            index: Some(approval.index),
            what: format!("approved by {} with their {}", approval.approver, how(&approval.signature)),
        });
    }
    for denial in &record.denials {
        lines.push(TrailLine {
            at_ms: denial.at_ms,
            index: Some(denial.index),
            what: format!("denied by {} with their {}: {}", denial.approver, how(&denial.signature), denial.reason),
        });
    }
    lines.sort_by_key(|line| line.index);
    if let Some(at_ms) = record.finished_at_ms {
        let what = match &record.status {
            crate::state::RequestStatus::Signed { .. } => "signed".to_string(),
            crate::state::RequestStatus::Failed { reason } => format!("failed: {reason}"),
            crate::state::RequestStatus::Pending => "finished".to_string(),
        };
        lines.push(TrailLine { at_ms, index: None, what });
    }
    lines
}

#[derive(Deserialize)]
struct StatementQuery {
    /// `?denial=1`: the denial statement.
    #[serde(default)]
    denial: Option<String>,
}

/// `GET /console/requests/{id}/statement[?denial=1]`: the statement the passkey signs, its
/// challenge (SHA-256 of it), and this operator's credential ids.
async fn statement(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<StatementQuery>,
) -> Answer {
    let me = me_or_401(&console, &headers)?;
    let denial = query.denial.is_some_and(|d| d == "1" || d == "true");
    let info = read_request(&console, &me, &id).await?;
    let applied = console.node.state().read();
    let config = webauthn_config(&applied.state)?;
    let bytes = statement_bytes(&applied.state, &info, denial)?;
    let challenge = webauthn::statement_challenge(&bytes);
    let credential_ids: Vec<String> = applied
        .state
        .operators
        .get(me.operator())
        .map(|op| op.passkeys.iter().map(|p| p.credential_id.clone()).collect())
        .unwrap_or_default();
    Ok(Json(serde_json::json!({
        "statement": webauthn::b64url(&bytes),
        "challenge": webauthn::b64url(&challenge),
        "statement_sha256": hex::encode(challenge),
        "credential_ids": credential_ids,
        "rp_id": config.rp_id,
    }))
    .into_response())
}

/// Which verdict a call gave.
#[derive(Clone, Copy)]
enum Verdict {
    Approve,
    Deny,
}

/// The body of an approval or denial.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictBody {
    #[serde(default)]
    reason: Option<String>,
    assertion: Assertion,
}

fn passkey_signature(assertion: Assertion) -> ApprovalSignature {
    ApprovalSignature::WebAuthn {
        credential_id: assertion.credential_id,
        authenticator_data: assertion.authenticator_data,
        client_data_json: assertion.client_data_json,
        signature: assertion.signature,
    }
}

/// The request's standing after a verdict, for the page: status, progress and a sentence.
fn standing(console: &Console, id: &str, verb: Verdict) -> Response {
    let info = console.node.state().read().state.request_info(id);
    let Some(info) = info else {
        return refusal(StatusCode::NOT_FOUND, format!("request {id} is gone")).into_response();
    };
    let progress = info.approval_progress.join("; ");
    let message = match verb {
        Verdict::Approve if !progress.is_empty() => format!("Approved: {progress}"),
        Verdict::Approve => format!("Approved: the request is {}", info.status),
        Verdict::Deny => format!("Denied: the request is {} ({} so far)", info.status, info.denials.join("; ")),
    };
    Json(serde_json::json!({
        "status": info.status,
        "approval_progress": info.approval_progress,
        "approvals": info.approvals,
        "denials": info.denials,
        "message": message,
    }))
    .into_response()
}

/// `POST /console/requests/{id}/approve {assertion}`: commits the approval the passkey
/// signed. This node only carries it: every node checks the assertion against the request's
/// statement and the operator's approved passkey when it applies the command.
async fn approve(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let me = me_or_401(&console, &headers)?;
    let VerdictBody { assertion, .. } = parse(&body, "an approval (a passkey assertion)")?;
    read_request(&console, &me, &id).await?;
    let command = Command::Approve {
        request_id: id.clone(),
        approver: me.operator().to_string(),
        signature: passkey_signature(assertion),
    };
    console.node.write_as_node(command).await.map_err(node_refusal)?;
    tracing::info!(operator = %me.operator(), request_id = %id, "console: passkey approval committed");
    Ok(standing(&console, &id, Verdict::Approve))
}

/// `POST /console/requests/{id}/deny {reason, assertion}`: commits the denial the passkey
/// signed (over the denial statement, which an approval can never stand in for).
async fn deny(State(console): State<Arc<Console>>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Answer {
    let me = me_or_401(&console, &headers)?;
    let VerdictBody { reason, assertion } = parse(&body, "a denial (a reason and a passkey assertion)")?;
    let reason = reason.unwrap_or_default();
    if reason.trim().is_empty() || reason.len() > REASON_BYTES_MAX {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "say why you deny the request (1 to {REASON_BYTES_MAX} bytes), for the requester and the audit log"
            ),
        ));
    }
    read_request(&console, &me, &id).await?;
    let command = Command::Deny {
        request_id: id.clone(),
        approver: me.operator().to_string(),
        reason,
        signature: passkey_signature(assertion),
    };
    console.node.write_as_node(command).await.map_err(node_refusal)?;
    tracing::info!(operator = %me.operator(), request_id = %id, "console: passkey denial committed");
    Ok(standing(&console, &id, Verdict::Deny))
}

const SCRIPT: &str = include_str!("static/console.js");
const STYLE: &str = include_str!("static/console.css");

async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT)
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    use crate::node::testing::lone_node;

    async fn send(app: &Router, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut request = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        app.clone().oneshot(request.body(Body::from(body.to_string())).expect("a request")).await.expect("an answer")
    }

    async fn error_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("JSON")["error"].as_str().unwrap_or_default().into()
    }

    #[tokio::test]
    async fn console_routes_guard_sessions_csrf_and_headers() {
        // Without a session pages go to the login page and JSON calls answer 401; a POST without
        // the CSRF header is refused before anything else; a cluster without passkey settings says
        // who sets them; every answer carries the security headers; the assets are served.
        let node = lone_node().await;
        let app = router(node.clone());
        let csrf = [(CSRF_HEADER, "1")];

        let root = send(&app, "GET", "/", &[], "").await;
        assert_eq!(root.status(), StatusCode::SEE_OTHER);
        for page in ["/console", "/console/requests", "/console/requests/r1"] {
            let response = send(&app, "GET", page, &[], "").await;
            assert_eq!(response.status(), StatusCode::SEE_OTHER, "{page}");
            assert_eq!(response.headers()[header::LOCATION], "/console/login", "{page}");
        }
        let response = send(&app, "GET", "/console/login", &[], "").await;
        assert_eq!(response.status(), StatusCode::OK);
        let policy = response.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(response.headers()["cache-control"], "no-store");

        let response = send(&app, "GET", "/console/requests/r1/statement", &[], "").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let forged = [(CSRF_HEADER, "1"), ("cookie", "synod_console=forged")];
        let response = send(&app, "POST", "/console/requests/r1/approve", &forged, "{}").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "a made-up cookie is no session");

        let response = send(&app, "POST", "/console/login/begin", &[], r#"{"operator":"alice"}"#).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(error_of(response).await.contains(CSRF_HEADER));
        let response = send(&app, "POST", "/console/login/begin", &csrf, r#"{"operator":"alice"}"#).await;
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        assert!(error_of(response).await.contains("synod cluster webauthn set"));
        let response = send(&app, "POST", "/console/register/begin", &csrf, "not json").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);

        let response = send(&app, "GET", "/console/static/console.js", &[], "").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/javascript"));
        let response = send(&app, "POST", "/console/logout", &csrf, "").await;
        let cleared = response.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
        assert!(cleared.contains("Max-Age=0") && cleared.contains("HttpOnly") && cleared.contains("SameSite=Strict"));
        node.shutdown().await;
    }

    #[test]
    fn console_cookie_is_found_among_others() {
        // The session cookie is read from any Cookie header, next to other cookies.
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; synod_console=abc; b=2"));
        assert_eq!(cookie(&headers), Some("abc".to_string()));
        assert_eq!(cookie(&HeaderMap::new()), None);
    }
}
