//! The fenced store: accepts a write only if its token is at least the highest it has seen,
//! and records every write, accepted or not, on one monotonic clock (this process's).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    time::Instant,
};

/// One write as the store saw it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// When it arrived (since the run's origin).
    pub at: Duration,
    /// Who wrote.
    pub who: String,
    /// The token it carried.
    pub token: u64,
    /// Whether the store accepted it.
    pub accepted: bool,
}

#[derive(Default)]
struct Inner {
    max: Option<u64>,
    log: Vec<Entry>,
}

/// The store server.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    origin: Instant,
    /// Its address.
    pub addr: String,
}

impl Store {
    /// Starts the store on 127.0.0.1.
    pub async fn start(origin: Instant) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind store");
        let addr = listener.local_addr().expect("addr").to_string();
        let store = Self {
            inner: Arc::default(),
            origin,
            addr,
        };
        let s = store.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let mut f = line.split_whitespace();
                        let (Some("W"), Some(who), Some(token)) = (f.next(), f.next(), f.next())
                        else {
                            break;
                        };
                        let Ok(token) = token.parse() else { break };
                        let ok = s.write(who, token);
                        if w.write_all(if ok { b"OK\n" } else { b"NO\n" })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        store
    }

    /// Applies the fencing rule to one write and records it.
    pub fn write(&self, who: &str, token: u64) -> bool {
        let mut inner = self.inner.lock().expect("poisoned");
        let accepted = inner.max.is_none_or(|m| token >= m);
        if accepted {
            inner.max = Some(token);
        }
        let at = self.origin.elapsed();
        inner.log.push(Entry {
            at,
            who: who.to_owned(),
            token,
            accepted,
        });
        accepted
    }

    /// The latest write, if any.
    pub fn last(&self) -> Option<Entry> {
        self.inner.lock().expect("poisoned").log.last().cloned()
    }

    /// Everything recorded so far.
    pub fn log(&self) -> Vec<Entry> {
        self.inner.lock().expect("poisoned").log.clone()
    }
}

/// The recorder child: writes `W <identity> <token>` to the store every 10 ms until killed.
pub fn recorder() -> i32 {
    use std::io::{BufRead as _, Write as _};
    let (Ok(addr), Ok(id), Ok(token)) = (
        std::env::var("STORE"),
        std::env::var("LEASEHOLD_IDENTITY"),
        std::env::var("LEASEHOLD_FENCING_TOKEN"),
    ) else {
        eprintln!("recorder: STORE, LEASEHOLD_IDENTITY and LEASEHOLD_FENCING_TOKEN are required");
        return 64;
    };
    let Ok(stream) = std::net::TcpStream::connect(&addr) else {
        return 1;
    };
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut reply = String::new();
    loop {
        if writeln!(writer, "W {id} {token}").is_err() {
            return 1;
        }
        reply.clear();
        if reader.read_line(&mut reply).unwrap_or(0) == 0 {
            return 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
