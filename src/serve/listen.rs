//! Accepting connections: the server's own accept loop, so that no client can hold the door.
//!
//! - A connection must deliver a request's headers within [`Limits::header_timeout`], and an idle
//!   keep-alive connection is closed after the same time; a body is guarded by the read timeout
//!   and minimum rate of [`super::verify::guarded_body`].
//! - At most [`Limits::max_connections`] connections are open at once, and at most
//!   [`Limits::max_per_address`] from one client address. A connection over either cap is
//!   answered `503 Service Unavailable` with `Retry-After` and closed, without reading it.
//! - When the process runs out of file descriptors, accepting pauses briefly and goes on; it never
//!   stops. [`raise_fd_limit`] lifts the soft descriptor limit to the hard one at start, and
//!   [`default_max_connections`] keeps the connection cap below what the limit allows.
//! - With TLS ([`super::tls`]), the handshake must also finish within the header timeout, and
//!   ALPN chooses HTTP/2 or HTTP/1.1.
//! - At shutdown the listener closes, idle connections end, and requests in flight are answered
//!   before [`serve`] returns.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What the accept loop allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// Connections open at once from one client address (`--max-connections-per-ip`).
    pub max_per_address: usize,
    /// Time a connection has to deliver a request's headers, and the longest a keep-alive
    /// connection may sit idle between requests (`--header-timeout`).
    pub header_timeout: Duration,
}

/// Descriptors kept for the server's own files (store, logs, listeners) whatever the cap.
const RESERVED_FDS: u64 = 64;
/// Descriptors one connection may use: its socket, and the data and record files of the upload
/// it writes.
const FDS_PER_CONNECTION: u64 = 3;
/// The largest default connection cap, however many descriptors the system allows.
const MAX_DEFAULT_CONNECTIONS: usize = 8192;
/// The default cap per client address, when the global cap is at least four times as large.
pub const DEFAULT_PER_ADDRESS: usize = 64;
/// The default header timeout.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Self {
        let max_connections = default_max_connections(fd_limit().unwrap_or(1024));
        Limits {
            max_connections,
            max_per_address: default_per_address(max_connections),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// The cap per client address for a global cap: 64, or a quarter of the global cap if that is
/// less, so that one address never fills the server.
pub fn default_per_address(max_connections: usize) -> usize {
    DEFAULT_PER_ADDRESS.min(max_connections / 4).max(1)
}

/// The connection cap that a soft descriptor limit of `fd_limit` leaves room for:
/// `(fd_limit - 64) / 3`, between 16 and 8192.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let fit = fd_limit.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_DEFAULT_CONNECTIONS)
}

/// The process's soft limit on open descriptors.
pub fn fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Raises the soft limit on open descriptors to the hard limit, and returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(lim.rlim_max);
    }
    Ok(lim.rlim_cur)
}

/// Open connections, in all and by client address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// A connection's place under the caps, given back when it closes.
struct Slot {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Slot {
    /// A place for a connection from `address`, or `None` when a cap is reached.
    fn take(open: &Arc<Mutex<Open>>, address: IpAddr, limits: &Limits) -> Option<Slot> {
        let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = o.by_address.get(&address).copied().unwrap_or(0);
        if o.total >= limits.max_connections || mine >= limits.max_per_address {
            return None;
        }
        o.total += 1;
        *o.by_address.entry(address).or_insert(0) += 1;
        Some(Slot {
            open: Arc::clone(open),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                o.by_address.remove(&self.address);
            }
        }
    }
}

/// What a connection over a cap is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain\r\n\
Content-Length: 40\r\nConnection: close\r\nTus-Resumable: 1.0.0\r\n\r\ntoo many connections: try again shortly\n";

/// Answers a connection over a cap without reading from it. The answer fits in any socket's
/// send buffer, so one write without waiting delivers it; the socket is closed at once after.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSED);
}

/// Accept errors that mean "out of descriptors or memory for now": accepting pauses, then goes on.
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// How long accepting pauses after running out of descriptors.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// How often at most a refused or failed accept is logged at warning level.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning logged at most once per [`WARN_EVERY`], with the count of what it stands for.
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled { last: None, since: 0 }
    }

    /// Counts one event; returns how many there were since the last warning when one is due.
    fn hit(&mut self) -> Option<u64> {
        self.since += 1;
        let due = self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        due.then(|| {
            self.last = Some(Instant::now());
            std::mem::take(&mut self.since)
        })
    }
}

/// Serves `app` on `listener` under `limits` (over TLS when `tls` is given) until `shutdown`
/// completes, then stops accepting, lets the connections finish what they are answering, and
/// returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Mutex::new(Open::default()));
    let mut refused = Throttled::new();
    let mut exhausted = Throttled::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_exhaustion(&e) => {
                if let Some(n) = exhausted.hit() {
                    tracing::warn!(
                        "cannot accept connections: {e} ({n} times); pausing, the limit is {} descriptors",
                        fd_limit().unwrap_or(0)
                    );
                }
                tokio::time::sleep(EXHAUSTED_PAUSE).await;
                continue;
            }
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                continue;
            }
        };
        let address = peer.ip().to_canonical();
        let Some(slot) = Slot::take(&open, address, &limits) else {
            if let Some(n) = refused.hit() {
                tracing::warn!(
                    "refused {n} connection(s) over the caps ({} in all, {} per address), the latest from {peer}",
                    limits.max_connections,
                    limits.max_per_address
                );
            }
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(&builder, stream, service, watcher, peer).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(&builder, stream, service, watcher, peer).await,
                    Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake with {peer} took longer than the header timeout"),
                },
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serves one connection (plain or TLS) until it ends, or until shutdown has let it finish.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!("connection from {peer} ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_the_descriptor_limit() {
        assert_eq!(default_max_connections(256), 64);
        assert_eq!(default_max_connections(1024), 320);
        assert_eq!(default_max_connections(10), 16);
        assert_eq!(default_max_connections(u64::MAX), 8192);
        assert_eq!(default_per_address(64), 16);
        assert_eq!(default_per_address(8192), 64);
        assert_eq!(default_per_address(2), 1);
    }

    #[test]
    fn slots_count_per_address_and_in_all() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = Limits {
            max_connections: 3,
            max_per_address: 2,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = Slot::take(&open, a, &limits).unwrap();
        let _a2 = Slot::take(&open, a, &limits).unwrap();
        assert!(Slot::take(&open, a, &limits).is_none(), "a third from one address");
        let _b1 = Slot::take(&open, b, &limits).unwrap();
        assert!(Slot::take(&open, b, &limits).is_none(), "a fourth in all");
        drop(a1);
        assert!(
            Slot::take(&open, b, &limits).is_some(),
            "a closed connection frees its place"
        );
    }
}
