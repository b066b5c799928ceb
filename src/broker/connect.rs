//! From accept to a served connection: on a TLS listener the handshake, then read the
//! CONNECT, both within the connect timeout; refuse what the specification says to refuse,
//! then serve the client on the shard that owns its client id, handing the socket (and TLS
//! session) over if that is another shard.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::auth::{AuthDecision, ClientIdentity, Credentials, DenyReason};
use crate::log_budget::{unlogged_suffix, LogBudget};
use crate::protocol::{
    ConnAck, Connect, DecodeError, Decoder, Encode, MqttStr, Packet, Protocol, ReasonCode,
    PACKET_SIZE_BYTES_MAX,
};
use crate::runtime::{self, SharedStream, Stream, TcpListener, TcpStream};
use crate::tls::{self, HandshakeFailure, TlsListener};

use super::connection::{write_loop, Connection};
use super::context::{ConnectionSlot, ShardRef};
use super::link::{read_more, Link, READ_CHUNK_BYTES};
use super::router;
use super::shard::shard_for;
use super::shard_message::ShardMessage;
use crate::metrics::stats::ShardStats;

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY_MS: u64 = 10;
/// At most one log line per this interval for failed accepts on one listener of a shard.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts connections on `listener`; `tls` for a TLS listener.
pub async fn accept_loop(shard: ShardRef, listener: TcpListener, tls: Option<Arc<TlsListener>>) {
    let mut error_log = LogBudget::new();
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                ShardStats::incr(&shard.stats.accept_errors);
                log_accept_error(&mut error_log, &listener, &std::io::Error::from(error));
                runtime::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        if shard.shutting_down.load(Ordering::Relaxed) {
            continue;
        }
        let Some(slot) =
            ConnectionSlot::take(&shard.connections_open, shard.config.connections_max)
        else {
            ShardStats::incr(&shard.stats.connections_refused_max);
            continue; // dropping the stream closes it
        };
        ShardStats::incr(&shard.stats.connections_accepted);
        let _ = stream.set_nodelay(true);
        runtime::spawn(handle_accepted(shard.clone(), stream, tls.clone(), slot));
    }
}

/// Logs a failed accept on `listener`, at most one line per [`ACCEPT_ERROR_LOG_INTERVAL`]
/// with the count of those not logged. Out of descriptors (EMFILE, ENFILE) is the usual
/// cause, and the line says what to raise.
fn log_accept_error(budget: &mut LogBudget, listener: &TcpListener, error: &std::io::Error) {
    let Some(unlogged) = budget.admit(Instant::now(), ACCEPT_ERROR_LOG_INTERVAL) else {
        return;
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| "a listener".to_string(), |a| a.to_string());
    let hint = match error.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "; each connection holds a descriptor: raise ulimit -n (LimitNOFILE=) and \
             fs.nr_open, see tuning.md \"Open files\""
        }
        _ => "",
    };
    let more = unlogged_suffix(unlogged);
    tracing::warn!(
        listener = %addr,
        error = %error,
        unlogged,
        "accept on {addr} failed: {error}{hint}{more}"
    );
}

/// The protocol level byte of a CONNECT at the start of `buf`, if enough has arrived.
fn connect_level(buf: &[u8]) -> Option<u8> {
    let header = crate::protocol::parse_fixed_header(buf, PACKET_SIZE_BYTES_MAX).ok()??;
    let name_at = header.header_len;
    let name_len = usize::from(u16::from_be_bytes([
        *buf.get(name_at)?,
        *buf.get(name_at + 1)?,
    ]));
    buf.get(name_at + 2 + name_len).copied()
}

/// The protocol version a refusing CONNACK is written in, from the CONNECT's level byte.
/// 5 gets the 5.0 form. So does a level above 5, a version newer than ours: its client
/// most likely reads CONNACK as 5.0 lays it out (reason code, then properties), and
/// [MQTT-3.1.2-2] lets the server answer CONNACK 0x84 Unsupported Protocol Version, which
/// the MQTT 5.0 conformance suite expects. Levels below 5 (3 and 4 with a bad protocol
/// name, or 0 to 2, which no version uses) get the 3.1.1 form, return code 0x01, which
/// 3.1 and 3.1.1 clients read.
fn refusal_protocol(level: Option<u8>) -> Protocol {
    match level {
        Some(level) if level >= 5 => Protocol::V5,
        _ => Protocol::V3_1_1,
    }
}

enum ConnectFailure {
    Closed,
    Invalid {
        error: DecodeError,
        level: Option<u8>,
    },
}

async fn read_connect(
    stream: &SharedStream,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
) -> Result<Box<Connect>, ConnectFailure> {
    loop {
        let level = connect_level(buf);
        match decoder.decode(buf) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => unreachable!("a fresh server decoder only yields CONNECT"),
            Ok(None) => {}
            Err(error) => return Err(ConnectFailure::Invalid { error, level }),
        }
        match read_more(stream, buf).await {
            Ok(0) | Err(_) => return Err(ConnectFailure::Closed),
            Ok(_) => {}
        }
    }
}

/// Sends a refusing CONNACK and closes. 3.1.1 only has return codes for some cases; for
/// the others the connection is just closed [MQTT-3.2.2-?], [MQTT-4.8.0-1].
async fn refuse(stream: SharedStream, protocol: Protocol, reason: ReasonCode) {
    let v3_has_code = matches!(
        reason,
        ReasonCode::UnsupportedProtocolVersion
            | ReasonCode::ClientIdentifierNotValid
            | ReasonCode::BadUserNameOrPassword
            | ReasonCode::NotAuthorized
            | ReasonCode::ServerUnavailable
    );
    if protocol.is_v5() || v3_has_code {
        let mut buf = BytesMut::new();
        ConnAck::new(false, reason).encode(protocol, &mut buf);
        let _ = runtime::write_all_shared(&stream, &buf).await;
    }
    runtime::shutdown_shared(&stream);
}

/// Runs the TLS handshake on `tcp` within `limit`: the stream and the verified client
/// certificate's identity, or None (counted and logged) when the handshake failed.
async fn handshake(
    shard: &ShardRef,
    tcp: TcpStream,
    tls: &TlsListener,
    limit: Duration,
) -> Option<(Stream, Option<String>)> {
    let peer = tcp.peer_addr().ok();
    let result =
        runtime::timeout(limit, runtime::tls::accept(tcp, tls.server_config.clone())).await;
    let error = match result {
        Some(Ok(stream)) => {
            ShardStats::incr(&shard.stats.tls_handshakes);
            let identity = stream
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|certificate| tls::certificate_identity(certificate));
            return Some((Stream::from(stream), identity));
        }
        Some(Err(error)) => Some(error),
        None => None,
    };
    ShardStats::incr(&shard.stats.tls_handshake_failures);
    match &error {
        Some(error) => {
            tls::log_handshake_failure(&tls.label, peer, HandshakeFailure::of(error), Some(error))
        }
        None => tls::log_handshake_failure(&tls.label, peer, HandshakeFailure::Timeout, None),
    }
    None
}

async fn handle_accepted(
    shard: ShardRef,
    tcp: TcpStream,
    tls: Option<Arc<TlsListener>>,
    slot: ConnectionSlot,
) {
    let config = shard.config.clone();
    let accepted_at = Instant::now();
    // One limit from accept to a complete CONNECT, handshake included.
    let limit = Duration::from_millis(config.connect_timeout_ms);
    let (stream, cert_identity) = match &tls {
        None => (Stream::from(tcp), None),
        Some(tls) => match Box::pin(handshake(&shard, tcp, tls, limit)).await {
            Some(accepted) => accepted,
            None => return,
        },
    };
    let stream = runtime::share(stream);
    let mut decoder = Decoder::server(config.packet_size_bytes_max);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let left = limit.saturating_sub(accepted_at.elapsed());
    // Boxed, like the handshake above and the will and finish below: short-lived states
    // that would otherwise size this task's future, which lives as long as the connection
    // (tuning.md, "Memory per connection").
    let read = Box::pin(runtime::timeout(
        left,
        read_connect(&stream, &mut decoder, &mut buf),
    ))
    .await;
    let mut connect = match read {
        // No CONNECT in time, or the peer left: close without a word.
        None | Some(Err(ConnectFailure::Closed)) => return,
        Some(Err(ConnectFailure::Invalid { error, level })) => {
            ShardStats::incr(&shard.stats.protocol_errors);
            let protocol = refusal_protocol(level);
            Box::pin(refuse(stream, protocol, error.reason_code())).await;
            return;
        }
        Some(Ok(connect)) => connect,
    };
    let protocol = connect.protocol;
    let mut assigned_client_id = false;
    if connect.client_id.is_empty() {
        // 3.1 requires an id; 3.1.1 accepts none only with Clean Session [MQTT-3.1.3-8].
        if protocol == Protocol::V3_1 || (protocol == Protocol::V3_1_1 && !connect.clean_start) {
            Box::pin(refuse(
                stream,
                protocol,
                ReasonCode::ClientIdentifierNotValid,
            ))
            .await;
            return;
        }
        connect.client_id = shard.state.borrow_mut().assign_client_id();
        assigned_client_id = true;
    }
    if connect.properties.authentication_method.is_some() {
        // Enhanced authentication is not offered [MQTT-4.12.0-1].
        Box::pin(refuse(
            stream,
            protocol,
            ReasonCode::BadAuthenticationMethod,
        ))
        .await;
        return;
    }
    if tls.as_ref().is_some_and(|tls| tls.use_identity_as_username) {
        // The certificate, not the CONNECT, names the user; a client without a usable
        // identity gets what a bad user name gets (Mosquitto does the same).
        let identity = cert_identity.as_ref().and_then(|identity| {
            MqttStr::from_bytes(Bytes::copy_from_slice(identity.as_bytes()), "user name").ok()
        });
        match identity {
            Some(identity) => connect.username = Some(identity),
            None => {
                Box::pin(refuse(stream, protocol, ReasonCode::BadUserNameOrPassword)).await;
                return;
            }
        }
    }
    if let Err(reason) = authorize_connect(&shard, &connect, cert_identity.as_deref(), &tls) {
        ShardStats::incr(&shard.stats.auth_failures);
        Box::pin(refuse(stream, protocol, reason)).await;
        return;
    }
    let owner = shard_for(connect.client_id.as_bytes(), shard.count);
    if owner == shard.id {
        serve(
            shard,
            stream,
            connect,
            buf,
            assigned_client_id,
            cert_identity,
            slot,
        )
        .await;
        return;
    }
    ShardStats::incr(&shard.stats.connections_handed_off);
    let Ok(mut stream) = std::rc::Rc::try_unwrap(stream).map(std::cell::RefCell::into_inner) else {
        unreachable!("only this task holds the socket before the hand-off");
    };
    // The hand-off needs a spare descriptor for a moment. Out of them, the client waits
    // (it has no CONNACK yet) until one frees up or its connect timeout ends.
    let detached = loop {
        match runtime::detach_stream(stream) {
            Ok(detached) => break Some(detached),
            Err(failed)
                if runtime::out_of_descriptors(&failed.0) && accepted_at.elapsed() < limit =>
            {
                stream = failed.1;
                runtime::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
            Err(failed) => {
                let error = failed.0;
                ShardStats::incr(&shard.stats.handoff_failures);
                tracing::warn!(
                    client_id = %connect.client_id,
                    error = %error,
                    "hand-off of client {} to shard {owner} failed: {error}; connection closed",
                    connect.client_id
                );
                break None;
            }
        }
    };
    match detached {
        Some(stream) => {
            let handoff = ShardMessage::Handoff {
                stream,
                connect,
                buffered: buf,
                assigned_client_id,
                cert_identity,
                slot,
            };
            // A hand-off that cannot be sent (the shard is stopping) drops the socket and
            // gives the place back.
            let _ = Box::pin(shard.senders.send(owner, handoff)).await;
        }
        None => drop(slot),
    }
}

/// Authentication and the will's ACL check, on the accepting shard before any session is
/// touched: the CONNACK refusal code for a client that may not connect [MQTT-3.1.4-2].
/// A 3.1.1 client gets return code 4 or 5 for it (ConnAck encodes the 5.0 code down).
fn authorize_connect(
    shard: &ShardRef,
    connect: &Connect,
    cert_identity: Option<&str>,
    tls: &Option<Arc<TlsListener>>,
) -> Result<(), ReasonCode> {
    let credentials = Credentials {
        username: connect.username.as_ref().map(|name| name.as_str()),
        password: connect.password.as_deref(),
        tls_identity: cert_identity,
        use_identity_as_username: tls.as_ref().is_some_and(|tls| tls.use_identity_as_username),
    };
    let mut state = shard.state.borrow_mut();
    let username = match state.authenticate(&credentials) {
        AuthDecision::Allow { username } => username,
        AuthDecision::Deny(DenyReason::BadCredentials) => {
            return Err(ReasonCode::BadUserNameOrPassword)
        }
        AuthDecision::Deny(DenyReason::NotAuthorized) => return Err(ReasonCode::NotAuthorized),
    };
    // The will is published when the client is gone, so its topic is checked now, as
    // Mosquitto does: a client may not leave a will where it could not publish.
    if let Some(will) = &connect.will {
        let identity = ClientIdentity::new(connect.client_id.as_str(), username.as_deref());
        if !state.may_publish_will(&identity, will.topic.as_str()) {
            return Err(ReasonCode::NotAuthorized);
        }
    }
    Ok(())
}

/// Serves a client whose session this shard owns, from its CONNECT to the end.
/// `cert_identity`: see [`Link::cert_identity`].
pub async fn serve(
    shard: ShardRef,
    stream: SharedStream,
    mut connect: Box<Connect>,
    mut buf: BytesMut,
    assigned_client_id: bool,
    cert_identity: Option<String>,
    slot: ConnectionSlot,
) {
    let protocol = connect.protocol;
    let client_packet_size_max = connect
        .properties
        .maximum_packet_size_bytes
        .unwrap_or(PACKET_SIZE_BYTES_MAX);
    let connection_id = shard.state.borrow_mut().next_connection_id();
    // Only 5.0 clients can receive aliases; their CONNECT says how many.
    let client_topic_alias_maximum = connect.properties.topic_alias_maximum.unwrap_or(0);
    let connection = Rc::new(Connection::new(
        connection_id,
        protocol,
        client_packet_size_max,
        client_topic_alias_maximum,
    ));
    let client_id = connect.client_id.clone();
    let keep_alive_secs = connect.keep_alive_secs;
    // In a cluster, the session may be on another node: it comes here first.
    Box::pin(super::cluster::claim_session(
        &shard,
        &client_id,
        connect.clean_start,
        connect.will.clone(),
    ))
    .await;
    let now = Instant::now();
    let opened = shard.state.borrow_mut().open_session(
        &mut connect,
        connection.clone(),
        assigned_client_id,
        now,
    );
    shard.state.borrow_mut().set_identity(
        &connect.client_id,
        connect.username.as_ref().map(|name| name.as_str()),
    );
    connection.send(Packet::ConnAck(Box::new(opened.connack)));
    runtime::spawn(write_loop(
        connection.clone(),
        stream.clone(),
        shard.stats.clone(),
    ));
    shard.state.borrow_mut().resume_session(&client_id, now);
    if let Some(will) = opened.will_to_publish {
        Box::pin(router::publish(&shard, will)).await;
    }
    let mut decoder = Decoder::server_connected(protocol, shard.config.packet_size_bytes_max);
    let username = connect.username.clone();
    let mut link = Link::new(shard, connection, client_id, protocol, keep_alive_secs);
    link.username = username;
    link.cert_identity = cert_identity;
    link.slot = Some(slot);
    link.connect_session_expiry_zero =
        connect.properties.session_expiry_interval_secs.unwrap_or(0) == 0;
    let exit = link.run(&stream, &mut decoder, &mut buf).await;
    Box::pin(link.finish(exit)).await;
}
