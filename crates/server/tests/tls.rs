//! `--tls-cert`/`--tls-key` serve HTTPS with rustls; plain HTTP is refused
//! on a non-loopback address unless explicitly allowed.

use std::sync::Arc;
use tokenledger_server::config::{ServeArgs, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn https_get(port: u16, root: CertificateDer<'static>, path: &str) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_given_certificate() {
    // One crypto provider for the process, as in main.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let args = ServeArgs {
        data_dir: Some(dir.path().join("data")),
        listen: Some(([127, 0, 0, 1], port).into()),
        tls_cert: Some(cert_path),
        tls_key: Some(key_path),
        bootstrap_token: Some("tls-test-bootstrap-secret-0123456789abcdef".into()),
        ..ServeArgs::default()
    };
    let settings = Settings::resolve(args).unwrap();
    tokio::spawn(tokenledger_server::serve::serve(settings));
    let root = CertificateDer::from(cert.cert.der().to_vec());
    let mut answer = Err(std::io::Error::other("not tried"));
    for _ in 0..200 {
        answer = https_get(port, root.clone(), "/readyz").await;
        if answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let answer = answer.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"status":"ready"}"#), "{answer}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("ready"),
        "plain HTTP was answered"
    );
}

#[test]
fn plain_http_on_a_public_address_is_refused_unless_allowed() {
    let args = ServeArgs {
        listen: Some(([0, 0, 0, 0], 8080).into()),
        ..ServeArgs::default()
    };
    let err = Settings::resolve(args.clone()).unwrap_err().to_string();
    assert!(err.contains("refusing plain HTTP"), "{err}");
    let allowed = ServeArgs {
        allow_plain_http: Some(true),
        ..args
    };
    assert!(Settings::resolve(allowed).is_ok());
}
