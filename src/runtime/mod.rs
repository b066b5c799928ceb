//! The thin seam over glommio: shards (executors pinned to CPUs), the bounded channels
//! between them, tasks, timers, TCP and TLS over it (`tls.rs`). Nothing outside this folder
//! names glommio, so a move to another io_uring runtime touches only this folder.

pub mod tls;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{LocalExecutorBuilder, Placement};

pub use glommio::net::{TcpListener, TcpStream};

/// Index of a shard, 0..shard_count; also its index in the channel mesh.
pub type ShardId = usize;

/// What a shard's main future receives: who it is and its channels to every other shard.
pub struct ShardEnv<T: Send + 'static> {
    pub shard_id: ShardId,
    pub shard_count: usize,
    pub cpu: usize,
    pub senders: ShardSenders<T>,
    pub receivers: Receivers<T>,
}

/// Bounded channels to every other shard (a full mesh of single-producer queues).
pub struct ShardSenders<T: Send + 'static> {
    inner: Senders<T>,
}

impl<T: Send + 'static> ShardSenders<T> {
    /// Waits while the channel to `shard` is full: that wait is the backpressure that
    /// stops a shard from reading its publishers when another shard falls behind.
    pub async fn send(&self, shard: ShardId, message: T) -> Result<(), T> {
        self.inner
            .send_to(shard, message)
            .await
            .map_err(|error| match error {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(message))
                | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message)) => {
                    message
                }
                other => panic!("shard channel {shard}: {other}"),
            })
    }

    pub fn close(&self) {
        self.inner.close();
    }
}

/// Receivers from every other shard, as `(shard, receiver)` pairs, taken once.
/// The receiving end of one other shard's channel to this one.
pub type ShardReceiver<T> = glommio::channels::shared_channel::ConnectedReceiver<T>;

pub fn take_receivers<T: Send + 'static>(
    receivers: &mut Receivers<T>,
) -> Vec<(ShardId, ShardReceiver<T>)> {
    receivers.streams()
}

/// The CPUs this process may run on (its affinity mask, which `taskset` and cgroups set),
/// in ascending order.
pub fn affinity_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Starts one executor per CPU in `cpus`, pinned to it, joins them in a channel mesh of
/// `channel_capacity` messages per pair, runs `shard_main` on each and waits for all.
pub fn run_shards<T, F, Fut>(
    cpus: &[usize],
    channel_capacity: usize,
    shard_main: F,
) -> io::Result<()>
where
    T: Send + 'static,
    F: Fn(ShardEnv<T>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    assert!(!cpus.is_empty(), "at least one CPU is needed");
    let mesh = MeshBuilder::<T, _>::full(cpus.len(), channel_capacity);
    let mut handles = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let mesh = mesh.clone();
        let shard_main = shard_main.clone();
        let shard_count = cpus.len();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("ferrymq-shard-{cpu}"))
            .ring_depth(RING_DEPTH)
            .spawn(move || async move {
                let (senders, receivers) = join_mesh(mesh).await;
                let env = ShardEnv {
                    shard_id: senders.peer_id(),
                    shard_count,
                    cpu,
                    senders: ShardSenders { inner: senders },
                    receivers,
                };
                shard_main(env).await;
            })
            .map_err(|e| io::Error::other(format!("start shard on CPU {cpu}: {e}")))?;
        handles.push(handle);
    }
    for handle in handles {
        handle
            .join()
            .map_err(|e| io::Error::other(format!("shard failed: {e}")))?;
    }
    Ok(())
}

/// How often a shard joining the mesh polls the join again without being woken.
const MESH_JOIN_REPOLL: Duration = Duration::from_millis(100);

/// Joins the channel mesh, polling the join again every [`MESH_JOIN_REPOLL`]. A broker was
/// seen (about once in 3,000 starts, on a loaded host) with every shard asleep in its
/// reactor before it served anything: gdb showed no thread doing work, as if the wake-up
/// of a peer's join notification (glommio's cross-executor shared channels) was lost. A
/// join polled again finds a notification already there; one not lost costs nothing.
async fn join_mesh<T: Send + 'static>(
    mesh: MeshBuilder<T, glommio::channels::channel_mesh::Full>,
) -> (
    glommio::channels::channel_mesh::Senders<T>,
    glommio::channels::channel_mesh::Receivers<T>,
) {
    let join = mesh.join();
    futures_lite::pin!(join);
    loop {
        if let Some(joined) = timeout(MESH_JOIN_REPOLL, join.as_mut()).await {
            return joined.expect("join the shard mesh");
        }
    }
}

/// Submission queue entries of each io_uring of a shard (glommio's default is 128).
///
/// Every idle connection holds an armed poll in its shard's ring, and the kernel finds a
/// request to cancel (glommio cancels one on most wake-ups) by walking one bucket of a hash
/// table whose size follows the completion queue: 2^(log2(2 × depth) − 5) buckets, at most
/// 256. At 128 that is 8 buckets, so with 19,000 connections each cancel walked ~2,400
/// polls and `io_poll_find` took 64 % of the shard's CPU (perf, 3,500 QoS 1 msg/s). 4,096
/// gives the 256 buckets (~75 polls a walk at 19,000 connections), for about 1 MiB of
/// rings per shard.
const RING_DEPTH: usize = 4096;

/// Runs `future` on the current shard in the background.
pub fn spawn<F>(future: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(future).detach();
}

pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// `None` if `future` did not finish within `duration`.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(duration).await;
        None
    })
    .await
}

/// Lets other tasks of this shard run: used to bound the work of one loop turn.
pub async fn yield_now() {
    glommio::yield_if_needed().await;
}

pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    // glommio binds with SO_REUSEPORT, so every shard listens on the same address and the
    // kernel spreads new connections over them.
    TcpListener::bind(addr).map_err(|e| io::Error::other(e.to_string()))
}

/// A connection's socket: plain TCP, or TLS after its handshake. An enum rather than a
/// trait object, so that a plain connection pays one branch per read or write and no
/// allocation; the TLS session is boxed so that plain connections do not carry its size.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Plain(stream)
    }
}

impl From<tls::TlsStream> for Stream {
    fn from(stream: tls::TlsStream) -> Stream {
        Stream::Tls(Box::new(stream))
    }
}

impl Stream {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            Stream::Plain(stream) => stream.as_raw_fd(),
            Stream::Tls(stream) => stream.fd(),
        }
    }

    fn poll_read(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use futures_lite::AsyncRead;
        match self {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => stream.poll_read(cx, buf),
        }
    }

    /// Writes all of `bytes`, advancing it past what was written.
    fn poll_write_all(
        &mut self,
        cx: &mut std::task::Context<'_>,
        bytes: &mut &[u8],
    ) -> std::task::Poll<io::Result<()>> {
        use futures_lite::AsyncWrite;
        use std::task::Poll;
        match self {
            Stream::Plain(stream) => {
                while !bytes.is_empty() {
                    match std::pin::Pin::new(&mut *stream).poll_write(cx, bytes) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(written)) => *bytes = &bytes[written..],
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Poll::Ready(Ok(()))
            }
            Stream::Tls(stream) => stream.poll_write_all(cx, bytes),
        }
    }
}

/// A connection on its way to another shard: the socket, and for TLS the session (keys,
/// sequence numbers, decrypted bytes not yet read, records not yet sent). `Send`.
pub struct DetachedStream {
    fd: OwnedFd,
    tls: Option<Box<rustls::ServerConnection>>,
}

/// Detaches the socket of `stream` (and its TLS session) so that another shard can adopt it
/// with [`adopt_stream`]; the local handle is closed. It takes one spare descriptor for a
/// moment (glommio's stream closes its own on drop, so the socket is duplicated first):
/// when none is left (EMFILE, ENFILE), the stream comes back with the error, untouched
/// (boxed: a rare path, and the pair is large).
pub fn detach_stream(stream: Stream) -> Result<DetachedStream, Box<(io::Error, Stream)>> {
    let (tcp, tls) = match stream {
        Stream::Plain(tcp) => (tcp, None),
        Stream::Tls(stream) => {
            let (tcp, session) = stream.into_parts();
            (tcp, Some(Box::new(session)))
        }
    };
    // SAFETY: dup returns a new descriptor we own; the stream closes the original.
    let fd = unsafe { libc::dup(tcp.as_raw_fd()) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(session) => Stream::from(tls::TlsStream::from_parts(tcp, *session)),
        };
        return Err(Box::new((error, stream)));
    }
    drop(tcp);
    Ok(DetachedStream {
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
        tls,
    })
}

/// Whether `error` says the process or the system is out of file descriptors.
pub fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// Wraps a connection detached on another shard for I/O on this one.
pub fn adopt_stream(detached: DetachedStream) -> Stream {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is a connected TCP socket that we own.
    let tcp = unsafe { TcpStream::from_raw_fd(detached.fd.into_raw_fd()) };
    match detached.tls {
        None => Stream::Plain(tcp),
        Some(session) => Stream::from(tls::TlsStream::from_parts(tcp, *session)),
    }
}

/// One connection used by two tasks of a shard: one reads while the other writes. glommio
/// keeps separate read and write wake-ups per stream, and each poll borrows the stream
/// only for the poll itself, so the two never hold it across an await (for TLS, see
/// `tls.rs` for how the session keeps the two wake-ups apart). One descriptor per
/// connection: the open-files limit is the connection limit.
pub type SharedStream = std::rc::Rc<std::cell::RefCell<Stream>>;

pub fn share(stream: impl Into<Stream>) -> SharedStream {
    std::rc::Rc::new(std::cell::RefCell::new(stream.into()))
}

/// Reads into `buf` (decrypted, for TLS); `Ok(0)` at end of stream.
pub async fn read_shared(stream: &SharedStream, buf: &mut [u8]) -> io::Result<usize> {
    futures_lite::future::poll_fn(|cx| stream.borrow_mut().poll_read(cx, buf)).await
}

/// Writes all of `bytes` (encrypted, for TLS).
pub async fn write_all_shared(stream: &SharedStream, mut bytes: &[u8]) -> io::Result<()> {
    futures_lite::future::poll_fn(|cx| stream.borrow_mut().poll_write_all(cx, &mut bytes)).await
}

/// Shuts both directions down at once: the other task's pending read or write ends. A TLS
/// connection first sends close_notify, if the socket takes it without waiting.
pub fn shutdown_shared(stream: &SharedStream) {
    let mut stream = stream.borrow_mut();
    if let Stream::Tls(tls) = &mut *stream {
        tls.close();
    }
    // SAFETY: shutdown on a descriptor the stream owns; it stays open until dropped.
    unsafe {
        libc::shutdown(stream.fd(), libc::SHUT_RDWR);
    }
}

/// A wake-up for one waiting task on this shard: `notify` any number of times, `wait`
/// returns once for at least one notification since the last `wait`, or `false` once
/// closed.
pub struct Signal {
    semaphore: glommio::sync::Semaphore,
}

impl Default for Signal {
    fn default() -> Self {
        Signal::new()
    }
}

impl Signal {
    pub fn new() -> Signal {
        Signal {
            semaphore: glommio::sync::Semaphore::new(0),
        }
    }

    pub fn notify(&self) {
        // Coalesce: one pending permit is enough to wake the waiter.
        if self.semaphore.available() == 0 {
            self.semaphore.signal(1);
        }
    }

    /// `true` when notified, `false` when closed.
    pub async fn wait(&self) -> bool {
        self.semaphore.acquire(1).await.is_ok()
    }

    pub fn close(&self) {
        self.semaphore.close();
    }
}

/// Tasks of this shard waiting for a condition that another task ends (publishers held
/// back by a full Kafka ring or spool): `wait` until `wake_all` or `at_most`, whichever
/// comes first; the waiter then checks its condition again. `wake_all` releases only the
/// tasks waiting now; a release that finds its waiter gone lets a later waiter look once
/// more, which is harmless.
pub struct WaitList {
    semaphore: glommio::sync::Semaphore,
    waiting: std::cell::Cell<u64>,
}

impl Default for WaitList {
    fn default() -> Self {
        WaitList {
            semaphore: glommio::sync::Semaphore::new(0),
            waiting: std::cell::Cell::new(0),
        }
    }
}

impl WaitList {
    pub async fn wait(&self, at_most: Duration) {
        self.waiting.set(self.waiting.get() + 1);
        let _ = timeout(at_most, self.semaphore.acquire(1)).await;
        self.waiting.set(self.waiting.get() - 1);
    }

    /// Tasks waiting now.
    pub fn waiting(&self) -> u64 {
        self.waiting.get()
    }

    pub fn wake_all(&self) {
        let owed = self
            .waiting
            .get()
            .saturating_sub(self.semaphore.available());
        if owed > 0 {
            self.semaphore.signal(owed);
        }
    }
}

/// Wakes a shard from another thread (librdkafka's, when delivery reports are ready, say).
/// The sending end is a plain socket; a wake is one byte, written only when the shard has
/// not been woken since it last looked, so a busy producer writes rarely.
pub struct CrossThreadWake {
    stream: std::os::unix::net::UnixStream,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The shard's end of a [`CrossThreadWake`]; `Send`, so it can be made before the shard
/// starts, and turned into a [`WakeListener`] on it.
pub struct WakeEnd {
    fd: OwnedFd,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub struct WakeListener {
    stream: glommio::net::UnixStream,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub fn cross_thread_wake() -> io::Result<(CrossThreadWake, WakeEnd)> {
    let (sender, receiver) = std::os::unix::net::UnixStream::pair()?;
    sender.set_nonblocking(true)?;
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    Ok((
        CrossThreadWake {
            stream: sender,
            armed: armed.clone(),
        },
        WakeEnd {
            fd: receiver.into(),
            armed,
        },
    ))
}

impl CrossThreadWake {
    /// Another sender for the same listener (one per Kafka producer of a shard).
    pub fn try_clone(&self) -> io::Result<CrossThreadWake> {
        Ok(CrossThreadWake {
            stream: self.stream.try_clone()?,
            armed: self.armed.clone(),
        })
    }

    pub fn wake(&self) {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        if !self.armed.swap(true, Ordering::AcqRel) {
            // A full socket means a wake is already pending: nothing is lost.
            let _ = (&self.stream).write(&[1]);
        }
    }
}

impl WakeEnd {
    /// On the shard that will wait.
    pub fn listen(self) -> WakeListener {
        use std::os::fd::IntoRawFd;
        WakeListener {
            // SAFETY: a connected Unix socket that we own.
            stream: unsafe { glommio::net::UnixStream::from_raw_fd(self.fd.into_raw_fd()) },
            armed: self.armed,
        }
    }
}

impl WakeListener {
    /// Returns after a wake; the caller then drains what it was woken for. `false` if the
    /// other end is gone.
    pub async fn wait(&mut self) -> bool {
        use futures_lite::AsyncReadExt;
        use std::sync::atomic::Ordering;
        let mut bytes = [0u8; 64];
        let alive = matches!(self.stream.read(&mut bytes).await, Ok(n) if n > 0);
        // Disarm before the caller drains, so a wake racing with the drain is not lost. A
        // swap, not a store: if a sender's swap saw `true` and skipped its write, this swap
        // reads that value and so sees what the sender pushed before it (a plain store may
        // pass the drain's loads, and the pushed report would wait for the next wake).
        self.armed.swap(false, Ordering::AcqRel);
        alive
    }
}

/// A file opened for direct I/O (O_DIRECT, through io_uring): writes bypass the page
/// cache and `sync_data` makes them durable. Offsets and lengths of writes are multiples
/// of [`DirectFile::alignment`].
pub struct DirectFile {
    file: glommio::io::DmaFile,
    /// A buffered handle for reads, opened on first use.
    reader: std::cell::RefCell<Option<std::rc::Rc<glommio::io::BufferedFile>>>,
}

impl DirectFile {
    pub async fn create(path: &std::path::Path) -> io::Result<DirectFile> {
        // Created with a plain open, then opened for direct I/O: reads through a handle
        // that glommio itself created fail with EOPNOTSUPP on this kernel (seen on 6.18).
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        DirectFile::open(path).await
    }

    pub async fn open(path: &std::path::Path) -> io::Result<DirectFile> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(to_io)?;
        Ok(DirectFile {
            file,
            reader: Default::default(),
        })
    }

    pub fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    /// Writes `bytes` (its length a multiple of the alignment) at `offset` (aligned).
    pub async fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let mut buffer = self.file.alloc_dma_buffer(bytes.len());
        buffer.as_bytes_mut().copy_from_slice(bytes);
        let written = self.file.write_at(buffer, offset).await.map_err(to_io)?;
        if written != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }

    pub async fn sync_data(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }

    /// Up to `len` bytes from `offset` (fewer at the end of the file), through the page
    /// cache: direct-I/O reads of a file this process writes fail with EOPNOTSUPP here
    /// (kernel 6.18), buffered io_uring reads do not.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let cached = self.reader.borrow().clone();
        let reader = match cached {
            Some(reader) => reader,
            None => {
                let path = self
                    .file
                    .path()
                    .map(|p| p.to_path_buf())
                    .ok_or_else(|| io::Error::other("direct file without a path"))?;
                let reader = std::rc::Rc::new(
                    glommio::io::BufferedFile::open(&path)
                        .await
                        .map_err(to_io)?,
                );
                *self.reader.borrow_mut() = Some(reader.clone());
                reader
            }
        };
        Ok(reader.read_at(offset, len).await.map_err(to_io)?.to_vec())
    }

    pub async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }

    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(to_io)
    }

    pub async fn close(self) -> io::Result<()> {
        let reader = self.reader.borrow_mut().take();
        if let Some(Ok(reader)) = reader.map(std::rc::Rc::try_unwrap) {
            let _ = reader.close().await;
        }
        self.file.close().await.map_err(to_io)
    }
}

fn to_io(error: glommio::GlommioError<()>) -> io::Error {
    match error {
        glommio::GlommioError::IoError(error) => error,
        other => io::Error::other(other.to_string()),
    }
}
