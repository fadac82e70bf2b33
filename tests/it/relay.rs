//! A load balancer in miniature between HTTP/1.1 clients and servers on 127.0.0.1: each request
//! goes to the next upstream that accepts a connection (round robin, no sticky sessions), over
//! a connection of its own; the answer is relayed and the client's connection closed. A `drop`
//! rule can make it cut chosen requests before they reach the upstream (a node that dies with
//! the request unsent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Decides from a request's head (lowercased) whether to cut it instead of forwarding it.
pub type DropRule = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A running relay; stops when dropped.
pub struct RoundRobin {
    pub addr: SocketAddr,
    /// Requests sent to each upstream.
    pub counts: Arc<Vec<AtomicUsize>>,
    /// Requests cut by the drop rule.
    pub dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RoundRobin {
    pub async fn start(upstreams: Vec<SocketAddr>, drop: Option<DropRule>) -> RoundRobin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Vec<AtomicUsize>> = Arc::new(upstreams.iter().map(|_| AtomicUsize::new(0)).collect());
        let dropped = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let (c, d) = (counts.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (ups, next, counts, dropped, rule) =
                    (upstreams.clone(), next.clone(), c.clone(), d.clone(), drop.clone());
                tokio::spawn(async move {
                    let _ = relay(client, &ups, &next, &counts, &dropped, rule).await;
                });
            }
        });
        RoundRobin {
            addr,
            counts,
            dropped,
            task,
        }
    }

    /// The tus endpoint through the relay.
    pub fn endpoint(&self) -> String {
        format!("http://{}/files/", self.addr)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn relay(
    client: TcpStream,
    upstreams: &[SocketAddr],
    next: &AtomicUsize,
    counts: &[AtomicUsize],
    dropped: &AtomicUsize,
    rule: Option<DropRule>,
) -> std::io::Result<()> {
    let (r, mut w) = client.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut head = Vec::new();
    let mut text_head = String::new();
    let mut length = 0u64;
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
        text_head.push_str(&text);
        if let Some(v) = text.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if text.starts_with("connection:") {
            continue;
        }
        if text.trim().is_empty() {
            head.extend_from_slice(b"connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(&line);
    }
    if rule.is_some_and(|drop| drop(&text_head)) {
        dropped.fetch_add(1, Ordering::SeqCst);
        return Ok(()); // the connection closes with the request unanswered
    }
    let mut upstream = None;
    for _ in 0..upstreams.len() {
        let i = next.fetch_add(1, Ordering::SeqCst) % upstreams.len();
        if let Ok(s) = TcpStream::connect(upstreams[i]).await {
            counts[i].fetch_add(1, Ordering::SeqCst);
            upstream = Some(s);
            break;
        }
    }
    let Some(upstream) = upstream else {
        w.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
        return Ok(());
    };
    let (mut ur, mut uw) = upstream.into_split();
    uw.write_all(&head).await?;
    let mut body = (&mut r).take(length);
    tokio::io::copy(&mut body, &mut uw).await?;
    tokio::io::copy(&mut ur, &mut w).await?;
    w.shutdown().await?;
    Ok(())
}
