//! The echo app over TLS (wss), served with axum-server and rustls (the `ring` provider), with
//! HTTP/2 offered by ALPN and WebSockets over HTTP/2 enabled.
//!
//! Certificate: `TLS_CERT` and `TLS_KEY` name PEM files; without them a self-signed certificate
//! for `localhost` and `127.0.0.1` is generated at start-up (and saved as `cert.pem` in
//! `TLS_GENERATED_DIR`, default the system's temp dir, so that a client can trust it).
//!
//! ```text
//! cargo run --features http2 --example tls   # then open https://localhost:3000, accept the certificate
//! TLS_CERT=cert.pem TLS_KEY=key.pem ADDR=0.0.0.0:8443 cargo run --features http2 --example tls
//! WS_LEGACY=1 cargo run --features http2,hixie76 --example tls   # hixie-76/75 clients too (wss://)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::{response::Html, routing::get, Router};
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tower_websocket::layer::DEFAULT_CLOSE_TIMEOUT;
use tower_websocket::{WebSocket, WebSocketLayer};

#[path = "common/shutdown.rs"]
mod shutdown;

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// The certificate chain and key: from `TLS_CERT`/`TLS_KEY`, or generated.
fn certificate() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    if let (Ok(cert), Ok(key)) = (std::env::var("TLS_CERT"), std::env::var("TLS_KEY")) {
        let chain = CertificateDer::pem_file_iter(&cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| panic!("cannot read the certificates in {cert}: {e}"));
        let key = PrivateKeyDer::from_pem_file(&key)
            .unwrap_or_else(|e| panic!("cannot read the private key in {key}: {e}"));
        tracing::info!("TLS certificate from {cert}");
        return (chain, key);
    }
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("generating a self-signed certificate");
    let dir = std::env::var_os("TLS_GENERATED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join("cert.pem");
    match std::fs::write(&path, generated.cert.pem()) {
        Ok(()) => tracing::warn!(
            "no TLS_CERT/TLS_KEY given: generated a self-signed certificate for localhost, saved as {} (trust it in your client)",
            path.display()
        ),
        Err(e) => tracing::warn!("generated a self-signed certificate for localhost (not saved: {e})"),
    }
    let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    (vec![generated.cert.der().clone()], key.into())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // ring builds much faster than aws-lc-rs on small machines; choose it explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (chain, key) = certificate();
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the certificate and key do not match");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = RustlsConfig::from_config(Arc::new(tls));

    #[cfg_attr(not(feature = "hixie76"), allow(unused_mut))]
    let mut layer = WebSocketLayer::new(echo);
    if std::env::var("WS_LEGACY").is_ok_and(|v| v == "1") {
        // Served over TLS: the legacy answer's location names wss://.
        #[cfg(feature = "hixie76")]
        {
            layer = layer.legacy_drafts(true).legacy_tls(true);
        }
        #[cfg(not(feature = "hixie76"))]
        tracing::warn!("WS_LEGACY=1 needs the hixie76 feature: legacy drafts stay off");
    }
    let sockets = layer.handle();
    let app = Router::new()
        .route("/", get(|| async { Html(include_str!("pages/echo.html")) }))
        .layer(layer);

    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_string())
        .parse()
        .expect("ADDR must be host:port");
    let server = axum_server::Handle::new();
    tokio::spawn({
        let server = server.clone();
        async move {
            shutdown::signal().await;
            tracing::info!("shutting down: closing WebSockets");
            // Each closing handshake takes at most the close timeout; a second more is for
            // the handlers.
            let grace = DEFAULT_CLOSE_TIMEOUT + Duration::from_secs(1);
            let report = sockets.shutdown(grace).await;
            tracing::info!(?report, "WebSockets closed");
            server.graceful_shutdown(Some(Duration::from_secs(10)));
        }
    });
    tokio::spawn({
        let server = server.clone();
        async move {
            if let Some(addr) = server.listening().await {
                tracing::info!("TLS echo server on https://{addr}");
            }
        }
    });
    let mut serving = axum_server::bind_rustls(addr, tls).handle(server);
    // WebSockets over HTTP/2 need the extended CONNECT protocol (RFC 8441) announced.
    serving.http_builder().http2().enable_connect_protocol();
    serving
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .expect("server error");
}
