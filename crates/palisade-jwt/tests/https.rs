//! An `https://` JWKS URL (feature `https`): reqwest with rustls against a local TLS server.
#![cfg(feature = "https")]

mod common;

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use palisade_jwt::{JwtAuthLayer, reqwest};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tower::{Layer, ServiceExt};

const CERT: &[u8] = include_bytes!("keys/tls.cert.pem");
const KEY: &[u8] = include_bytes!("keys/tls.key.pem");

/// Serves `jwks` at every path over TLS on 127.0.0.1:0.
async fn tls_endpoint(jwks: String) -> std::net::SocketAddr {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = vec![CertificateDer::from_pem_slice(CERT).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, jwks) = (acceptor.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                        let body = Full::new(Bytes::from(jwks.clone()));
                        async move { Ok::<_, Infallible>(Response::new(body)) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_https_jwks_url_works() {
    let key = EncodingKey::from_rsa_pem(RSA).unwrap();
    let addr = tls_endpoint(jwks(&[jwk(Algorithm::RS256, &key, "tls")])).await;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(CERT).unwrap()])
        .build()
        .unwrap();
    let layer = JwtAuthLayer::server()
        .jwks_url(format!("https://{addr}/jwks.json"))
        .http_client(client)
        .build()
        .unwrap();
    let inner = Inner::default();
    let token = sign(Algorithm::RS256, &key, Some("tls"), &claims("alice"));
    let response = layer
        .layer(inner.clone())
        .oneshot(with_token(&token))
        .await
        .unwrap();
    assert_eq!(
        (code(&response), response.body().get_ref().as_str()),
        (0, "alice")
    );
    assert_eq!(layer.jwks_fetches(), 1);

    // The default client does not trust the self-signed certificate: no keys, the last good
    // (none) kept, the request refused.
    let untrusting = JwtAuthLayer::server()
        .jwks_url(format!("https://{addr}/jwks.json"))
        .build()
        .unwrap();
    let response = untrusting
        .layer(inner.clone())
        .oneshot(with_token(&token))
        .await
        .unwrap();
    assert_eq!(code(&response), 16);
    assert_eq!(inner.calls(), 1);
}
