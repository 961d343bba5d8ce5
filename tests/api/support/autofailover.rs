//! A pg_auto_failover formation of the test's own (issue 19): a monitor, a primary and a
//! synchronous standby, each a `pg_autoctl` keeper with its PostgreSQL on a free port of
//! 127.0.0.1, in one temporary directory; removed on drop.
//!
//! This is the failover manager a deployment runs, not a failover by hand: the monitor decides
//! which node is primary, `pg_autoctl perform failover` demotes it (drain, stop, `pg_rewind`,
//! rejoin as standby) and promotes the other, and a node that disappears is failed over once the
//! monitor's health checks give up on it. By default pg_auto_failover replicates synchronously to
//! its standby (`synchronous_standby_names = 'ANY 1 (...)'`); [`Formation::start`] checks that.
//!
//! The monitor's timeouts are shortened (see [`MONITOR_SETTINGS`]) so that a lost primary is
//! failed over in seconds instead of the production defaults' ~30 s.
//!
//! Each keeper runs in a process group of its own: [`Formation::kill`] SIGKILLs the group, which
//! is the whole node gone at once (keeper, postmaster, backends), as when its machine dies.
//! [`Formation::kill_postmaster`] kills only the postmaster: its keeper starts it again, unless
//! the monitor fails the node over first.
//!
//! Needs `pg_autoctl` on the PATH (Debian's `postgresql-<major>-auto-failover`, installed by
//! `scripts/test`); without it [`Formation::start`] fails and says so. As root, everything runs as
//! the `postgres` OS user. Its configuration and state files go into the formation's directory
//! (`XDG_*_HOME`), never into a home directory.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

use super::cluster::server_bindir;
use super::free_port;
use super::process::{group_alive, signal_groups};

/// The monitor's health checks, tightened for a test: a node that stops answering is unhealthy
/// after ~2 s instead of ~20 s, and a primary that cannot be reached is considered demoted after
/// 3 s instead of 30 s. Safe here because a node the test kills is really gone; in production the
/// long `primary_demote_timeout` gives a partitioned old primary time to notice and stop itself.
const MONITOR_SETTINGS: &[&str] = &[
    "pgautofailover.health_check_period = 1000",
    "pgautofailover.health_check_timeout = 1000",
    "pgautofailover.health_check_retry_delay = 500",
    "pgautofailover.health_check_max_retries = 1",
    "pgautofailover.node_considered_unhealthy_timeout = 2000",
    "pgautofailover.primary_demote_timeout = 3000",
];
/// How long the formation may take to reach a steady primary and standby.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A monitor and two data nodes, stopped and deleted on drop.
pub struct Formation {
    dir: PathBuf,
    bindir: PathBuf,
    as_postgres: bool,
    monitor: Keeper,
    /// Node `i + 1` in the monitor's numbering.
    nodes: [Keeper; 2],
}

/// One `pg_autoctl` service and the PostgreSQL it manages.
struct Keeper {
    pgdata: PathBuf,
    port: u16,
    /// Its process group leader (`runuser` or `pg_autoctl`); `None` once killed.
    process: Option<Child>,
}

impl Formation {
    /// Creates the monitor, then node 1 (which becomes the primary), then node 2 (its standby, by
    /// base backup), and waits until both are steady and replication is synchronous.
    ///
    /// # Panics
    /// `pg_autoctl` or the server binaries are missing, or the formation does not settle within
    /// [`SETTLE_TIMEOUT`] (the message carries the keepers' logs).
    pub async fn start() -> Self {
        let bindir = server_bindir().unwrap_or_else(|e| panic!("{e}"));
        if Command::new("pg_autoctl").arg("--version").output().is_err() {
            panic!(
                "pg_autoctl is not on the PATH: the failover tests need pg_auto_failover \
                 (apt-get install postgresql-<major>-auto-failover; scripts/test installs it)"
            );
        }
        let dir = std::env::temp_dir().join(format!("ratchet-formation-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let as_postgres = std::fs::metadata(&dir).map(|m| m.uid() == 0).unwrap_or(false);
        if as_postgres {
            let chown = Command::new("chown").arg("postgres").arg(&dir).status();
            assert!(
                chown.is_ok_and(|s| s.success()),
                "cannot hand {} to the postgres user",
                dir.display()
            );
        }
        let keeper = |name: &str| Keeper {
            pgdata: dir.join(name),
            port: free_port(),
            process: None,
        };
        let mut formation = Self {
            monitor: keeper("monitor"),
            nodes: [keeper("node1"), keeper("node2")],
            dir,
            bindir,
            as_postgres,
        };

        let monitor = formation.monitor.pgdata.clone();
        let create = formation.create("monitor", &monitor, formation.monitor.port);
        formation.monitor.process = Some(formation.spawn("monitor", create));
        formation
            .settle("the monitor accepts connections", async |f| {
                f.monitor_state().await.is_ok()
            })
            .await;
        let mut monitor = PgConnection::connect_with(&formation.monitor_options()).await.unwrap();
        for setting in MONITOR_SETTINGS {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("alter system set {setting}")))
                .execute(&mut monitor)
                .await
                .unwrap();
        }
        sqlx::raw_sql("select pg_reload_conf()")
            .execute(&mut monitor)
            .await
            .unwrap();
        monitor.close().await.unwrap();

        for node in 0..2 {
            let (pgdata, port) = (formation.nodes[node].pgdata.clone(), formation.nodes[node].port);
            let mut create = formation.create("postgres", &pgdata, port);
            create.arg("--monitor").arg(formation.monitor_url());
            create.args(["--listen", "127.0.0.1", "--name", &format!("node{}", node + 1)]);
            formation.nodes[node].process = Some(formation.spawn(&format!("node{}", node + 1), create));
            if node == 0 {
                formation
                    .settle("node 1 runs as the single node", async |f| {
                        f.monitor_state()
                            .await
                            .is_ok_and(|s| s.first().is_some_and(|n| n.steady("single")))
                    })
                    .await;
            }
        }
        assert_eq!(formation.wait_steady().await, 0, "node 1 is the first primary");
        let mut primary = PgConnection::connect_with(&formation.options(0)).await.unwrap();
        let sync: String = sqlx::query_scalar("select sync_state from pg_stat_replication")
            .fetch_one(&mut primary)
            .await
            .unwrap();
        primary.close().await.unwrap();
        assert_eq!(
            sync, "quorum",
            "pg_auto_failover replicates synchronously to its standby"
        );
        // A standby whose primary restarted reconnects after `wal_retrieve_retry_interval`, and
        // until it does the primary's commits wait for it: a second, not the default five.
        for node in 0..2 {
            let mut connection = PgConnection::connect_with(&formation.options(node)).await.unwrap();
            for statement in [
                "alter system set wal_retrieve_retry_interval = '1s'",
                "select pg_reload_conf()",
            ] {
                sqlx::raw_sql(statement).execute(&mut connection).await.unwrap();
            }
            connection.close().await.unwrap();
        }
        formation
    }

    /// A multi-host `postgres://` URL naming both data nodes, for ratchet's `DATABASE_URL`. Node 2
    /// first: the first standby, so that from the start a connection must pass a standby by to
    /// find the primary, and again whenever node 1 is the primary.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?sslmode=disable",
            self.nodes[1].port, self.nodes[0].port
        )
    }

    /// Connection options for node `node`'s `postgres` database.
    pub fn options(&self, node: usize) -> PgConnectOptions {
        local_options(self.nodes[node].port)
    }

    /// Its temporary directory, for the test's own files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until one node is primary and the other its standby, both as the monitor assigned
    /// (after a failover: once the old primary has rejoined). Returns the primary's index.
    pub async fn wait_steady(&self) -> usize {
        self.settle("a steady primary and standby", async |f| {
            f.monitor_state().await.is_ok_and(|s| {
                s.len() == 2
                    && s.iter().filter(|n| n.steady("primary")).count() == 1
                    && s.iter().filter(|n| n.steady("secondary")).count() == 1
            })
        })
        .await;
        let state = self.monitor_state().await.unwrap();
        state.iter().position(|n| n.steady("primary")).unwrap()
    }

    /// Waits until node `node` accepts writes (it is not in recovery and not read-only), polling
    /// every 20 ms; returns when it first did.
    pub async fn wait_writable(&self, node: usize) -> Instant {
        self.settle(&format!("node {} accepts writes", node + 1), async |f| {
            f.writable(node).await
        })
        .await;
        Instant::now()
    }

    /// Every moment a node started accepting writes, polled every 20 ms until `done`, starting
    /// with neither node accepting them.
    pub async fn writable_since(&self, done: &AtomicBool) -> Vec<Instant> {
        let (mut was, mut turned) = ([false, false], Vec::new());
        while !done.load(Ordering::Relaxed) {
            for (node, was) in was.iter_mut().enumerate() {
                let now = self.writable(node).await;
                if now && !*was {
                    turned.push(Instant::now());
                }
                *was = now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        turned
    }

    /// Whether node `node` accepts writes now.
    pub async fn writable(&self, node: usize) -> bool {
        let Ok(mut connection) = PgConnection::connect_with(&self.options(node)).await else {
            return false;
        };
        let writable: Result<bool, _> =
            sqlx::query_scalar("select not pg_is_in_recovery() and current_setting('transaction_read_only') = 'off'")
                .fetch_one(&mut connection)
                .await;
        let _ = connection.close().await;
        writable.unwrap_or(false)
    }

    /// `pg_autoctl perform failover`: the monitor demotes the primary and promotes the standby;
    /// returns once it reports the failover done.
    pub async fn perform_failover(&self) {
        let mut command = self.pg_autoctl();
        command
            .args(["perform", "failover", "--pgdata"])
            .arg(&self.monitor.pgdata);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_autoctl perform failover failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// SIGKILL to node `node`'s whole process group: keeper, postmaster and backends vanish at
    /// once, as when its machine dies. Returns once they are gone.
    pub async fn kill(&mut self, node: usize) {
        let mut process = self.nodes[node].process.take().expect("the node is running");
        let group = i32::try_from(process.id()).unwrap();
        signal_groups("-KILL", &[group]);
        tokio::task::spawn_blocking(move || process.wait())
            .await
            .unwrap()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_alive(group) {
            assert!(Instant::now() < deadline, "the killed node's processes did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // As in `PrivateCluster::crash`: every process that had the data directory open is gone,
        // and a zombie postmaster reaped late would make the next start refuse.
        let _ = std::fs::remove_file(self.nodes[node].pgdata.join("postmaster.pid"));
    }

    /// SIGKILL to node `node`'s postmaster alone (its backends follow); returns once it is gone.
    /// Its keeper is left running: it starts PostgreSQL again (crash recovery), unless the
    /// monitor fails the node over first.
    pub async fn kill_postmaster(&self, node: usize) {
        let lock = std::fs::read_to_string(self.nodes[node].pgdata.join("postmaster.pid")).expect("the node runs");
        let postmaster: u32 = lock
            .lines()
            .next()
            .and_then(|pid| pid.trim().parse().ok())
            .expect("a pid");
        let killed = Command::new("kill").args(["-KILL", &postmaster.to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill the postmaster");
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(postmaster) {
            assert!(Instant::now() < deadline, "the killed postmaster did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `pg_autoctl run` for a killed node: it comes back, learns from the monitor that it was
    /// failed over, and rejoins as the new primary's standby (`pg_rewind`).
    pub fn restart(&mut self, node: usize) {
        let mut run = self.pg_autoctl();
        run.arg("run").arg("--pgdata").arg(&self.nodes[node].pgdata);
        self.nodes[node].process = Some(self.spawn(&format!("node{}", node + 1), run));
    }

    /// What the monitor says of each data node, in node order.
    async fn monitor_state(&self) -> Result<Vec<NodeState>, sqlx::Error> {
        let mut monitor = PgConnection::connect_with(&self.monitor_options()).await?;
        let state =
            sqlx::query_as("select reportedstate::text, goalstate::text from pgautofailover.node order by nodeid")
                .fetch_all(&mut monitor)
                .await;
        let _ = monitor.close().await;
        Ok(state?
            .into_iter()
            .map(|(reported, goal)| NodeState { reported, goal })
            .collect())
    }

    fn monitor_options(&self) -> PgConnectOptions {
        local_options(self.monitor.port).database("pg_auto_failover")
    }

    fn monitor_url(&self) -> String {
        format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.monitor.port
        )
    }

    /// Polls `check` every 20 ms until it holds, for at most [`SETTLE_TIMEOUT`].
    async fn settle<F: AsyncFn(&Self) -> bool>(&self, what: &str, check: F) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !check(self).await {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {SETTLE_TIMEOUT:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `pg_autoctl create <kind>` on a new data directory, trust authentication, no TLS (a test on
    /// loopback), running its service at once (`--run`).
    fn create(&self, kind: &str, pgdata: &Path, port: u16) -> Command {
        let mut command = self.pg_autoctl();
        command.args(["create", kind, "--pgdata"]).arg(pgdata);
        command.args(["--pgport", &port.to_string(), "--hostname", "127.0.0.1"]);
        command.args(["--auth", "trust", "--no-ssl", "--run", "--pgctl"]);
        command.arg(self.bindir.join("pg_ctl"));
        command
    }

    /// `pg_autoctl`, as the `postgres` OS user when we are root, with its files in our directory.
    fn pg_autoctl(&self) -> Command {
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--", "env"]);
            runuser
        } else {
            Command::new("env")
        };
        for (variable, sub) in [
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_DATA_HOME", "share"),
            ("XDG_RUNTIME_DIR", "run"),
        ] {
            command.arg(format!("{variable}={}", self.dir.join(sub).display()));
        }
        command.arg(format!("PG_CONFIG={}", self.bindir.join("pg_config").display()));
        command.arg("pg_autoctl").current_dir(&self.dir);
        command
    }

    /// Starts `command` in a process group of its own, its output to `<name>.log`.
    fn spawn(&self, name: &str, mut command: Command) -> Child {
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
    }

    /// The last lines of every keeper's log, for a failure message.
    fn logs(&self) -> String {
        ["monitor", "node1", "node2"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- {name}.log\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Formation {
    /// An immediate stop of every keeper (SIGQUIT: PostgreSQL's immediate shutdown, which
    /// pg_autoctl passes on), SIGKILL for whatever is left after 10 s, and the directory removed.
    /// Runs during a panic too, so it only reports.
    fn drop(&mut self) {
        let mut processes: Vec<Child> = self
            .nodes
            .iter_mut()
            .chain([&mut self.monitor])
            .filter_map(|keeper| keeper.process.take())
            .collect();
        let groups: Vec<i32> = processes.iter().map(|p| i32::try_from(p.id()).unwrap()).collect();
        signal_groups("-QUIT", &groups);
        let deadline = Instant::now() + Duration::from_secs(10);
        while groups.iter().any(|&g| group_alive(g)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_groups("-KILL", &groups);
        for process in &mut processes {
            let _ = process.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove the formation at {}: {e}", self.dir.display());
        }
    }
}

/// A node as the monitor sees it.
struct NodeState {
    reported: String,
    goal: String,
}

impl NodeState {
    /// It reported `state`, and that is what the monitor assigned it: not in a transition.
    fn steady(&self, state: &str) -> bool {
        self.reported == state && self.goal == state
    }
}

fn local_options(port: u16) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("postgres")
        .database("postgres")
        .ssl_mode(PgSslMode::Disable)
}

/// `pid` runs (zombies aside: a zombie holds no port and no files).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|end| stat[end + 1..].trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}
