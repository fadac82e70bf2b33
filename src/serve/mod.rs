//! `robusto serve`: a tus 1.0.0 server that checks every chunk's checksum and every whole file's
//! MD5, and stores durably.
//!
//! A request passes [`tus_layer`] (method override, `Tus-Resumable`, bearer token, CORS), is
//! routed to a thin handler in [`routes`], which checks headers with [`verify`] and acts through
//! [`uploads`] on a [`store::Store`]. Every failure is one [`error::ServeError`]; every 5xx
//! answer is logged once, by [`error::log_server_errors`]. Handlers and the functions of
//! [`uploads`] run in `tracing` spans carrying the upload id; a `tower_http` trace layer logs
//! each request and response at debug level. [`metrics`] counts what happens, for Prometheus.

pub mod auth;
pub mod concat;
pub mod digest;
pub mod error;
pub mod expiry;
pub mod in_process;
pub mod listen;
pub mod live;
pub mod metrics;
pub mod origin;
pub mod routes;
pub mod status;
pub mod store;
pub mod tls;
pub mod uploads;
pub mod verify;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header as http};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use tokio::net::TcpListener;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::{DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::protocol::{self, header};
use auth::Tokens;
use metrics::Metrics;
use store::Store;
use store::fs::FsStore;
use uploads::Uploads;

/// The server's validated options.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where uploads and published files live (`--data`).
    pub data: PathBuf,
    /// Largest upload accepted (`--max-size`); `None` for no limit.
    pub max_size: Option<u64>,
    /// Accepted bearer tokens (`--token-file`); empty for an open server.
    pub tokens: Tokens,
    /// How long an unfinished upload lives after its last chunk (`--expire-after`).
    pub expire_after: Duration,
    /// How long a request body may send nothing before it is given up (`--read-timeout`).
    pub read_timeout: Duration,
    /// Bytes per second a request body must keep up, over windows of `read_timeout`
    /// (`--min-rate`; 0 for none).
    pub min_rate: u64,
    /// Origins browsers may upload from (`--cors-origin`; `*` for any).
    pub cors_origins: Vec<String>,
    /// Hold the bytes of a checked chunk whose request was cut off, for the client to complete
    /// (`robusto-chunk-prefix`; off with `--no-chunk-prefix`).
    pub keep_prefixes: bool,
    /// Where to serve the metrics for Prometheus (`--metrics`); `None` for nowhere.
    pub metrics: Option<SocketAddr>,
    /// Where uploads are stored (`--store`): the fs store under `data`, or an S3 bucket.
    pub store: StoreChoice,
    /// Connection caps and the header timeout (`--max-connections`, `--max-connections-per-ip`,
    /// `--header-timeout`).
    pub limits: listen::Limits,
    /// A TLS-terminating proxy is in front (`--behind-proxy`): the URLs handed out take its
    /// `Forwarded` / `X-Forwarded-Proto` / `X-Forwarded-Host` (see [`origin`]).
    pub behind_proxy: bool,
}

/// The store a server runs on.
#[derive(Clone, Debug, Default)]
pub enum StoreChoice {
    /// Local disk under [`Config::data`] (the default).
    #[default]
    Fs,
    /// An S3-compatible bucket, shared by any number of nodes.
    S3(store::s3::S3Config),
}

impl Config {
    /// Defaults for a data directory: no size limit, no tokens, 7 days expiry, 60 s read timeout,
    /// connection caps from the descriptor limit (see [`listen::Limits`]).
    pub fn new(data: PathBuf) -> Self {
        Config {
            data,
            max_size: None,
            tokens: Tokens::default(),
            expire_after: Duration::from_secs(7 * 86_400),
            read_timeout: Duration::from_secs(60),
            min_rate: 1024,
            cors_origins: Vec::new(),
            keep_prefixes: true,
            metrics: None,
            store: StoreChoice::Fs,
            limits: listen::Limits::default(),
            behind_proxy: false,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Where uploads live.
    pub store: Arc<dyn Store>,
    /// The options.
    pub config: Arc<Config>,
    /// Locks and running digests.
    pub uploads: Arc<Uploads>,
    /// What the server counts (served by [`run_metrics`]).
    pub metrics: Arc<Metrics>,
    /// The certificate pair when serving TLS (`--tls-cert`, `--tls-key`); reload it with
    /// [`tls::Certificates::reload`].
    pub tls: Option<Arc<tls::Certificates>>,
}

impl AppState {
    /// State over the store `config` chooses: the fs store under `config.data`, or S3 (whose
    /// bucket must answer).
    pub async fn open(config: Config) -> io::Result<Self> {
        let store: Arc<dyn Store> = match &config.store {
            StoreChoice::Fs => Arc::new(FsStore::open(&config.data)?),
            StoreChoice::S3(s3) => Arc::new(
                store::s3::S3Store::open(s3)
                    .await
                    .map_err(|e| io::Error::other(crate::error_chain(&e)))?,
            ),
        };
        Ok(Self::with_store(config, store))
    }

    /// State over any store.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Self {
        AppState {
            store,
            config: Arc::new(config),
            uploads: Arc::new(Uploads::default()),
            metrics: Arc::new(Metrics::new()),
            tls: None,
        }
    }
}

/// The whole HTTP application: tus under `/files/`. Outermost, a trace layer logs every request
/// and response at debug level (default logs stay as they are); inside the tus layer, 5xx
/// answers are logged once with the upload id and the method.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route(
            "/files",
            post(routes::create).get(routes::list).options(routes::options),
        )
        .route(
            "/files/",
            post(routes::create).get(routes::list).options(routes::options),
        )
        .route(
            "/files/{id}",
            head(routes::head)
                .patch(routes::patch)
                .delete(routes::delete)
                .get(routes::download)
                .options(routes::options),
        )
        .route("/files/{id}/status", get(routes::status))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(error::log_server_errors))
        .with_state(state.clone());
    let trace = TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(Level::DEBUG))
        .on_request(DefaultOnRequest::new().level(Level::DEBUG))
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_failure(response_failed);
    // The layer sits outside the routing, so X-HTTP-Method-Override can change the route.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(state, tus_layer))
        .layer(trace)
}

/// The trace layer's word on a failed response: a 5xx status is logged by
/// [`error::log_server_errors`] already, so only a body that failed after its head was sent
/// is, at debug level.
fn response_failed(class: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    if let ServerErrorsFailureClass::Error(e) = class {
        tracing::debug!(?latency, "the response body failed: {e}");
    }
}

/// Serves the metrics (`GET /metrics`, Prometheus text format) on `listener`, logging its URL,
/// until the task is dropped.
pub async fn run_metrics(listener: TcpListener, state: AppState) -> io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!("metrics on http://{addr}/metrics");
    let app = metrics::router(Arc::clone(&state.metrics));
    listen::serve(listener, app, state.config.limits, None, std::future::pending()).await
}

/// Serves `router(state)` on `listener` until `shutdown` completes, under the connection caps
/// and header timeout of [`listen`], with the expiry sweeper running alongside, and the metrics
/// on `config.metrics` if set (see [`run_metrics`]). At shutdown, requests still streaming a body
/// give up (what they may keep is committed) and the server returns once every connection has
/// been answered.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let metrics = match state.config.metrics {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for metrics on {addr}: {e}")))?;
            Some(tokio::spawn(run_metrics(listener, state.clone())))
        }
        None => None,
    };
    let sweeper_state = state.clone();
    let sweeper = tokio::spawn(async move {
        let every = expiry::sweep_interval(sweeper_state.config.expire_after);
        loop {
            tokio::time::sleep(every).await;
            expiry::sweep(&sweeper_state).await;
        }
    });
    let uploads = Arc::clone(&state.uploads);
    let shutdown = async move {
        shutdown.await;
        // In-flight PATCHes end now rather than at their read timeout.
        uploads.cancel_all();
    };
    let limits = state.config.limits;
    let tls = match &state.tls {
        Some(certificates) => Some(certificates.acceptor().map_err(io::Error::other)?),
        None => None,
    };
    let result = listen::serve(listener, router(state), limits, tls, shutdown).await;
    sweeper.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    result
}

const CORS_ALLOW_HEADERS: &str = "Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, \
     Content-Type, Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, Upload-Defer-Length, \
     Upload-Concat, Upload-Checksum, Robusto-Chunk-Prefix, Repr-Digest, Want-Repr-Digest";
const CORS_EXPOSE_HEADERS: &str = "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, \
     Upload-Concat, Upload-Expires, Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, \
     Tus-Checksum-Algorithm, ETag, Content-Range, Robusto-Chunk-Prefix, Robusto-Chunk-Checksum, Repr-Digest";

/// The header names a preflight asks for (`Access-Control-Request-Headers`) that the tus
/// headers do not cover, e.g. a custom header a tus-js-client or Uppy application sets: an
/// allowed origin may send them. Only well-formed header names are taken.
fn requested_headers(headers: &HeaderMap) -> Option<String> {
    let known: Vec<String> = CORS_ALLOW_HEADERS
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let extra: Vec<String> = headers
        .get_all(http::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty() && h.len() <= 64 && http::HeaderName::from_bytes(h.as_bytes()).is_ok())
        .filter(|h| !known.contains(h))
        .take(32)
        .collect();
    (!extra.is_empty()).then(|| extra.join(", "))
}

fn allowed_origin(config: &Config, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(http::ORIGIN)?;
    let text = origin.to_str().ok()?;
    config
        .cors_origins
        .iter()
        .any(|o| o == "*" || o == text)
        .then(|| origin.clone())
}

/// What every request passes: X-HTTP-Method-Override, CORS, the `Tus-Resumable` check (412)
/// and the bearer token (401); every response carries `Tus-Resumable`.
pub async fn tus_layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(m) = req
        .headers()
        .get(header::METHOD_OVERRIDE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Method::from_bytes(v.trim().to_ascii_uppercase().as_bytes()).ok())
    {
        *req.method_mut() = m;
    }
    let origin = allowed_origin(&state.config, req.headers());
    let method = req.method().clone();
    let preflight = method == Method::OPTIONS && req.headers().contains_key(http::ACCESS_CONTROL_REQUEST_METHOD);
    let requested_headers = preflight.then(|| requested_headers(req.headers())).flatten();
    let mut response = if preflight && origin.is_some() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let checked = (|| {
            if method != Method::OPTIONS && method != Method::GET {
                verify::check_version(req.headers())?;
            }
            if method == Method::OPTIONS {
                Ok(uploads::Owner(None))
            } else {
                state.config.tokens.check(req.headers())
            }
        })();
        match checked {
            Ok(owner) => {
                req.extensions_mut().insert(owner);
                next.run(req).await
            }
            Err(e) => e.into_response(),
        }
    };
    let h = response.headers_mut();
    h.insert(header::TUS_RESUMABLE, HeaderValue::from_static(protocol::TUS_VERSION));
    if let Some(origin) = origin {
        h.insert(http::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(http::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            http::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE_HEADERS),
        );
        if preflight {
            h.insert(
                http::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, GET, HEAD, PATCH, DELETE, OPTIONS"),
            );
            let allow = match requested_headers {
                Some(extra) => HeaderValue::from_str(&format!("{CORS_ALLOW_HEADERS}, {extra}"))
                    .unwrap_or_else(|_| HeaderValue::from_static(CORS_ALLOW_HEADERS)),
                None => HeaderValue::from_static(CORS_ALLOW_HEADERS),
            };
            h.insert(http::ACCESS_CONTROL_ALLOW_HEADERS, allow);
            h.insert(http::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        }
    }
    response
}
