//! TLS material for sinks: trust anchors from `ca_file` (else the system's trust store) and an
//! optional client certificate, read once when a sink starts.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::SinkError;
use crate::config::SinkSpec;

fn tls_error(path: &Path, message: impl ToString) -> SinkError {
    SinkError::Tls {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SinkError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SinkError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_error(path, e))
}

/// A rustls client configuration for `spec` (ring as the crypto provider).
pub fn client_config(spec: &SinkSpec) -> Result<Arc<rustls::ClientConfig>, SinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_path = spec
        .ca_file
        .as_deref()
        .unwrap_or(Path::new("<system trust store>"));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(config_path, e))?;
    let builder = match &spec.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| tls_error(path, e))?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| tls_error(config_path, e))?
        }
    };
    let config = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| tls_error(key, e))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
