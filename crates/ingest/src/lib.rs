//! MQTT ingest: the path from a pen's message to a durable record and an MQTT ack.
//!
//! One task polls the MQTT connection and forwards publishes; one task batches them and applies
//! each batch to the store in one transaction; a third writes each committed batch's points to
//! InfluxDB, in commit order, and only then acknowledges the batch's messages. The two stages
//! overlap, so a batch's violations are recorded while the previous batch is still being
//! written. A message whose effects are not durable is never acked, so the broker (persistent
//! session, QoS 1) delivers it again.

pub mod decode;
mod flood;
mod mqtt;
mod pipeline;
pub mod points;
mod quarantine_log;
pub mod topic;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use penwarden_transport::{redacted_url, MqttAddress};
pub use pipeline::{Error, Service, Stats};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// `mqtt://host:port`.
    pub mqtt_url: String,
    /// Stable across restarts: the broker keeps the persistent session under this id.
    pub client_id: String,
    /// The broker login's user name; empty for an anonymous connection.
    pub username: String,
    /// A file holding the broker login's password (its first line). The password itself is
    /// never a configuration key, so it cannot end up in a file that is shared or printed;
    /// `PENWARDEN_MQTT_PASSWORD` gives it from the environment instead.
    pub password_file: Option<std::path::PathBuf>,
    /// The password, read from `password_file` or the environment when the configuration is
    /// loaded.
    #[serde(skip)]
    pub password: Password,
    /// For `mqtts://`: PEM certificates of the CAs that issue the broker's certificate.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// For `mqtts://`: penwarden's own certificate and key (PEM), for a broker that requires
    /// client certificates (deploy/mosquitto-tls.conf: its CN is the user name, `penwarden`).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    pub topic_root: String,
    /// Several instances on one fleet: each subscribes as a member of this MQTT shared
    /// subscription group (`$share/GROUP/...`), and the broker hands each message to one of
    /// them. Each instance still needs its own stable `client_id`. Empty: a plain subscription.
    pub share_group: String,
    pub keep_alive_s: u64,
    /// MQTT 5 receive maximum: how many QoS 1 messages the broker may send before their acks
    /// come back. Above capacity it is what keeps acks moving (src/mqtt.rs); keep it above
    /// what the pipeline holds at full rate (a few batches), or ingest waits for the broker.
    pub receive_maximum: u16,
    /// Messages per store transaction and InfluxDB write, at most.
    pub batch_max_messages: usize,
    /// How long a batch of telemetry may wait to fill up. A device event does not wait: its
    /// batch takes what has already arrived and goes, so this bounds dashboard lag, not alerts.
    pub batch_max_delay_ms: u64,
    pub max_payload_bytes: usize,
    pub max_future_skew_ms: i64,
    /// Register unknown pens on their first message instead of quarantining it.
    pub auto_register_pens: bool,
    /// How long a batch retries InfluxDB before its points go to the spool (and it is acked).
    pub spool_after_ms: u64,
    /// Spool size limit; when full, ingest stops acking until InfluxDB answers.
    pub spool_max_bytes: u64,
    /// Messages one pen may send at once (a buffered upload after hours offline); 0 disables
    /// flood protection.
    pub flood_burst: u32,
    /// Sustained messages per second one pen may send beyond the burst (a pen sends about 2).
    pub flood_rate_per_s: u32,
    /// How far a message's seq may be ahead of the highest its pen has sent (a pen's first
    /// message may carry any); beyond it the message is quarantined (`seq_out_of_range`). A
    /// seq near 2^63 would otherwise outrank every later message of the pen for good.
    pub max_seq_jump: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mqtt_url: "mqtt://127.0.0.1:1883".into(),
            client_id: "penwarden-ingest".into(),
            username: String::new(),
            password_file: None,
            password: Password::default(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            topic_root: "pw/v1".into(),
            share_group: String::new(),
            keep_alive_s: 30,
            receive_maximum: 10_000,
            batch_max_messages: 2000,
            batch_max_delay_ms: 25,
            max_payload_bytes: 256 * 1024,
            max_future_skew_ms: 24 * 3_600_000,
            auto_register_pens: false,
            spool_after_ms: 2000,
            spool_max_bytes: 1 << 30,
            flood_burst: 20_000,
            flood_rate_per_s: 200,
            max_seq_jump: 100_000_000,
        }
    }
}

impl Options {
    /// The TLS files for an `mqtts://` URL, checked for completeness.
    fn tls_files(&self) -> Result<penwarden_transport::ClientFiles, String> {
        let ca_file = self.tls_ca_file.clone().ok_or(
            "an mqtts:// URL needs ingest.tls_ca_file (PENWARDEN_MQTT_CA_FILE): the CA certificates that issue \
             the broker's (for a public CA, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt)",
        )?;
        let identity = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err("ingest.tls_cert_file and ingest.tls_key_file go together: set both or neither".into()),
        };
        Ok(penwarden_transport::ClientFiles { ca_file, identity })
    }

    fn batch_max_delay(&self) -> Duration {
        Duration::from_millis(self.batch_max_delay_ms)
    }

    fn spool_after(&self) -> Duration {
        Duration::from_millis(self.spool_after_ms)
    }

    fn limits(&self) -> decode::Limits {
        decode::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_future_skew_ms: self.max_future_skew_ms,
            ..decode::Limits::default()
        }
    }
}

/// A secret that is never shown: its Debug output is `***`, and it is not serialized.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(secret: String) -> Password {
        Password(secret)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret itself, for the one place that sends it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "(none)" } else { "***" })
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
