//! TLS for `kind: http` checks with `tls: true`: the handshake over the probe's TCP stream,
//! with `sni` as the server name, then HTTP/1.1 inside as without TLS.
//!
//! The certificate is **not** verified: no chain, no name, no expiry. What the check proves
//! is that the backend completes a TLS handshake (and, with the server's signature checked
//! against the certificate it sent, that it holds that certificate's key), then answers the
//! request as the check expects. Backends are addressed by IP and commonly carry certificates
//! for the names clients use, often from an internal CA, which is why HAProxy's users write
//! `check-ssl verify none`.
//!
//! The TLS stack is rustls through tokio-rustls, with ring as its crypto provider (it builds
//! with a C compiler alone; aws-lc-rs, rustls' default, needs cmake).
//!
//! File descriptors: the probe's TCP stream is moved into the TLS stream and closes with it
//! when the probe returns or is aborted.

use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::TlsCheck;

/// Accepts any certificate, but checks the handshake's signatures with the provider's
/// algorithms, so the server must hold the key of the certificate it presents.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The one client configuration every TLS check shares (nothing in it depends on the check),
/// made on first use.
fn connector() -> Result<TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    });
    config.clone().map(TlsConnector::from)
}

/// The TLS handshake over `stream` (connected, past any PROXY header), sending `sni` when
/// the check has one; without it, no SNI (the server gets the IP, which TLS does not name).
pub async fn handshake(
    stream: TcpStream,
    check: &TlsCheck,
    ip: std::net::IpAddr,
) -> Result<TlsStream<TcpStream>, String> {
    let name = match &check.sni {
        Some(sni) => ServerName::try_from(sni.clone()).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(ip.into()),
    };
    connector()?
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string().chars().take(160).collect())
}

/// True when `text` is a name TLS can carry as SNI (a DNS name, not an IP address).
pub fn valid_sni(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_err() && ServerName::try_from(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_a_dns_name() {
        assert!(valid_sni("api.example.com"));
        assert!(valid_sni("localhost"));
        assert!(!valid_sni("10.0.0.1"));
        assert!(!valid_sni("bad name"));
        assert!(!valid_sni(""));
    }

    #[test]
    fn the_shared_configuration_builds() {
        assert!(connector().is_ok());
    }
}
