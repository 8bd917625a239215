//! Accepted connections as both servers hand them to tonic: TCP with
//! Nagle's algorithm off and a deadline for the first bytes of a request
//! ([`SpeaksWithin`]), optionally TLS ([`tls_incoming`]), and every
//! connection's writes gathered until HTTP/2 flushes them.
//!
//! h2 writes the frames of a flush in pieces. On a connection that offers
//! vectored writes (a plain socket does), it keeps a DATA payload of 256
//! bytes or more out of its frame buffer and writes it before the next
//! frame: a unary response of a few hundred bytes left in two system calls,
//! its headers and message, then its trailers (a 10-byte frame), and the
//! client was woken twice. [`Gathered`] offers no vectored writes (h2 then
//! copies payloads under 1 KiB into its frame buffer) and holds what h2
//! writes until h2 flushes, so each flush leaves in one `write`: a response
//! and its trailers together, and often the responses of several streams.
//!
//! A flush of a little waits one turn of the scheduler first. Each HTTP/2
//! stream is a task of its own that queues its frames and wakes the
//! connection's task; woken that way, the connection's task runs next, before
//! the other streams' tasks made ready by the same event (one change sent to
//! many watch streams), and flushed one stream's message at a time: one
//! system call per message. Waiting its turn behind them (waking itself and
//! answering `Pending`, which tokio treats as a yield to the back of the run
//! queue) lets those tasks queue their frames first, and the flush then
//! writes them all. A flush waits at most one turn, and only when fewer than
//! [`FLUSH_AT_ONCE`] bytes are held.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// Most bytes held before they are written without waiting for a flush.
const MOST_HELD: usize = 64 * 1024;

/// Bytes held from which a flush writes at once, without waiting a turn
/// for more: enough to make the system call's cost small beside them.
const FLUSH_AT_ONCE: usize = 16 * 1024;

/// Room kept for the next flush once everything held is written; a larger
/// buffer (after a burst) is given back, so idle connections stay small.
const ROOM_KEPT: usize = 16 * 1024;

/// Accepted TCP connections with `TCP_NODELAY`, a deadline for their
/// first bytes ([`SpeaksWithin`]) and gathered writes. tonic sets
/// `TCP_NODELAY` only on listeners it binds itself; on a listener handed in
/// (as ours are) small responses would otherwise wait for the peer's
/// delayed ACK — about 40 ms per call.
pub fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = io::Result<Gathered<SpeaksWithin<tokio::net::TcpStream>>>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        Ok(Gathered::new(SpeaksWithin::new(
            stream,
            FIRST_BYTES_DEADLINE,
        )))
    })
}

/// How long a plaintext TCP client may take, after connecting, to send
/// its first [`FIRST_BYTES`]. Each later stage has its own deadline
/// (hyper's for an HTTP/1 request's headers, the keepalive pings on
/// HTTP/2; TLS connections the handshake's), but a connection that never
/// sent a whole HTTP/2 preface met none of them and held its socket for
/// good — one byte was enough: enough of them use up the process's file
/// descriptors.
pub const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(10);

/// The bytes a client must send within [`FIRST_BYTES_DEADLINE`]: the
/// HTTP/2 connection preface's length (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
/// Any HTTP/1 request (grpc-web) is longer: its request line and `Host`.
pub const FIRST_BYTES: usize = 24;

/// A connection whose reads fail (`TimedOut`, which closes it) when its
/// first [`FIRST_BYTES`] do not arrive within a deadline; after them, it
/// is the connection itself.
#[derive(Debug)]
pub struct SpeaksWithin<T> {
    inner: T,
    /// Until the first bytes arrive.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Of the first bytes, those not read yet.
    unheard: usize,
}

impl<T> SpeaksWithin<T> {
    /// `inner`, which must send its first [`FIRST_BYTES`] within
    /// `deadline` from now.
    pub fn new(inner: T, deadline: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(deadline))),
            unheard: FIRST_BYTES,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SpeaksWithin<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return read;
        };
        match read {
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                this.deadline = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes within the first-bytes deadline",
                )))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                let heard = buf.filled().len() - before;
                this.unheard = this.unheard.saturating_sub(heard);
                if this.unheard == 0 {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SpeaksWithin<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for SpeaksWithin<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const HANDSHAKEN_QUEUE: usize = 64;

/// Accepted TCP connections (`TCP_NODELAY`, as [`tcp_incoming`]) with TLS
/// on top and writes gathered above TLS, so a flush becomes one TLS record
/// and one system call. Each connection takes the configuration `config`
/// gives at the moment it is accepted (a reloaded certificate reaches new
/// connections only). Handshakes run in tasks of their own, each within
/// [`HANDSHAKE_DEADLINE`], so a slow or silent client holds up nobody; a
/// failed handshake is logged at debug and the connection dropped. The
/// accepting task ends when the returned stream is dropped.
pub fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
) -> impl Stream<Item = io::Result<Gathered<TlsStream<tokio::net::TcpStream>>>> {
    let (handshaken, incoming) = mpsc::channel(HANDSHAKEN_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = handshaken.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                // The server decides (as with plaintext) whether to go on.
                Err(error) => match handshaken.send(Err(error)).await {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "cannot set TCP_NODELAY");
            }
            let acceptor = TlsAcceptor::from(config());
            let handshaken = handshaken.clone();
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        // Closed: the server stopped accepting; the
                        // connection is dropped.
                        let _ = handshaken.send(Ok(Gathered::new(tls))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(?peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Accepted unix socket connections with gathered writes.
pub fn unix_incoming(
    listener: tokio::net::UnixListener,
) -> impl Stream<Item = io::Result<Gathered<tokio::net::UnixStream>>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|accepted| accepted.map(Gathered::new))
}

/// A connection whose writes wait in memory until it is flushed (or until
/// [`MOST_HELD`] bytes wait), then leave in one system call.
#[derive(Debug)]
pub struct Gathered<T> {
    inner: T,
    held: Vec<u8>,
    /// The flush under way has waited its turn: the next one writes.
    turn_waited: bool,
}

impl<T> Gathered<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::new(),
            turn_waited: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Gathered<T> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..written);
        }
        if self.held.capacity() > ROOM_KEPT {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gathered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + buf.len() > MOST_HELD {
            ready!(this.poll_write_held(cx))?;
            if buf.len() >= MOST_HELD {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.turn_waited && !this.held.is_empty() && this.held.len() < FLUSH_AT_ONCE {
            this.turn_waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_write_held(cx))?;
        this.turn_waited = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gathered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for Gathered<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use tokio::io::AsyncWriteExt;

    /// Counts the times it is woken.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls one flush of `gathered` by hand; says whether it finished and
    /// how many times it woke its task.
    fn poll_flush_once(gathered: &mut Gathered<Recorder>) -> (Poll<io::Result<()>>, usize) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let polled = Pin::new(gathered).poll_flush(&mut Context::from_waker(&waker));
        (polled, wakes.0.load(Ordering::SeqCst))
    }

    /// Records every write it is given, taking at most `most_per_write`
    /// bytes of each.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        most_per_write: usize,
        shut_down: bool,
    }

    impl Recorder {
        fn new(most_per_write: usize) -> Self {
            Self {
                writes: Vec::new(),
                most_per_write,
                shut_down: false,
            }
        }

        fn bytes(&self) -> Vec<u8> {
            self.writes.concat()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let taken = buf.len().min(self.most_per_write);
            self.get_mut().writes.push(buf[..taken].to_vec());
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut_down = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_leave_in_one_write() -> io::Result<()> {
        let mut gathered = Gathered::new(Recorder::new(usize::MAX));
        assert!(!gathered.is_write_vectored(), "h2 must copy small payloads");
        gathered.write_all(b"headers+data").await?;
        gathered.write_all(b"trailers").await?;
        assert!(gathered.inner.writes.is_empty(), "nothing before the flush");
        gathered.flush().await?;
        assert_eq!(gathered.inner.writes, [b"headers+datatrailers".to_vec()]);
        gathered.flush().await?;
        assert_eq!(
            gathered.inner.writes.len(),
            1,
            "an empty flush writes nothing"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_small_flush_waits_one_turn_for_more_and_then_writes_all() -> io::Result<()> {
        let mut gathered = Gathered::new(Recorder::new(usize::MAX));
        gathered.write_all(b"first stream").await?;
        let (polled, wakes) = poll_flush_once(&mut gathered);
        assert!(polled.is_pending(), "the first flush waits a turn");
        assert_eq!(wakes, 1, "and asks to be polled again at once");
        assert!(gathered.inner.writes.is_empty());

        // Meanwhile another stream's frames are queued; the flush that
        // comes back writes both together, without waiting again.
        gathered.write_all(b"second stream").await?;
        let (polled, wakes) = poll_flush_once(&mut gathered);
        assert!(matches!(polled, Poll::Ready(Ok(()))), "{polled:?}");
        assert_eq!(wakes, 0);
        assert_eq!(
            gathered.inner.writes,
            [b"first streamsecond stream".to_vec()]
        );

        // The next flush waits its own turn again.
        gathered.write_all(b"later").await?;
        assert!(poll_flush_once(&mut gathered).0.is_pending());
        assert!(poll_flush_once(&mut gathered).0.is_ready());
        assert_eq!(gathered.inner.writes.len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_flush_of_much_or_of_nothing_does_not_wait() -> io::Result<()> {
        let mut gathered = Gathered::new(Recorder::new(usize::MAX));
        let (polled, wakes) = poll_flush_once(&mut gathered);
        assert!(polled.is_ready() && wakes == 0, "nothing held: no turn");
        let much = vec![4u8; FLUSH_AT_ONCE];
        gathered.write_all(&much).await?;
        let (polled, wakes) = poll_flush_once(&mut gathered);
        assert!(matches!(polled, Poll::Ready(Ok(()))), "{polled:?}");
        assert_eq!(wakes, 0);
        assert_eq!(gathered.inner.writes, [much]);
        Ok(())
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_before_more_and_order_is_kept() -> io::Result<()> {
        let mut gathered = Gathered::new(Recorder::new(usize::MAX));
        let small = vec![1u8; 1000];
        let large = vec![2u8; MOST_HELD];
        gathered.write_all(&small).await?;
        gathered.write_all(&large).await?;
        assert_eq!(
            gathered.inner.writes,
            [small.clone(), large.clone()],
            "the held bytes first, then the large write without a copy"
        );
        gathered.write_all(&small).await?;
        gathered.shutdown().await?;
        assert!(gathered.inner.shut_down);
        assert_eq!(
            gathered.inner.bytes(),
            [small.clone(), large, small].concat()
        );
        Ok(())
    }

    #[tokio::test]
    async fn short_writes_of_the_connection_lose_nothing() -> io::Result<()> {
        let mut gathered = Gathered::new(Recorder::new(7));
        let message: Vec<u8> = (0..=255).collect();
        gathered.write_all(&message).await?;
        gathered.flush().await?;
        assert_eq!(gathered.inner.bytes(), message);
        assert!(gathered.held.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_burst_does_not_keep_its_buffer() -> io::Result<()> {
        let mut gathered = Gathered::new(Recorder::new(usize::MAX));
        gathered.write_all(&vec![3u8; MOST_HELD - 1]).await?;
        gathered.flush().await?;
        assert_eq!(gathered.inner.bytes().len(), MOST_HELD - 1);
        assert!(gathered.held.capacity() <= ROOM_KEPT);
        Ok(())
    }
}
