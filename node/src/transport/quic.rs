//! [`PeerTransport`] over QUIC (quinn) with mutual TLS.
//!
//! One UDP endpoint per node serves and dials. A peer is identified by its
//! certificate (issued by the cluster CA, CN `synod-node-<id>`), never by its
//! address; the server additionally checks that the peer is a member before
//! serving any stream, and logs every refusal. Each call is one bidirectional
//! stream carrying one length-prefixed frame each way ([`synod_proto::rpc`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use synod_proto::rpc::{self, PeerRequest, PeerResponse};
use synod_proto::NodeId;
use zeroize::Zeroizing;

use super::{PeerHandler, PeerTransport, TransportError};
use crate::pki::{self, PeerIdentity, TlsMaterial};

/// How long a peer may take to send its request frame once a stream is open.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Application close code sent to a peer that is not a member.
const CLOSE_NOT_MEMBER: u32 = 403;

type ConnSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// A node's QUIC endpoint: the server for its peers and the client for its calls.
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    /// The TLS configuration new outgoing connections use; `set_tls` replaces it when the
    /// node reloads its certificate (connections already open keep theirs).
    client_config: Mutex<quinn::ClientConfig>,
    /// One cached connection per peer, reused across calls.
    conns: Mutex<BTreeMap<NodeId, ConnSlot>>,
}

impl QuicTransport {
    /// Binds the endpoint. Fails with the OS error when the port is taken.
    pub fn bind(addr: SocketAddr, tls: &TlsMaterial) -> anyhow::Result<Arc<Self>> {
        let server_config = tls.quic_server_config()?;
        let endpoint = quinn::Endpoint::server(server_config, addr)?;
        let client_config = Mutex::new(tls.quic_client_config()?);
        Ok(Arc::new(QuicTransport { endpoint, client_config, conns: Mutex::new(BTreeMap::new()) }))
    }

    /// Uses new TLS material for connections made or accepted from now on (a certificate
    /// reload); connections already open keep the certificate they were made with.
    pub fn set_tls(&self, server: quinn::ServerConfig, client: quinn::ClientConfig) {
        self.endpoint.set_server_config(Some(server));
        *self.client_config.lock().expect("client config lock") = client;
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Accepts connections until [`QuicTransport::close`] is called.
    pub async fn serve(self: Arc<Self>, handler: Arc<dyn PeerHandler>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => serve_connection(conn, handler).await,
                    Err(e) => tracing::warn!(%remote, error = %e, "refused peer connection: TLS handshake failed"),
                }
            });
        }
    }

    /// Stops accepting and closes every connection.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    async fn connection(&self, target: NodeId, addr: &str) -> Result<quinn::Connection, TransportError> {
        let slot = self.conns.lock().expect("conns lock").entry(target).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let unreachable = |reason: String| TransportError::Unreachable { node: target, addr: addr.to_string(), reason };
        let socket_addr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("address resolves to nothing".into()))?;
        let client_config = self.client_config.lock().expect("client config lock").clone();
        let connecting = self
            .endpoint
            .connect_with(client_config, socket_addr, &pki::node_server_name(target))
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn call_once(&self, target: NodeId, addr: &str, frame: &[u8]) -> Result<PeerResponse, TransportError> {
        let conn = self.connection(target, addr).await?;
        let failed = |reason: String| TransportError::Failed { node: target, reason };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
        send.write_all(frame).await.map_err(|e| failed(e.to_string()))?;
        send.finish().map_err(|e| failed(e.to_string()))?;
        read_frame(&mut recv).await.map_err(failed)
    }
}

impl PeerTransport for Arc<QuicTransport> {
    fn call(
        &self,
        target: NodeId,
        addr: String,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, TransportError>> {
        let this = self.clone();
        async move {
            let encoded = if request.carries_secret() {
                rpc::encode_secret(&request)
            } else {
                rpc::encode(&request).map(Zeroizing::new)
            };
            let frame = encoded.map_err(|e| TransportError::Failed { node: target, reason: e.to_string() })?;
            let result = tokio::time::timeout(timeout, this.call_once(target, &addr, &frame)).await;
            let result =
                result.unwrap_or(Err(TransportError::Timeout { node: target, timeout_ms: timeout.as_millis() as u64 }));
            if let Err(TransportError::Failed { .. } | TransportError::Timeout { .. }) = result {
                // Drop a broken or silent connection so the next call dials
                // afresh: a peer that restarted never answers on the old one.
                if let Some(slot) = this.conns.lock().expect("conns lock").get(&target).cloned() {
                    if let Ok(mut guard) = slot.try_lock() {
                        *guard = None;
                    }
                }
            }
            result
        }
        .boxed()
    }
}

async fn read_frame<T: serde::de::DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, String> {
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await.map_err(|e| e.to_string())?;
    let len = rpc::decode_header(header).map_err(|e| e.to_string())?;
    // Wiped when dropped: a frame may carry a DKG round-2 package (a secret share).
    let mut body = Zeroizing::new(vec![0u8; len]);
    recv.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    rpc::decode_body(&body).map_err(|e| e.to_string())
}

async fn serve_connection(conn: quinn::Connection, handler: Arc<dyn PeerHandler>) {
    let remote = conn.remote_address();
    let peer = match pki::peer_identity_from_quic(&conn) {
        Ok(PeerIdentity::Node(id)) => id,
        Ok(other) => {
            tracing::warn!(%remote, identity = ?other, "refused peer: certificate is not a node certificate");
            conn.close(CLOSE_NOT_MEMBER.into(), b"not a node certificate");
            return;
        }
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused peer: unreadable certificate");
            conn.close(CLOSE_NOT_MEMBER.into(), b"unreadable certificate");
            return;
        }
    };
    if !handler.is_authorized(peer) {
        tracing::warn!(%remote, peer, "refused peer: node is not a member of this cluster");
        conn.close(CLOSE_NOT_MEMBER.into(), b"not a member");
        return;
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let handler = handler.clone();
        tokio::spawn(serve_stream(peer, send, recv, handler));
    }
}

async fn serve_stream(
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: Arc<dyn PeerHandler>,
) {
    let request = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<PeerRequest>(&mut recv)).await;
    let response = match request {
        Err(_) => {
            tracing::warn!(peer, "dropped peer stream: request frame not received in time");
            PeerResponse::Refused("request frame not received in time".into())
        }
        Ok(Err(reason)) => {
            tracing::warn!(peer, reason, "dropped malformed frame from peer");
            PeerResponse::Refused(format!("malformed frame: {reason}"))
        }
        Ok(Ok(_)) if !handler.is_authorized(peer) => {
            tracing::warn!(peer, "refused stream: node is no longer a member");
            PeerResponse::Refused("not a member".into())
        }
        Ok(Ok(request)) => handler.handle(peer, request).await,
    };
    match rpc::encode(&response) {
        Ok(frame) => {
            let _ = send.write_all(&frame).await;
            let _ = send.finish();
        }
        Err(e) => tracing::error!(peer, error = %e, "could not encode response"),
    }
}
