//! The HTTPS/JSON client API (axum over rustls).
//!
//! Every route but `GET /v1/sys/health` needs a client certificate issued by
//! the cluster CA. The certificate authenticates the connection only: writes
//! carry their own operator signature, which every node verifies when it
//! applies them, and reads carry a read signature
//! ([`synod_proto::readsig`]) that names the operator reading. Each handler
//! turns the connection's certificate and that header into a
//! [`Caller`] and the node judges what it may read (`crate::caller`).
//! Errors use Vault's shape, `{"errors": ["..."]}`.
//!
//! The server holds under hostile connections: a connection over the global or per-address
//! cap is closed as soon as it is accepted; the TLS handshake, the request head (which also
//! bounds an idle keep-alive connection) and the whole request each have a deadline; a
//! request without a client certificate is answered 401 before its body is read; and every
//! route reads at most the body it needs. The limits are the constants below, and
//! ARCHITECTURE.md's limits table lists them. The HTTPS configuration comes through a
//! `watch` channel so that `SIGHUP` can replace the certificate for new connections.

pub mod openapi;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use synod_proto::api::{ClientRequest, ErrorBody, ImportShare, RaftRole, RequestInfo, RequestStatus};
use synod_proto::command::ENVELOPE_BYTES_MAX;
use synod_proto::{NodeError, SignedCommand};
use tokio::net::TcpListener;
use tokio::sync::watch;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::caller::Caller;
use crate::node::{ClientResponse, Node, AUDIT_PAGE_MAX, WAIT_MS_MAX};
use crate::pki::{self, PeerIdentity};
// The types the handlers' OpenAPI annotations name.
use openapi::{NotFound, ReadErrors, Refused, WriteErrors, WriteRefused};
use synod_proto::api::{Health, KeyInfo, KeyList, KvList, KvRecord, Readiness, Status, WriteResponse};

/// The body of a route that takes none (every GET, and POSTs without a payload): a client
/// that sends one anyway is refused past this size.
pub const READ_BODY_BYTES_MAX: usize = 4 * 1024;
/// The body of a route that takes a signed command (`/v1/commands`, `/v1/sign`, `/v1/keys`,
/// `/v1/sys/init`): the envelope is a JSON string inside the body, so escaping can at most
/// double it, plus the signature, author and a node certificate.
pub const COMMAND_BODY_BYTES_MAX: usize = 2 * ENVELOPE_BYTES_MAX + 16 * 1024;
/// The body of `/v1/keys/{name}/share`: one FROST secret share with its commitment (at most
/// 16 participants of 32-byte points, as hex) fits with room to spare.
pub const SHARE_BODY_BYTES_MAX: usize = 16 * 1024;
/// A client must finish its TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a whole request head within this time; hyper starts the timer when it
/// waits for a request, so it also closes a keep-alive connection idle for this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request, body and answer included, must be done within this time. The longest
/// legitimate request waits `WAIT_MS_MAX` for a signature.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(WAIT_MS_MAX + 15_000);
/// API connections open at once, from everyone; more are closed when accepted. Well under a
/// node's usual 1024 open files, with room for the store and the peer transport.
pub const CONNECTIONS_MAX: usize = 512;
/// API connections open at once from one IP address; more are closed when accepted, so one
/// client cannot take the whole of [`CONNECTIONS_MAX`].
pub const CONNECTIONS_PER_IP_MAX: usize = 64;
const _: () = assert!(CONNECTIONS_PER_IP_MAX * 4 <= CONNECTIONS_MAX);
const _: () = assert!(READ_BODY_BYTES_MAX < SHARE_BODY_BYTES_MAX && SHARE_BODY_BYTES_MAX < COMMAND_BODY_BYTES_MAX);
const _: () = assert!(REQUEST_TIMEOUT.as_millis() > WAIT_MS_MAX as u128);

/// The routes that need no client certificate (load balancers probe them).
const HEALTH_PATH: &str = "/v1/sys/health";
const READY_PATH: &str = "/v1/sys/ready";

/// Counters of the API's defences and of TLS reloads, for `/v1/sys/metrics`. One node runs
/// per process, so they are process-wide.
pub struct ApiCounters {
    /// Connections closed at accept because [`CONNECTIONS_MAX`] were open.
    pub refused_connections_max: AtomicU64,
    /// Connections closed at accept because [`CONNECTIONS_PER_IP_MAX`] were open from that address.
    pub refused_connections_per_ip: AtomicU64,
    /// TLS handshakes that failed or ran past [`HANDSHAKE_TIMEOUT`].
    pub failed_handshakes: AtomicU64,
    /// The same on the approver console's listener.
    pub console_failed_handshakes: AtomicU64,
    /// Connections closed because a request head did not arrive within [`HEADER_READ_TIMEOUT`]
    /// (a slow head, or a kept-alive connection left idle).
    pub header_timeouts: AtomicU64,
    /// Requests refused with 401 before their body was read.
    pub unauthenticated_requests: AtomicU64,
    /// Requests cut off at [`REQUEST_TIMEOUT`].
    pub timed_out_requests: AtomicU64,
    /// `SIGHUP` reloads of the TLS material that took effect.
    pub tls_reloads: AtomicU64,
    /// `SIGHUP` reloads refused (the old material stays in use).
    pub tls_reload_failures: AtomicU64,
}

/// The process's API counters.
pub static COUNTERS: ApiCounters = ApiCounters {
    refused_connections_max: AtomicU64::new(0),
    refused_connections_per_ip: AtomicU64::new(0),
    failed_handshakes: AtomicU64::new(0),
    console_failed_handshakes: AtomicU64::new(0),
    header_timeouts: AtomicU64::new(0),
    unauthenticated_requests: AtomicU64::new(0),
    timed_out_requests: AtomicU64::new(0),
    tls_reloads: AtomicU64::new(0),
    tls_reload_failures: AtomicU64::new(0),
};

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Who is on the other end of the connection, from its client certificate;
/// each call adds its read signature to make a [`Caller`].
#[derive(Clone, Debug)]
pub struct Connection(pub Option<PeerIdentity>);

/// The call's [`Caller`], identified before any body is read: a call without
/// a client certificate, or with a read signature that does not verify, is
/// refused here with why.
pub struct Identified(pub Caller);

impl FromRequestParts<Arc<Node>> for Identified {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Failure> {
        let certificate = parts.extensions.get::<Connection>().and_then(|c| c.0.clone());
        // No certificate, no further work: a signature is checked only for a CA-issued client.
        Caller::anonymous(certificate.clone()).require_certificate()?;
        let header = match parts.headers.get(synod_proto::readsig::READ_SIGNATURE_HEADER) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                Failure::Node(NodeError::unauthenticated("read signature refused: the header is not ASCII"))
            })?),
        };
        let target = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str());
        Ok(Identified(node.identify(certificate, header, parts.method.as_str(), target)?))
    }
}

/// An error response: the only place a [`NodeError`] becomes an HTTP status.
pub enum Failure {
    /// The node's answer.
    Node(NodeError),
    /// The HTTP layer's own refusal, before the node saw anything (a body
    /// too large to read: 413).
    Http(StatusCode, String),
}

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Self {
        Failure::Node(e)
    }
}

/// The HTTP status of each kind of error (Vault's conventions where it has one).
pub fn http_status(error: &NodeError) -> StatusCode {
    match error {
        NodeError::Invalid { .. } => StatusCode::BAD_REQUEST,
        NodeError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        NodeError::Refused { .. } => StatusCode::FORBIDDEN,
        NodeError::NotFound { .. } => StatusCode::NOT_FOUND,
        NodeError::Conflict { .. } => StatusCode::CONFLICT,
        NodeError::NotInitialised { .. } => StatusCode::PRECONDITION_FAILED,
        NodeError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        NodeError::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
        NodeError::MayStillCommit { .. } | NodeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        NodeError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Node(e) => {
                let body = ErrorBody { errors: vec![e.to_string()], leader: e.leader().cloned() };
                (http_status(&e), Json(body)).into_response()
            }
            Failure::Http(status, message) => {
                (status, Json(ErrorBody { errors: vec![message], leader: None })).into_response()
            }
        }
    }
}

/// Checks a request before any handler runs, and so before any body is read: every route but
/// health needs a client certificate (401), and a body declared larger than any route takes
/// is refused from its `Content-Length` (413). Smaller per-route limits apply as the body is
/// read.
async fn admit_request(request: Request, next: Next) -> Response {
    let certificate = request.extensions().get::<Connection>().and_then(|c| c.0.clone());
    if request.uri().path() != HEALTH_PATH && request.uri().path() != READY_PATH {
        if let Err(refusal) = Caller::anonymous(certificate).require_certificate() {
            count(&COUNTERS.unauthenticated_requests);
            return Failure::Node(refusal).into_response();
        }
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > COMMAND_BODY_BYTES_MAX as u64) {
        return Failure::Http(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {COMMAND_BODY_BYTES_MAX} bytes that any route takes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Counts every answered request by route template (never the path: `/v1/kv/{*key}`, not
/// each key), method and status code, in the node's `synod_api_requests_total`.
async fn count_requests(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    let code = response.status().as_u16().to_string();
    node.metrics()
        .counter("synod_api_requests_total", &[("route", &route), ("method", &method), ("code", &code)])
        .increment(1);
    response
}

/// Cuts a request off at [`REQUEST_TIMEOUT`] (a slow body, or a handler that hangs).
async fn request_deadline(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            count(&COUNTERS.timed_out_requests);
            tracing::warn!(%path, "API request cut off after {REQUEST_TIMEOUT:?}");
            Failure::Http(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request took longer than {} s; send it again", REQUEST_TIMEOUT.as_secs()),
            )
            .into_response()
        }
    }
}

/// The request body, or a JSON error when it is too large or unreadable.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn read_body<T: serde::de::DeserializeOwned>(body: Body, what: &str) -> Result<T, Failure> {
    let body = body.map_err(|e| unreadable(e, "a command", COMMAND_BODY_BYTES_MAX))?;
    parse_body(&body, what)
}

/// [`read_body`] for a body that holds a secret, already moved into a wiped buffer.
fn read_secret_body<T: serde::de::DeserializeOwned>(
    body: Result<zeroize::Zeroizing<Vec<u8>>, axum::extract::rejection::BytesRejection>,
    what: &str,
) -> Result<T, Failure> {
    let body = body.map_err(|e| unreadable(e, "a share", SHARE_BODY_BYTES_MAX))?;
    parse_body(&body, what)
}

fn unreadable(e: axum::extract::rejection::BytesRejection, what: &str, limit: usize) -> Failure {
    Failure::Http(e.status(), format!("cannot read the request body: {e} ({what} is at most {limit} bytes)"))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::Node(NodeError::invalid(format!("request body is not {what} ({e}); build it with the synod CLI")))
    })
}

fn parse_command(body: Body) -> Result<SignedCommand, Failure> {
    read_body(body, "a signed command")
}

/// The message of the fallback's 404, for a path that no route serves.
pub const NO_SUCH_ENDPOINT: &str = "no such endpoint; GET /v1/sys/openapi lists the API";

/// The API's routes with their OpenAPI documentation, without a node. Every route is added
/// here through `routes!`, which takes the path and methods from the handler's
/// `#[utoipa::path]`: the document is the list of routes (`openapi::tests` checks it against
/// the live router, and that nothing in this file adds a route another way).
fn api_routes() -> OpenApiRouter<Arc<Node>> {
    let command_body = || DefaultBodyLimit::max(COMMAND_BODY_BYTES_MAX);
    OpenApiRouter::with_openapi(openapi::ApiFrame::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(status))
        .routes(routes!(metrics))
        .routes(routes!(webhooks))
        .routes(routes!(backup))
        .routes(routes!(openapi_json))
        .routes(routes!(init).layer(command_body()))
        .routes(routes!(write).layer(command_body()))
        .routes(routes!(keys_list, keys_create).layer(command_body()))
        .routes(routes!(keys_get))
        .routes(routes!(keys_share).layer(DefaultBodyLimit::max(SHARE_BODY_BYTES_MAX)))
        .routes(routes!(sign).layer(command_body()))
        .routes(routes!(request_get))
        .routes(routes!(requests_list))
        .routes(routes!(command_get))
        .routes(routes!(operators_list))
        .routes(routes!(proposals_list))
        .routes(routes!(audit_list))
        .routes(routes!(audit_head))
        .routes(routes!(audit_checkpoint))
        .routes(routes!(audit_checkpoints))
        .routes(routes!(kv_list))
        .routes(routes!(kv_get))
        .fallback(|| async { Failure::Node(NodeError::not_found(NO_SUCH_ENDPOINT)) })
}

/// The API's OpenAPI 3.1 document: what `GET /v1/sys/openapi` serves.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(api_routes().into_openapi())
}

/// The API's routes over a node.
pub fn router(node: Arc<Node>) -> Router {
    let (routes, _document) = api_routes().split_for_parts();
    routes
        .layer(DefaultBodyLimit::max(READ_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(node.clone(), count_requests))
        .layer(middleware::from_fn(admit_request))
        .layer(middleware::from_fn(request_deadline))
        .with_state(node)
}

/// The node's answer to `request` for `caller` as a JSON response. Every handler but health
/// first identifies the caller ([`Identified`]), before it reads a body.
async fn answer(node: &Node, caller: &Caller, request: ClientRequest) -> Result<Response, Failure> {
    Ok(respond(node.serve_client(caller, request).await?))
}

/// A node's answer as HTTP: the payload as JSON; a refused write with 403
/// (its outcome in the body); a request still open with 202 and a failed one
/// with 503 naming why.
fn respond(response: ClientResponse) -> Response {
    use ClientResponse as R;
    match response {
        R::Health(h) => Json(h).into_response(),
        R::Status(s) => Json(s).into_response(),
        R::Written(w) if w.outcome.is_applied() => Json(w).into_response(),
        R::Written(w) => (StatusCode::FORBIDDEN, Json(w)).into_response(),
        R::ShareSealed { node_id } => Json(serde_json::json!({ "node_id": node_id, "sealed": true })).into_response(),
        R::Request(info) => Json(info).into_response(),
        R::Requests(list) => Json(list).into_response(),
        R::Keys(k) => Json(k).into_response(),
        R::Key(k) => Json(k).into_response(),
        R::KvList(l) => Json(l).into_response(),
        R::Kv(r) => Json(r).into_response(),
        R::Operators { operators, admin_approvals_required, webauthn, pending_passkeys } => Json(serde_json::json!({
            "operators": operators,
            "admin_approvals_required": admin_approvals_required,
            "webauthn": webauthn,
            "pending_passkeys": pending_passkeys,
        }))
        .into_response(),
        R::Proposals { proposals } => Json(serde_json::json!({ "proposals": proposals })).into_response(),
        R::Audit { head, records } => Json(serde_json::json!({ "head": head, "records": records })).into_response(),
        R::AuditHead(h) => Json(h).into_response(),
        R::Checkpoint { request_id } => Json(serde_json::json!({ "request_id": request_id })).into_response(),
        R::Checkpoints(list) => Json(list).into_response(),
        R::Command(outcome) if outcome.status == synod_proto::api::CommandStatus::Unknown => {
            (StatusCode::NOT_FOUND, Json(outcome)).into_response()
        }
        R::Command(outcome) => Json(outcome).into_response(),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HealthQuery {
    /// Answer 200 on a follower that knows a leader, as on the leader.
    #[serde(default)]
    standbyok: bool,
}

/// Vault's health codes: 200 on the leader (or any node with `standbyok`),
/// 429 on a standby, 501 before initialisation, 503 with no leader.
#[utoipa::path(
    get, path = "/v1/sys/health", tag = "sys", params(HealthQuery),
    responses(
        (status = 200, description = "The leader, or with `standbyok` a follower that knows a leader.", body = Health),
        (status = 429, description = "A follower that knows a leader (without `standbyok`).", body = Health),
        (status = 501, description = "Not initialised.", body = Health),
        (status = 503, description = "No leader known.", body = Health),
    )
)]
async fn health(State(node): State<Arc<Node>>, Query(q): Query<HealthQuery>) -> Result<Response, Failure> {
    let anyone = Caller::anonymous(None);
    let ClientResponse::Health(health) = node.serve_client(&anyone, ClientRequest::Health).await? else {
        return Err(Failure::Node(NodeError::internal("health answered with something else")));
    };
    let code = match (health.initialized, health.role, health.leader_id) {
        (false, _, _) => StatusCode::NOT_IMPLEMENTED,
        (true, RaftRole::Leader, _) => StatusCode::OK,
        (true, _, Some(_)) if q.standbyok => StatusCode::OK,
        (true, _, Some(_)) => StatusCode::TOO_MANY_REQUESTS,
        (true, _, None) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Ok((code, Json(health)).into_response())
}

/// Readiness for load balancers: 200 when this node can take part in signing now, 503 with
/// the reasons when it cannot (no leader, catching up, a share missing, too few signers
/// reachable). Like health, it needs no client certificate and reveals no secret.
#[utoipa::path(
    get, path = "/v1/sys/ready", tag = "sys",
    responses(
        (status = 200, description = "This node can take part in signing now.", body = Readiness),
        (status = 503, description = "It cannot; `reasons` says why.", body = Readiness),
    )
)]
async fn ready(State(node): State<Arc<Node>>) -> Response {
    let readiness = node.readiness().await;
    let code = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(readiness)).into_response()
}

/// This OpenAPI 3.1 document, for any holder of a client certificate (built once per process).
#[utoipa::path(
    get, path = "/v1/sys/openapi", tag = "sys",
    security(("client_certificate" = [])),
    responses(
        (status = 200, description = "The API's OpenAPI 3.1 document.", body = Object, content_type = "application/json"),
        openapi::CertificateErrors,
    )
)]
async fn openapi_json(Identified(_caller): Identified) -> Result<Response, Failure> {
    static DOCUMENT: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| openapi_document().to_json().map_err(|e| e.to_string()));
    match document {
        Ok(json) => Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json.clone()).into_response()),
        Err(e) => Err(Failure::Node(NodeError::internal(format!("the OpenAPI document does not serialise: {e}")))),
    }
}

#[utoipa::path(
    get, path = "/v1/sys/status", tag = "sys",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The node's view of the cluster. Any operator; before genesis any client certificate.", body = Status),
        ReadErrors,
    )
)]
async fn status(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::Status).await
}

/// `GET /v1/sys/backup`: this node's signed backup, for an admin (`synod node backup`).
#[utoipa::path(
    get, path = "/v1/sys/backup", tag = "sys",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "This node's signed backup (sealed shares stay sealed). Admins.", body = crate::backup::BackupFile),
        ReadErrors,
    )
)]
async fn backup(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    Ok(Json(node.backup(&caller).await?).into_response())
}

#[utoipa::path(
    get, path = "/v1/sys/metrics", tag = "sys",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The node's figures in Prometheus's text format. Any operator.", body = String, content_type = "text/plain; version=0.0.4"),
        ReadErrors,
    )
)]
async fn metrics(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    // Any operator, as for status: these are its figures (see `crate::caller`).
    caller.require_operator_of(&node.state().read().state, "the node's metrics")?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics_text(&node).await).into_response())
}

#[utoipa::path(
    get, path = "/v1/sys/webhooks", tag = "sys",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The cluster's webhooks and this node's deliveries to them (the leader sends). Auditors and admins.", body = crate::webhooks::WebhookList),
        ReadErrors,
    )
)]
async fn webhooks(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    caller.require_overseer("the webhooks and their deliveries")?;
    let configured = node.state().read().state.webhooks.clone();
    Ok(Json(node.webhooks().list(&configured)).into_response())
}

/// The node's figures in Prometheus's text format: what `/v1/sys/metrics` and
/// the metrics listener serve ([`crate::metrics`]).
pub async fn metrics_text(node: &Node) -> String {
    let metrics = node.metrics();
    // The API's defences count in process-wide atomics (one node per process); copied in here.
    let c = &COUNTERS;
    let absolute = |name: &'static str, labels: &[(&'static str, &str)], value: &AtomicU64| {
        metrics.counter(name, labels).absolute(value.load(Ordering::Relaxed));
    };
    absolute("synod_api_connections_refused_total", &[("cap", "total")], &c.refused_connections_max);
    absolute("synod_api_connections_refused_total", &[("cap", "per_ip")], &c.refused_connections_per_ip);
    absolute("synod_api_handshakes_failed_total", &[], &c.failed_handshakes);
    absolute("synod_console_handshakes_failed_total", &[], &c.console_failed_handshakes);
    absolute("synod_api_header_timeouts_total", &[], &c.header_timeouts);
    absolute("synod_api_unauthenticated_requests_total", &[], &c.unauthenticated_requests);
    absolute("synod_api_requests_timed_out_total", &[], &c.timed_out_requests);
    absolute("synod_tls_reloads_total", &[], &c.tls_reloads);
    absolute("synod_tls_reload_failures_total", &[], &c.tls_reload_failures);
    node.render_metrics().await
}

/// The metrics listener's routes (`metrics_addr`): `GET /metrics` only, no
/// TLS and no identity, for a Prometheus on the same host or network.
pub fn metrics_router(node: Arc<Node>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(node): State<Arc<Node>>| async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics_text(&node).await)
            }),
        )
        .layer(DefaultBodyLimit::max(READ_BODY_BYTES_MAX))
        .with_state(node)
}

#[utoipa::path(
    post, path = "/v1/sys/init", tag = "sys", request_body = SignedCommand,
    security(("client_certificate" = [])),
    responses(
        (status = 200, description = "The genesis committed: applied, or refused with the reason (the outcome says which).", body = WriteResponse),
        Refused,
        WriteErrors,
    )
)]
async fn init(State(node): State<Arc<Node>>, Identified(caller): Identified, body: Body) -> Result<Response, Failure> {
    let command = parse_command(body)?;
    // The genesis answer is 200 even when refused: `synod cluster init` reads the outcome.
    match node.serve_client(&caller, ClientRequest::Init { command }).await? {
        ClientResponse::Written(w) => Ok(Json(w).into_response()),
        other => Ok(respond(other)),
    }
}

#[utoipa::path(
    post, path = "/v1/commands", tag = "commands", request_body = SignedCommand,
    security(("client_certificate" = [])),
    responses(
        (status = 200, description = "Committed and applied.", body = WriteResponse),
        WriteRefused,
        WriteErrors,
    )
)]
async fn write(State(node): State<Arc<Node>>, Identified(caller): Identified, body: Body) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::Write { command: parse_command(body)? }).await
}

#[utoipa::path(
    get, path = "/v1/kv/{*key}", tag = "kv", params(("key" = String, Path, description = "The record's key; it may contain `/`.")),
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The record, from this node's applied state. Any operator.", body = KvRecord),
        ReadErrors,
        NotFound,
    )
)]
async fn kv_get(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Path(key): Path<String>,
) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::GetKv { key }).await
}

#[utoipa::path(
    get, path = "/v1/kv", tag = "kv",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "Every key with its version. Any operator.", body = KvList),
        ReadErrors,
    )
)]
async fn kv_list(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::ListKv).await
}

/// How long `POST /v1/sign` waits for the signature by default.
const SIGN_WAIT_MS_DEFAULT: u64 = 30_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// How long to wait for a pending request, in ms (at most `node::client::WAIT_MS_MAX`).
    wait_ms: Option<u64>,
}

#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", request_body = SignedCommand,
    security(("client_certificate" = [])),
    responses(
        (status = 200, description = "A `create_key`, `import_key`, `rotate_key` or `refresh_key` committed and applied (every participant answered a ping first).", body = WriteResponse),
        WriteRefused,
        WriteErrors,
    )
)]
async fn keys_create(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    body: Body,
) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::CreateKey { command: parse_command(body)? }).await
}

#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "Every key, one entry per version. Any operator.", body = KeyList),
        ReadErrors,
    )
)]
async fn keys_list(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::ListKeys).await
}

/// A key by name (the live one), or by id (any, including aborted ones).
#[utoipa::path(
    get, path = "/v1/keys/{name}", tag = "keys", params(("name" = String, Path, description = "A key's name (its primary, with every version) or a key id (any, aborted ones included).")),
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The key. Any operator.", body = KeyInfo),
        ReadErrors,
        NotFound,
    )
)]
async fn keys_get(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::GetKey { name }).await
}

#[utoipa::path(
    post, path = "/v1/keys/{name}/share", tag = "keys", request_body = ImportShare, params(("name" = String, Path, description = "The imported key's name.")),
    security(("client_certificate" = [])),
    responses(
        (status = 200, description = "The share is sealed on this node.", body = openapi::ShareSealed),
        Refused,
        WriteErrors,
    )
)]
async fn keys_share(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Path(_name): Path<String>,
    body: Body,
) -> Result<Response, Failure> {
    // The body holds a secret share: parse it from a buffer wiped when dropped.
    let body = body.map(|bytes| zeroize::Zeroizing::new(Vec::from(bytes)));
    let share: ImportShare = read_secret_body(body, "an import share; use `synod key import`")?;
    answer(&node, &caller, ClientRequest::ImportShare { share }).await
}

#[utoipa::path(
    post, path = "/v1/sign", tag = "signing", request_body = SignedCommand, params(WaitQuery),
    security(("client_certificate" = [])),
    responses(
        (status = 200, description = "Signed: `signature` is the 64-byte RFC 8032 signature (hex).", body = RequestInfo),
        (status = 202, description = "Committed and still open (pending, or awaiting approvals) after the wait.", body = RequestInfo),
        Refused,
        WriteErrors,
    )
)]
async fn sign(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Query(q): Query<WaitQuery>,
    body: Body,
) -> Result<Response, Failure> {
    let command = parse_command(body)?;
    let wait_ms = q.wait_ms.unwrap_or(SIGN_WAIT_MS_DEFAULT);
    match node.serve_client(&caller, ClientRequest::Sign { command, wait_ms }).await? {
        ClientResponse::Request(info) => request_response(*info),
        other => Ok(respond(other)),
    }
}

#[utoipa::path(
    get, path = "/v1/requests/{id}", tag = "signing", params(("id" = String, Path, description = "The request id."), WaitQuery),
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The request, after waiting up to `wait_ms` while it is open. Its requester, auditors and admins; approvers its key's policy names see it without the signature.", body = RequestInfo),
        ReadErrors,
        NotFound,
    )
)]
async fn request_get(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::GetRequest { request_id: id, wait_ms: q.wait_ms.unwrap_or(0) }).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RequestListQuery {
    /// Only requests in this status.
    status: Option<RequestStatus>,
    /// Only requests on the key of this name (or id).
    key: Option<String>,
    /// `me`: only requests awaiting the approval of the operator who signs the read (its key's
    /// policy asks that operator for one, and it has not given it).
    approver: Option<String>,
    /// `me`: only the requests of the operator who signs the read.
    requester: Option<String>,
    /// The most requests on the page: 50 by default, at most 500 (`REQUEST_LIST_LIMIT_MAX`).
    limit: Option<usize>,
    /// Only requests created below this log index: the previous page's `next`.
    before_index: Option<u64>,
}

/// Whether a `?approver=` or `?requester=` value asks for the calling operator: `me` is the
/// one value there is (an operator lists what others asked of it, never as someone else).
fn is_me(param: &str, value: Option<&str>) -> Result<bool, Failure> {
    match value {
        None => Ok(false),
        Some("me") => Ok(true),
        Some(other) => Err(Failure::Node(NodeError::invalid(format!(
            "{param}={other:?} is not understood; the one value is `me`, the operator whose key signs the read \
             (the synod CLI signs with SYNOD_OPERATOR_KEY)"
        )))),
    }
}

#[utoipa::path(
    get, path = "/v1/requests", tag = "signing", params(RequestListQuery),
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The requests the calling operator may read (as `GET /v1/requests/{id}` shows each), newest first by `created_index`; `next`, when set, is the `before_index` of the next page. `approver=me` and `requester=me` name the operator who signs the read.", body = synod_proto::api::RequestList),
        ReadErrors,
    )
)]
async fn requests_list(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Query(q): Query<RequestListQuery>,
) -> Result<Response, Failure> {
    let filter = synod_proto::api::RequestFilter {
        status: q.status,
        key: q.key,
        awaiting_my_approval: is_me("approver", q.approver.as_deref())?,
        mine: is_me("requester", q.requester.as_deref())?,
        limit: q.limit.unwrap_or(synod_proto::api::REQUEST_LIST_LIMIT_DEFAULT),
        before_index: q.before_index,
    };
    answer(&node, &caller, ClientRequest::ListRequests { filter }).await
}

#[utoipa::path(
    get, path = "/v1/operators", tag = "operators",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "Operators, their roles, and the admin quorum. Any operator.", body = openapi::OperatorList),
        ReadErrors,
    )
)]
async fn operators_list(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::ListOperators).await
}

#[utoipa::path(
    get, path = "/v1/admin/proposals", tag = "operators",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "Admin operations waiting for more admins. Auditors and admins.", body = openapi::ProposalList),
        ReadErrors,
    )
)]
async fn proposals_list(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::ListProposals).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// The first sequence number to return (1 is the first record).
    from: Option<u64>,
    /// The most records to return (at most `AUDIT_PAGE_MAX`, 1000).
    limit: Option<usize>,
}

#[utoipa::path(
    get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "Audit records: auditors and admins every one, other operators those of the requests they may read.", body = openapi::AuditPage),
        ReadErrors,
    )
)]
async fn audit_list(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Failure> {
    let request = ClientRequest::AuditRecords { from: q.from.unwrap_or(1), limit: q.limit.unwrap_or(AUDIT_PAGE_MAX) };
    answer(&node, &caller, request).await
}

#[utoipa::path(
    post, path = "/v1/audit/checkpoint", tag = "audit",
    security(("client_certificate" = [])),
    responses(
        (status = 200, description = "A checkpoint request on the audit key was committed.", body = openapi::CheckpointRequested),
        Refused,
        WriteErrors,
    )
)]
async fn audit_checkpoint(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::AuditCheckpoint).await
}

#[utoipa::path(
    get, path = "/v1/audit/checkpoints", tag = "audit",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "Every checkpoint, its exact signed message's hash and signature. Auditors and admins.", body = crate::node::CheckpointList),
        ReadErrors,
    )
)]
async fn audit_checkpoints(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::AuditCheckpoints).await
}

#[utoipa::path(
    get, path = "/v1/audit/head", tag = "audit",
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "The audit chain's head. Any operator.", body = crate::state::AuditHead),
        ReadErrors,
    )
)]
async fn audit_head(State(node): State<Arc<Node>>, Identified(caller): Identified) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::AuditHead).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CommandQuery {
    /// The command's expiry (its envelope's `expires_at_ms`): with it, a node that does not
    /// know the command says whether it can still commit.
    expires_at_ms: Option<u64>,
}

#[utoipa::path(
    get, path = "/v1/commands/{id}", tag = "commands", params(("id" = String, Path, description = "The command id (the envelope's `command_id`, 32 hex digits)."), CommandQuery),
    security(("client_certificate" = [], "read_signature" = [])),
    responses(
        (status = 200, description = "What the command did: applied or refused, at which log index, with the outcome its write answered. Its author and admins.", body = synod_proto::api::CommandOutcome),
        (status = 404, description = "Not known on this node; `final` says whether it can never commit (the log's time is past its expiry) or still may. Any operator.", body = synod_proto::api::CommandOutcome),
        ReadErrors,
    )
)]
async fn command_get(
    State(node): State<Arc<Node>>,
    Identified(caller): Identified,
    Path(id): Path<String>,
    Query(q): Query<CommandQuery>,
) -> Result<Response, Failure> {
    answer(&node, &caller, ClientRequest::GetCommand { command_id: id, expires_at_ms: q.expires_at_ms }).await
}

/// 200 with the signature, 202 while open, 503 naming why it failed.
fn request_response(info: RequestInfo) -> Result<Response, Failure> {
    match info.status {
        RequestStatus::Signed => Ok(Json(info).into_response()),
        RequestStatus::Pending | RequestStatus::AwaitingApproval => {
            Ok((StatusCode::ACCEPTED, Json(info)).into_response())
        }
        RequestStatus::Failed => Err(Failure::Node(NodeError::unavailable(format!(
            "request {} failed: {}",
            info.request_id,
            info.error.unwrap_or_default()
        )))),
    }
}

/// Open API connections, overall and per client address: the caps [`CONNECTIONS_MAX`] and
/// [`CONNECTIONS_PER_IP_MAX`].
#[derive(Default)]
pub struct ConnectionGate {
    /// Open connections in total and per address; an address leaves the map at zero.
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    /// Connections admitted and not yet closed.
    total: usize,
    /// The same, per client IP address.
    by_ip: HashMap<IpAddr, usize>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// [`CONNECTIONS_MAX`] connections were open.
    Total,
    /// [`CONNECTIONS_PER_IP_MAX`] connections were open from this address.
    PerIp,
}

/// One admitted connection; dropping it gives its place back.
pub struct Admission {
    /// The gate to give the place back to.
    gate: Arc<ConnectionGate>,
    /// The address the place was counted under.
    ip: IpAddr,
}

impl ConnectionGate {
    /// Admits a connection from `ip`, or says which cap is full.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.total >= CONNECTIONS_MAX {
            return Err(Refusal::Total);
        }
        let from_ip = open.by_ip.entry(ip).or_insert(0);
        if *from_ip >= CONNECTIONS_PER_IP_MAX {
            return Err(Refusal::PerIp);
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Admission { gate: self.clone(), ip })
    }

    /// Connections open now (from `ip`).
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (open.total, open.by_ip.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(from_ip) = open.by_ip.get_mut(&self.ip) {
            *from_ip = from_ip.saturating_sub(1);
            if *from_ip == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Which listener [`serve`] serves: its logs name it, and its failed handshakes count apart.
/// (Connections refused at the gate, header timeouts and timed-out requests count in the
/// API's counters for both.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The HTTPS/JSON API (`api_listen`).
    Api,
    /// The approver console (`[console] listen`).
    Console,
}

impl Listener {
    /// The name logs use.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Api => "API",
            Listener::Console => "console",
        }
    }

    fn failed_handshakes(self) -> &'static AtomicU64 {
        match self {
            Listener::Api => &COUNTERS.failed_handshakes,
            Listener::Console => &COUNTERS.console_failed_handshakes,
        }
    }
}

/// The client's address, in every request's extensions (the console limits registrations
/// per address).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Serves `app` as `name` on `listener` until `shutdown` turns true. Each new connection uses
/// the HTTPS configuration `tls` holds at that moment, so a reload reaches new connections only.
pub async fn serve(
    name: Listener,
    listener: TcpListener,
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let gate = Arc::new(ConnectionGate::default());
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, listener = name.name(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let admission = match gate.admit(remote.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                // Closed at once: no handshake, no buffers, no task.
                drop(tcp);
                let counter = match refusal {
                    Refusal::Total => &COUNTERS.refused_connections_max,
                    Refusal::PerIp => &COUNTERS.refused_connections_per_ip,
                };
                // Log the first refusal of a burst and then every 1000th, not each one.
                if counter.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!(%remote, ?refusal, "refused {} connection: too many open (limits {CONNECTIONS_MAX} in all, {CONNECTIONS_PER_IP_MAX} per address)", name.name());
                }
                continue;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
        let app = app.clone();
        tokio::spawn(async move {
            serve_connection(name, acceptor, tcp, remote, app).await;
            drop(admission);
        });
    }
}

async fn serve_connection(
    name: Listener,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    app: Router,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            count(name.failed_handshakes());
            tracing::warn!(%remote, error = %e, "refused {} client: TLS handshake failed", name.name());
            return;
        }
        Err(_) => {
            count(name.failed_handshakes());
            tracing::warn!(%remote, "refused {} client: TLS handshake timed out", name.name());
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| pki::identity_of(cert).ok());
    let service =
        TowerToHyperService::new(app.layer(Extension(Connection(identity))).layer(Extension(PeerAddr(remote))));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    if let Err(e) = conn.await {
        if e.is_timeout() {
            count(&COUNTERS.header_timeouts);
        }
        tracing::debug!(%remote, error = %e, "{} connection ended with an error", name.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_gate_caps_per_address_and_in_all() {
        // The gate admits CONNECTIONS_PER_IP_MAX from one address and refuses the next, admits
        // other addresses up to CONNECTIONS_MAX in all, and gives places back on drop.
        let gate = Arc::new(ConnectionGate::default());
        let attacker: IpAddr = "127.0.0.2".parse().unwrap();
        let mut held: Vec<Admission> =
            (0..CONNECTIONS_PER_IP_MAX).map(|_| gate.admit(attacker).expect("under the cap")).collect();
        assert_eq!(gate.admit(attacker).err(), Some(Refusal::PerIp));
        let mut n = 0u32;
        while held.len() < CONNECTIONS_MAX {
            n += 1;
            let ip = IpAddr::from([10, 0, (n >> 8) as u8, n as u8]);
            while held.len() < CONNECTIONS_MAX && gate.admit(ip).map(|a| held.push(a)).is_ok() {}
        }
        assert_eq!(gate.admit("10.9.9.9".parse().unwrap()).err(), Some(Refusal::Total));
        held.truncate(CONNECTIONS_MAX - 1);
        assert!(gate.admit("10.9.9.9".parse().unwrap()).is_ok(), "a freed place is reusable");
        drop(held);
        assert_eq!(gate.open(attacker), (0, 0), "every place came back");
        assert!(gate.open.lock().unwrap().by_ip.is_empty(), "addresses leave the map at zero");
    }
}
