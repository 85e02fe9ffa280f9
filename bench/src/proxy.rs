//! A TCP proxy that adds a round-trip time: what a region's SQS or SNS costs per
//! request, in front of an emulator that answers in well under a millisecond.
//!
//! Every byte from the client reaches the upstream `rtt` after it arrived (a delay
//! line per connection: bytes keep their order and the link keeps its bandwidth;
//! requests in flight on other connections are delayed side by side, not one after
//! the other). Answers come back at once, so one request and its answer take `rtt`
//! more than they would without the proxy.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Accepts connections on `listener` forever, each proxied to `upstream` with `rtt` added.
pub async fn serve(listener: TcpListener, upstream: SocketAddr, rtt: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(upstream).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                connection(client, server, rtt).await;
            }
        });
    }
}

async fn connection(client: TcpStream, server: TcpStream, rtt: Duration) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    // Client → upstream: stamped on arrival, written once their time has come.
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + rtt, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let delayed = async move {
        let mut queue = VecDeque::new();
        while let Some(first) = rx.recv().await {
            queue.push_back(first);
            while let Some((due, bytes)) = queue.pop_front() {
                tokio::time::sleep_until(due).await;
                while let Ok(next) = rx.try_recv() {
                    queue.push_back(next);
                }
                if server_write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
        let _ = server_write.shutdown().await;
    };
    // Upstream → client: at once.
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, delayed, downstream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes what it gets.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxy(upstream: SocketAddr, rtt: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(serve(l, upstream, rtt));
        addr
    }

    #[tokio::test]
    async fn each_round_trip_takes_the_added_time_and_bytes_arrive_whole() {
        let rtt = Duration::from_millis(40);
        let addr = proxy(echo().await, rtt).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for round in 0..3u8 {
            let sent: Vec<u8> = (0..100_000u32).map(|i| (i as u8) ^ round).collect();
            let t0 = std::time::Instant::now();
            s.write_all(&sent).await.expect("write");
            let mut got = vec![0u8; sent.len()];
            s.read_exact(&mut got).await.expect("read");
            assert!(t0.elapsed() >= rtt, "round {round} took {:?}", t0.elapsed());
            assert!(got == sent, "round {round}: bytes changed on the way");
        }
    }

    #[tokio::test]
    async fn connections_are_delayed_side_by_side() {
        let rtt = Duration::from_millis(200);
        let addr = proxy(echo().await, rtt).await;
        let t0 = std::time::Instant::now();
        let mut rounds = Vec::new();
        for _ in 0..8 {
            rounds.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(b"ping").await.expect("write");
                let mut got = [0u8; 4];
                s.read_exact(&mut got).await.expect("read");
                got
            }));
        }
        for r in rounds {
            assert_eq!(&r.await.expect("task"), b"ping");
        }
        // Eight round trips one after another would take 1.6 s.
        assert!(t0.elapsed() < rtt * 4, "took {:?}", t0.elapsed());
    }
}
