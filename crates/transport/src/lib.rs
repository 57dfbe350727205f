//! Reaching an MQTT broker: its URL (`mqtt://` or `mqtts://`), and the TLS client
//! configuration from PEM files for `mqtts://`.
//!
//! rustls with the ring provider, chosen explicitly: rustls' default provider builds aws-lc-sys,
//! a long C build. Errors name the file and what is wrong with it, never its contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Host, port and whether to speak TLS: an `mqtt://host[:port]` (1883) or
/// `mqtts://host[:port]` (8883) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Why an MQTT URL is refused. Shows the URL with any password as `***`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Credentials belong in their own settings: a URL ends up in error messages and logs.
    #[error("MQTT URL {0:?} carries credentials; give the user name and password separately")]
    Credentials(String),
    #[error("MQTT URL {0:?}: {1}")]
    Invalid(String, &'static str),
}

/// The URL as it may be shown: a password in it is replaced by `***` (a URL ends up in error
/// messages and log lines).
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

impl MqttAddress {
    pub fn parse(url: &str) -> Result<Self, AddressError> {
        let shown = redacted_url(url);
        let invalid = |why| AddressError::Invalid(shown.clone(), why);
        let (rest, tls) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (rest, false),
            Some(("mqtts" | "ssl", rest)) => (rest, true),
            _ => return Err(invalid("must start with mqtt:// or mqtts://")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(AddressError::Credentials(shown));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| invalid("has an invalid port"))?),
            None => (rest, default_port),
        };
        if host.is_empty() {
            return Err(invalid("has no host"));
        }
        Ok(MqttAddress { host: host.to_owned(), port, tls })
    }
}

/// Where a TLS client finds what it trusts and who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// PEM certificates of the CAs to trust (the broker's issuer).
    pub ca_file: PathBuf,
    /// PEM certificate chain and private key to present, for brokers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Builds the rustls configuration for `files`.
pub fn client_config(files: &ClientFiles) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(&files.ca_file)? {
        roots
            .add(certificate)
            .map_err(|e| format!("CA file {}: a certificate is not usable: {e}", files.ca_file.display()))?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match &files.identity {
        Some((cert_file, key_file)) => {
            let chain = read_certificates(cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| format!("key file {}: no readable PEM private key ({e})", key_file.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "certificate {} and key {} do not form an identity: {e}",
                    cert_file.display(),
                    key_file.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mqtt_urls() {
        let plain = MqttAddress { host: "127.0.0.1".into(), port: 1884, tls: false };
        assert_eq!(MqttAddress::parse("mqtt://127.0.0.1:1884"), Ok(plain));
        assert_eq!(MqttAddress::parse("mqtt://broker").unwrap().port, 1883);
        let secure = MqttAddress::parse("mqtts://broker").unwrap();
        assert_eq!((secure.port, secure.tls), (8883, true));
        assert!(MqttAddress::parse("mqtts://broker:9883").unwrap().tls);
        assert!(MqttAddress::parse("http://x:1").is_err());
        assert!(MqttAddress::parse("mqtt://:1").is_err());
        assert!(MqttAddress::parse("mqtt://x:notaport").is_err());
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        for url in ["mqtt://penwarden:s3cret@broker:1883", "mqtts://penwarden:s3cret@broker", "mqtt://u:s3cret@:x"] {
            let error = MqttAddress::parse(url).unwrap_err().to_string();
            assert!(!error.contains("s3cret") && error.contains("***"), "{error}");
        }
        assert_eq!(redacted_url("mqtt://u:p@h:1/x"), "mqtt://u:***@h:1/x");
        assert_eq!(redacted_url("http://h:8086"), "http://h:8086");
    }

    #[test]
    fn unreadable_files_are_named_in_the_error() {
        let missing = ClientFiles { ca_file: "/nonexistent/ca.crt".into(), identity: None };
        let error = client_config(&missing).unwrap_err();
        assert!(error.contains("/nonexistent/ca.crt"), "{error}");

        let dir = std::env::temp_dir().join(format!("penwarden-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.crt");
        std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
        let error = client_config(&ClientFiles { ca_file: not_pem, identity: None }).unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
