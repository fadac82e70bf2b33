//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1:0 between a tus client and a server: it cuts
//! connections every N body bytes, flips one bit in a chosen PATCH body, stalls a PATCH longer
//! than the client's stall timeout, answers 503 instead of the server, slows the link down, and
//! logs every PATCH (offset, length, answer) and every body byte it carried.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The faults to inject; change them at any time through [`Proxy::faults`].
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Cut the connection each time this many more PATCH body bytes have passed.
    pub cut_every: Option<u64>,
    /// Cuts still allowed (`None`: unlimited).
    pub cuts_left: Option<u32>,
    /// PATCH numbers (from 0) whose body gets one bit flipped.
    pub flip_patches: BTreeSet<usize>,
    /// PATCH numbers stalled (half the body forwarded, then silence) for `stall_for`.
    pub stall_patches: BTreeSet<usize>,
    /// How long a stalled PATCH hangs before the proxy drops it.
    pub stall_for: Duration,
    /// PATCH numbers answered 503 by the proxy instead of the server.
    pub fail_patches: BTreeSet<usize>,
    /// Answer every request 503.
    pub fail_all: bool,
    /// Sleep this long per 64 KiB of body (a slow link).
    pub delay_per_64k: Option<Duration>,
    /// Replace `Tus-Extension` in OPTIONS answers (and drop `Tus-Checksum-Algorithm`): a server
    /// that announces less.
    pub announce: Option<String>,
}

/// One PATCH as the proxy saw it.
#[derive(Clone, Debug)]
pub struct PatchRecord {
    /// The upload's path.
    pub path: String,
    /// `Upload-Offset` sent.
    pub offset: u64,
    /// `Content-Length` sent.
    pub len: u64,
    /// The status answered (none if the connection died first).
    pub status: Option<u16>,
    /// `Upload-Offset` answered.
    pub new_offset: Option<u64>,
    /// `Upload-Checksum` sent.
    pub checksum: Option<String>,
    /// `Robusto-Chunk-Prefix` sent: the held bytes the body continues.
    pub prefix: Option<u64>,
}

/// What passed through.
#[derive(Debug, Default)]
pub struct Log {
    /// Every PATCH, in order of arrival.
    pub patches: Mutex<Vec<PatchRecord>>,
    /// Request body bytes read from clients (PATCH and POST).
    pub body_bytes: AtomicU64,
    /// Faults injected.
    pub faults: AtomicU64,
    cut_counter: AtomicU64,
}

impl Log {
    /// A copy of the PATCH log.
    pub fn patches(&self) -> Vec<PatchRecord> {
        self.patches.lock().unwrap().clone()
    }

    /// Checks that no PATCH started below an offset the server had already acknowledged for the
    /// same upload: acknowledged chunks are never sent again.
    pub fn assert_no_acked_resend(&self) {
        let mut acked: std::collections::HashMap<String, u64> = Default::default();
        for p in self.patches() {
            let high = acked.entry(p.path.clone()).or_default();
            assert!(
                p.offset >= *high,
                "PATCH {} at offset {} resends bytes the server acknowledged up to {}",
                p.path,
                p.offset,
                high
            );
            if matches!(p.status, Some(200..=299))
                && let Some(n) = p.new_offset
            {
                *high = (*high).max(n);
            }
        }
    }
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where the proxy forwards to (a restarted server may listen elsewhere).
    pub upstream: Arc<Mutex<SocketAddr>>,
    /// The faults in force.
    pub faults: Arc<Mutex<Faults>>,
    /// What passed.
    pub log: Arc<Log>,
    patch_counter: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` on the current tokio runtime.
    pub async fn start(upstream: SocketAddr, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let faults = Arc::new(Mutex::new(faults));
        let log = Arc::new(Log::default());
        let patch_counter = Arc::new(AtomicU64::new(0));
        let upstream = Arc::new(Mutex::new(upstream));
        let (f, l, c, u) = (faults.clone(), log.clone(), patch_counter.clone(), upstream.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (f, l, c) = (f.clone(), l.clone(), c.clone());
                let to = *u.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(to).await {
                        let _ = serve_connection(client, server, f, l, c).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            upstream,
            faults,
            log,
            patch_counter,
            task,
        }
    }

    /// The endpoint URL through the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}/files/", self.addr)
    }

    /// Forwards new connections to `to` from now on.
    pub fn set_upstream(&self, to: SocketAddr) {
        *self.upstream.lock().unwrap() = to;
    }

    /// Changes the faults.
    pub fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().unwrap());
    }
}

/// A request or response head.
struct Head {
    raw: Vec<u8>,
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn u64(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(|v| v.trim().parse().ok())
    }
}

async fn read_head(r: &mut BufReader<OwnedReadHalf>) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut first = String::new();
    let mut headers = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            if first.is_empty() {
                continue;
            }
            return Ok(Some(Head { raw, first, headers }));
        }
        if first.is_empty() {
            first = text;
        } else if let Some((k, v)) = text.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

enum BodyEnd {
    Done,
    Cut,
}

async fn serve_connection(
    client: TcpStream,
    server: TcpStream,
    faults: Arc<Mutex<Faults>>,
    log: Arc<Log>,
    patch_counter: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (cr, mut cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    let mut cr = BufReader::new(cr);
    let mut sr = BufReader::new(sr);
    loop {
        let Some(req) = read_head(&mut cr).await? else {
            return Ok(());
        };
        let mut parts = req.first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let len = req.u64("content-length").unwrap_or(0);
        let f = faults.lock().unwrap().clone();
        let patch_no = (method == "PATCH").then(|| patch_counter.fetch_add(1, Ordering::SeqCst) as usize);
        let record = patch_no.map(|_| {
            let mut p = log.patches.lock().unwrap();
            p.push(PatchRecord {
                path: path.clone(),
                offset: req.u64("upload-offset").unwrap_or(0),
                len,
                status: None,
                new_offset: None,
                checksum: req.get("upload-checksum").map(str::to_string),
                prefix: req.u64("robusto-chunk-prefix"),
            });
            p.len() - 1
        });
        let set_status = |status: u16, new_offset: Option<u64>| {
            if let Some(i) = record {
                let mut p = log.patches.lock().unwrap();
                p[i].status = Some(status);
                p[i].new_offset = new_offset;
            }
        };

        if f.fail_all || patch_no.is_some_and(|n| f.fail_patches.contains(&n)) {
            let mut left = len;
            let mut buf = vec![0u8; 64 << 10];
            while left > 0 {
                let n = cr.read(&mut buf[..left.min(65536) as usize]).await?;
                if n == 0 {
                    return Ok(());
                }
                log.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
                left -= n as u64;
            }
            log.faults.fetch_add(1, Ordering::Relaxed);
            set_status(503, None);
            cw.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        }

        sw.write_all(&req.raw).await?;
        let stall = patch_no.is_some_and(|n| f.stall_patches.contains(&n));
        let flip = patch_no.is_some_and(|n| f.flip_patches.contains(&n));
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        let mut end = BodyEnd::Done;
        while sent < len {
            let want = (len - sent).min(buf.len() as u64) as usize;
            let want = if stall {
                want.min((len / 2 - sent.min(len / 2)).max(1) as usize)
            } else {
                want
            };
            // A link that breaks after N bytes carries no byte past them: read up to the cut.
            let want = match f.cut_every {
                Some(every) if patch_no.is_some() && f.cuts_left.is_none_or(|c| c > 0) => {
                    let carried = log.cut_counter.load(Ordering::SeqCst);
                    want.min(every.saturating_sub(carried).max(1) as usize)
                }
                _ => want,
            };
            let n = cr.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(());
            }
            log.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
            let piece = &mut buf[..n];
            if flip && sent <= len / 2 && len / 2 < sent + n as u64 {
                piece[(len / 2 - sent) as usize] ^= 0x10;
                log.faults.fetch_add(1, Ordering::Relaxed);
            }
            let mut n_fwd = n;
            if patch_no.is_some()
                && let Some(every) = f.cut_every
                && f.cuts_left.is_none_or(|c| c > 0)
            {
                let before = log.cut_counter.fetch_add(n as u64, Ordering::SeqCst);
                if before + n as u64 >= every {
                    n_fwd = (every - before.min(every)) as usize;
                    log.cut_counter.store(0, Ordering::SeqCst);
                    log.faults.fetch_add(1, Ordering::Relaxed);
                    let mut fl = faults.lock().unwrap();
                    if let Some(c) = fl.cuts_left.as_mut() {
                        *c = c.saturating_sub(1);
                    }
                    end = BodyEnd::Cut;
                }
            }
            sw.write_all(&piece[..n_fwd]).await?;
            sent += n as u64;
            if let Some(d) = f.delay_per_64k {
                tokio::time::sleep(d.mul_f64(n as f64 / 65536.0)).await;
            }
            if matches!(end, BodyEnd::Cut) {
                return Ok(());
            }
            if stall && sent >= len / 2 {
                log.faults.fetch_add(1, Ordering::Relaxed);
                drop(sw);
                tokio::time::sleep(f.stall_for).await;
                return Ok(());
            }
        }

        let Some(resp) = read_head(&mut sr).await? else {
            return Ok(());
        };
        let status: u16 = resp.first.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        set_status(status, resp.u64("upload-offset"));
        match (&f.announce, method.as_str()) {
            (Some(ext), "OPTIONS") => {
                let mut raw = format!("{}\r\n", resp.first);
                for (k, v) in &resp.headers {
                    if k.eq_ignore_ascii_case("tus-checksum-algorithm") {
                        continue;
                    }
                    let v = if k.eq_ignore_ascii_case("tus-extension") {
                        ext
                    } else {
                        v
                    };
                    raw.push_str(&format!("{k}: {v}\r\n"));
                }
                raw.push_str("\r\n");
                cw.write_all(raw.as_bytes()).await?;
            }
            _ => cw.write_all(&resp.raw).await?,
        }
        let no_body = method == "HEAD" || status == 204 || status == 304 || status < 200;
        if !no_body {
            if resp
                .get("transfer-encoding")
                .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
            {
                relay_chunked(&mut sr, &mut cw).await?;
            } else if let Some(n) = resp.u64("content-length") {
                relay(&mut sr, &mut cw, n).await?;
            } else {
                tokio::io::copy(&mut sr, &mut cw).await?;
                return Ok(());
            }
        }
        let close = |h: &Head| h.get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if close(&req) || close(&resp) {
            return Ok(());
        }
    }
}

async fn relay(r: &mut BufReader<OwnedReadHalf>, w: &mut OwnedWriteHalf, mut n: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    while n > 0 {
        let k = r.read(&mut buf[..n.min(65536) as usize]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        w.write_all(&buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

async fn relay_chunked(r: &mut BufReader<OwnedReadHalf>, w: &mut OwnedWriteHalf) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await?;
        w.write_all(&line).await?;
        let text = String::from_utf8_lossy(&line);
        let size = u64::from_str_radix(text.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t).await? == 0 {
                    return Ok(());
                }
                w.write_all(&t).await?;
                if t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        relay(r, w, size + 2).await?;
    }
}
