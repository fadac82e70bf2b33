//! `serve`: the server's flags and the options they make.

use super::*;

/// `robusto serve`
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Without --token-file, keep it on 127.0.0.1; with it, on any other
    /// address, serve TLS (--tls-cert, --tls-key) or sit behind a TLS proxy (--behind-proxy).
    #[arg(long, default_value = "127.0.0.1:1080", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first); reloaded
    /// with the key on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A TLS-terminating reverse proxy is in front: allow --token-file off loopback without
    /// --tls-cert, and take the proxy's Forwarded / X-Forwarded-Proto / X-Forwarded-Host for the
    /// URLs handed out.
    #[arg(long)]
    pub behind_proxy: bool,
    /// Where uploads are kept (DIR/uploads) and completed files published (DIR/files).
    #[arg(long, default_value = "robusto-data", value_name = "DIR")]
    pub data: PathBuf,
    /// Largest upload accepted, e.g. 50GiB (default: no limit).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Bearer tokens, one per line; every request must carry one.
    #[arg(long, value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// Unfinished uploads are removed this long after their last chunk.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub expire_after: String,
    /// A request body that sends nothing for this long is given up.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub read_timeout: String,
    /// A request body slower than this per second, over a --read-timeout, is given up too
    /// (0 for no minimum).
    #[arg(long, default_value = "1KiB", value_name = "SIZE")]
    pub min_rate: String,
    /// A connection must send a request's headers within this time; an idle keep-alive
    /// connection is closed after it too.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub header_timeout: String,
    /// Connections open at once; more are answered 503 (default: what the descriptor limit
    /// leaves room for, (limit - 64) / 3, at most 8192).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address; more are answered 503 (default: 64,
    /// or a quarter of --max-connections if less).
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Let browsers at this origin upload (repeatable; * for any).
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Drop what arrived of a checked chunk whose connection was cut, instead of holding it
    /// for the client to complete (the robusto-chunk-prefix extension; plain tus then).
    #[arg(long)]
    pub no_chunk_prefix: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (default: none).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Where uploads are stored: fs (under --data) or s3 (a bucket several nodes share).
    #[arg(long, value_enum, default_value_t = StoreKind::Fs)]
    pub store: StoreKind,
    /// With --store s3: the bucket. Credentials come from AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY or the AWS profile files (AWS_PROFILE).
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// With --store s3: the endpoint, e.g. http://ceph-rgw:7480 (default: AWS in --s3-region).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// With --store s3: keep everything under this key prefix, e.g. backups/.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub s3_prefix: String,
    /// With --store s3: the region (default: AWS_REGION, the profile's region, us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// With --store s3: address the bucket as ENDPOINT/BUCKET (always so for an IP address).
    #[arg(long)]
    pub s3_path_style: bool,
}

/// `--store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    /// Local disk under --data.
    Fs,
    /// An S3-compatible bucket.
    S3,
}

impl ServeArgs {
    /// The TLS certificate and key files, when both are given.
    pub(crate) fn tls_files(&self) -> Option<robusto::serve::tls::TlsFiles> {
        Some(robusto::serve::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// The validated server options.
    pub(crate) fn to_config(&self) -> Result<robusto::serve::Config, UsageError> {
        use robusto::units::{parse_duration, parse_size};
        let usage = |flag: &str, e: &dyn std::fmt::Display| UsageError(format!("{flag}: {e}"));
        let mut config = robusto::serve::Config::new(self.data.clone());
        config.max_size = self
            .max_size
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| usage("--max-size", &e))?;
        config.expire_after = parse_duration(&self.expire_after).map_err(|e| usage("--expire-after", &e))?;
        config.read_timeout = parse_duration(&self.read_timeout).map_err(|e| usage("--read-timeout", &e))?;
        config.min_rate = parse_size(&self.min_rate).map_err(|e| usage("--min-rate", &e))?;
        if config.read_timeout.is_zero() {
            return Err(UsageError("--read-timeout must be more than 0".into()));
        }
        config.limits.header_timeout =
            parse_duration(&self.header_timeout).map_err(|e| usage("--header-timeout", &e))?;
        if config.limits.header_timeout.is_zero() {
            return Err(UsageError("--header-timeout must be more than 0".into()));
        }
        if let Some(n) = self.max_connections {
            config.limits.max_connections = n;
        }
        config.limits.max_per_address = self
            .max_connections_per_ip
            .unwrap_or_else(|| robusto::serve::listen::default_per_address(config.limits.max_connections));
        if config.limits.max_connections == 0 || config.limits.max_per_address == 0 {
            return Err(UsageError(
                "--max-connections and --max-connections-per-ip must be at least 1".into(),
            ));
        }
        if let Some(f) = &self.token_file {
            robusto::config::check_secret_file(f).map_err(|e| UsageError(format!("--token-file {e}")))?;
            config.tokens = robusto::serve::auth::Tokens::from_file(f)
                .map_err(|e| usage("--token-file", &format!("{}: {e}", f.display())))?;
            if config.tokens.is_empty() {
                return Err(UsageError(format!("--token-file: {} holds no token", f.display())));
            }
        }
        if !config.tokens.is_empty() && !self.listen.ip().is_loopback() && self.tls_cert.is_none() && !self.behind_proxy
        {
            return Err(UsageError(format!(
                "--token-file on {} without TLS would send every token in clear: add --tls-cert FILE --tls-key FILE, \
                 or --behind-proxy if a TLS-terminating proxy is in front",
                self.listen
            )));
        }
        config.behind_proxy = self.behind_proxy;
        config.cors_origins = self.cors_origin.clone();
        config.keep_prefixes = !self.no_chunk_prefix;
        config.metrics = self.metrics;
        config.store = match (self.store, &self.s3_bucket) {
            (StoreKind::Fs, None) => robusto::serve::StoreChoice::Fs,
            (StoreKind::Fs, Some(_)) => {
                return Err(UsageError("--s3-bucket needs --store s3".into()));
            }
            (StoreKind::S3, None) => return Err(UsageError("--store s3 needs --s3-bucket".into())),
            (StoreKind::S3, Some(bucket)) => {
                let s3 = robusto::serve::store::s3::S3Config::from_env(
                    bucket.clone(),
                    self.s3_endpoint.clone(),
                    self.s3_prefix.clone(),
                    self.s3_region.clone(),
                    self.s3_path_style,
                )
                .map_err(|e| usage("--store s3", &e))?;
                robusto::serve::StoreChoice::S3(s3)
            }
        };
        Ok(config)
    }
}
