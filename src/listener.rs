//! The accept loop in front of tonic: a cap on open connections and a handshake deadline.
//!
//! A connection must deliver its opening bytes in full within the deadline: the 24-byte HTTP/2
//! preface, or with TLS the first TLS record (the ClientHello). Half-open, silent and trickling
//! clients are closed instead of holding a descriptor; connections beyond the cap are closed at
//! once. Both are counted. Accepted connections are handed to tonic in the order they qualify.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::Metrics;

/// Limits on connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Open connections; beyond, new ones are closed at once.
    pub max_connections: usize,
    /// How long a new connection may take to send its opening bytes.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A connection holding its place under the cap until it closes.
pub struct Conn {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// How many opening bytes a connection must have sent: the HTTP/2 preface, or the whole first
/// TLS record once its 5-byte header says how long it is. `None`: not known yet.
fn opening_len(peeked: &[u8], tls: bool) -> Option<usize> {
    if !tls {
        return Some(24);
    }
    if peeked.len() < 5 {
        return None;
    }
    Some(5 + usize::from(u16::from_be_bytes([peeked[3], peeked[4]])).min(16 * 1024))
}

async fn opening_bytes(io: &TcpStream, tls: bool) -> io::Result<bool> {
    let mut buf = vec![0u8; 5 + 16 * 1024];
    loop {
        let n = io.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if opening_len(&buf[..n], tls).is_some_and(|need| n >= need) {
            return Ok(true);
        }
        // Partial: wait a little for the rest (peek returns at once while data is buffered).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Accepts connections and yields those that qualify; runs until the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: bool,
    metrics: Arc<Metrics>,
) -> (
    mpsc::Receiver<io::Result<Conn>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(128);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let task = tokio::spawn(async move {
        loop {
            let (io, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics.connection_rejected("limit");
                drop(io);
                continue;
            };
            let _ = io.set_nodelay(true);
            let conn_tx = tx.clone();
            let metrics = metrics.clone();
            let deadline = limits.handshake_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(deadline, opening_bytes(&io, tls)).await {
                    Ok(Ok(true)) => {
                        let _ = conn_tx
                            .send(Ok(Conn {
                                io,
                                _permit: permit,
                            }))
                            .await;
                    }
                    Ok(Ok(false)) | Ok(Err(_)) => {}
                    Err(_) => metrics.connection_rejected("handshake_timeout"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_lengths() {
        assert_eq!(opening_len(b"", false), Some(24));
        assert_eq!(opening_len(&[0x16, 3, 1], true), None);
        assert_eq!(opening_len(&[0x16, 3, 1, 0x01, 0x00], true), Some(5 + 256));
        assert_eq!(
            opening_len(&[0x16, 3, 1, 0xff, 0xff], true),
            Some(5 + 16 * 1024)
        );
    }
}
