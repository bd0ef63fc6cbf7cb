//! A TCP proxy on 127.0.0.1 between one client and a server (the API server), which can add latency,
//! stall traffic, cut the candidate off, or drop all its connections.

use std::time::Duration;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pass through.
    Normal,
    /// Delay every chunk.
    Latency(Duration),
    /// Hold all traffic (requests hang) until the mode changes.
    Stall,
    /// Refuse and close every connection.
    Cut,
}

/// A running proxy.
pub struct Proxy {
    /// Its port.
    pub port: u16,
    mode: watch::Sender<(Mode, u64)>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = watch::channel((Mode::Normal, 0u64));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                if rx.borrow().0 == Mode::Cut {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let generation = rx.borrow().1;
                    tokio::select! {
                        _ = pipe(cr, sw, rx.clone(), generation) => {}
                        _ = pipe(sr, cw, rx.clone(), generation) => {}
                    }
                });
            }
        });
        Self { port, mode: tx }
    }

    /// Sets the mode.
    pub fn set(&self, mode: Mode) {
        self.mode.send_modify(|m| m.0 = mode);
    }

    /// Closes every open connection.
    pub fn drop_all(&self) {
        self.mode.send_modify(|m| m.1 += 1);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<(Mode, u64)>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = rx.changed() => {
                let (mode, g) = *rx.borrow();
                if mode == Mode::Cut || g != generation { return; }
                continue;
            }
        };
        loop {
            let (mode, g) = *rx.borrow_and_update();
            if g != generation || mode == Mode::Cut {
                return;
            }
            match mode {
                Mode::Stall => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Latency(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
