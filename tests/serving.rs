//! Serving for real: the TLS example (axum-server + rustls) with its generated certificate,
//! HTTP/2 over TLS, and SIGTERM closing every socket with 1001 in both servers.

mod common;
#[path = "common/external.rs"]
#[allow(dead_code)]
mod external;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::within;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message as T;

/// An example running on a free loopback port; killed when dropped.
struct Example {
    child: Child,
    addr: SocketAddr,
}

impl Example {
    async fn start(name: &str, env: &[(&str, &Path)]) -> Example {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(external::example_binary(name));
        cmd.env("ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().expect("starting the example");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Example { child, addr }
    }

    /// Sends SIGTERM and waits for a clean exit.
    async fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exited with {status}");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_client(trusted: Option<&Path>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = trusted {
        for cert in CertificateDer::pem_file_iter(pem).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_example() -> (Example, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let example = Example::start("tls", &[("TLS_GENERATED_DIR", dir.path())]).await;
    (example, dir)
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A fresh directory under the system's temp dir, removed when dropped.
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new() -> Dir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir().join(format!(
                "tower-websocket-test-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn wss_with_the_generated_certificate_echoes_and_untrusted_clients_fail() {
    let (example, dir) = tls_example().await;
    let cert = dir.path().join("cert.pem");
    assert!(
        cert.is_file(),
        "the example did not save its generated certificate"
    );

    // A client that trusts only that certificate.
    let tcp = tokio::net::TcpStream::connect(example.addr).await.unwrap();
    let tls = tls_client(Some(&cert), &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake with the trusted certificate");
    let url = format!("wss://localhost:{}/", example.addr.port());
    let (mut ws, res) = within(
        "the wss handshake",
        tokio_tungstenite::client_async(url, tls),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 101);
    ws.send(T::text("over TLS")).await.unwrap();
    assert_eq!(
        within("the echo", ws.next()).await.unwrap().unwrap(),
        T::text("over TLS")
    );

    // A client that trusts nothing fails the TLS handshake.
    let tcp = tokio::net::TcpStream::connect(example.addr).await.unwrap();
    let err = tls_client(None, &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect_err("an untrusted certificate was accepted");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[cfg(feature = "http2")]
#[tokio::test]
async fn websocket_over_http2_on_tls_with_alpn_h2() {
    use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket as Fws};
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (example, dir) = tls_example().await;
    let tcp = tokio::net::TcpStream::connect(example.addr).await.unwrap();
    let tls = tls_client(Some(&dir.path().join("cert.pem")), &[b"h2"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!("https://localhost:{}/ws", example.addr.port()))
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let res = within("the CONNECT answer", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let mut ws = Fws::after_handshake(TokioIo::new(upgraded), Role::Client);
    ws.write_frame(Frame::text(Payload::Borrowed(b"h2 over tls")))
        .await
        .unwrap();
    let frame = within("the echo", ws.read_frame()).await.unwrap();
    assert_eq!(
        (frame.opcode, &frame.payload[..]),
        (OpCode::Text, &b"h2 over tls"[..])
    );
}

async fn read_close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within("the close frame", ws.next()).await {
            Some(Ok(T::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_closes_echo_sockets_with_1001_and_exits() {
    let example = Example::start("echo", &[]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", example.addr))
            .await
            .unwrap();
        ws.send(T::text("before")).await.unwrap();
        assert_eq!(
            within("echo", ws.next()).await.unwrap().unwrap(),
            T::text("before")
        );
        clients.push(ws);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { read_close_code(&mut ws).await }))
        .collect();
    example.terminate().await;
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(1001));
    }
}

#[tokio::test]
async fn sigterm_closes_tls_sockets_with_1001_and_exits() {
    let (example, dir) = tls_example().await;
    let tcp = tokio::net::TcpStream::connect(example.addr).await.unwrap();
    let tls = tls_client(Some(&dir.path().join("cert.pem")), &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/", example.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    ws.send(T::text("hi")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    let reader = tokio::spawn(async move { read_close_code(&mut ws).await });
    example.terminate().await;
    assert_eq!(reader.await.unwrap(), Some(1001));
}

#[cfg(feature = "hixie76")]
#[tokio::test]
async fn hixie76_over_tls_names_wss_in_its_location() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempdir::Dir::new();
    let example = Example::start(
        "tls",
        &[
            ("TLS_GENERATED_DIR", dir.path()),
            ("WS_LEGACY", Path::new("1")),
        ],
    )
    .await;
    let cert = dir.path().join("cert.pem");
    let tcp = tokio::net::TcpStream::connect(example.addr).await.unwrap();
    let mut tls = tls_client(Some(&cert), &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake");
    let host = format!("localhost:{}", example.addr.port());
    // The example of draft-hixie-thewebsocketprotocol-76, section 1.3.
    let request = format!(
        "GET /legacy HTTP/1.1\r\nHost: {host}\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
         Origin: https://{host}\r\nSec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\n\
         Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\n\r\n^n:ds[4U"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // The head, then the 16-byte answer.
    let complete = |response: &[u8]| {
        response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|at| response.len() >= at + 4 + 16)
    };
    while !complete(&response) {
        let n = within("the legacy answer", tls.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "EOF: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 101 WebSocket Protocol Handshake\r\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("sec-websocket-location: wss://{host}/legacy\r\n")),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n8jKS'y:G*Co,Wxa-"), "{text}");
}
