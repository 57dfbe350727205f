//! Test harness: real servers as child processes on free loopback ports, with temporary data
//! directories, killed on drop. Never the machine's shared instances.
//!
//! The penwarden and pensim binaries must be built first (`cargo build --workspace --bins`,
//! part of the README's test command); they are found beside the test executable.

use penwarden_proto::api::v1::compliance_service_client::ComplianceServiceClient;
use penwarden_proto::api::v1::fleet_service_client::FleetServiceClient;
use penwarden_proto::api::v1::quarantine_service_client::QuarantineServiceClient;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port the OS considers free right now on 127.0.0.1.
/// A loopback port nothing listens on now, for a server a test starts. Taken below the
/// kernel's range for ephemeral ports (32768 and up on Linux), where the port `bind(0)` gives
/// came from: between this call and the server's bind, any outgoing connection (to a broker,
/// a database) could be given an ephemeral port, and the server then fails with "address in
/// use". The ports are walked from a start that differs per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..COUNT {
        let port = (FIRST + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// The directory holding the workspace's built binaries: the one the running executable is in
/// (target/release for the benchmark), or its parent for a test in target/debug/deps.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` before the tests", path.display());
    path
}

fn require(program: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return path;
        }
    }
    panic!("{program} is not installed: run the README's setup (scripts/install-deps.sh)")
}

/// A child process killed (and reaped) on drop.
pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let child = command.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process { name: name.to_owned(), child: Some(child) }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let status = Command::new("kill").arg("-TERM").arg(self.id().to_string()).status().expect("kill");
        assert!(status.success(), "could not signal {}", self.name);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit (after a signal) and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.id().to_string()).status().expect("kill");
        assert!(status.success(), "could not send SIG{name} to {}", self.name);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_ok(url: &str) -> bool {
    match reqwest::get(url).await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

/// Started as root, Mosquitto drops to its own user: the files it reads must be readable by it.
fn readable_by_the_broker(file: &Path) {
    std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
}

pub struct Mosquitto {
    pub port: u16,
    config: PathBuf,
    process: Option<Process>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// The broker's process id (0 while stopped), for the benchmark's CPU accounting.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::id)
    }

    pub async fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, mosquitto drops to its own user: without write access to the data
        // directory it cannot save its persistence file, and a restart silently loses every
        // persistent session and queued message.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("open the mosquitto data directory to the broker's user");
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        // Persistence and unlimited queues: a persistent session must keep every message.
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\nmax_inflight_messages 1000\nlog_type error\n",
                dir.path().display()
            ),
        )
        .expect("write mosquitto.conf");
        let mut mosquitto = Mosquitto { port, config, process: None, dir };
        mosquitto.spawn().await;
        mosquitto
    }

    /// A broker configured exactly as deploy/mosquitto.conf (its password file and
    /// deploy/mosquitto.acl), with only the paths and the listener moved into the test's own
    /// directory and port, and `users` (name, password) in the password file.
    pub async fn start_deployed(users: &[(&str, &str)]) -> Mosquitto {
        Self::start_like_deploy("mosquitto.conf", |dir| {
            let passwords = dir.join("passwords");
            for (user, password) in users {
                // -c creates the file (with the first user); -b takes the password as an argument.
                let create: &[&str] = if passwords.exists() { &[] } else { &["-c"] };
                let status = Command::new(require("mosquitto_passwd"))
                    .arg("-b")
                    .args(create)
                    .arg(&passwords)
                    .args([user, password])
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd failed");
            }
            readable_by_the_broker(&passwords);
            vec![("password_file", passwords)]
        })
        .await
    }

    /// A broker configured exactly as deploy/mosquitto-tls.conf (client certificates required,
    /// their CN the user name, deploy/mosquitto.acl), with only the paths and the listener
    /// moved: `certs` holds broker.crt and broker.key, and `clients_ca`, the CAs of the client
    /// certificates it accepts.
    pub async fn start_deployed_tls(certs: &Path, clients_ca: &Path) -> Mosquitto {
        Self::start_like_deploy("mosquitto-tls.conf", |dir| {
            // Copies the broker may read; the key only in this test.
            let copy = |from: &Path, name: &str| {
                let to = dir.join(name);
                std::fs::copy(from, &to).expect("copy a certificate file");
                readable_by_the_broker(&to);
                to
            };
            vec![
                ("cafile", copy(clients_ca, "clients-ca.crt")),
                ("certfile", copy(&certs.join("broker.crt"), "broker.crt")),
                ("keyfile", copy(&certs.join("broker.key"), "broker.key")),
            ]
        })
        .await
    }

    /// Starts a broker from deploy/`conf` as it stands, with deploy/mosquitto.acl, moving only
    /// the listener, the persistence directory and the files: `files` puts what the
    /// configuration needs into the broker's directory and says which key names each.
    async fn start_like_deploy(conf: &str, files: impl FnOnce(&Path) -> Vec<(&'static str, PathBuf)>) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("open the mosquitto data directory to the broker's user");
        let port = free_port();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let acl = dir.path().join("acl");
        std::fs::copy(deploy.join("mosquitto.acl"), &acl).expect("copy deploy/mosquitto.acl");
        readable_by_the_broker(&acl);
        let mut moved_files = files(dir.path());
        moved_files.push(("acl_file", acl));
        let deployed = std::fs::read_to_string(deploy.join(conf)).expect("read the deploy configuration");
        let mut config_text = String::new();
        for line in deployed.lines() {
            let key = line.split_once(' ').map(|(key, _)| key);
            let moved = match key {
                Some("listener") => format!("listener {port} 127.0.0.1"),
                Some("persistence_location") => format!("persistence_location {}/", dir.path().display()),
                Some(key) => match moved_files.iter().find(|(name, _)| *name == key) {
                    Some((name, path)) => format!("{name} {}", path.display()),
                    None => line.to_owned(),
                },
                None => line.to_owned(),
            };
            config_text.push_str(&moved);
            config_text.push('\n');
        }
        config_text.push_str("log_type error\n");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(&config, config_text).expect("write mosquitto.conf");
        let mut mosquitto = Mosquitto { port, config, process: None, dir };
        mosquitto.spawn().await;
        mosquitto
    }

    async fn spawn(&mut self) {
        self.process =
            Some(Process::spawn("mosquitto", Command::new(require("mosquitto")).arg("-c").arg(&self.config)));
        let port = self.port;
        wait_for("mosquitto to listen", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
    }

    /// Stops the broker with SIGTERM (it writes its persistence file) and starts it again.
    pub async fn restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(10));
        }
        let saved = self.dir.path().join("mosquitto.db");
        assert!(saved.exists(), "mosquitto saved no {}: the restart would lose its sessions", saved.display());
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// InfluxDB 1.x (`influxd`), for the v1 write API and InfluxQL.
pub struct Influxd {
    pub port: u16,
    config: PathBuf,
    process: Option<Process>,
    _dir: tempfile::TempDir,
}

impl Influxd {
    /// The server's process id (0 while stopped), for the benchmark's CPU accounting.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::id)
    }

    pub async fn start() -> Influxd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, rpc_port) = (free_port(), free_port());
        let d = dir.path().display();
        let config = dir.path().join("influxdb.conf");
        std::fs::write(
            &config,
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n\
                 [meta]\n  dir = \"{d}/meta\"\n\
                 [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
                 [retention]\n  enabled = false\n[monitor]\n  store-enabled = false\n\
                 [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
                 [continuous_queries]\n  enabled = false\n"
            ),
        )
        .expect("write influxdb.conf");
        let mut influxd = Influxd { port, config, process: None, _dir: dir };
        influxd.resume().await;
        influxd
    }

    /// Stops the server (SIGKILL: an outage, not a goodbye).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts the server again on the same port and data.
    pub async fn resume(&mut self) {
        let command = Command::new(require("influxd"))
            .arg("run")
            .arg("-config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = command.unwrap_or_else(|e| panic!("cannot start influxd: {e}"));
        self.process = Some(Process { name: "influxd".into(), child: Some(child) });
        let ping = format!("http://127.0.0.1:{}/ping", self.port);
        wait_for("influxd to answer /ping", Duration::from_secs(30), || {
            let ping = ping.clone();
            async move { http_ok(&ping).await.then_some(()) }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs an InfluxQL query and returns the first value of the first series, if any.
    pub async fn query_scalar(&self, database: &str, influxql: &str) -> Option<serde_json::Value> {
        let client = reqwest::Client::new();
        let response = client
            .get(format!("{}/query", self.url()))
            .query(&[("db", database), ("q", influxql)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
        let value = &body["results"][0]["series"][0]["values"][0][1];
        (!value.is_null()).then(|| value.clone())
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, a free port,
/// trust authentication on loopback), for fault tests that stop and start the database: the
/// machine's server is never touched. Run as the `postgres` user when the test runs as root
/// (PostgreSQL refuses root).
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<(u32, u32)>,
    process: Option<Process>,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server under /usr/lib/postgresql (scripts/install-deps.sh installs it)")
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max_by_key(|bin| bin.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()))
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let run_as = unix_user_ids("postgres").filter(|_| is_root());
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("give the data directory to postgres");
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "--no-sync"]);
        initdb.stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            std::os::unix::process::CommandExt::uid(&mut initdb, uid);
            std::os::unix::process::CommandExt::gid(&mut initdb, gid);
        }
        assert!(initdb.status().expect("run initdb").success(), "initdb failed");
        let mut postgres = Postgres { port: free_port(), bin, data, run_as, process: None, _dir: dir };
        postgres.resume().await;
        postgres
    }

    /// The URL of its maintenance database (a test may use it as penwarden's store).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Immediate shutdown (SIGQUIT: every connection dropped, in-flight transactions lost,
    /// crash recovery at the next start), then a start on the same data and port.
    pub async fn restart_immediately(&mut self) {
        self.stop_immediately();
        self.resume().await;
    }

    fn stop_immediately(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal("QUIT");
            process.wait_exit(Duration::from_secs(30));
        }
    }

    async fn resume(&mut self) {
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        self.process = Some(Process::spawn("postgres", &mut command));
        let url = self.url();
        wait_for("PostgreSQL to accept connections", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                use sqlx::Connection;
                sqlx::PgConnection::connect(&url).await.ok()?.close().await.ok()
            }
        })
        .await;
    }
}

impl Drop for Postgres {
    /// SIGQUIT, not the SIGKILL a `Process` gets: a postmaster killed outright leaves its
    /// backends running.
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        status.lines().find_map(|line| line.strip_prefix("Uid:")?.split_whitespace().next()?.parse::<u32>().ok())
    }) == Some(0)
}

/// A user's uid and gid, from /etc/passwd.
fn unix_user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name)).then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))?
    })
}

/// VictoriaMetrics, which implements the InfluxDB v2 write API.
pub struct Victoria {
    pub port: u16,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Victoria {
    /// The server's process id, for the benchmark's CPU accounting.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub async fn start() -> Victoria {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let process = Process::spawn(
            "victoria-metrics",
            Command::new(require("victoria-metrics"))
                .arg(format!("-storageDataPath={}", dir.path().display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                // Redelivered messages rewrite identical samples; keep one per series and time.
                .arg("-dedup.minScrapeInterval=1ms")
                .arg("-retentionPeriod=100y")
                .arg("-loggerLevel=ERROR")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let health = format!("http://127.0.0.1:{port}/health");
        wait_for("victoria-metrics to answer /health", Duration::from_secs(30), || {
            let health = health.clone();
            async move { http_ok(&health).await.then_some(()) }
        })
        .await;
        Victoria { port, process, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Counts the raw samples of a metric, after making recent writes searchable.
    pub async fn count_samples(&self, metric: &str) -> usize {
        let client = reqwest::Client::new();
        let _ = client.get(format!("{}/internal/force_flush", self.url())).send().await;
        let Ok(response) = client
            .get(format!("{}/api/v1/export", self.url()))
            .query(&[("match[]", metric), ("start", "0")])
            .send()
            .await
        else {
            return 0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|series| series["timestamps"].as_array().map_or(0, Vec::len))
            .sum()
    }
}

/// A running `penwarden serve`, which can be killed and restarted on the same store, ports
/// and MQTT client id (so it resumes its persistent session).
pub struct Penwarden {
    pub grpc_addr: SocketAddr,
    pub process: Process,
    pub dir: tempfile::TempDir,
    /// An admin API key's token, created before the first start.
    pub admin_token: String,
    env: Vec<(String, String)>,
    /// The PostgreSQL database this instance created for its store, dropped with the last
    /// instance sharing it (after their processes are gone: fields drop in order).
    scratch: Option<std::sync::Arc<penwarden_store::scratch::ScratchStore>>,
}

impl Penwarden {
    /// Starts penwarden with the given extra environment and waits for gRPC to answer. Its
    /// store is on the backend PENWARDEN_TEST_STORE names (`penwarden_store::scratch`): a
    /// SQLite file in its directory, or a new database on the PostgreSQL server.
    pub async fn start(mqtt_url: &str, extra_env: &[(&str, String)]) -> Penwarden {
        let dir = tempfile::tempdir().expect("tempdir");
        match penwarden_store::scratch::ScratchStore::chosen_kind() {
            penwarden_store::BackendKind::Sqlite => Self::start_in(dir, mqtt_url, extra_env).await,
            penwarden_store::BackendKind::Postgres => {
                let scratch = std::sync::Arc::new(penwarden_store::scratch::ScratchStore::new().await);
                Self::start_on(dir, scratch.url().to_owned(), Some(scratch), mqtt_url, extra_env).await
            }
        }
    }

    /// Like `start`, with a SQLite store in `dir` (a size-limited filesystem, say), whatever
    /// PENWARDEN_TEST_STORE says: for tests of what only SQLite does.
    pub async fn start_in(dir: tempfile::TempDir, mqtt_url: &str, extra_env: &[(&str, String)]) -> Penwarden {
        let url = format!("sqlite:{}", dir.path().join("penwarden.db").display());
        Self::start_on(dir, url, None, mqtt_url, extra_env).await
    }

    /// Like `start`, on the store `store_url` names (a test's own PostgreSQL server, say).
    pub async fn start_with_store(store_url: &str, mqtt_url: &str, extra_env: &[(&str, String)]) -> Penwarden {
        Self::start_on(tempfile::tempdir().expect("tempdir"), store_url.to_owned(), None, mqtt_url, extra_env).await
    }

    /// Like `start`, on a SQLite store in a temporary directory whatever PENWARDEN_TEST_STORE
    /// says.
    pub async fn start_on_sqlite(mqtt_url: &str, extra_env: &[(&str, String)]) -> Penwarden {
        Self::start_in(tempfile::tempdir().expect("tempdir"), mqtt_url, extra_env).await
    }

    async fn start_on(
        dir: tempfile::TempDir,
        store_url: String,
        scratch: Option<std::sync::Arc<penwarden_store::scratch::ScratchStore>>,
        mqtt_url: &str,
        extra_env: &[(&str, String)],
    ) -> Penwarden {
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut env: Vec<(String, String)> = vec![
            ("PENWARDEN_MQTT_URL".into(), mqtt_url.into()),
            ("PENWARDEN_MQTT_CLIENT_ID".into(), format!("penwarden-test-{}", grpc_addr.port())),
            ("PENWARDEN_DATABASE_URL".into(), store_url),
            ("PENWARDEN_GRPC_ADDR".into(), grpc_addr.to_string()),
            ("RUST_LOG".into(), std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let admin_token = create_api_key(&env, "admin", "");
        let process = Self::spawn(&env, grpc_addr).await;
        Penwarden { grpc_addr, process, dir, admin_token, env, scratch }
    }

    /// Another instance on `first`'s store and broker, with its own gRPC port, MQTT client id
    /// and working directory: what a second replica of a deployment is. `extra_env` as for
    /// [`Penwarden::start`] (give both the same PENWARDEN_MQTT_SHARE_GROUP to split the fleet).
    pub async fn start_sharing(first: &Penwarden, extra_env: &[(&str, String)]) -> Penwarden {
        let dir = tempfile::tempdir().expect("tempdir");
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut env: Vec<(String, String)> = first
            .env
            .iter()
            .filter(|(key, _)| {
                !["PENWARDEN_GRPC_ADDR", "PENWARDEN_MQTT_CLIENT_ID", "PENWARDEN_METRICS_ADDR"].contains(&key.as_str())
            })
            .cloned()
            .collect();
        env.push(("PENWARDEN_GRPC_ADDR".into(), grpc_addr.to_string()));
        env.push(("PENWARDEN_MQTT_CLIENT_ID".into(), format!("penwarden-test-{}", grpc_addr.port())));
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let process = Self::spawn(&env, grpc_addr).await;
        Penwarden {
            grpc_addr,
            process,
            dir,
            admin_token: first.admin_token.clone(),
            env,
            scratch: first.scratch.clone(),
        }
    }

    /// The store URL this instance uses.
    pub fn store_url(&self) -> String {
        let url = self.env.iter().rev().find(|(key, _)| key == "PENWARDEN_DATABASE_URL").map(|(_, url)| url.clone());
        url.expect("every instance is given a store URL")
    }

    /// Creates an API key in this penwarden's store (as an operator would, with the CLI).
    pub fn create_api_key(&self, role: &str, scope: &str) -> String {
        create_api_key(&self.env, role, scope)
    }

    async fn spawn(env: &[(String, String)], grpc_addr: SocketAddr) -> Process {
        let mut command = Command::new(binary("penwarden"));
        command.arg("serve").envs(env.iter().map(|(k, v)| (k, v)));
        let mut process = Process::spawn("penwarden", &mut command);
        let (endpoint, tls) = grpc_client(env, grpc_addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(process.is_running(), "penwarden exited during start");
            if penwarden_proto::connect(&endpoint, &tls).await.is_ok() {
                return process;
            }
            assert!(Instant::now() < deadline, "penwarden did not open gRPC within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, then start again: what a crash and a supervisor do.
    pub async fn kill_and_restart(&mut self) {
        self.process.kill();
        self.process = Self::spawn(&self.env, self.grpc_addr).await;
    }

    /// Starts again after the process was stopped (same store, ports and client id).
    pub async fn restart(&mut self) {
        assert!(!self.process.is_running(), "restart only a stopped penwarden");
        self.process = Self::spawn(&self.env, self.grpc_addr).await;
    }

    /// SIGTERM (must exit 0: in-flight work finished and acked), then start again.
    pub async fn terminate_and_restart(&mut self) {
        let status = self.process.terminate(Duration::from_secs(30));
        assert!(status.success(), "penwarden exits 0 on SIGTERM, got {status}");
        self.process = Self::spawn(&self.env, self.grpc_addr).await;
    }

    /// `http://` or, when penwarden serves gRPC over TLS, `https://`.
    pub fn endpoint(&self) -> String {
        grpc_client(&self.env, self.grpc_addr).0
    }
}

/// How a client reaches this penwarden: its URL, and the TLS files the test gave among the
/// environment, under the names the CLI reads (PENWARDEN_GRPC_CA_FILE, _CERT_FILE, _KEY_FILE)
/// when the server's (PENWARDEN_GRPC_TLS_CERT_FILE) is set.
fn grpc_client(env: &[(String, String)], grpc_addr: SocketAddr) -> (String, penwarden_proto::ClientTlsFiles) {
    let get = |name: &str| env.iter().find(|(key, _)| key == name).map(|(_, value)| PathBuf::from(value));
    if get("PENWARDEN_GRPC_TLS_CERT_FILE").is_none() {
        return (format!("http://{grpc_addr}"), Default::default());
    }
    let tls = penwarden_proto::ClientTlsFiles {
        ca_file: get("PENWARDEN_GRPC_CA_FILE"),
        identity: get("PENWARDEN_GRPC_CERT_FILE").zip(get("PENWARDEN_GRPC_KEY_FILE")),
    };
    (format!("https://{grpc_addr}"), tls)
}

/// Runs `penwarden apikey create` against the store `env` names; returns the token.
fn create_api_key(env: &[(String, String)], role: &str, scope: &str) -> String {
    let output = std::process::Command::new(binary("penwarden"))
        .args(["apikey", "create", "--role", role, "--scope", scope, "--label", "tests"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run penwarden apikey create");
    assert!(output.status.success(), "apikey create failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 token").trim().to_owned()
}

/// A gRPC channel that sends an API key with every call.
pub type Authenticated =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, penwarden_proto::BearerToken>;

async fn api_channel(penwarden: &Penwarden, token: &str) -> (tonic::transport::Channel, penwarden_proto::BearerToken) {
    let (endpoint, tls) = grpc_client(&penwarden.env, penwarden.grpc_addr);
    let channel = penwarden_proto::connect(&endpoint, &tls).await.expect("connect to penwarden");
    (channel, penwarden_proto::BearerToken::new(token).expect("a header-safe token"))
}

impl Penwarden {
    /// Registers chain-a, its clinic-a, and `pens` (model SP-2) in it, with the admin key.
    pub async fn register_clinic_a_with(&self, pens: &[&str]) {
        use penwarden_proto::api::v1 as api;
        let mut fleet = self.fleet().await;
        let chain = api::RegisterChainRequest { chain_id: "chain-a".into(), name: "A".into() };
        fleet.register_chain(chain).await.expect("RegisterChain");
        let clinic =
            api::RegisterClinicRequest { clinic_id: "clinic-a".into(), chain_id: "chain-a".into(), name: "A1".into() };
        fleet.register_clinic(clinic).await.expect("RegisterClinic");
        for pen in pens {
            let request = api::RegisterPenRequest {
                pen_serial: pen.to_string(),
                clinic_id: "clinic-a".into(),
                model: "SP-2".into(),
                ..Default::default()
            };
            fleet.register_pen(request).await.expect("RegisterPen");
        }
    }

    /// A ComplianceService client with the admin key.
    pub async fn compliance(&self) -> ComplianceServiceClient<Authenticated> {
        self.compliance_as(&self.admin_token).await
    }

    pub async fn compliance_as(&self, token: &str) -> ComplianceServiceClient<Authenticated> {
        let (channel, token) = api_channel(self, token).await;
        ComplianceServiceClient::with_interceptor(channel, token)
    }

    /// A FleetService client with the admin key.
    pub async fn fleet(&self) -> FleetServiceClient<Authenticated> {
        self.fleet_as(&self.admin_token).await
    }

    pub async fn fleet_as(&self, token: &str) -> FleetServiceClient<Authenticated> {
        let (channel, token) = api_channel(self, token).await;
        FleetServiceClient::with_interceptor(channel, token)
    }

    pub async fn quarantine_as(&self, token: &str) -> QuarantineServiceClient<Authenticated> {
        let (channel, token) = api_channel(self, token).await;
        QuarantineServiceClient::with_interceptor(channel, token)
    }
}

/// Starts pensim in the background; finish it with [`finish_pensim`].
pub fn spawn_pensim(args: &[String]) -> tokio::process::Child {
    tokio::process::Command::new(binary("pensim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start pensim")
}

/// Waits for pensim and returns its JSON summary.
pub async fn finish_pensim(pensim: tokio::process::Child) -> serde_json::Value {
    let output = pensim.wait_with_output().await.expect("wait for pensim");
    assert!(output.status.success(), "pensim failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("pensim printed nothing");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("pensim summary {last:?}: {e}"))
}

/// Runs pensim to completion and returns its JSON summary.
pub async fn run_pensim(args: &[String]) -> serde_json::Value {
    finish_pensim(spawn_pensim(args)).await
}

/// Runs SQL on a store behind penwarden's back (a test breaking or tampering with it): the
/// statement for SQLite or the one for PostgreSQL, whichever the URL names.
pub async fn store_execute(url: &str, for_sqlite: &str, for_postgres: &str) {
    use sqlx::{ConnectOptions, Connection};
    if url.starts_with("sqlite:") {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("a sqlite: URL");
        let mut connection = options.connect().await.expect("open the store");
        sqlx::raw_sql(for_sqlite).execute(&mut connection).await.expect("run the statement");
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.expect("open the store");
        sqlx::raw_sql(for_postgres).execute(&mut connection).await.expect("run the statement");
    }
}

/// Reads a Prometheus endpoint and returns the value of an unlabelled metric.
pub async fn metric(addr: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A size-limited tmpfs mounted on a temporary directory (needs root), unmounted on drop.
pub struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// `None` when mounting is not permitted here.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }

    /// A TempDir inside the mount (for the store).
    pub fn subdir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.path()).expect("tempdir in tmpfs")
    }

    /// Fills the mount to the last byte with a file at `path`; removing it frees the space.
    pub fn fill(&self, path: &Path) {
        use std::io::Write;
        let mut file = std::fs::File::create(path).expect("create filler");
        for chunk in [1 << 20, 1 << 12, 1 << 9, 1] {
            let buffer = vec![0u8; chunk];
            while file.write_all(&buffer).is_ok() {}
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
            drop(dir);
        }
    }
}

/// MQTT options for a TLS client of 127.0.0.1:`port` (the broker's certificate names
/// 127.0.0.1), trusting `ca_file` and presenting `identity` if given.
pub fn tls_options(port: u16, ca_file: &Path, identity: Option<(&Path, &Path)>) -> rumqttc::MqttOptions {
    let files = penwarden_transport::ClientFiles {
        ca_file: ca_file.to_owned(),
        identity: identity.map(|(cert, key)| (cert.to_owned(), key.to_owned())),
    };
    let config = penwarden_transport::client_config(&files).expect("a TLS client configuration");
    let mut options = rumqttc::MqttOptions::new(format!("test-publisher-{}", free_port()), "127.0.0.1", port);
    options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)));
    options
}

/// Whether a client with `options` gets a CONNACK that accepts it within 10 s.
pub async fn connects(options: rumqttc::MqttOptions) -> bool {
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let first = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await;
    matches!(
        first,
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) if ack.code == rumqttc::ConnectReturnCode::Success
    )
}

/// Issues certificates with scripts/issue-certs.sh (`args` after the script's name).
pub fn issue_certs(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/issue-certs.sh");
    let output = Command::new(script).args(args).output().expect("run scripts/issue-certs.sh");
    assert!(output.status.success(), "issue-certs.sh {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A test MQTT publisher (QoS 1) that can wait until the broker has acknowledged everything.
pub struct Publisher {
    client: rumqttc::AsyncClient,
    published: u64,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _eventloop: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16) -> Publisher {
        Self::connect_with(port, None).await
    }

    /// Logs in as `user` (a pen's serial, on a broker configured like deploy/).
    pub async fn connect_as(port: u16, user: &str, password: &str) -> Publisher {
        Self::connect_with(port, Some((user, password))).await
    }

    /// Over TLS, trusting `ca_file` and presenting `identity` (certificate and key files).
    pub async fn connect_tls(port: u16, ca_file: &Path, identity: Option<(&Path, &Path)>) -> Publisher {
        let options = tls_options(port, ca_file, identity);
        Self::connect_options(options).await
    }

    async fn connect_with(port: u16, login: Option<(&str, &str)>) -> Publisher {
        let mut options = rumqttc::MqttOptions::new(format!("test-publisher-{}", free_port()), "127.0.0.1", port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        Self::connect_options(options).await
    }

    async fn connect_options(mut options: rumqttc::MqttOptions) -> Publisher {
        use rumqttc::{Event, Packet};
        // As large as MQTT allows: tests send oversized payloads on purpose.
        options.set_max_packet_size(268_435_460, 268_435_460);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1000);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = acked.clone();
        let eventloop = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Publisher { client, published: 0, acked, _eventloop: eventloop }
    }

    /// Publishes every message at QoS 1 without waiting between them (as fast as the client's
    /// in-flight window allows), then waits until the broker has acknowledged them all.
    pub async fn publish_burst(&mut self, messages: impl IntoIterator<Item = (String, Vec<u8>)>) {
        for (topic, payload) in messages {
            self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
            self.published += 1;
        }
        let (published, acked) = (self.published, self.acked.clone());
        wait_for("the broker to acknowledge a burst", Duration::from_secs(120), || {
            let acked = acked.clone();
            async move { (acked.load(std::sync::atomic::Ordering::Relaxed) >= published).then_some(()) }
        })
        .await;
    }

    /// Publishes at QoS 1; true if the broker acknowledged it within 5 s. For a publish the
    /// broker may refuse: an MQTT 3.1.1 broker refuses by dropping it (and perhaps the
    /// connection), which an ack does not rule out.
    pub async fn try_publish(&mut self, topic: &str, payload: Vec<u8>) -> bool {
        if self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.is_err() {
            return false;
        }
        self.published += 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.acked.load(std::sync::atomic::Ordering::Relaxed) >= self.published {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
        self.published += 1;
        let (published, acked) = (self.published, self.acked.clone());
        wait_for("the broker to acknowledge a publish", Duration::from_secs(10), || {
            let acked = acked.clone();
            async move { (acked.load(std::sync::atomic::Ordering::Relaxed) >= published).then_some(()) }
        })
        .await;
    }
}

/// Headless Chromium (Debian's `chromium`) driven over WebDriver by a chromedriver of the
/// test's own on a free loopback port, with a fresh profile. Chromedriver runs in a session
/// (and process group) of its own, away from any terminal, so that dropping the browser ends
/// Chromium too and nothing of it reaches the test's own group.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let chromedriver = require("chromedriver");
        let chromium = require("chromium");
        let port = free_port();
        let driver = Process::spawn(
            "chromedriver",
            // Not a group leader when started, setsid(1) makes it one in place: same pid.
            Command::new("setsid")
                .arg(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(30), || async {
            http_ok(&format!("{url}/status")).await.then_some(())
        })
        .await;
        let profile = tempfile::tempdir().expect("a profile dir");
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root in a container has no user namespace for Chromium's sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1440,1000",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else { unreachable!("an object") };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver starts a Chromium session: {e}"));
        Browser { client, driver, _profile: profile }
    }

    /// Ends the WebDriver session (Chromium exits), then chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.driver.terminate(Duration::from_secs(10));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium it started.
        if self.driver.is_running() {
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", self.driver.id())).status();
        }
    }
}

/// A session start whose cartridge is of a lot no manufacturer registered: CARTRIDGE_UNVERIFIED
/// as soon as it lands (and whatever else the pen's state makes it break). Published on
/// `pw/v1/pens/{pen}/events` at device time now.
pub fn unverified_session_start(pen: &str, session_id: &str, seq: u64) -> penwarden_proto::device::v1::PenEvent {
    use penwarden_proto::device::v1 as wire;
    let start = wire::SessionStarted {
        session_id: session_id.into(),
        cartridge_udi: format!("(01)09506000134352(17)301231(10)NOLOT(21){session_id}"),
        area: wire::TreatmentArea::Cheek as i32,
        depth_setting_mm: 0.5,
        ..Default::default()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    wire::PenEvent {
        schema_version: 1,
        pen_serial: pen.into(),
        seq,
        time_unix_ms: now,
        kind: Some(wire::pen_event::Kind::SessionStarted(start)),
    }
}
