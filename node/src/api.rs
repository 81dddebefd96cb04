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
use synod_proto::api::{ApiError, ErrorBody, ImportShare, KeyList, KvList, RequestInfo};
use synod_proto::SignedCommand;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::Node;
use crate::pki::{self, PeerIdentity};

/// Request bodies larger than this are refused before parsing.
pub const REQUEST_BYTES_MAX: usize = 256 * 1024;
/// A client must finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of the connection, from its client certificate.
#[derive(Clone, Debug)]
pub struct Caller(pub Option<PeerIdentity>);

/// An error response.
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody { errors: vec![self.0.message], leader: self.0.leader_hint };
        (status, Json(body)).into_response()
    }
}

fn require_client(caller: &Caller) -> Result<(), Failure> {
    match caller.0 {
        Some(_) => Ok(()),
        None => Err(Failure(ApiError::new(
            401,
            "this endpoint needs a client certificate from the cluster CA; set SYNOD_CLIENT_CERT and SYNOD_CLIENT_KEY \
             (create one with `synod ca issue client`)",
        ))),
    }
}

/// The request body, or a JSON error when it is too large or unreadable.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn parse_command(body: Body) -> Result<SignedCommand, Failure> {
    let body = body.map_err(|e| {
        let status = e.status().as_u16();
        Failure(ApiError::new(
            status,
            format!("cannot read the request body: {e} (the limit is {REQUEST_BYTES_MAX} bytes)"),
        ))
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        Failure(ApiError::bad_request(format!(
            "request body is not a signed command ({e}); build it with the synod CLI"
        )))
    })
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
        .fallback(|| async { Failure(ApiError::new(404, "no such endpoint; see `synod --help` for the API")) })
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(node)
}

#[derive(Deserialize)]
struct HealthQuery {
    #[serde(default)]
    standbyok: bool,
}

async fn health(State(node): State<Arc<Node>>, Query(q): Query<HealthQuery>) -> Response {
    let (code, body) = node.health(q.standbyok);
    (StatusCode::from_u16(code).unwrap_or(StatusCode::OK), Json(body)).into_response()
}

async fn status(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    Ok(Json(node.status()).into_response())
}

async fn metrics(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    let s = node.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{}\"}} {value}\n", s.node_id));
    };
    gauge("synod_raft_term", "Current Raft term.", s.term);
    gauge("synod_raft_is_leader", "1 when this node is the leader.", u64::from(s.role == "leader"));
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
    let result = node.init(command).await?;
    Ok(Json(result).into_response())
}

async fn write(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let command = parse_command(body)?;
    Ok(committed(node.write(command).await?))
}

/// A committed write: 200 when applied, 403 when the state machine refused it
/// (the caller's fault), with the outcome either way.
fn committed(result: synod_proto::api::WriteResponse) -> Response {
    let status = if result.outcome.is_applied() { StatusCode::OK } else { StatusCode::FORBIDDEN };
    (status, Json(result)).into_response()
}

async fn kv_get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let record = node.state().read().state.kv.get(&key).cloned();
    match record {
        Some(record) => Ok(Json(record).into_response()),
        None => Err(Failure(ApiError::new(404, format!("no record under key {key:?} on this node")))),
    }
}

async fn kv_list(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    let keys = node.state().read().state.kv.iter().map(|(k, r)| (k.clone(), r.version)).collect();
    Ok(Json(KvList { keys }).into_response())
}

/// How long `POST /v1/sign` waits for the signature by default, and at most.
const SIGN_WAIT_MS_DEFAULT: u64 = 30_000;
const SIGN_WAIT_MS_MAX: u64 = 120_000;

#[derive(Deserialize)]
struct WaitQuery {
    /// How long to wait for a pending request, in ms.
    wait_ms: Option<u64>,
}

impl WaitQuery {
    fn wait(&self, default_ms: u64) -> Duration {
        Duration::from_millis(self.wait_ms.unwrap_or(default_ms).min(SIGN_WAIT_MS_MAX))
    }
}

async fn keys_create(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let command = parse_command(body)?;
    Ok(committed(node.create_key(command).await?))
}

async fn keys_list(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    let keys = node.state().read().state.keys.values().map(|k| k.info()).collect();
    Ok(Json(KeyList { keys }).into_response())
}

/// A key by name (the live one), or by id (any, including aborted ones).
async fn keys_get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let applied = node.state().read();
    let state = &applied.state;
    let key = state.key_by_name(&name).or_else(|| state.keys.get(&name));
    match key {
        Some(key) => Ok(Json(key.info()).into_response()),
        None => Err(Failure(ApiError::new(404, format!("no key named {name:?}; list keys with `synod key list`")))),
    }
}

async fn keys_share(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(_name): Path<String>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let body = body.map_err(|e| Failure(ApiError::bad_request(format!("cannot read the request body: {e}"))))?;
    let share: ImportShare = serde_json::from_slice(&body)
        .map_err(|_| Failure(ApiError::bad_request("request body is not an import share; use `synod key import`")))?;
    crate::dkg::import_share(&*node, &share.key_id, &share.share).await?;
    Ok(Json(serde_json::json!({ "node_id": node.id, "sealed": true })).into_response())
}

async fn sign(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<WaitQuery>,
    body: Body,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let command = parse_command(body)?;
    let info = node.sign(command, q.wait(SIGN_WAIT_MS_DEFAULT)).await?;
    request_response(info)
}

async fn request_get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let info = node.wait_request(&id, q.wait(0)).await?;
    Ok(Json(info).into_response())
}

async fn operators_list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let applied = node.state().read();
    let operators: Vec<_> = applied.state.operators.values().cloned().collect();
    Ok(Json(serde_json::json!({ "operators": operators, "admin_approvals_required": applied.state.admin_approvals_required })).into_response())
}

async fn proposals_list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let proposals: Vec<_> = node.state().read().state.proposals.values().cloned().collect();
    Ok(Json(serde_json::json!({ "proposals": proposals })).into_response())
}

/// The most audit records one call returns.
const AUDIT_PAGE_MAX: usize = 1000;

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
    let head = node.state().read().state.audit_head.clone();
    // The state moves just before its records reach the store; wait for them.
    for _ in 0..1000 {
        if node.state().audit_written() >= head.seq {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let limit = q.limit.unwrap_or(AUDIT_PAGE_MAX).min(AUDIT_PAGE_MAX);
    let records = node
        .audit_records(q.from.unwrap_or(1), limit)
        .await
        .map_err(|e| Failure(ApiError::new(500, format!("cannot read the audit log: {e}"))))?;
    // Only records the applied state vouches for (a crash may leave newer buffered ones).
    let records: Vec<_> = records.into_iter().filter(|r| r.seq <= head.seq).collect();
    Ok(Json(serde_json::json!({ "head": head, "records": records })).into_response())
}

async fn audit_checkpoint(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let request_id = node.checkpoint().await?;
    Ok(Json(serde_json::json!({ "request_id": request_id })).into_response())
}

/// Every checkpoint request: the sequence number and hash it covers, the exact
/// message the audit key signs, and the signature once made.
async fn audit_checkpoints(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Failure> {
    require_client(&caller)?;
    let applied = node.state().read();
    let state = &applied.state;
    let cluster = state.cluster_id.clone().unwrap_or_default();
    let public_key = state.key_by_name(synod_proto::authz::AUDIT_KEY_NAME).and_then(|k| k.group_key.clone());
    let mut list: Vec<serde_json::Value> = state
        .requests
        .keys()
        .filter_map(|id| id.strip_prefix("checkpoint-").and_then(|n| n.parse::<u64>().ok()))
        .filter_map(|seq| state.request_info(&format!("checkpoint-{seq}")).map(|info| (seq, info)))
        .map(|(seq, info)| {
            serde_json::json!({
                "seq": seq,
                "request_id": info.request_id,
                "status": info.status,
                "signature": info.signature,
                "message_sha256": info.message_sha256,
            })
        })
        .collect();
    list.sort_by_key(|v| v["seq"].as_u64());
    Ok(Json(serde_json::json!({ "cluster_id": cluster, "public_key": public_key, "checkpoints": list }))
        .into_response())
}

async fn audit_head(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<Response, Failure> {
    require_client(&caller)?;
    let head = node.state().read().state.audit_head.clone();
    Ok(Json(head).into_response())
}

/// 200 with the signature, 202 while pending, 503 naming why it failed.
fn request_response(info: RequestInfo) -> Result<Response, Failure> {
    match info.status.as_str() {
        "signed" => Ok(Json(info).into_response()),
        "pending" | "awaiting_approval" => Ok((StatusCode::ACCEPTED, Json(info)).into_response()),
        _ => Err(Failure(ApiError::unavailable(format!(
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
