//! The API's OpenAPI 3.1 document, generated from the handlers.
//!
//! Every route of [`super::router`] is added through `utoipa_axum::routes!` with its handler's
//! `#[utoipa::path]`, so the document and the router are one list: a route cannot be served
//! without being documented. This module holds what the handlers' annotations share: the
//! document's frame (title, the two security schemes, tags, and the types the API names only
//! in prose, such as the signed [`Envelope`] and its [`Command`]), the error responses as
//! [`super::http_status`] maps them, and the schemas of the bodies the API writes as ad-hoc
//! JSON. Its tests check the document against the live router, and that `api.rs` adds no
//! route outside it.

use std::collections::BTreeMap;

use synod_proto::api::{ErrorBody, WriteResponse};
use synod_proto::{Command, Envelope, NodeId};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, ToSchema};

use crate::state::{AuditHead, AuditRecord, Operator, Proposal};

/// The security scheme of the client certificate: mutual TLS with a certificate the cluster CA
/// issued. Every route but health needs it.
pub const CLIENT_CERTIFICATE: &str = "client_certificate";
/// The security scheme of the read signature header (`synod_proto::readsig`).
pub const READ_SIGNATURE: &str = "read_signature";

/// The document's frame; the routes add their paths and the schemas they name.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Synod",
        description = "The HTTPS/JSON API of a Synod node, a member of a threshold-signing cluster. \
            Writes carry a command signed by an operator key (see the `Envelope` and `SignedCommand` \
            schemas and docs/api.md for the exact bytes signed); reads name their operator with the \
            `synod-read-signature` header. Errors are `{\"errors\": [\"...\"]}`, with `leader` when \
            the node knows where to send the call instead.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(Envelope, Command, ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "sys", description = "The node: health, status, metrics, initialisation, backup, this document."),
        (name = "commands", description = "Signed commands of any kind."),
        (name = "keys", description = "Signing keys: creation, import, listing."),
        (name = "signing", description = "Signing requests and their signatures."),
        (name = "operators", description = "Operators, roles and admin proposals."),
        (name = "audit", description = "The hash-chained audit log and its checkpoints."),
        (name = "kv", description = "Replicated key-value metadata."),
    )
)]
pub struct ApiFrame;

/// Adds the two security schemes the operations name.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            CLIENT_CERTIFICATE,
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate issued by the cluster CA (`synod ca issue client`), presented in \
                     the TLS handshake. It authenticates the connection only: what a read returns depends \
                     on the operator named by the read signature, and a write carries its own operator \
                     signature."
                        .into(),
                ),
                extensions: None,
            },
        );
        let mut read = ApiKeyValue::new(synod_proto::readsig::READ_SIGNATURE_HEADER);
        read.description = Some(
            "`v1;key=<hex>;created=<ms>;sig=<hex>`: an Ed25519 signature by the operator key over \
             `\"synod/read/v1\\0\"`, then the cluster id, the method and the path with its query, each \
             as a 4-byte big-endian length and its bytes, the signing time in ms as 8 bytes \
             big-endian, and the 32-byte key. Good for 60 s either way of the node's clock."
                .into(),
        );
        components.add_security_scheme(READ_SIGNATURE, SecurityScheme::ApiKey(ApiKey::Header(read)));
    }
}

/// What each error status means, as [`super::http_status`] maps a `NodeError` (and the HTTP
/// layer's own 408 and 413).
fn meaning(status: u16) -> &'static str {
    match status {
        400 => "Invalid input: the body is not what the route takes, or the command's signature does not verify.",
        401 => {
            "No client certificate from the cluster CA, or a read signature that does not verify (stale, \
                for another cluster, method or path, unknown key, malformed); the message says which."
        }
        403 => {
            "Refused: the caller may not read this, or the node refused the command; the message names who \
                may and what to do."
        }
        404 => "Nothing by that name or id on this node.",
        408 => "The request took longer than the node's whole-request deadline; send it again.",
        409 => "A conflict with the log: a request id reused for another message, a second genesis.",
        412 => "The cluster is not initialised yet (`synod cluster init`).",
        413 => "The body is larger than this route takes.",
        421 => {
            "This node may not propose the command: `leader` names the leader's node id and API address; \
                send the same signed command there."
        }
        429 => "Too many commands that will be refused were sent recently; this one was not logged. Retry later.",
        500 => "A failure on this node that is not the caller's doing.",
        503 => {
            "Not now: no leader, no majority of voters reachable (the message names them), a participant \
                down, a request that failed to sign, a read whose `min_index` this node has not applied \
                yet, or a write that may still commit (ask `GET /v1/commands/{id}`, then send the same \
                signed command again: a command id applies at most once). `leader`, when present, says \
                where to retry."
        }
        _ => "An error.",
    }
}

/// The `{"errors": [...]}` response of `status`.
fn error_response(status: u16) -> RefOr<Response> {
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    ResponseBuilder::new().description(meaning(status)).content("application/json", body).build().into()
}

fn error_responses(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    statuses.iter().map(|status| (status.to_string(), error_response(*status))).collect()
}

/// The errors of any route behind the client certificate.
const COMMON: [u16; 4] = [401, 408, 413, 500];

/// The errors of a read: the common ones, 403 when the operator may not read it, and 503 when
/// the read names a `min_index` this node has not applied within its wait.
pub struct ReadErrors;

impl IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[&COMMON[..], &[403, 503]].concat())
    }
}

/// The errors of a route that needs only a client certificate and reads nothing protected.
pub struct CertificateErrors;

impl IntoResponses for CertificateErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&COMMON)
    }
}

/// 404: nothing by that name or id.
pub struct NotFound;

impl IntoResponses for NotFound {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[404])
    }
}

/// The errors of a write, except 403, whose body depends on the route.
pub struct WriteErrors;

impl IntoResponses for WriteErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[&COMMON[..], &[400, 409, 412, 421, 429, 503]].concat())
    }
}

/// 403 of a route that reports a refusal as an error.
pub struct Refused;

impl IntoResponses for Refused {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[403])
    }
}

/// 403 of `POST /v1/commands`: a command the state machine refused when it applied it (the
/// outcome, with its log index), or one refused before it was proposed (an error).
pub struct WriteRefused;

impl IntoResponses for WriteRefused {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let either = utoipa::openapi::schema::OneOfBuilder::new()
            .item(Ref::from_schema_name("WriteResponse"))
            .item(Ref::from_schema_name("ErrorBody"));
        let body = ContentBuilder::new().schema(Some(either)).build();
        let response = ResponseBuilder::new()
            .description(
                "Refused: by the state machine when it applied the command (a `WriteResponse` with outcome \
                 `rejected` and the reason), or before it was proposed (an error naming why).",
            )
            .content("application/json", body)
            .build();
        BTreeMap::from([("403".to_string(), response.into())])
    }
}

/// `POST /v1/keys/{name}/share`: the share was sealed on this node.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema of the JSON `respond` writes; never built.
pub struct ShareSealed {
    /// The node that sealed it.
    node_id: NodeId,
    /// Always true.
    sealed: bool,
}

/// `GET /v1/operators`.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema of the JSON `respond` writes; never built.
pub struct OperatorList {
    operators: Vec<Operator>,
    /// How many admins must agree to an admin operation.
    admin_approvals_required: u32,
    /// The relying party passkeys are judged by; null until an admin sets it.
    webauthn: Option<synod_proto::webauthn::WebAuthnConfig>,
    /// Passkey registrations waiting for the admins (`synod operator passkey approve`).
    pending_passkeys: Vec<crate::state::PendingPasskey>,
}

/// `GET /v1/admin/proposals`.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema of the JSON `respond` writes; never built.
pub struct ProposalList {
    proposals: Vec<Proposal>,
}

/// `GET /v1/audit`: the chain's head and the records the caller may read.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema of the JSON `respond` writes; never built.
pub struct AuditPage {
    head: AuditHead,
    records: Vec<AuditRecord>,
}

/// `POST /v1/audit/checkpoint`: the checkpoint request that was committed.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema of the JSON `respond` writes; never built.
pub struct CheckpointRequested {
    request_id: String,
}

/// The finished document: the frame, the routes' paths and schemas, and OpenAPI's spelling of
/// axum's catch-all parameter (`{*key}` in a route, `{key}` in a document).
pub fn finish(mut document: OpenApi) -> OpenApi {
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    let paths = std::mem::take(&mut document.paths.paths);
    document.paths.paths = paths.into_iter().map(|(path, item)| (path.replace("{*", "{"), item)).collect();
    // Every identified read may name the highest index its client has seen (read your writes,
    // `crate::caller`); the caller parses it from the query of any route, so it is added here
    // once rather than on each handler.
    for (path, item) in document.paths.paths.iter_mut() {
        let anonymous = path == "/v1/sys/health" || path == "/v1/sys/ready";
        if let (Some(get), false) = (item.get.as_mut(), anonymous) {
            get.parameters.get_or_insert_with(Vec::new).push(min_index_parameter());
        }
    }
    // The schemas named only inside other schemas are collected by the routes' `body` types;
    // `WriteResponse` is also named by hand in `WriteRefused`.
    let components = document.components.get_or_insert_with(Default::default);
    components.schemas.entry("WriteResponse".into()).or_insert_with(<WriteResponse as utoipa::PartialSchema>::schema);
    document
}

/// `?min_index=N`: answer only once this node has applied index N (waiting up to
/// `MIN_INDEX_WAIT_MS_MAX`), else 503 saying how far behind it is.
fn min_index_parameter() -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, Required, Type};
    ParameterBuilder::new()
        .name(synod_proto::api::MIN_INDEX_PARAM)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(
            "Read your writes: the highest log index this client has seen (a write's `index`). The node \
             answers once it has applied it, waiting up to 5 s, else 503 saying how far behind it is.",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
        .build()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::api::{Connection, NO_SUCH_ENDPOINT};
    use crate::node::testing::lone_node;
    use crate::pki::PeerIdentity;

    /// The status and the first error message of `method path` on the live router, as a
    /// client with a certificate from the cluster CA.
    async fn probe(app: &axum::Router, method: &Method, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .extension(Connection(Some(PeerIdentity::Client("probe".into()))))
            .body(Body::empty())
            .expect("a request");
        let response = app.clone().oneshot(request).await.expect("the router answers");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
        let error = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|body| body["errors"][0].as_str().map(str::to_string))
            .unwrap_or_default();
        (status, error)
    }

    #[tokio::test]
    async fn openapi_every_documented_route_is_served() {
        // Every path and method of the document reaches a handler of the live router: the answer
        // is not the fallback's "no such endpoint" 404 nor axum's 405. The probe itself can tell:
        // a path the document does not list gets the fallback.
        let node = lone_node().await;
        let app = crate::api::router(node.clone());
        let document = crate::api::openapi_document();
        let mut probed = 0;
        for (path, item) in &document.paths.paths {
            // A path parameter gets a value; a route's catch-all takes it too.
            let concrete: String = path
                .split('/')
                .map(|segment| if segment.starts_with('{') { "probe" } else { segment })
                .collect::<Vec<_>>()
                .join("/");
            let operations = [
                (Method::GET, item.get.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::DELETE, item.delete.is_some()),
                (Method::PATCH, item.patch.is_some()),
            ];
            for (method, _) in operations.iter().filter(|(_, documented)| *documented) {
                let (status, error) = probe(&app, method, &concrete).await;
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented but not routed");
                assert!(
                    !(status == StatusCode::NOT_FOUND && error == NO_SUCH_ENDPOINT),
                    "{method} {path} is documented but the router answers with its fallback"
                );
                probed += 1;
            }
        }
        assert!(probed >= 20, "only {probed} operations in the document");
        let (status, error) = probe(&app, &Method::GET, "/v1/not-a-route").await;
        assert_eq!((status, error.as_str()), (StatusCode::NOT_FOUND, NO_SUCH_ENDPOINT), "the fallback answers");
        node.shutdown().await;
    }

    #[tokio::test]
    async fn openapi_ad_hoc_bodies_match_their_schemas() {
        // The bodies `respond` writes as ad-hoc JSON have exactly the fields their schemas in
        // this module name, so the document cannot drift from what the node sends.
        use crate::node::ClientResponse as R;
        let cases = [
            ("ShareSealed", R::ShareSealed { node_id: 1 }),
            (
                "OperatorList",
                R::Operators {
                    operators: vec![],
                    admin_approvals_required: 1,
                    webauthn: None,
                    pending_passkeys: vec![],
                },
            ),
            ("ProposalList", R::Proposals { proposals: vec![] }),
            ("AuditPage", R::Audit { head: AuditHead::default(), records: vec![] }),
            ("CheckpointRequested", R::Checkpoint { request_id: "r1".into() }),
        ];
        let document = serde_json::to_value(crate::api::openapi_document()).expect("the document serialises");
        for (schema, response) in cases {
            let response = crate::api::respond(response);
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
            let body: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON body");
            let written: Vec<&String> = body.as_object().expect("an object").keys().collect();
            let properties = document["components"]["schemas"][schema]["properties"].as_object();
            let documented: Vec<&String> = properties.expect("a documented schema").keys().collect();
            let (mut written, mut documented) = (written, documented);
            written.sort();
            documented.sort();
            assert_eq!(written, documented, "the fields of {schema}");
        }
    }

    #[test]
    fn openapi_api_rs_adds_no_route_outside_the_document() {
        // axum cannot list a router's routes, so the document is the only list: every route of
        // the API goes through `routes!`, whose handler carries its `#[utoipa::path]`. This scan
        // of api.rs's code (comments left out) finds any route added another way. The one
        // exception is `metrics_router`, the plain-HTTP listener for Prometheus, which is not part
        // of the API and so not of its document.
        let source = include_str!("../api.rs");
        let code: Vec<&str> = source.lines().filter(|line| !line.trim_start().starts_with("//")).collect();
        let mut in_metrics_router = false;
        let mut offending = Vec::new();
        for (number, line) in code.iter().enumerate() {
            if line.starts_with("pub fn metrics_router") {
                in_metrics_router = true;
            } else if in_metrics_router && line.starts_with('}') {
                in_metrics_router = false;
            }
            let adds_route = [".route(", ".route_service(", ".nest(", ".nest_service(", ".merge("]
                .iter()
                .any(|call| line.contains(call));
            if adds_route && !in_metrics_router {
                offending.push(format!("code line {}: {}", number + 1, line.trim()));
            }
        }
        assert!(
            offending.is_empty(),
            "api.rs adds routes outside the OpenAPI router; add each with `.routes(routes!(handler))` and a \
             `#[utoipa::path]` on its handler:\n{}",
            offending.join("\n")
        );
        assert!(source.contains("pub fn metrics_router"), "the scan's one exception is still there");
    }

    #[test]
    fn openapi_document_names_every_security_scheme_and_schema_it_uses() {
        // The operations' security requirements name the schemes the document defines, and
        // every schema reference resolves: a document a client generator can use.
        let document = crate::api::openapi_document();
        let json = serde_json::to_value(&document).expect("the document serialises");
        let schemes = json["components"]["securitySchemes"].as_object().expect("security schemes");
        assert!(schemes.contains_key(CLIENT_CERTIFICATE) && schemes.contains_key(READ_SIGNATURE));
        let schemas = json["components"]["schemas"].as_object().expect("schemas");
        let mut refs = Vec::new();
        collect_refs(&json, &mut refs);
        for reference in refs {
            let name = reference.strip_prefix("#/components/schemas/").expect("a schema reference");
            assert!(schemas.contains_key(name), "{reference} does not resolve");
        }
        assert_eq!(json["openapi"], "3.1.0");
    }

    fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(reference)) = map.get("$ref") {
                    out.push(reference.clone());
                }
                map.values().for_each(|inner| collect_refs(inner, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|inner| collect_refs(inner, out)),
            _ => {}
        }
    }
}
