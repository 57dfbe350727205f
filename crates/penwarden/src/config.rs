//! Configuration: defaults, then the TOML file (`--config`), then `PENWARDEN_*` environment
//! variables. See deploy/penwarden.example.toml for every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) ingest: penwarden_ingest::Options,
    pub(crate) influx: penwarden_influx::Options,
    pub(crate) store: StoreConfig,
    pub(crate) api: ApiConfig,
    pub(crate) metrics: MetricsConfig,
    /// Thresholds of the compliance rules.
    pub(crate) compliance: penwarden_domain::compliance::Thresholds,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StoreConfig {
    /// `sqlite:PATH` (one box) or `postgres://USER@HOST/DATABASE` (shared by several
    /// instances). A PostgreSQL password goes in PGPASSWORD or ~/.pgpass, not in the URL
    /// (where it is accepted, but shown only as `***`).
    pub(crate) url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ApiConfig {
    pub(crate) grpc_addr: SocketAddr,
    /// How long shutdown may take before in-flight work is abandoned (it stays unacked).
    pub(crate) shutdown_deadline_s: u64,
    /// gRPC over TLS: the server's certificate chain and key (PEM).
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Mutual TLS: only clients with a certificate from these CAs (PEM) may connect.
    pub(crate) tls_client_ca_file: Option<PathBuf>,
    /// Serve plaintext gRPC on an address other than loopback (behind a proxy that terminates
    /// TLS). Without it, penwarden refuses to: API keys would cross the network in the clear.
    pub(crate) allow_plaintext: bool,
    /// Requests per second each API key may make beyond its burst; over it, RESOURCE_EXHAUSTED.
    /// A burst of 0 turns the limit off.
    pub(crate) rate_limit_per_s: u32,
    pub(crate) rate_limit_burst: u32,
    /// The same API over HTTP with JSON, and server-sent events for WatchViolations, on this
    /// address (off when unset). Plaintext: beyond loopback only with `allow_plaintext`
    /// (behind a proxy that terminates TLS).
    pub(crate) http_addr: Option<SocketAddr>,
}

impl ApiConfig {
    /// The server's TLS files, checked for completeness (None: plaintext).
    pub(crate) fn tls(&self) -> Result<Option<penwarden_api::ServerTlsFiles>, String> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert_file), Some(key_file)) => Ok(Some(penwarden_api::ServerTlsFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: self.tls_client_ca_file.clone(),
            })),
            (None, None) if self.tls_client_ca_file.is_some() => {
                Err("api.tls_client_ca_file needs api.tls_cert_file and api.tls_key_file".into())
            }
            (None, None) => Ok(None),
            _ => Err("api.tls_cert_file and api.tls_key_file go together: set both or neither".into()),
        }
    }

    /// Refuses plaintext gRPC beyond loopback unless allowed explicitly.
    pub(crate) fn check_plaintext(&self, tls: bool) -> Result<(), String> {
        if let Some(http) = self.http_addr.filter(|addr| !self.allow_plaintext && !addr.ip().is_loopback()) {
            return Err(format!(
                "refusing to serve the HTTP API in plaintext on {http}: API keys would cross the network in the clear; \
                 put it behind a proxy that terminates TLS and set --allow-plaintext (api.allow_plaintext, \
                 PENWARDEN_GRPC_ALLOW_PLAINTEXT), or keep it on loopback"
            ));
        }
        if tls || self.allow_plaintext || self.grpc_addr.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "refusing to serve gRPC in plaintext on {}: API keys would cross the network in the clear; \
             set api.tls_cert_file and api.tls_key_file (PENWARDEN_GRPC_TLS_CERT_FILE, PENWARDEN_GRPC_TLS_KEY_FILE), \
             or, behind a proxy that terminates TLS, --allow-plaintext (api.allow_plaintext, PENWARDEN_GRPC_ALLOW_PLAINTEXT)",
            self.grpc_addr
        ))
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MetricsConfig {
    pub(crate) addr: Option<SocketAddr>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { url: "sqlite:penwarden.db".into() }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            shutdown_deadline_s: 30,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            allow_plaintext: false,
            rate_limit_per_s: 100,
            rate_limit_burst: 1000,
            http_addr: None,
        }
    }
}

impl Config {
    pub(crate) fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut config = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        fn parse<T: std::str::FromStr>(name: &str, value: String) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e| format!("{name}={value:?}: {e}"))
        }
        if let Some(v) = var("PENWARDEN_MQTT_URL") {
            self.ingest.mqtt_url = v;
        }
        if let Some(v) = var("PENWARDEN_MQTT_CLIENT_ID") {
            self.ingest.client_id = v;
        }
        if let Some(v) = var("PENWARDEN_MQTT_SHARE_GROUP") {
            self.ingest.share_group = v;
        }
        if let Some(v) = var("PENWARDEN_MQTT_USERNAME") {
            self.ingest.username = v;
        }
        if let Some(v) = var("PENWARDEN_MQTT_CA_FILE") {
            self.ingest.tls_ca_file = Some(v.into());
        }
        if let Some(v) = var("PENWARDEN_MQTT_CERT_FILE") {
            self.ingest.tls_cert_file = Some(v.into());
        }
        if let Some(v) = var("PENWARDEN_MQTT_KEY_FILE") {
            self.ingest.tls_key_file = Some(v.into());
        }
        if let Some(v) = var("PENWARDEN_MQTT_PASSWORD_FILE") {
            self.ingest.password_file = Some(v.into());
        }
        match (var("PENWARDEN_MQTT_PASSWORD"), &self.ingest.password_file) {
            (Some(_), Some(_)) => {
                return Err("the broker password is given twice: set PENWARDEN_MQTT_PASSWORD or ingest.password_file \
                     (PENWARDEN_MQTT_PASSWORD_FILE), not both"
                    .into())
            }
            (Some(password), None) => self.ingest.password = penwarden_ingest::Password::new(password),
            (None, Some(file)) => self.ingest.password = read_password_file(file)?,
            (None, None) => {}
        }
        if let Some(v) = var("PENWARDEN_INFLUX_URL") {
            self.influx.url = v;
        }
        if let Some(v) = var("PENWARDEN_INFLUX_API") {
            self.influx.api = parse("PENWARDEN_INFLUX_API", v)?;
        }
        if let Some(v) = var("PENWARDEN_INFLUX_DB") {
            self.influx.database = v;
        }
        if let Some(v) = var("PENWARDEN_INFLUX_DATABASE_PER_CHAIN") {
            self.influx.database_per_chain = v;
        }
        if let Some(v) = var("PENWARDEN_INFLUX_ORG") {
            self.influx.org = v;
        }
        if let Some(v) = var("PENWARDEN_INFLUX_TOKEN") {
            self.influx.token = v;
        }
        if let Some(v) = var("PENWARDEN_INFLUX_GZIP") {
            self.influx.gzip = parse("PENWARDEN_INFLUX_GZIP", v)?;
        }
        if let Some(v) = var("PENWARDEN_DATABASE_URL") {
            self.store.url = v;
        }
        if let Some(v) = var("PENWARDEN_GRPC_ADDR") {
            self.api.grpc_addr = parse("PENWARDEN_GRPC_ADDR", v)?;
        }
        if let Some(v) = var("PENWARDEN_HTTP_ADDR") {
            self.api.http_addr = Some(parse("PENWARDEN_HTTP_ADDR", v)?);
        }
        if let Some(v) = var("PENWARDEN_GRPC_TLS_CERT_FILE") {
            self.api.tls_cert_file = Some(v.into());
        }
        if let Some(v) = var("PENWARDEN_GRPC_TLS_KEY_FILE") {
            self.api.tls_key_file = Some(v.into());
        }
        if let Some(v) = var("PENWARDEN_GRPC_TLS_CLIENT_CA_FILE") {
            self.api.tls_client_ca_file = Some(v.into());
        }
        if let Some(v) = var("PENWARDEN_API_RATE_LIMIT_PER_S") {
            self.api.rate_limit_per_s = parse("PENWARDEN_API_RATE_LIMIT_PER_S", v)?;
        }
        if let Some(v) = var("PENWARDEN_API_RATE_LIMIT_BURST") {
            self.api.rate_limit_burst = parse("PENWARDEN_API_RATE_LIMIT_BURST", v)?;
        }
        if let Some(v) = var("PENWARDEN_GRPC_ALLOW_PLAINTEXT") {
            self.api.allow_plaintext = parse("PENWARDEN_GRPC_ALLOW_PLAINTEXT", v)?;
        }
        if let Some(v) = var("PENWARDEN_METRICS_ADDR") {
            self.metrics.addr = Some(parse("PENWARDEN_METRICS_ADDR", v)?);
        }
        if let Some(v) = var("PENWARDEN_AUTO_REGISTER_PENS") {
            self.ingest.auto_register_pens = parse("PENWARDEN_AUTO_REGISTER_PENS", v)?;
        }
        Ok(())
    }
}

/// The first line of a password file (what `echo secret > file` writes). Errors name the file,
/// never what it holds.
fn read_password_file(path: &Path) -> Result<penwarden_ingest::Password, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the broker password file {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(format!("the broker password file {} is empty", path.display()));
    }
    Ok(penwarden_ingest::Password::new(password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_broker_password_comes_from_a_file_or_the_environment_and_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("penwarden-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mqtt-password");
        std::fs::write(&file, "s3cret-pass\n").unwrap();
        let path = file.display().to_string();
        let from_file = Config::load(
            None,
            env(&[("PENWARDEN_MQTT_USERNAME", "penwarden"), ("PENWARDEN_MQTT_PASSWORD_FILE", &path)]),
        )
        .unwrap();
        assert_eq!(from_file.ingest.username, "penwarden");
        assert_eq!(from_file.ingest.password, penwarden_ingest::Password::new("s3cret-pass".into()));
        let from_env = Config::load(None, env(&[("PENWARDEN_MQTT_PASSWORD", "s3cret-pass")])).unwrap();
        assert_eq!(from_env.ingest.password, from_file.ingest.password);
        // Neither the configuration's Debug form nor its serialized form holds the secret.
        assert!(!format!("{from_file:?}").contains("s3cret"));
        assert!(!toml::to_string(&from_file).unwrap().contains("s3cret"));

        let both = [("PENWARDEN_MQTT_PASSWORD", "s3cret-pass"), ("PENWARDEN_MQTT_PASSWORD_FILE", path.as_str())];
        let error = Config::load(None, env(&both)).unwrap_err();
        assert!(error.contains("not both") && !error.contains("s3cret"), "{error}");
        let missing = dir.join("absent").display().to_string();
        let error = Config::load(None, env(&[("PENWARDEN_MQTT_PASSWORD_FILE", &missing)])).unwrap_err();
        assert!(error.contains("cannot read the broker password file"), "{error}");
        std::fs::write(&file, "\n").unwrap();
        let error = Config::load(None, env(&[("PENWARDEN_MQTT_PASSWORD_FILE", &path)])).unwrap_err();
        assert!(error.contains("is empty"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn plaintext_grpc_is_refused_beyond_loopback_unless_allowed() {
        let mut api = ApiConfig::default();
        assert_eq!(api.check_plaintext(false), Ok(()), "loopback");
        api.grpc_addr = "0.0.0.0:50051".parse().unwrap();
        let error = api.check_plaintext(false).unwrap_err();
        assert!(error.starts_with("refusing to serve gRPC in plaintext on 0.0.0.0:50051"), "{error}");
        assert!(!error.contains('\n'), "one line");
        assert_eq!(api.check_plaintext(true), Ok(()), "TLS");
        api.allow_plaintext = true;
        assert_eq!(api.check_plaintext(false), Ok(()), "allowed explicitly");
        api.grpc_addr = "[::1]:50051".parse().unwrap();
        api.allow_plaintext = false;
        assert_eq!(api.check_plaintext(false), Ok(()), "IPv6 loopback");
        api.http_addr = Some("0.0.0.0:8080".parse().unwrap());
        assert!(api.check_plaintext(true).unwrap_err().contains("HTTP API"), "HTTP has no TLS of its own");
        api.allow_plaintext = true;
        assert_eq!(api.check_plaintext(false), Ok(()), "behind a TLS proxy, allowed explicitly");
        // TLS files come in pairs.
        api.tls_cert_file = Some("cert.pem".into());
        assert!(api.tls().is_err());
        api.tls_key_file = Some("key.pem".into());
        assert!(api.tls().unwrap().is_some());
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("penwarden-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        let text = "[influx]\napi = \"v1\"\ndatabase = \"fromfile\"\n[ingest]\nauto_register_pens = true\n\
                    [compliance]\ncartridge_max_strokes = 1000\n[compliance.area_depth_limits_mm]\nperiorbital = 0.25\n";
        std::fs::write(&file, text).unwrap();
        let config = Config::load(Some(&file), env(&[("PENWARDEN_INFLUX_DB", "fromenv")])).unwrap();
        assert_eq!(config.influx.api, penwarden_influx::Api::V1);
        assert_eq!(config.influx.database, "fromenv");
        assert!(config.ingest.auto_register_pens);
        assert_eq!(config.compliance.cartridge_max_strokes, 1000);
        assert_eq!(config.compliance.area_depth_limits_mm.periorbital, 0.25);
        assert_eq!(config.compliance.area_depth_limits_mm.cheek, 1.5, "unset keys keep their defaults");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::load(None, env(&[("PENWARDEN_INFLUX_API", "v3")])).unwrap_err();
        assert!(err.contains("PENWARDEN_INFLUX_API"), "{err}");
        let err = Config::load(None, env(&[("PENWARDEN_AUTO_REGISTER_PENS", "yes")])).unwrap_err();
        assert!(err.contains("PENWARDEN_AUTO_REGISTER_PENS"), "{err}");
    }

    /// Every key of the configuration, as `section.key` paths (unset optional keys have none).
    fn key_paths(value: &toml::Value, prefix: &str, paths: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (key, value) in table {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                key_paths(value, &path, paths);
                if !value.is_table() {
                    paths.push(path);
                }
            }
        }
    }

    #[test]
    fn the_example_file_shows_every_key_with_its_default() {
        let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/penwarden.example.toml");
        let example_text = std::fs::read_to_string(&example_path).unwrap();
        // Optional keys are shown commented out; uncommented, they must still be valid keys.
        let uncommented: String = example_text
            .lines()
            .map(|line| line.strip_prefix("# ").filter(|rest| rest.contains(" = ")).unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        let example: toml::Value = toml::from_str(&uncommented).unwrap();
        let example_config: Config = toml::from_str(&uncommented).expect("the example file is a valid configuration");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut expected, mut shown) = (Vec::new(), Vec::new());
        key_paths(&defaults, "", &mut expected);
        key_paths(&example, "", &mut shown);
        for path in &expected {
            assert!(shown.contains(path), "deploy/penwarden.example.toml lacks the key {path}");
        }
        let mut optional: Vec<String> = [
            "metrics.addr",
            "ingest.password_file",
            "ingest.tls_ca_file",
            "ingest.tls_cert_file",
            "ingest.tls_key_file",
            "api.tls_cert_file",
            "api.tls_key_file",
            "api.tls_client_ca_file",
            "api.http_addr",
        ]
        .map(String::from)
        .to_vec();
        optional.extend(expected.iter().cloned());
        for path in &shown {
            assert!(optional.contains(path), "deploy/penwarden.example.toml shows an unknown key {path}");
        }
        // Shown with their defaults (only the optional keys, shown as examples, differ).
        let mut example_defaults = example_config;
        example_defaults.metrics.addr = None;
        example_defaults.ingest.password_file = None;
        example_defaults.ingest.tls_ca_file = None;
        example_defaults.ingest.tls_cert_file = None;
        example_defaults.ingest.tls_key_file = None;
        example_defaults.api.tls_cert_file = None;
        example_defaults.api.tls_key_file = None;
        example_defaults.api.tls_client_ca_file = None;
        example_defaults.api.http_addr = None;
        assert_eq!(toml::Value::try_from(example_defaults).unwrap(), defaults, "example values differ from defaults");
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let err = toml::from_str::<Config>("[ingest]\nmqtt_ulr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("mqtt_ulr"));
    }
}
