//! One raw MQTT client for the tests that speak bytes: packets encoded with ferrymq's own
//! codec (`ferrymq::protocol`), answers decoded with `Decoder::client`, over plain TCP or
//! any stream on top of it (TLS); every read bounded by the socket's read timeout or by a
//! deadline. Malformed bytes are written with [`RawClient::send_raw`].

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferrymq::protocol::{
    ConnAck, Connect, Decoder, Packet, Protocol, Publish, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions, PACKET_SIZE_BYTES_MAX,
};

/// `packet` as `protocol` puts it on the wire.
pub fn encode(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.encode(protocol, &mut buf);
    buf.to_vec()
}

/// A QoS 1 PUBLISH of `payload` on `topic` with `packet_id`.
pub fn qos1_publish(topic: &str, packet_id: u16, payload: &[u8]) -> Packet {
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
    publish.packet_id = packet_id;
    Packet::Publish(publish)
}

/// A SUBSCRIBE `packet_id` to `filter` at `qos`, default options otherwise.
pub fn subscribe_packet(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    let subscription = Subscription {
        filter: filter.into(),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    };
    Packet::Subscribe(Subscribe::new(packet_id, vec![subscription]))
}

/// A TCP connection to `addr` with read timeout `timeout` and no Nagle delay.
pub fn open(addr: impl ToSocketAddrs, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to ferrymq");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// [`open`], or None when the client side cannot open a connection right now (out of
/// ephemeral ports, say).
pub fn try_open(addr: impl ToSocketAddrs, timeout: Duration) -> Option<TcpStream> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

fn timed_out(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Appends everything the peer sends to `got` until it closes the connection: `Ok` with
/// all of it, or `Err` with what came and the error that ended the reads (a read timeout,
/// say). A reset counts as closed: the broker may close with bytes of ours still unread.
pub fn try_read_until_closed(
    stream: &mut (impl Read + ?Sized),
    mut got: Vec<u8>,
) -> Result<Vec<u8>, (Vec<u8>, std::io::Error)> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err((got, e)),
        }
    }
}

/// [`try_read_until_closed`]; fails the test if the connection stays open for the read
/// timeout (or a read fails).
pub fn read_until_closed(stream: &mut (impl Read + ?Sized), got: Vec<u8>) -> Vec<u8> {
    try_read_until_closed(stream, got).unwrap_or_else(|(got, e)| {
        panic!("connection not closed ({e}); received so far: {got:02X?}")
    })
}

/// What the peer sent until it closed the connection, and whether it did close it within
/// the read timeout; a read error other than the timeout counts as closed. For threads
/// that must not panic.
pub fn read_until_closed_or_timeout(stream: &mut (impl Read + ?Sized)) -> (Vec<u8>, bool) {
    match try_read_until_closed(stream, Vec::new()) {
        Ok(got) => (got, true),
        Err((got, e)) => {
            let closed = !timed_out(&e);
            (got, closed)
        }
    }
}

/// A stream an MQTT client can run over: a `TcpStream`, or TLS on top of one.
pub trait Socket: Read + Write + Send {}
impl<T: Read + Write + Send> Socket for T {}

/// What [`RawClient::recv_within`] got.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Packet(Packet),
    /// Nothing within the wait.
    Nothing,
    /// The broker closed the connection.
    Closed,
}

/// An MQTT client connection: packets encoded with ferrymq's codec, answers decoded with
/// `Decoder::client`, raw bytes both ways when a test needs them.
pub struct RawClient {
    /// The socket: read and written directly unless TLS runs over it; its read timeout
    /// bounds every read.
    pub tcp: TcpStream,
    tls: Option<Box<dyn Socket>>,
    decoder: Decoder,
    /// Bytes received and not decoded yet.
    buf: BytesMut,
    pub protocol: Protocol,
}

impl RawClient {
    /// A plain TCP connection to `addr` speaking `protocol`, every read bounded by
    /// `timeout`. Nothing is sent yet.
    pub fn open(addr: impl ToSocketAddrs, protocol: Protocol, timeout: Duration) -> RawClient {
        RawClient::from_tcp(open(addr, timeout), protocol)
    }

    /// A client on a connection opened already.
    pub fn from_tcp(tcp: TcpStream, protocol: Protocol) -> RawClient {
        RawClient {
            tcp,
            tls: None,
            decoder: Decoder::client(protocol, PACKET_SIZE_BYTES_MAX),
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// A client speaking through `stream` (TLS, say), which runs over `tcp` (the same
    /// socket, for its timeouts).
    pub fn over(tcp: TcpStream, stream: impl Socket + 'static, protocol: Protocol) -> RawClient {
        RawClient {
            tls: Some(Box::new(stream)),
            ..RawClient::from_tcp(tcp, protocol)
        }
    }

    /// [`RawClient::open`] and [`RawClient::connected`]: a clean-start client `id` without
    /// keep alive, accepted.
    pub fn connected_to(
        addr: impl ToSocketAddrs,
        protocol: Protocol,
        id: &str,
        timeout: Duration,
    ) -> RawClient {
        RawClient::open(addr, protocol, timeout).connected(id)
    }

    fn io(&mut self) -> &mut dyn Socket {
        match &mut self.tls {
            Some(stream) => stream.as_mut(),
            None => &mut self.tcp,
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        self.tcp.set_read_timeout(timeout).unwrap();
    }

    /// Sends `connect`: the CONNACK, or the error or end of the connection that came
    /// instead, as text.
    pub fn try_connect(&mut self, connect: Connect) -> Result<ConnAck, String> {
        self.try_send(&Packet::Connect(Box::new(connect)))
            .map_err(|e| format!("write: {e}"))?;
        match self.try_recv() {
            Ok(Some(Packet::ConnAck(connack))) => Ok(*connack),
            Ok(Some(other)) => panic!("expected CONNACK, got {other:?}"),
            Ok(None) => Err("closed".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends `connect`: the CONNACK, which must come.
    pub fn connect(&mut self, connect: Connect) -> ConnAck {
        self.try_connect(connect)
            .unwrap_or_else(|e| panic!("expected CONNACK, got {e}"))
    }

    /// Connects as the clean-start client `id` without keep alive, which must be accepted.
    pub fn connected(mut self, id: &str) -> RawClient {
        let connack = self.connect(Connect::new(self.protocol, id, 0));
        assert_eq!(connack.reason_code, ReasonCode::Success, "CONNACK of {id}");
        self
    }

    pub fn try_send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let bytes = encode(packet, self.protocol);
        self.try_send_raw(&bytes)
    }

    pub fn send(&mut self, packet: &Packet) {
        self.try_send(packet).expect("write to ferrymq");
    }

    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let io = self.io();
        io.write_all(bytes)?;
        io.flush()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes).expect("write to ferrymq");
    }

    /// PUBLISH `payload` on `topic` at `qos` with `packet_id`.
    pub fn publish(&mut self, topic: &str, qos: QoS, packet_id: u16, payload: impl AsRef<[u8]>) {
        let mut publish = Publish::new(topic, qos, payload.as_ref().to_vec());
        publish.packet_id = packet_id;
        self.send(&Packet::Publish(publish));
    }

    /// SUBSCRIBE `packet_id` to `filter` at `qos`; the SUBACK must grant it.
    pub fn subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) {
        self.send(&subscribe_packet(packet_id, filter, qos));
        match self.expect() {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, packet_id);
                assert!(
                    suback.reason_codes.iter().all(|c| !c.is_error()),
                    "SUBACK {suback:?}"
                );
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next packet decoded from the bytes received so far, if they hold a whole one.
    fn decoded(&mut self) -> Result<Option<Packet>, String> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(|e| format!("the broker sent a malformed packet: {e}"))
    }

    /// One read into the buffer: false once the broker closed the connection (a reset
    /// counts as closed).
    fn read_more(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.io().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next packet; `Ok(None)` once the broker closed the connection; `Err` for a read
    /// timeout or a TLS error (an alert from the broker, say). A malformed packet fails the
    /// test.
    pub fn try_recv(&mut self) -> std::io::Result<Option<Packet>> {
        loop {
            if let Some(packet) = self.decoded().unwrap_or_else(|e| panic!("{e}")) {
                return Ok(Some(packet));
            }
            if !self.read_more()? {
                return Ok(None);
            }
        }
    }

    /// The next packet, or `None` once the broker closed the connection (between packets);
    /// fails the test on a read timeout.
    pub fn recv(&mut self) -> Option<Packet> {
        match self.try_recv() {
            Ok(Some(packet)) => Some(packet),
            Ok(None) => {
                assert!(
                    self.buf.is_empty(),
                    "closed inside a packet: {:02X?}",
                    self.buf
                );
                None
            }
            Err(e) => panic!("no packet from the broker: {e}"),
        }
    }

    /// The next packet, which must come.
    pub fn expect(&mut self) -> Packet {
        self.recv()
            .expect("a packet, not the end of the connection")
    }

    /// The next packet, or None once the connection ended, the read timed out or the
    /// broker sent bytes that do not decode. For threads that must not panic.
    pub fn next_or_end(&mut self) -> Option<Packet> {
        loop {
            match self.decoded() {
                Ok(Some(packet)) => return Some(packet),
                Ok(None) => {}
                Err(_) => return None,
            }
            if !matches!(self.read_more(), Ok(true)) {
                return None;
            }
        }
    }

    /// The next packet within `wait` (the read timeout is restored after).
    pub fn recv_within(&mut self, wait: Duration) -> Next {
        let timeout = self.tcp.read_timeout().unwrap();
        let deadline = Instant::now() + wait;
        let next = loop {
            match self.decoded() {
                Ok(Some(packet)) => break Next::Packet(packet),
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Next::Nothing;
            }
            self.set_read_timeout(Some(left));
            match self.read_more() {
                Ok(true) => {}
                Ok(false) => break Next::Closed,
                Err(e) if timed_out(&e) => break Next::Nothing,
                Err(e) => panic!("reading from ferrymq: {e}"),
            }
        };
        self.set_read_timeout(timeout);
        next
    }

    /// Exactly `count` bytes: those received and not decoded yet first.
    pub fn read_bytes(&mut self, count: usize) -> Vec<u8> {
        while self.buf.len() < count {
            match self.read_more() {
                Ok(true) => {}
                Ok(false) => panic!(
                    "closed after {:02X?}, waiting for {count} bytes",
                    &self.buf[..]
                ),
                Err(e) => panic!("waiting for {count} bytes, got {:02X?}: {e}", &self.buf[..]),
            }
        }
        self.buf.split_to(count).to_vec()
    }

    /// Reads exactly as many bytes as `expected` and asserts they are `expected`.
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        let mut got = self.buf.split().to_vec();
        let mut chunk = [0u8; 4096];
        while got.len() < expected.len() {
            let want = expected.len() - got.len();
            match self.io().read(&mut chunk[..want]) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("waiting for {expected:02X?}, got {got:02X?}: {e}"),
            }
        }
        assert_eq!(got, expected);
    }

    /// The raw bytes the broker sends from now until it closes the connection; fails the
    /// test if it stays open for the read timeout.
    pub fn rest_until_closed(&mut self) -> Vec<u8> {
        let pending = self.buf.split().to_vec();
        read_until_closed(self.io(), pending)
    }
}
