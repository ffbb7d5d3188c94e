//! The real connector: tokio-postgres over TCP (rustls) or a Unix socket, and the connection
//! type it hands out, which tracks its own cleanliness.
//!
//! tokio-postgres does not expose the transaction status the server reports after every
//! statement, so [`PgConn`] keeps its own: statements run through its methods are counted while
//! in flight (a future dropped mid-statement leaves the count up), transactions opened with
//! [`PgConn::transaction`] are open until their commit or rollback completes, and anything the
//! pool cannot see — the raw client, simple-protocol batches, transaction control written as
//! SQL — marks the connection for a reset. A connection that needs one gets a bounded
//! `ROLLBACK` (after a CancelRequest when a statement was left in flight) before anyone else
//! sees it.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::Statement;

use crate::config::{SessionAttrs, SslMode};
use crate::conn::{CancelTarget, PgConn};
use crate::listen::Tap;
use crate::pool::ConnectError;
use crate::pool::{Connector, KillSwitch};
use crate::statements::{CacheCounters, CacheStats, StatementCache};
use crate::tls::{MakeRustls, TlsError};

mod probe;
pub use probe::{HostRole, Role};

/// What is reset on a connection that was used in ways the pool cannot see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetPolicy {
    /// Only the transaction state (`ROLLBACK`). Session state — `SET`, temporary tables,
    /// advisory locks, `LISTEN` — stays with the connection. Default.
    #[default]
    Rollback,
    /// `ROLLBACK` then `DISCARD ALL`, which also drops prepared statements, temporary tables,
    /// session settings, advisory locks and `LISTEN` registrations.
    DiscardAll,
}

/// How connections are opened (beyond the target itself).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// One handshake to one host (TCP, TLS, authentication). Default: 5 s.
    pub connect_timeout: Duration,
    /// `application_name` of every connection. Default: `pgwarden`.
    pub application_name: Option<String>,
    /// TCP keepalive idle time (tokio-postgres's own default is 2 h). Default: 30 s.
    pub keepalive_idle: Duration,
    /// What a reset does. Default: [`ResetPolicy::Rollback`].
    pub reset_policy: ResetPolicy,
    /// Prepared statements cached per connection (LRU); 0 disables the cache. Default: 1000.
    pub statement_cache_size: usize,
    /// Bound on each statement of a [`crate::PgTransaction`] (from [`PgConn::transaction`])
    /// and on its commit; on expiry the statement is cancelled on the server. (The manager's
    /// calls use [`crate::ManagerOptions::query_timeout`].) Default: 30 s.
    pub query_timeout: Duration,
    /// `DB_CONNECT_INIT_SQL`: SQL run on every new connection (simple protocol, several
    /// statements allowed), within the connect timeout; a failure is a connect failure.
    /// Default: none.
    pub init_sql: Option<String>,
    /// Code run on every new connection after `init_sql`; see [`crate::AfterConnect`].
    /// Default: none.
    pub after_connect: Option<crate::AfterConnect>,
    /// The application's check before each acquire hands a connection out; see
    /// [`crate::BeforeAcquire`]. Default: none.
    pub before_acquire: Option<crate::BeforeAcquire>,
    /// The application's decision on each connection coming back; see
    /// [`crate::AfterRelease`]. Default: none.
    pub after_release: Option<crate::AfterRelease>,
    /// libpq's `target_session_attrs`, all six values (see [`SessionAttrs`]); `None` takes the
    /// tokio-postgres configuration's own (any, read-write or read-only). Set from the
    /// target by [`PgConnector::for_target`]. Default: `None`.
    pub target_session_attrs: Option<SessionAttrs>,
}

impl Default for ConnectOptions {
    /// The development profile's connect timeout, application name and cache size.
    fn default() -> Self {
        // One source of defaults: the configuration's development profile.
        let p = crate::config::Profile::Development;
        let pool = crate::config::PoolConfig::for_profile(p);
        let query = crate::config::QueryConfig::for_profile(p);
        Self {
            connect_timeout: pool.connect_timeout,
            application_name: Some(pool.application_name),
            keepalive_idle: Duration::from_secs(30),
            reset_policy: ResetPolicy::Rollback,
            statement_cache_size: query.statement_cache_size,
            query_timeout: query.query_timeout,
            init_sql: pool.connect_init_sql,
            after_connect: None,
            before_acquire: None,
            after_release: None,
            target_session_attrs: None,
        }
    }
}

struct HostTarget {
    label: String,
    config: tokio_postgres::Config,
    cancel: CancelTarget,
}

/// Opens tokio-postgres connections to one target, trying its hosts in turn, each within the
/// connect timeout.
pub struct PgConnector {
    hosts: Vec<HostTarget>,
    tls: MakeRustls,
    opts: ConnectOptions,
    cache_counters: Arc<CacheCounters>,
    /// The host tried first: the one the role probe last found read-write (see
    /// [`PgConnector::prefer_host`]).
    preferred: AtomicUsize,
    /// Which hosts a connection may use, checked after each handshake.
    attrs: SessionAttrs,
}

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("target", &self.target())
            .finish_non_exhaustive()
    }
}

impl PgConnector {
    /// A connector for `pg` (its own `sslmode` is ignored: `ssl_mode` decides).
    ///
    /// # Errors
    /// When the TLS settings cannot be honoured (verify-* without a usable root certificate).
    pub fn new(
        pg: &tokio_postgres::Config,
        ssl_mode: SslMode,
        root_cert: Option<&Path>,
        opts: ConnectOptions,
    ) -> Result<Self, TlsError> {
        let tls = MakeRustls::new(ssl_mode, root_cert)?;
        let hosts = split_hosts(pg, ssl_mode, &opts);
        let attrs = opts
            .target_session_attrs
            .unwrap_or_else(|| SessionAttrs::from_pg(pg.get_target_session_attrs()));
        Ok(Self {
            hosts,
            tls,
            opts,
            cache_counters: Arc::default(),
            preferred: AtomicUsize::new(0),
            attrs,
        })
    }

    /// Statement cache counters of every connection this connector opened.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache_counters.snapshot()
    }

    fn new_cache(&self) -> Mutex<StatementCache<Statement>> {
        Mutex::new(StatementCache::new(
            self.opts.statement_cache_size,
            Arc::clone(&self.cache_counters),
        ))
    }

    /// The `target_session_attrs` this connector enforces.
    pub fn session_attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// The options.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// Makes host `index` the first one tried by later connects (the others follow in their
    /// order), so a multi-host target follows its read-write host instead of sticking to the
    /// first host listed. Returns the previous choice.
    pub fn prefer_host(&self, index: usize) -> usize {
        let index = index.min(self.hosts.len().saturating_sub(1));
        self.preferred.swap(index, Ordering::Relaxed)
    }
}

/// One tokio-postgres config per host, so each host gets the whole connect timeout for its
/// whole handshake (tokio-postgres's own timeout covers only the TCP connect).
fn split_hosts(
    pg: &tokio_postgres::Config,
    ssl_mode: SslMode,
    opts: &ConnectOptions,
) -> Vec<HostTarget> {
    let hosts = pg.get_hosts();
    let ports = pg.get_ports();
    let hostaddrs = pg.get_hostaddrs();
    let n = hosts.len().max(hostaddrs.len()).max(1);
    (0..n)
        .map(|i| {
            let mut c = tokio_postgres::Config::new();
            if let Some(u) = pg.get_user() {
                c.user(u);
            }
            if let Some(p) = pg.get_password() {
                c.password(p);
            }
            if let Some(d) = pg.get_dbname() {
                c.dbname(d);
            }
            if let Some(o) = pg.get_options() {
                c.options(o);
            }
            match (&opts.application_name, pg.get_application_name()) {
                (Some(name), _) => {
                    c.application_name(name);
                }
                (None, Some(name)) => {
                    c.application_name(name);
                }
                (None, None) => {}
            }
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            let (label, unix, mut cancel) = match hosts.get(i) {
                Some(Host::Tcp(h)) => {
                    c.host(h);
                    let cancel = CancelTarget::Tcp {
                        host: h.clone(),
                        port,
                    };
                    (format!("{h}:{port}"), false, cancel)
                }
                Some(Host::Unix(p)) => {
                    c.host_path(p);
                    let path = p.join(format!(".s.PGSQL.{port}"));
                    (
                        path.display().to_string(),
                        true,
                        CancelTarget::Unix { path },
                    )
                }
                None => (
                    String::from("?"),
                    false,
                    CancelTarget::Tcp {
                        host: String::new(),
                        port,
                    },
                ),
            };
            let label = match hostaddrs.get(i) {
                Some(addr) => {
                    c.hostaddr(*addr);
                    if let CancelTarget::Tcp { host, .. } = &mut cancel {
                        *host = addr.to_string();
                    }
                    if hosts.is_empty() {
                        format!("{addr}:{port}")
                    } else {
                        label
                    }
                }
                None => label,
            };
            c.port(port);
            // TLS is never attempted over a Unix socket (as libpq).
            c.ssl_mode(if unix {
                tokio_postgres::config::SslMode::Disable
            } else {
                MakeRustls::pg_mode(ssl_mode)
            });
            c.connect_timeout(opts.connect_timeout);
            c.keepalives(true);
            c.keepalives_idle(opts.keepalive_idle);
            c.keepalives_interval(Duration::from_secs(10));
            c.keepalives_retries(3);
            // The connector checks the role itself, for all six of libpq's values.
            c.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
            c.channel_binding(pg.get_channel_binding());
            let db = pg.get_dbname().unwrap_or("");
            HostTarget {
                label: format!("{label}/{db}"),
                config: c,
                cancel,
            }
        })
        .collect()
}

impl PgConnector {
    /// One handshake to one host, then (unless `need` is `any`) its role, which must suit
    /// `need`. A host that does not is closed and reported as a transient failure: roles
    /// change on failover.
    async fn connect_host(
        &self,
        h: &HostTarget,
        need: SessionAttrs,
        tap: Option<&Tap>,
    ) -> Result<PgConn, ConnectError> {
        let (client, connection) = h
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| ConnectError::from_pg(&h.label, &e))?;
        let driver = tokio::spawn(drive(connection, h.label.clone(), tap.cloned()));
        if need.checks_role() {
            let role = async {
                let row = client.query_one(probe::PROBE_SQL, &[]).await?;
                Ok::<_, tokio_postgres::Error>((
                    row.try_get::<_, bool>(0)?,
                    row.try_get::<_, String>(1)? == "on",
                ))
            }
            .await;
            let refused = match role {
                Ok((in_recovery, read_only)) if need.accepts(in_recovery, read_only) => None,
                Ok((in_recovery, read_only)) => Some(ConnectError::transient(
                    &h.label,
                    format!(
                        "the server is {} (target_session_attrs={})",
                        match (in_recovery, read_only) {
                            (true, _) => "a standby in recovery",
                            (false, true) => "a primary with read-only sessions",
                            (false, false) => "a read-write primary",
                        },
                        self.attrs
                    ),
                )),
                Err(e) => Some(ConnectError::from_pg(&h.label, &e)),
            };
            if let Some(e) = refused {
                drop(client);
                driver.abort();
                return Err(e);
            }
        }
        Ok(PgConn::new(
            client,
            driver.abort_handle(),
            self.tls.clone(),
            h.cancel.clone(),
            self.new_cache(),
            self.opts.query_timeout,
        ))
    }
}

/// Drives one connection: its socket, and — for a listener's connection — the notifications
/// the server sends between statements, which go to `tap` (tokio-postgres delivers them only
/// through `poll_message`; awaiting the connection as a future drops them).
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    label: String,
    tap: Option<Tap>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(tap) = tap else {
        if let Err(e) = connection.await {
            tracing::debug!(target = %label, error = %e, "connection ended with an error");
        }
        return;
    };
    let reason = loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => tap.deliver(n),
            // Notices (warnings the server sends outside a statement) carry nothing to act on.
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => break String::from("the connection was closed"),
        }
    };
    tracing::debug!(target = %label, reason = %reason, "listener connection ended");
    // Dropped before the signal, so the client reads as closed when the listener wakes.
    drop(connection);
    tap.ended(reason);
}

impl PgConnector {
    /// A connection whose notifications go to `tap` (a listener's): the same hosts, TLS,
    /// role check and connect hooks as the pool's connections, opened outside the pool.
    pub(crate) async fn connect_tapped(&self, tap: &Tap) -> Result<PgConn, ConnectError> {
        self.connect_with(Some(tap)).await
    }

    async fn connect_with(&self, tap: Option<&Tap>) -> Result<PgConn, ConnectError> {
        let mut last = None;
        let first = self.preferred.load(Ordering::Relaxed).min(self.hosts.len());
        let (tail, head) = self.hosts.split_at(first);
        // As libpq: prefer-standby makes a second pass, accepting any host, when no host
        // was a standby.
        for &need in self.attrs.passes() {
            for h in head.iter().chain(tail) {
                let attempt = tokio::time::timeout(
                    self.opts.connect_timeout,
                    self.connect_host(h, need, tap),
                )
                .await;
                match attempt {
                    Ok(Ok(conn)) => {
                        // Checked once: a connector without hooks pays nothing more.
                        if self.opts.init_sql.is_some() || self.opts.after_connect.is_some() {
                            // Cancellation safety: on failure (or if this future is dropped)
                            // the connection is dropped here, which closes it.
                            let o = &self.opts;
                            let (sql, hook) = (o.init_sql.as_deref(), o.after_connect.as_ref());
                            crate::hooks::after_connect(
                                sql,
                                hook,
                                o.connect_timeout,
                                &conn,
                                &h.label,
                            )
                            .await?;
                        }
                        return Ok(conn);
                    }
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => {
                        last = Some(ConnectError::transient(
                            &h.label,
                            format!(
                                "handshake timed out after {}ms (DB_CONNECT_TIMEOUT)",
                                self.opts.connect_timeout.as_millis()
                            ),
                        ));
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::permanent("?", "no host to connect to")))
    }
}

impl Connector for PgConnector {
    type Conn = PgConn;

    async fn connect(&self) -> Result<PgConn, ConnectError> {
        self.connect_with(None).await
    }

    fn hosts(&self) -> u32 {
        self.hosts.len() as u32
    }

    fn target(&self) -> String {
        self.hosts
            .iter()
            .map(|h| h.label.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn is_closed(&self, conn: &PgConn) -> bool {
        conn.is_closed()
    }

    fn needs_reset(&self, conn: &PgConn) -> bool {
        // With an after-release hook every release goes to the worker, which runs it in
        // `reset`.
        conn.needs_reset() || self.opts.after_release.is_some()
    }

    fn has_acquire_check(&self) -> bool {
        self.opts.before_acquire.is_some()
    }

    async fn before_acquire<'a>(&'a self, conn: &'a PgConn) -> Result<bool, ConnectError> {
        match &self.opts.before_acquire {
            Some(hook) => crate::hooks::before_acquire(hook, conn, &self.target()).await,
            None => Ok(true),
        }
    }

    async fn validate<'a>(&'a self, conn: &'a PgConn) -> Result<(), ConnectError> {
        conn.ping()
            .await
            .map_err(|e| ConnectError::from_pg(self.target(), &e))
    }

    async fn reset<'a>(&'a self, conn: &'a PgConn) -> Result<(), ConnectError> {
        if let Some(hook) = &self.opts.after_release {
            let discard_all = self.opts.reset_policy == ResetPolicy::DiscardAll;
            return crate::hooks::after_release(hook, conn, &self.target(), discard_all).await;
        }
        conn.reset_session(self.opts.reset_policy == ResetPolicy::DiscardAll)
            .await
            .map_err(|e| ConnectError::transient(self.target(), e))
    }

    fn kill(&self, conn: &PgConn) -> KillSwitch {
        conn.kill_switch()
    }
}
