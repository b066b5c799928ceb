//! rumqttc clients (3.1.1 in [`v4`], 5.0 in [`v5`]) whose event loop runs on a thread of
//! its own; events are buffered so that waiting for one kind (a SUBACK, say) never loses
//! another (a PUBLISH). The thread stops at the first connection error, so rumqttc never
//! reconnects behind a test's back.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// Longest wait for something that must happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn qos4(level: u8) -> rumqttc::QoS {
    match level {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

pub fn qos5(level: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// 3.1.1 options for client `id` of the broker on 127.0.0.1:`port`: keep alive 30 s,
/// packets up to 1 MiB.
pub fn options4(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    options
}

/// 5.0 options for client `id` of the broker on 127.0.0.1:`port`: keep alive 30 s,
/// Maximum Packet Size 1 MiB.
pub fn options5(port: u16, id: &str) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1 << 20));
    options
}

/// A 3.1.1 client with `options`, which must be accepted.
pub fn connect4_with(options: rumqttc::MqttOptions) -> v4::Mqtt {
    let (client, connection) = rumqttc::Client::new(options, 64);
    v4::Mqtt::connected(client, connection)
}

/// A 5.0 client with `options`, which must be accepted.
pub fn connect5_with(options: rumqttc::v5::MqttOptions) -> v5::Mqtt {
    let (client, connection) = rumqttc::v5::Client::new(options, 64);
    v5::Mqtt::connected(client, connection)
}

macro_rules! driven_client {
    ($module:ident, $($imports:item)*) => {
        pub mod $module {
            use super::*;
            $($imports)*

            pub struct Mqtt {
                pub client: Client,
                pub connack: ConnAck,
                rx: Receiver<Result<Event, ConnectionError>>,
                /// PUBLISHes received and not taken yet.
                publishes: VecDeque<Publish>,
                /// (topic, payload) of every PUBLISH received, in order.
                pub received: Vec<(String, String)>,
                incoming: VecDeque<Packet>,
                closed: Option<ConnectionError>,
            }

            impl Mqtt {
                /// Runs `connection` and waits for its CONNACK: the client if it accepts,
                /// the error (`ConnectionRefused(code)`) if not.
                pub fn start(
                    client: Client,
                    mut connection: Connection,
                ) -> Result<Mqtt, Box<ConnectionError>> {
                    let (tx, rx) = mpsc::channel();
                    thread::spawn(move || {
                        while let Ok(event) = connection.recv() {
                            let stop = event.is_err();
                            if tx.send(event).is_err() || stop {
                                break;
                            }
                        }
                    });
                    match rx.recv_timeout(WAIT) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => Ok(Mqtt {
                            client,
                            connack,
                            rx,
                            publishes: VecDeque::new(),
                            received: Vec::new(),
                            incoming: VecDeque::new(),
                            closed: None,
                        }),
                        Ok(Err(error)) => Err(Box::new(error)),
                        other => panic!("expected a CONNACK, got {other:?}"),
                    }
                }

                /// [`Mqtt::start`], which must be accepted.
                pub fn connected(client: Client, connection: Connection) -> Mqtt {
                    Mqtt::start(client, connection).unwrap_or_else(|error| {
                        panic!("expected an accepting CONNACK, got {error:?}")
                    })
                }

                /// Takes one event before `deadline`; `false` on timeout or once closed.
                fn poll(&mut self, deadline: Instant) -> bool {
                    if self.closed.is_some() {
                        return false;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(left) {
                        Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                            self.received
                                .push((lossy(publish.topic.as_ref()), lossy(&publish.payload)));
                            self.publishes.push_back(publish);
                        }
                        Ok(Ok(Event::Incoming(packet))) => self.incoming.push_back(packet),
                        Ok(Ok(Event::Outgoing(_))) => {}
                        Ok(Err(error)) => self.closed = Some(error),
                        Err(_) => return false,
                    }
                    true
                }

                /// Takes every event that comes within `period`.
                pub fn drain(&mut self, period: Duration) {
                    let deadline = Instant::now() + period;
                    while self.poll(deadline) {}
                }

                /// Whether a PUBLISH with `payload` arrived, waiting up to `timeout` for it.
                pub fn got(&mut self, payload: &str, timeout: Duration) -> bool {
                    let deadline = Instant::now() + timeout;
                    loop {
                        if self.received.iter().any(|(_, p)| p == payload) {
                            return true;
                        }
                        if !self.poll(deadline) {
                            return self.received.iter().any(|(_, p)| p == payload);
                        }
                    }
                }

                /// The next PUBLISH received, if one comes within `timeout`.
                pub fn try_publish(&mut self, timeout: Duration) -> Option<Publish> {
                    let deadline = Instant::now() + timeout;
                    loop {
                        if let Some(publish) = self.publishes.pop_front() {
                            return Some(publish);
                        }
                        if !self.poll(deadline) {
                            return None;
                        }
                    }
                }

                /// The next PUBLISH received; fails the test after `WAIT`.
                pub fn publish(&mut self) -> Publish {
                    match self.try_publish(WAIT) {
                        Some(publish) => publish,
                        None => panic!("no PUBLISH within {WAIT:?} (closed: {:?})", self.closed),
                    }
                }

                pub fn publishes(&mut self, count: usize) -> Vec<Publish> {
                    (0..count).map(|_| self.publish()).collect()
                }

                /// Fails the test if a PUBLISH arrives within `quiet`.
                pub fn no_publish(&mut self, quiet: Duration) {
                    if let Some(publish) = self.try_publish(quiet) {
                        panic!("unexpected PUBLISH {publish:?}");
                    }
                }

                /// The first packet (not a PUBLISH) received that `wanted` accepts.
                pub fn incoming(&mut self, what: &str, wanted: impl Fn(&Packet) -> bool) -> Packet {
                    let deadline = Instant::now() + WAIT;
                    loop {
                        if let Some(at) = self.incoming.iter().position(&wanted) {
                            return self.incoming.remove(at).unwrap();
                        }
                        if !self.poll(deadline) {
                            panic!("no {what} within {WAIT:?} (closed: {:?})", self.closed);
                        }
                    }
                }

                pub fn wait_suback(&mut self) -> SubAck {
                    match self.incoming("SUBACK", |p| matches!(p, Packet::SubAck(_))) {
                        Packet::SubAck(suback) => suback,
                        _ => unreachable!(),
                    }
                }

                /// Waits for the end of a publish exchange: PUBACK for QoS 1, PUBCOMP for 2.
                pub fn wait_acked(&mut self, qos: u8) {
                    match qos {
                        1 => {
                            self.incoming("PUBACK", |p| matches!(p, Packet::PubAck(_)));
                        }
                        2 => {
                            self.incoming("PUBCOMP", |p| matches!(p, Packet::PubComp(_)));
                        }
                        _ => {}
                    }
                }

                /// Whether the connection is still open (events pending are taken first).
                pub fn is_open(&mut self) -> bool {
                    self.drain(Duration::ZERO);
                    self.closed.is_none()
                }

                /// Waits until the broker closes the connection; returns how it ended.
                pub fn closed(&mut self) -> ConnectionError {
                    let deadline = Instant::now() + WAIT;
                    while self.closed.is_none() {
                        if !self.poll(deadline) && self.closed.is_none() {
                            panic!("connection still open after {WAIT:?}");
                        }
                    }
                    self.closed.take().unwrap()
                }

                /// Sends DISCONNECT and waits for the broker to close the connection.
                pub fn disconnect(mut self) {
                    self.client.disconnect().unwrap();
                    self.closed();
                }

                /// Sends DISCONNECT if it still can and waits up to `WAIT` for the end of the
                /// connection, whatever comes.
                pub fn disconnect_quietly(mut self) {
                    let _ = self.client.disconnect();
                    let deadline = Instant::now() + WAIT;
                    while self.closed.is_none() && self.poll(deadline) {}
                }
            }
        }
    };
}

driven_client! {
    v4,
    use rumqttc::{Client, ConnAck, Connection, ConnectionError, Event, Packet, Publish, SubAck};
}
driven_client! {
    v5,
    use rumqttc::v5::{Client, Connection, ConnectionError, Event};
    use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish, SubAck};
}
