//! Generated code for penwarden's protobuf schemas (see `proto/`).
//!
//! Every message has prost binary encoding and, through pbjson, serde impls that follow the
//! protobuf JSON mapping, which pens may use for bring-up.

#![allow(unreachable_pub, clippy::all)]

pub mod device {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/penwarden.device.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/penwarden.device.v1.serde.rs"));
    }
}

pub mod api {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/penwarden.api.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/penwarden.api.v1.serde.rs"));
    }
}

/// Client side of API authentication: attaches `authorization: Bearer <token>` to every call.
///
/// ```ignore
/// let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
/// let client = ComplianceServiceClient::with_interceptor(channel, BearerToken::new(&token)?);
/// ```
#[derive(Clone)]
pub struct BearerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl BearerToken {
    /// Fails if the token holds characters a header cannot carry.
    pub fn new(token: &str) -> Result<BearerToken, tonic::metadata::errors::InvalidMetadataValue> {
        format!("Bearer {token}").parse().map(BearerToken)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// How a client reaches penwarden's gRPC API over TLS (`https://` URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM certificates of the CAs that issue the server's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate and key to present, for a server that requires client certificates.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Connects to penwarden's gRPC API: `http://host:port` in plaintext, `https://host:port` over
/// TLS (rustls with ring), trusting the CAs in `tls.ca_file`, which `https://` requires. Errors
/// name the URL and files, never a token.
pub async fn connect(url: &str, tls: &ClientTlsFiles) -> Result<tonic::transport::Channel, String> {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("invalid gRPC URL {url:?}: {e}"))?;
    if url.starts_with("https://") {
        let ca_file = tls.ca_file.as_deref().ok_or_else(|| {
            format!("{url} is TLS: give the CA certificate file that issued the server's certificate")
        })?;
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca_file)?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| format!("TLS configuration for {url}: {e}"))?;
    } else if tls.ca_file.is_some() || tls.identity.is_some() {
        return Err(format!("{url} is plaintext: TLS files are given, so use https://"));
    }
    endpoint.connect().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        format!("cannot reach penwarden at {url}: {reason}")
    })
}

/// Encoded `FileDescriptorSet` of every proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/penwarden_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::device::v1::{pen_event, PenDisinfected, PenEvent};
    use prost::Message;

    #[test]
    fn binary_and_json_encodings_agree() {
        let event = PenEvent {
            schema_version: 1,
            pen_serial: "PW-000001".into(),
            seq: 42,
            time_unix_ms: 1_790_000_000_000,
            kind: Some(pen_event::Kind::PenDisinfected(PenDisinfected { method: 1, sheath_changed: true })),
        };
        let binary = PenEvent::decode(event.encode_to_vec().as_slice()).unwrap();
        let json: PenEvent = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(binary, event);
        assert_eq!(json, event);
    }

    #[test]
    fn json_mapping_uses_camel_case_and_enum_names() {
        let json = r#"{"schemaVersion":1,"penSerial":"PW-1","seq":"7","timeUnixMs":5,
            "penDisinfected":{"method":"DISINFECTION_METHOD_ALCOHOL_WIPE","sheathChanged":true}}"#;
        let event: PenEvent = serde_json::from_str(json).unwrap();
        assert_eq!(event.seq, 7);
        assert!(matches!(
            event.kind,
            Some(pen_event::Kind::PenDisinfected(PenDisinfected { method: 1, sheath_changed: true }))
        ));
    }

    #[test]
    fn field_numbers_are_stable() {
        // A wire-compatibility guard: these bytes were produced by the schema as first
        // published. If a field number changes, old pens' messages would decode wrongly.
        let event = PenEvent { schema_version: 1, pen_serial: "P".into(), seq: 2, time_unix_ms: 3, kind: None };
        assert_eq!(event.encode_to_vec(), vec![0x08, 0x01, 0x12, 0x01, b'P', 0x18, 0x02, 0x20, 0x03]);
    }
}
