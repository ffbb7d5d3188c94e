//! A counting TCP proxy on loopback: forwards a client to a server and counts the
//! ReadyForQuery messages the server sends — one per round trip of the extended or simple
//! protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct CountingProxy {
    pub(crate) port: u16,
    ready: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub(crate) async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ready = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&ready);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(("127.0.0.1", upstream_port))
                    .await
                    .unwrap();
                // No Nagle delays: they would add tens of milliseconds per round trip.
                client.set_nodelay(true).unwrap();
                server.set_nodelay(true).unwrap();
                let counter = Arc::clone(&counter);
                tokio::spawn(pump(client, server, counter));
            }
        });
        Self { port, ready, task }
    }

    /// ReadyForQuery messages seen so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.ready.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(client: TcpStream, server: TcpStream, ready: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async move {
        // The server's side is all typed messages (no TLS here): 1 type byte, 4 length bytes.
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Counted before the bytes go on: once the client has read a ReadyForQuery, the
            // count includes it (counting after forwarding raced the client's next read).
            pending.extend_from_slice(&buf[..n]);
            let mut at = 0;
            while pending.len() >= at + 5 {
                let len = u32::from_be_bytes(pending[at + 1..at + 5].try_into().unwrap()) as usize;
                if pending.len() < at + 1 + len {
                    break;
                }
                if pending[at] == b'Z' {
                    ready.fetch_add(1, Ordering::SeqCst);
                }
                at += 1 + len;
            }
            pending.drain(..at);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}
