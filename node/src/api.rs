//! The HTTPS/JSON client API (axum over rustls).
//!
//! Every route but `GET /v1/sys/health` needs a client certificate issued by
//! the cluster CA. The certificate authenticates the connection only: writes
//! carry their own operator signature, which every node verifies when it
//! applies them. Errors use Vault's shape, `{"errors": ["..."]}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use synod_proto::api::{ClientRequest, ErrorBody, ImportShare, RaftRole, RequestInfo, RequestStatus};
use synod_proto::{NodeError, SignedCommand};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::{ClientResponse, Node, AUDIT_PAGE_MAX};
use crate::pki::{self, PeerIdentity};

/// Request bodies larger than this are refused before parsing.
pub const REQUEST_BYTES_MAX: usize = 256 * 1024;
/// A client must finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of the connection, from its client certificate.
#[derive(Clone, Debug)]
pub struct Caller(pub Option<PeerIdentity>);

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

fn require_client(caller: &Caller) -> Result<(), Failure> {
    match caller.0 {
        Some(_) => Ok(()),
        None => Err(Failure::Node(NodeError::unauthenticated(
            "this endpoint needs a client certificate from the cluster CA; set SYNOD_CLIENT_CERT and SYNOD_CLIENT_KEY \
             (create one with `synod ca issue client`)",
        ))),
    }
}

/// The request body, or a JSON error when it is too large or unreadable.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn read_body<T: serde::de::DeserializeOwned>(body: Body, what: &str) -> Result<T, Failure> {
    let body = body.map_err(|e| {
        Failure::Http(e.status(), format!("cannot read the request body: {e} (the limit is {REQUEST_BYTES_MAX} bytes)"))
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        Failure::Node(NodeError::invalid(format!("request body is not {what} ({e}); build it with the synod CLI")))
    })
}

fn parse_command(body: Body) -> Result<SignedCommand, Failure> {
    read_body(body, "a signed command")
}

/// The API's routes over a node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/sys/health", get(health))
        .route("/v1/sys/status", get(status))
        .route("/v1/sys/metrics", get(metrics))
        .route("/v1/sys/init", post(init))
        .route("/v1/commands", post(write))
        .route("/v1/keys", get(keys_list).post(keys_create))
        .route("/v1/keys/{name}", get(keys_get))
        .route("/v1/keys/{name}/share", post(keys_share))
        .route("/v1/sign", post(sign))
        .route("/v1/requests/{id}", get(request_get))
        .route("/v1/operators", get(operators_list))
        .route("/v1/admin/proposals", get(proposals_list))
        .route("/v1/audit", get(audit_list))
        .route("/v1/audit/head", get(audit_head))
        .route("/v1/audit/checkpoint", post(audit_checkpoint))
        .route("/v1/audit/checkpoints", get(audit_checkpoints))
        .route("/v1/kv", get(kv_list))
        .route("/v1/kv/{*key}", get(kv_get))
        .fallback(|| async { Failure::Node(NodeError::not_found("no such endpoint; see `synod --help` for the API")) })
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(node)
}

/// The node's answer to `request` as a JSON response. Every handler but health first checks
/// the caller's client certificate ([`require_client`]), before it reads a body.
async fn answer(node: &Node, request: ClientRequest) -> Result<Response, Failure> {
    Ok(respond(node.serve_client(request).await?))
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
        R::Keys(k) => Json(k).into_response(),
        R::Key(k) => Json(k).into_response(),
        R::KvList(l) => Json(l).into_response(),
        R::Kv(r) => Json(r).into_response(),
        R::Operators { operators, admin_approvals_required } => {
            Json(serde_json::json!({ "operators": operators, "admin_approvals_required": admin_approvals_required }))
                .into_response()
        }
        R::Proposals { proposals } => Json(serde_json::json!({ "proposals": proposals })).into_response(),
        R::Audit { head, records } => Json(serde_json::json!({ "head": head, "records": records })).into_response(),
        R::AuditHead(h) => Json(h).into_response(),
        R::Checkpoint { request_id } => Json(serde_json::json!({ "request_id": request_id })).into_response(),
        R::Checkpoints(list) => Json(list).into_response(),
    }
}

#[derive(Deserialize)]
struct HealthQuery {
    #[serde(default)]
    standbyok: bool,
}

/// Vault's health codes: 200 on the leader (or any node with `standbyok`),
/// 429 on a standby, 501 before initialisation, 503 with no leader.
async fn health(State(node): State<Arc<Node>>, Query(q): Query<HealthQuery>) -> Result<Response, Failure> {
    let ClientResponse::Health(health) = node.serve_client(ClientRequest::Health).await? else {
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

async fn status(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::Status).await
}

async fn metrics(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    let ClientResponse::Status(s) = node.serve_client(ClientRequest::Status).await? else {
        return Err(Failure::Node(NodeError::internal("status answered with something else")));
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{}\"}} {value}\n", s.node_id));
    };
    gauge("synod_raft_term", "Current Raft term.", s.term);
    gauge("synod_raft_is_leader", "1 when this node is the leader.", u64::from(s.role == RaftRole::Leader));
    gauge("synod_raft_last_log_index", "Index of the last log entry.", s.last_log_index.unwrap_or(0));
    gauge("synod_raft_last_applied_index", "Index of the last applied entry.", s.last_applied_index.unwrap_or(0));
    gauge("synod_raft_snapshot_index", "Last index covered by a snapshot.", s.snapshot_index.unwrap_or(0));
    gauge("synod_members", "Members in Raft's configuration.", s.members.len() as u64);
    gauge("synod_commands_applied_total", "Commands applied.", s.applied_commands);
    gauge("synod_commands_rejected_total", "Committed commands refused when applied.", s.rejected_commands);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn init(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let command = parse_command(body)?;
    // The genesis answer is 200 even when refused: `synod cluster init` reads the outcome.
    match node.serve_client(ClientRequest::Init { command }).await? {
        ClientResponse::Written(w) => Ok(Json(w).into_response()),
        other => Ok(respond(other)),
    }
}

async fn write(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::Write { command: parse_command(body)? }).await
}

async fn kv_get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::GetKv { key }).await
}

async fn kv_list(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::ListKv).await
}

/// How long `POST /v1/sign` waits for the signature by default.
const SIGN_WAIT_MS_DEFAULT: u64 = 30_000;

#[derive(Deserialize)]
struct WaitQuery {
    /// How long to wait for a pending request, in ms (at most `node::client::WAIT_MS_MAX`).
    wait_ms: Option<u64>,
}

async fn keys_create(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::CreateKey { command: parse_command(body)? }).await
}

async fn keys_list(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::ListKeys).await
}

/// A key by name (the live one), or by id (any, including aborted ones).
async fn keys_get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::GetKey { name }).await
}

async fn keys_share(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(_name): Path<String>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let share: ImportShare = read_body(body, "an import share; use `synod key import`")?;
    answer(&node, ClientRequest::ImportShare { share }).await
}

async fn sign(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<WaitQuery>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let command = parse_command(body)?;
    let wait_ms = q.wait_ms.unwrap_or(SIGN_WAIT_MS_DEFAULT);
    match node.serve_client(ClientRequest::Sign { command, wait_ms }).await? {
        ClientResponse::Request(info) => request_response(*info),
        other => Ok(respond(other)),
    }
}

async fn request_get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::GetRequest { request_id: id, wait_ms: q.wait_ms.unwrap_or(0) }).await
}

async fn operators_list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::ListOperators).await
}

async fn proposals_list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::ListProposals).await
}

#[derive(Deserialize)]
struct AuditQuery {
    /// The first sequence number to return (1 is the first record).
    from: Option<u64>,
    limit: Option<usize>,
}

async fn audit_list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let request = ClientRequest::AuditRecords { from: q.from.unwrap_or(1), limit: q.limit.unwrap_or(AUDIT_PAGE_MAX) };
    answer(&node, request).await
}

async fn audit_checkpoint(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::AuditCheckpoint).await
}

async fn audit_checkpoints(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::AuditCheckpoints).await
}

async fn audit_head(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    answer(&node, ClientRequest::AuditHead).await
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

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move { serve_connection(acceptor, tcp, remote, app).await });
    }
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    app: Router,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "refused API client: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "refused API client: TLS handshake timed out");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| pki::identity_of(cert).ok());
    let service = TowerToHyperService::new(app.layer(Extension(Caller(identity))));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
    if let Err(e) = conn.await {
        tracing::debug!(%remote, error = %e, "API connection ended with an error");
    }
}
