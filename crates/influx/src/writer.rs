//! Writes line protocol to InfluxDB: v2 API through the influxdb2 crate, v1 `/write` directly.
//!
//! Both paths gzip the body (when enabled), split large bodies, and retry with exponential
//! backoff and jitter on connection errors, 5xx, 429 and the 4xx that are not about the lines
//! (401, 403, 404: credentials, a missing database). A 400 or 422 that rejects lines is not
//! retried (it would fail forever): the request is split until each refused line stands alone,
//! and those lines are reported with the server's reason, for the caller's quarantine.
//! Credentials travel in the Authorization header, never in a URL: a URL turns up in error
//! messages and logs.

use std::io::Write as _;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// InfluxDB 1.x `/write?db=…` (also answered by 1.8+ and 2.x compatibility endpoints).
    V1,
    /// InfluxDB 2.x/3.x/Cloud `/api/v2/write?org=…&bucket=…`, through the influxdb2 crate.
    V2,
}

impl std::str::FromStr for Api {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(Api::V1),
            "v2" => Ok(Api::V2),
            other => Err(format!("unknown InfluxDB API {other:?}: expected v1 or v2")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    pub url: String,
    pub api: Api,
    /// Database (v1) or bucket (v2).
    pub database: String,
    /// When set, each chain's points go to a database (v1) or bucket (v2) of its own, named
    /// by this template with `{chain}` replaced by the chain id (`penwarden_{chain}`), so
    /// InfluxDB's own per-database access control can keep chains apart. Points of pens not
    /// in a chain yet go to `database`. Empty: every point to `database`.
    pub database_per_chain: String,
    /// Organization (v2 only).
    pub org: String,
    /// v2: API token; v1: `user:password`, sent as HTTP basic authentication. Empty for none.
    pub token: String,
    pub gzip: bool,
    /// Lines per HTTP request; InfluxDB recommends batches of about 5000.
    pub max_lines_per_request: usize,
    /// Requests of one write in flight at once: InfluxDB parses concurrent writes on several
    /// cores, so a large batch lands sooner than with one request after another.
    pub concurrent_requests: usize,
    pub request_timeout_ms: u64,
    /// Backoff starts here and doubles per failed attempt, up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "http://127.0.0.1:8086".into(),
            api: Api::V2,
            database: "penwarden".into(),
            database_per_chain: String::new(),
            org: "penwarden".into(),
            token: String::new(),
            gzip: true,
            max_lines_per_request: 5000,
            concurrent_requests: 4,
            request_timeout_ms: 10_000,
            min_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid InfluxDB configuration: {0}")]
    Config(String),
    #[error("InfluxDB at {url} is not reachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("gave up writing to InfluxDB because shutdown was requested (last error: {0})")]
    Interrupted(String),
    #[error("InfluxDB did not take the write within the allowed time (last error: {0})")]
    Unavailable(String),
}

/// What one `write` call achieved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteReport {
    pub lines: usize,
    pub requests: usize,
    pub failed_attempts: usize,
    /// Lines InfluxDB refused with a 400 or 422; each is in `rejections`, unless it was refused as
    /// too large.
    pub rejected_lines: usize,
    pub rejections: Vec<RejectedLine>,
}

/// A line the server refused for good, and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLine {
    pub line: String,
    pub status: u16,
    pub reason: String,
}

enum Backend {
    V1 { http: reqwest::Client, write_url: reqwest::Url, credentials: Option<(String, String)> },
    V2 { client: influxdb2::Client },
}

enum Attempt {
    Accepted,
    /// The server refused lines for good (400, 422): do not retry.
    Rejected {
        status: u16,
        message: String,
    },
    /// Too large for the server: split and try again.
    TooLarge,
    Retry(String),
}

pub struct Writer {
    backend: Backend,
    probe: reqwest::Client,
    options: Options,
    /// v1 databases created so far (per-chain databases are created at their first point).
    created: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Writer {
    pub fn new(options: Options) -> Result<Writer, Error> {
        let base = reqwest::Url::parse(&options.url).map_err(|e| Error::Config(format!("url: {e}")))?;
        if !base.password().unwrap_or_default().is_empty() || !base.username().is_empty() {
            // A URL ends up in error messages and log lines; credentials have their own key.
            return Err(Error::Config(
                "the InfluxDB url carries credentials: put them in token (v1: user:password) instead".into(),
            ));
        }
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Config(format!("url {:?}: scheme must be http or https", options.url)));
        }
        if options.database.is_empty() {
            return Err(Error::Config("database (or bucket) must not be empty".into()));
        }
        if !options.database_per_chain.is_empty() && !options.database_per_chain.contains("{chain}") {
            return Err(Error::Config(format!(
                "database_per_chain {:?} must contain {{chain}}",
                options.database_per_chain
            )));
        }
        let timeout = Duration::from_millis(options.request_timeout_ms);
        let mut headers = HeaderMap::new();
        if options.gzip {
            // Bodies are compressed here with a fast level (the influxdb2 crate's own gzip
            // uses the slowest level); the header tells the server.
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let http_builder = || reqwest::Client::builder().timeout(timeout).default_headers(headers.clone());
        let build_error = |e: reqwest::Error| Error::Config(e.to_string());
        let backend = match options.api {
            Api::V1 => {
                let write_url = base.join("write").map_err(|e| Error::Config(e.to_string()))?;
                let credentials = v1_credentials(&options.token);
                Backend::V1 { http: http_builder().build().map_err(build_error)?, write_url, credentials }
            }
            Api::V2 => {
                if options.org.is_empty() {
                    return Err(Error::Config("org must not be empty for the v2 API".into()));
                }
                let client =
                    influxdb2::ClientBuilder::with_builder(http_builder(), &options.url, &options.org, &options.token)
                        .build()
                        .map_err(|e| Error::Config(e.to_string()))?;
                Backend::V2 { client }
            }
        };
        let probe = reqwest::Client::builder().timeout(timeout).build().map_err(build_error)?;
        Ok(Writer { backend, probe, options, created: Default::default() })
    }

    /// Checks that the server answers, for a clear error at start rather than at first write.
    pub async fn check(&self) -> Result<(), Error> {
        let path = match self.options.api {
            Api::V1 => "ping",
            Api::V2 => "health",
        };
        let url = reqwest::Url::parse(&self.options.url)
            .and_then(|u| u.join(path))
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut request = self.probe.get(url);
        if self.options.api == Api::V2 && !self.options.token.is_empty() {
            request = request.header(AUTHORIZATION, format!("Token {}", self.options.token));
        }
        let unreachable = |reason: String| Error::Unreachable { url: self.options.url.clone(), reason };
        let response = request.send().await.map_err(|e| unreachable(e.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(unreachable(format!("/{path} answered {}", response.status())))
        }
    }

    /// Creates the database on an InfluxDB 1.x server (idempotent there); a no-op for v2,
    /// where buckets are provisioned by the server's owner.
    pub async fn ensure_database(&self) -> Result<(), Error> {
        self.create_database(&self.options.database).await
    }

    /// The database (v1) or bucket (v2) a line goes to: its chain's with `database_per_chain`.
    fn database_of<'l>(&'l self, line: &'l str) -> std::borrow::Cow<'l, str> {
        // Off (the default): no line is looked into.
        if self.options.database_per_chain.is_empty() {
            return self.options.database.as_str().into();
        }
        match chain_of(line) {
            Some(chain) => self.options.database_per_chain.replace("{chain}", chain).into(),
            None => self.options.database.as_str().into(),
        }
    }

    async fn create_database(&self, database: &str) -> Result<(), Error> {
        if self.options.api != Api::V1 || self.created.lock().unwrap_or_else(|p| p.into_inner()).contains(database) {
            return Ok(());
        }
        let url = reqwest::Url::parse(&self.options.url)
            .and_then(|u| u.join("query"))
            .map_err(|e| Error::Config(e.to_string()))?;
        let statement = format!("CREATE DATABASE \"{}\"", database.replace('"', "\\\""));
        let mut request = self.probe.post(url).form(&[("q", statement)]);
        if let Some((user, password)) = v1_credentials(&self.options.token) {
            request = request.basic_auth(user, Some(password));
        }
        let unreachable = |reason: String| Error::Unreachable { url: self.options.url.clone(), reason };
        let response = request.send().await.map_err(|e| unreachable(e.to_string()))?;
        if response.status().is_success() {
            self.created.lock().unwrap_or_else(|p| p.into_inner()).insert(database.to_owned());
            Ok(())
        } else {
            Err(unreachable(format!("CREATE DATABASE answered {}", response.status())))
        }
    }

    /// Writes `body` (newline-separated lines), retrying while InfluxDB fails for at most
    /// `patience` (`None`: until it succeeds). Returns [`Error::Unavailable`] when patience runs
    /// out (a zero patience means a single attempt per request), and [`Error::Interrupted`] when
    /// `shutdown` turns true between attempts. Chunks written before a failure stay written:
    /// writing them again is harmless, a point with the same series and time is replaced.
    pub async fn write(
        &self,
        body: &str,
        patience: Option<Duration>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<WriteReport, Error> {
        use futures_util::StreamExt;
        let give_up_at = patience.map(|patience| std::time::Instant::now() + patience);
        // Lines by the database (or bucket) they go to: one, unless chains have their own.
        let mut by_database: std::collections::BTreeMap<std::borrow::Cow<'_, str>, Vec<&str>> = Default::default();
        for line in body.lines().filter(|line| !line.is_empty()) {
            by_database.entry(self.database_of(line)).or_default().push(line);
        }
        for database in by_database.keys() {
            self.create_database(database).await.map_err(|error| Error::Unavailable(error.to_string()))?;
        }
        // Futures are lazy: collecting them starts nothing; the stream runs a few at a time.
        // (Collecting first also keeps the stream's type free of a borrowing closure, which
        // would make the caller's future not `Send`.)
        let requests: Vec<_> = by_database
            .iter()
            .flat_map(|(database, lines)| {
                lines.chunks(self.options.max_lines_per_request.max(1)).map(move |chunk| (database, chunk))
            })
            .map(|(database, chunk)| self.write_chunk(database, chunk, give_up_at, shutdown.clone()))
            .collect();
        let mut results =
            futures_util::stream::iter(requests).buffer_unordered(self.options.concurrent_requests.max(1));
        let mut report = WriteReport::default();
        let mut failure = None;
        while let Some(result) = results.next().await {
            match result {
                Ok(chunk_report) => {
                    report.lines += chunk_report.lines;
                    report.requests += chunk_report.requests;
                    report.failed_attempts += chunk_report.failed_attempts;
                    report.rejected_lines += chunk_report.rejected_lines;
                    report.rejections.extend(chunk_report.rejections);
                }
                // The other requests finish (or give up) too; the write as a whole failed.
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// Writes one request's lines, splitting them when InfluxDB finds the body too large.
    async fn write_chunk(
        &self,
        database: &str,
        chunk: &[&str],
        give_up_at: Option<std::time::Instant>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<WriteReport, Error> {
        let mut report = WriteReport::default();
        let mut pending: Vec<&[&str]> = vec![chunk];
        while let Some(chunk) = pending.pop() {
            let mut backoff = Duration::from_millis(self.options.min_backoff_ms);
            loop {
                report.requests += 1;
                let started = std::time::Instant::now();
                let attempt = self.send(database, chunk).await;
                metrics::histogram!("penwarden_influx_write_duration_seconds").record(started.elapsed().as_secs_f64());
                match attempt {
                    Attempt::Accepted => {
                        report.lines += chunk.len();
                        metrics::counter!("penwarden_influx_points_written_total").increment(chunk.len() as u64);
                        break;
                    }
                    // Which lines? Halve until each refused line stands alone (the good ones are
                    // written again: a point with the same series and time is replaced).
                    Attempt::Rejected { .. } if chunk.len() > 1 => {
                        let (left, right) = chunk.split_at(chunk.len() / 2);
                        pending.push(right);
                        pending.push(left);
                        break;
                    }
                    Attempt::Rejected { status, message } => {
                        report.rejected_lines += 1;
                        metrics::counter!("penwarden_influx_points_rejected_total").increment(1);
                        let reason = truncate(&message, 2000).to_owned();
                        tracing::debug!(status, %reason, line = %truncate(chunk[0], 500), "InfluxDB refused a line");
                        report.rejections.push(RejectedLine { line: chunk[0].to_owned(), status, reason });
                        break;
                    }
                    Attempt::TooLarge if chunk.len() > 1 => {
                        let (left, right) = chunk.split_at(chunk.len() / 2);
                        pending.push(right);
                        pending.push(left);
                        break;
                    }
                    Attempt::TooLarge => {
                        report.rejected_lines += 1;
                        metrics::counter!("penwarden_influx_points_rejected_total").increment(1);
                        tracing::error!(line = %truncate(chunk[0], 500), "InfluxDB refused a single line as too large");
                        break;
                    }
                    Attempt::Retry(reason) => {
                        report.failed_attempts += 1;
                        metrics::counter!("penwarden_influx_write_failures_total").increment(1);
                        let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                        if *shutdown.borrow() {
                            return Err(Error::Interrupted(reason));
                        }
                        if give_up_at.is_some_and(|at| std::time::Instant::now() + jittered >= at) {
                            return Err(Error::Unavailable(reason));
                        }
                        tracing::warn!(%reason, retry_in_ms = jittered.as_millis() as u64, "InfluxDB write failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(jittered) => {}
                            _ = shutdown.changed() => return Err(Error::Interrupted(reason)),
                        }
                        backoff = (backoff * 2).min(Duration::from_millis(self.options.max_backoff_ms));
                    }
                }
            }
        }
        Ok(report)
    }

    async fn send(&self, database: &str, lines: &[&str]) -> Attempt {
        let body = match self.encode(lines) {
            Ok(body) => body,
            Err(e) => return Attempt::Retry(format!("cannot compress body: {e}")),
        };
        match &self.backend {
            Backend::V1 { http, write_url, credentials } => {
                let mut url = write_url.clone();
                url.query_pairs_mut().append_pair("db", database).append_pair("precision", "ms");
                let mut request = http.post(url).body(body);
                if let Some((user, password)) = credentials {
                    request = request.basic_auth(user, Some(password));
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        classify(status, text)
                    }
                    Err(e) => Attempt::Retry(e.to_string()),
                }
            }
            Backend::V2 { client } => {
                let precision = influxdb2::api::write::TimestampPrecision::Milliseconds;
                match client.write_line_protocol_with_precision(&self.options.org, database, body, precision).await {
                    Ok(()) => Attempt::Accepted,
                    Err(influxdb2::RequestError::Http { status, text }) => classify(status, text),
                    Err(other) => Attempt::Retry(other.to_string()),
                }
            }
        }
    }

    fn encode(&self, lines: &[&str]) -> std::io::Result<Vec<u8>> {
        let size: usize = lines.iter().map(|l| l.len() + 1).sum();
        if !self.options.gzip {
            let mut body = Vec::with_capacity(size);
            for line in lines {
                body.extend_from_slice(line.as_bytes());
                body.push(b'\n');
            }
            return Ok(body);
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(size / 4), flate2::Compression::fast());
        for line in lines {
            encoder.write_all(line.as_bytes())?;
            encoder.write_all(b"\n")?;
        }
        encoder.finish()
    }
}

fn classify(status: StatusCode, text: String) -> Attempt {
    match status.as_u16() {
        200..=299 => Attempt::Accepted,
        413 => Attempt::TooLarge,
        // The lines themselves: bad line protocol, a field type conflict.
        400 | 422 => Attempt::Rejected { status: status.as_u16(), message: text },
        // Not the lines: credentials, a missing database or bucket, throttling. Retried (then
        // spooled), never quarantined line by line.
        _ => Attempt::Retry(format!("{status}: {}", truncate(&text, 300))),
    }
}

/// InfluxDB 1.x credentials, `user:password`, for basic authentication.
fn v1_credentials(token: &str) -> Option<(String, String)> {
    token.split_once(':').map(|(user, password)| (user.to_owned(), password.to_owned()))
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The value of a line's `chain` tag, if it has one. penwarden writes the tags sorted and
/// chain ids hold no character line protocol escapes (ASCII letters, digits, '-', '_', '.'),
/// so the value ends at the next ',' or ' '.
fn chain_of(line: &str) -> Option<&str> {
    let tags_end = line.find(' ')?;
    let start = line[..tags_end].find(",chain=")? + ",chain=".len();
    let value = &line[start..tags_end];
    Some(value.split(',').next().unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_databases_per_chain_each_line_goes_to_its_chain_s_and_the_rest_to_the_default() {
        let options = Options {
            api: Api::V1,
            database: "penwarden".into(),
            database_per_chain: "penwarden_{chain}".into(),
            ..Options::default()
        };
        let writer = Writer::new(options).unwrap();
        let line = "pen_telemetry,chain=chain-1,clinic=c\\,chain\\=x,model=SP-2,pen=P1 depth_mm=1 1";
        assert_eq!(writer.database_of(line), "penwarden_chain-1");
        assert_eq!(
            writer.database_of("pen_session,area=cheek,chain=north.eu,clinic=a,pen=P1 strokes=1i 1"),
            "penwarden_north.eu"
        );
        assert_eq!(writer.database_of("pen_status,model=SP-2,pen=P9 battery_pct=80 1"), "penwarden", "no chain yet");
        assert_eq!(
            writer.database_of("pen_status,clinic=a\\,chain\\=b,pen=P9 x=1 1"),
            "penwarden",
            "an escaped look-alike"
        );
        let single = Writer::new(Options { api: Api::V1, ..Options::default() }).unwrap();
        assert_eq!(single.database_of(line), "penwarden", "off by default");
        let no_placeholder = Options { database_per_chain: "penwarden_chains".into(), ..Options::default() };
        assert!(matches!(Writer::new(no_placeholder), Err(Error::Config(_))));
    }

    #[tokio::test]
    async fn failed_writes_never_show_the_v1_password() {
        // Port 1 on loopback: nothing listens, every attempt fails with a connection error.
        let options = Options {
            url: "http://127.0.0.1:1".into(),
            api: Api::V1,
            token: "penwarden:s3cret-pw".into(),
            min_backoff_ms: 1,
            ..Options::default()
        };
        let writer = Writer::new(options).unwrap();
        let mut shutdown = watch::channel(false).1;
        let error = writer.write("m x=1 1", Some(Duration::from_millis(50)), &mut shutdown).await.unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("127.0.0.1:1"), "the error says where: {shown}");
        assert!(!shown.contains("s3cret"), "the password leaked: {shown}");
        let error = writer.ensure_database().await.unwrap_err();
        assert!(!format!("{error} {error:?}").contains("s3cret"));
    }

    #[test]
    fn status_classes() {
        assert!(matches!(classify(StatusCode::NO_CONTENT, String::new()), Attempt::Accepted));
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, String::new()), Attempt::Retry(_)));
        assert!(matches!(classify(StatusCode::SERVICE_UNAVAILABLE, String::new()), Attempt::Retry(_)));
        assert!(matches!(classify(StatusCode::BAD_REQUEST, String::new()), Attempt::Rejected { status: 400, .. }));
        assert!(matches!(classify(StatusCode::UNPROCESSABLE_ENTITY, String::new()), Attempt::Rejected { .. }));
        assert!(matches!(classify(StatusCode::NOT_FOUND, "database not found".into()), Attempt::Retry(_)));
        assert!(matches!(classify(StatusCode::UNAUTHORIZED, String::new()), Attempt::Retry(_)));
        assert!(matches!(classify(StatusCode::PAYLOAD_TOO_LARGE, String::new()), Attempt::TooLarge));
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_showing_them() {
        let options = Options { url: "http://admin:s3cret@127.0.0.1:8086".into(), ..Options::default() };
        let error = Writer::new(options).err().expect("refused").to_string();
        assert!(error.contains("token") && !error.contains("s3cret"), "{error}");
    }

    #[test]
    fn rejects_bad_configuration() {
        let bad_url = Options { url: "not a url".into(), ..Options::default() };
        assert!(matches!(Writer::new(bad_url), Err(Error::Config(_))));
        let no_db = Options { database: String::new(), ..Options::default() };
        assert!(matches!(Writer::new(no_db), Err(Error::Config(_))));
    }
}
