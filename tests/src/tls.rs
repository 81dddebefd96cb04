//! Raw TLS clients for tests that act as an attacker or inspect what a node presents:
//! connections from a chosen source address, with or without a client certificate, that
//! send exactly the bytes a test gives them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::Cluster;

/// How long a test waits for a node to answer one request before it calls the node stuck.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A TLS client that trusts the cluster CA and presents no certificate.
pub fn anonymous(cluster: &Cluster) -> TlsConnector {
    let config = synod_node::pki::https_client_config_anonymous(&cluster.path("ca/ca.crt")).expect("anonymous TLS");
    TlsConnector::from(Arc::new(config))
}

/// A TLS client with the cluster's test client certificate.
pub fn authenticated(cluster: &Cluster) -> TlsConnector {
    let material = synod_node::pki::TlsMaterial::load(
        &cluster.path("ca/ca.crt"),
        &cluster.path("certs/client-tester.crt"),
        &cluster.path("certs/client-tester.key"),
    )
    .expect("client TLS material");
    TlsConnector::from(Arc::new(material.https_client_config().expect("client TLS")))
}

/// Opens a TLS connection to `addr` (a node's `api_addr`) from `source` (any port).
pub async fn connect(connector: &TlsConnector, addr: &str, source: IpAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let target: SocketAddr = addr.parse().expect("api_addr is ip:port");
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target).await?;
    connector.connect(ServerName::IpAddress(target.ip().into()), tcp).await
}

/// The loopback address legitimate clients use.
pub const LEGITIMATE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Sends `request` (a whole HTTP/1.1 request that asks to close) and returns everything the
/// node answers until it closes, or panics after [`ANSWER_TIMEOUT`].
pub async fn exchange(connector: &TlsConnector, addr: &str, request: &[u8]) -> String {
    let mut stream = connect(connector, addr, LEGITIMATE).await.expect("TLS connection");
    stream.write_all(request).await.expect("send request");
    stream.flush().await.expect("flush");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(ANSWER_TIMEOUT, stream.read_to_end(&mut answer)).await;
    match read {
        Ok(Ok(_)) => {}
        // A node may close without close_notify; what arrived before counts.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Ok(Err(e)) => panic!("reading the answer failed: {e}"),
        Err(_) => panic!("no complete answer within {ANSWER_TIMEOUT:?}"),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET path` with the test client certificate, read as the cluster's admin
/// (a read signature by `admin.pem`); the whole response as text.
pub async fn get(cluster: &Cluster, id: u64, path: &str) -> String {
    let admin = synod_cli::operator::load_operator_key(&cluster.path("admin.pem")).expect("the admin key");
    let health = exchange(
        &authenticated(cluster),
        &cluster.nodes[&id].api_addr,
        b"GET /v1/sys/health?standbyok=true HTTP/1.1\r\nHost: synod\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body = health.split("\r\n\r\n").nth(1).expect("a health body");
    let health: serde_json::Value = serde_json::from_str(body).expect("health JSON");
    let cluster_id = health["cluster_id"].as_str().expect("the node has a cluster");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let signature = synod_proto::readsig::ReadSignature::sign(&admin, cluster_id, "GET", path, now).to_header();
    let header = synod_proto::readsig::READ_SIGNATURE_HEADER;
    let request = format!("GET {path} HTTP/1.1\r\nHost: synod\r\n{header}: {signature}\r\nConnection: close\r\n\r\n");
    exchange(&authenticated(cluster), &cluster.nodes[&id].api_addr, request.as_bytes()).await
}

/// The value of metric `name` (with `label` in its labels, if given) in node `id`'s metrics.
pub async fn metric(cluster: &Cluster, id: u64, name: &str, label: Option<&str>) -> u64 {
    let text = get(cluster, id, "/v1/sys/metrics").await;
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| label.is_none_or(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} {label:?} missing from:\n{text}"))
}

/// The DER certificate node `id` presents on its API port to a new connection.
pub async fn presented_certificate(cluster: &Cluster, id: u64) -> Vec<u8> {
    let stream = connect(&anonymous(cluster), &cluster.nodes[&id].api_addr, LEGITIMATE).await.expect("TLS connection");
    let (_, session) = stream.get_ref();
    session.peer_certificates().and_then(|certs| certs.first()).expect("the node presents a certificate").to_vec()
}

/// A PEM certificate file's first certificate as DER.
pub fn certificate_file_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .expect("certificate file")
        .next()
        .expect("a certificate")
        .expect("PEM certificate")
        .to_vec()
}

/// A certificate's serial number (hex) and expiry (Unix seconds).
pub fn serial_and_expiry(der: &[u8]) -> (String, i64) {
    let (_, x509) = x509_parser::parse_x509_certificate(der).expect("X.509");
    (x509.raw_serial_as_string(), x509.validity().not_after.timestamp())
}
