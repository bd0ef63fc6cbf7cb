//! The TCP stream under the locks' TLS connection. While many requests are in flight it keeps
//! the kernel from waking the process for every answer, and reads them in batches instead.
//!
//! Why: at thousands of elections per process, the API server answers a grid tick's renewals
//! one by one, a few milliseconds apart, and every answer that arrives while the process sleeps
//! wakes it. At 10,000 elections that was about one wakeup per two requests, and going to sleep
//! and waking up was the largest single cost left (`perf`: 10 % of the CPU in the scheduler's
//! `finish_task_switch` alone). Reading less often from user space cannot help while the socket
//! is registered for reading, because epoll wakes the process for each arrival whether or not
//! anyone reads (tried: voluntary context switches rose by half). `SO_RCVLOWAT` would tell the
//! kernel, but none of our dependencies exposes it without `unsafe`.
//!
//! So while at least [`BUSY`] requests are in flight, the socket is registered with epoll for
//! writability only: arrivals wake nobody, and the connection reads every [`BATCH`], taking
//! all the answers that arrived meanwhile in one go. Below that it is registered for reading as
//! usual, so a lone request, a takeover or a watch event is read the moment it arrives. Only
//! requests count, not watches: a process of many standbys keeps reading at once.

use std::{
    future::Future as _,
    io::{self, Read as _, Write as _},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf, unix::AsyncFd},
    time::{Instant, Sleep},
};

/// Requests in flight at which the connection stops reading on arrival, until none is left
/// (so the tail of a burst is read in batches too). A renewal answered [`BATCH`] late costs
/// nothing (the next one is due seconds later); a process with fewer requests than this in
/// flight is not waking often enough for it to matter.
pub(crate) const BUSY: usize = 16;

/// How often a busy connection reads.
pub(crate) const BATCH: Duration = Duration::from_millis(10);

/// Counts a request as in flight until dropped.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that reads on arrival while quiet, and every [`BATCH`] while busy.
pub(crate) struct Tcp {
    /// `None` only for the moment of re-registering.
    io: Option<AsyncFd<std::net::TcpStream>>,
    /// Registered for readability (quiet), or for writability only (busy).
    reading: bool,
    /// Reading in batches: since [`BUSY`] requests were in flight, until none is.
    batching: bool,
    in_flight: Arc<AtomicUsize>,
    tick: Pin<Box<Sleep>>,
    tick_armed: bool,
}

// === impl Tcp ===

impl Tcp {
    /// Takes over `stream`; `in_flight` counts the requests on its connection.
    pub(crate) fn new(
        stream: tokio::net::TcpStream,
        in_flight: Arc<AtomicUsize>,
    ) -> io::Result<Self> {
        // Still non-blocking, as tokio's streams are.
        let stream = stream.into_std()?;
        Ok(Self {
            io: Some(Self::registered(
                stream,
                Interest::READABLE | Interest::WRITABLE,
            )?),
            reading: true,
            batching: false,
            in_flight,
            tick: Box::pin(tokio::time::sleep(Duration::ZERO)),
            tick_armed: false,
        })
    }

    /// Registers `stream` with the runtime for `interest`.
    ///
    /// tokio deprecated the safe `AsyncFd::with_interest` for arbitrary `T: AsRawFd`, whose
    /// descriptor could be closed or swapped behind the registration, in favour of an `unsafe`
    /// `register_with_interest`. Here `T` is a `std::net::TcpStream` that the `AsyncFd` owns: its
    /// descriptor lives exactly as long as the registration, so the safe call is sound, and it
    /// keeps the crate free of `unsafe`.
    #[allow(deprecated)]
    fn registered(
        stream: std::net::TcpStream,
        interest: Interest,
    ) -> io::Result<AsyncFd<std::net::TcpStream>> {
        AsyncFd::with_interest(stream, interest)
    }

    fn io(&self) -> io::Result<&AsyncFd<std::net::TcpStream>> {
        self.io.as_ref().ok_or_else(unregistered)
    }

    /// Registers the socket again, with or without read interest. Whoever waited on the old
    /// registration is not woken by the new one, so the task is woken to poll again.
    fn register(&mut self, reading: bool, cx: &Context<'_>) -> io::Result<()> {
        if self.reading == reading {
            return Ok(());
        }
        let stream = self.io.take().ok_or_else(unregistered)?.into_inner();
        let interest = if reading {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::WRITABLE
        };
        self.io = Some(Self::registered(stream, interest)?);
        self.reading = reading;
        cx.waker().wake_by_ref();
        Ok(())
    }
}

/// Only if re-registering failed halfway, which leaves the connection unusable.
fn unregistered() -> io::Error {
    io::Error::other("connection lost its registration")
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.in_flight.load(Ordering::Relaxed);
        this.batching = if this.batching { n > 0 } else { n >= BUSY };
        let busy = this.batching;
        this.register(!busy, cx)?;
        loop {
            if !busy {
                this.tick_armed = false;
                let mut ready = ready!(this.io()?.poll_read_ready(cx))?;
                match ready.try_io(|s| s.get_ref().read(buf.initialize_unfilled())) {
                    Ok(Ok(n)) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(_would_block) => continue,
                }
            }
            // Busy: take what has arrived, or come back at the next tick.
            match this.io()?.get_ref().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Poll::Ready(Err(e)),
                Err(_) => {}
            }
            if !this.tick_armed {
                this.tick.as_mut().reset(Instant::now() + BATCH);
                this.tick_armed = true;
            }
            ready!(this.tick.as_mut().poll(cx));
            this.tick_armed = false;
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let io = self.io()?;
        loop {
            let mut ready = ready!(io.poll_write_ready(cx))?;
            match ready.try_io(|s| s.get_ref().write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io()?.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn pair(in_flight: Arc<AtomicUsize>) -> (Tcp, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.unwrap().0
        });
        (Tcp::new(client.unwrap(), in_flight).unwrap(), server)
    }

    #[tokio::test]
    async fn quiet_reads_at_once_and_busy_reads_in_batches_without_losing_bytes() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (mut tcp, mut server) = pair(Arc::clone(&in_flight)).await;
        let mut buf = [0u8; 64];

        // Quiet: an answer is read the moment it arrives.
        server.write_all(b"one").await.unwrap();
        let started = Instant::now();
        let n = tcp.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one");
        assert!(started.elapsed() < BATCH, "read on arrival");

        // Busy: what arrives meanwhile is read at the next tick, all of it.
        let guards: Vec<InFlight> = (0..BUSY).map(|_| InFlight::enter(&in_flight)).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 6 {
                let n = tcp.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            (got, tcp)
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
        server.write_all(b"two").await.unwrap();
        server.write_all(b"six").await.unwrap();
        let (got, mut tcp) = reader.await.unwrap();
        assert_eq!(got, b"twosix");

        // Quiet again once the requests are answered; writes work in both modes.
        drop(guards);
        server.write_all(b"end").await.unwrap();
        let n = tcp.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"end");
        tcp.write_all(b"bye").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
    }

    #[tokio::test]
    async fn a_closed_connection_reads_as_eof_in_either_mode() {
        for busy in [false, true] {
            let in_flight = Arc::new(AtomicUsize::new(if busy { BUSY } else { 0 }));
            let (mut tcp, server) = pair(in_flight).await;
            drop(server);
            let mut buf = [0u8; 8];
            assert_eq!(tcp.read(&mut buf).await.unwrap(), 0, "busy: {busy}");
        }
    }
}
