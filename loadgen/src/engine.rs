//! The per-core driver: one shard per CPU (the runtime seam starts and pins them), each
//! driving its share of the devices as [`Device`] state machines in one slab.
//!
//! A shard's loop, bounded per turn: see the run's flags (stop, publishers done), start the
//! connections its pacer allows, fire the device timers that are due, then wait on the
//! shard's epoll set (see `net.rs` for why epoll) until a socket is ready or the next timer
//! is due, and let each ready device read, act and send. The read, decode and write
//! buffers belong to the shard and serve one device at a time, so a device keeps only its
//! state: its slot of about 200 bytes, plus a few while it has messages in flight. With
//! `--tls` a device also holds its TLS connection (see `tls.rs`) while connected: about
//! 8 KiB more, mostly rustls's own record buffers and keys.
//!
//! Shards share nothing but the [`Control`]: flags set by the main thread (go, stop), the
//! counts that let subscribers and publishers wait for each other, and each shard's own
//! counters.
//!
//! With `ferrymq-loadgen commands` ([`Scenario::commands`]) every device is a subscriber,
//! a command receiver in a persistent session: it stays until the run stops, and those
//! planned to go offline leave once commands flow (DISCONNECT, or the connection dropped)
//! and reconnect to their session after their time away.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use bytes::BytesMut;
use ferrymq::protocol::Decoder;
use ferrymq::runtime;
use rustls::ClientConnection;

use crate::device::{Device, Event, Failure, Observed, Phase};
use crate::net::{self, Epoll, Transfer, CLOSED, READABLE, WRITABLE};
use crate::report::ShardCounters;
use crate::scenario::{mix64, now_us, Scenario};
use crate::tls;
use crate::verify::DeviceRecord;

/// Bytes one read takes from a socket: the shard's one read buffer.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Largest packet accepted from the broker.
const PACKET_SIZE_BYTES_MAX: u32 = 1 << 20;
/// Ready sockets taken per epoll wait: the bound on I/O work per loop turn.
const EVENTS_PER_TURN: usize = 1024;
/// Longest wait in epoll: the run's flags are looked at least this often.
const WAIT_MS_MAX: u64 = 100;
/// After its DISCONNECT a device waits this long for the broker to close first, so that
/// TIME_WAIT stays on the broker's side and no client port is held for a minute.
const DISCONNECT_WAIT_US: u64 = 2_000_000;
/// Subscribers stay this long after the last publisher is done, for the last copies.
const SUBSCRIBER_LINGER_US: u64 = 2_000_000;
/// How long publishers wait for all subscribers to be subscribed before they start, on
/// top of twice the time the subscribers' connections take at the connect rate (many
/// with `--one-to-one`).
const SUBSCRIBERS_READY_WAIT_US: u64 = 60_000_000;
/// How far the connect pacer may fall behind its schedule and still catch up. A loop turn
/// lasts a millisecond or more (epoll waits in whole milliseconds), so above a connection
/// per turn the pacer must start several per turn to keep the rate; after an idle spell it
/// starts from now rather than burst.
const CONNECT_CATCH_UP_US: u64 = 5_000;
/// Connections started in one loop turn at most: the bound on connect work per turn.
const CONNECTS_PER_TURN_MAX: usize = 256;
/// Connection attempts of one device before it gives up, and the pause between them.
const CONNECT_ATTEMPTS_MAX: u8 = 10;
const RECONNECT_PAUSE_US: u64 = 1_000_000;

/// What the main thread and the shards share. Every field is written by one side only, or
/// is a counter; a device's message path touches only its shard's counters.
#[derive(Debug, Default)]
pub struct Control {
    pub go: AtomicBool,
    pub stop: AtomicBool,
    pub stop_at_us: AtomicU64,
    pub shards_ready: AtomicUsize,
    pub subscribers_ready: AtomicUsize,
    pub publishers_alive: AtomicUsize,
    pub publishers_done_at_us: AtomicU64,
    /// `commands`: when the first command was produced (µs since the epoch; 0: not yet);
    /// the devices' offline plans count from it.
    pub commands_started_us: AtomicU64,
    pub counters: Vec<ShardCounters>,
}

impl Control {
    pub fn new(shards: usize, publisher_slots: usize) -> Control {
        Control {
            counters: (0..shards).map(|_| ShardCounters::default()).collect(),
            publishers_alive: AtomicUsize::new(publisher_slots),
            ..Default::default()
        }
    }

    pub fn request_stop(&self) {
        if !self.stop.swap(true, Ordering::AcqRel) {
            self.stop_at_us.store(now_us(), Ordering::Release);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// What a shard hands back when its devices are done.
pub struct ShardOutput {
    pub records: Vec<DeviceRecord>,
    pub observed: Observed,
}

/// Runs the scenario on one shard per CPU of `scenario.cores`; returns once every device
/// is done. The shards start, report ready and wait for `control.go`.
pub fn run(scenario: Arc<Scenario>, control: Arc<Control>) -> io::Result<Vec<ShardOutput>> {
    let (output_tx, output_rx) = mpsc::channel();
    let cores = scenario.cores.clone();
    runtime::run_shards::<(), _, _>(&cores, 1, move |env| {
        let scenario = scenario.clone();
        let control = control.clone();
        let output_tx = output_tx.clone();
        async move {
            // The driver is the shard's only task: it waits in epoll_wait, not in the
            // executor, since nothing else runs on this core's executor.
            let output =
                Driver::new(env.shard_id, env.shard_count, scenario, control).map(Driver::run);
            match output {
                Ok(output) => {
                    let _ = output_tx.send(output);
                }
                Err(error) => eprintln!("ferrymq-loadgen: shard {}: {error}", env.shard_id),
            }
        }
    })?;
    Ok(output_rx.try_iter().collect())
}

/// A command receiver's trip offline (`commands --offline-fraction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offline {
    /// Not one of the devices that go offline, or back from it.
    Never,
    /// Will go offline once commands flow.
    Planned,
    /// DISCONNECT sent (or the connection being dropped) to go offline.
    Leaving,
    /// Offline, waiting to reconnect to its session.
    Away,
}

/// Where a slot's device is, seen from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Waiting for the pacer to let it connect.
    Queued,
    /// Waiting out the pause before the next attempt.
    Backoff,
    /// Holds a socket.
    Active,
    Done,
}

/// One device and what the driver keeps for it.
struct Slot {
    device: Device,
    socket: Option<OwnedFd>,
    /// With `--tls`, the connection's TLS state, from the TCP connect to the close; a
    /// plain device pays this empty pointer only.
    tls: Option<Box<ClientConnection>>,
    state: SlotState,
    /// Bumped at every close, so that a stale epoll event or timer finds no match.
    generation: u32,
    attempts: u8,
    /// Counted in the connected gauge.
    connected: bool,
    /// A subscriber's SUBACK was counted in `subscribers_ready` (once, not per reconnect).
    subscribed: bool,
    offline: Offline,
    /// When the current connection attempt started its TCP connect (µs since the epoch).
    connect_started_us: u64,
    /// Connect, CONNACK, SUBACK, disconnect or back-off deadline of the current step.
    deadline_us: u64,
    /// The wake-up this slot has in the timer heap (u64::MAX: none).
    timer_us: u64,
}

impl Slot {
    fn new(device: Device) -> Slot {
        Slot {
            device,
            socket: None,
            tls: None,
            state: SlotState::Queued,
            generation: 0,
            attempts: 0,
            connected: false,
            subscribed: false,
            offline: Offline::Never,
            connect_started_us: 0,
            deadline_us: 0,
            timer_us: u64::MAX,
        }
    }
}

/// What the driver keeps per device, heap aside: the loadgen's promise is under 1 KiB per
/// connected device in all.
const SLOT_BYTES_MAX: usize = 256;
const _: () = assert!(std::mem::size_of::<Slot>() <= SLOT_BYTES_MAX);

fn token(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | slot as u64
}

/// One shard's devices and the buffers they share.
struct Driver {
    index: usize,
    shard_count: usize,
    scenario: Arc<Scenario>,
    control: Arc<Control>,
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    slots: Vec<Slot>,
    /// Slots of subscribing devices come first: 0..subscriber_slots.
    subscriber_slots: usize,
    publisher_slots: usize,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    connect_queue: VecDeque<usize>,
    next_connect_us: u64,
    connect_interval_us: u64,
    rx: Vec<u8>,
    decode: BytesMut,
    tx: BytesMut,
    observed: Observed,
    records: Vec<DeviceRecord>,
    /// Next offset of this shard's churn sequence (shard, shard + shards, ...).
    churn_next: u64,
    slots_alive: usize,
    publishers_released: bool,
    /// How long publishers wait for the subscribers at most.
    subscribers_wait_us: u64,
    started_us: u64,
    stop_seen: bool,
    subscribers_leaving: bool,
    /// `commands`: the first command was seen produced and the offline plans armed.
    commands_seen: bool,
}

impl Driver {
    fn new(
        index: usize,
        shard_count: usize,
        scenario: Arc<Scenario>,
        control: Arc<Control>,
    ) -> io::Result<Driver> {
        let share = |total: u64| {
            (0..total)
                .filter(|k| *k as usize % shard_count == index)
                .count()
        };
        let subscriber_slots = share(u64::from(scenario.subscribers));
        let publisher_slots = share(u64::from(scenario.devices));
        let rate_per_shard = (f64::from(scenario.connect_rate) / shard_count as f64).max(0.001);
        Ok(Driver {
            index,
            shard_count,
            epoll: Epoll::new()?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_TURN],
            slots: Vec::new(),
            subscriber_slots,
            publisher_slots,
            timers: BinaryHeap::new(),
            connect_queue: VecDeque::new(),
            next_connect_us: 0,
            connect_interval_us: (1e6 / rate_per_shard) as u64,
            rx: vec![0; READ_CHUNK_BYTES],
            decode: BytesMut::with_capacity(READ_CHUNK_BYTES * 2),
            tx: BytesMut::with_capacity(READ_CHUNK_BYTES),
            observed: Observed::new(subscriber_slots),
            records: Vec::new(),
            churn_next: index as u64,
            slots_alive: 0,
            publishers_released: false,
            subscribers_wait_us: SUBSCRIBERS_READY_WAIT_US
                + u64::from(scenario.subscribers) * 2_000_000
                    / u64::from(scenario.connect_rate.max(1)),
            started_us: 0,
            stop_seen: false,
            subscribers_leaving: false,
            commands_seen: false,
            scenario,
            control,
        })
    }

    fn counters(&self) -> &ShardCounters {
        &self.control.counters[self.index]
    }

    fn run(mut self) -> ShardOutput {
        self.control.shards_ready.fetch_add(1, Ordering::AcqRel);
        while !self.control.go.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.started_us = now_us();
        // The slab and the structures sized by the device count are allocated after the
        // memory baseline: they are part of what a device costs.
        let devices = self.subscriber_slots + self.publisher_slots;
        self.slots.reserve_exact(devices);
        self.timers.reserve(devices);
        self.connect_queue.reserve(devices);
        let first_subscriber = self.index as u64;
        for k in 0..self.subscriber_slots {
            let number = first_subscriber + (k * self.shard_count) as u64;
            let mut slot = Slot::new(Device::subscriber(number as u32, k as u32));
            if let Some(commands) = &self.scenario.commands {
                let device = self.scenario.id_start + number;
                if commands.leaves_after_us(device).is_some() {
                    slot.offline = Offline::Planned;
                }
            }
            self.slots.push(slot);
            self.connect_queue.push_back(k);
        }
        self.slots_alive = self.subscriber_slots + self.publisher_slots;
        loop {
            let now = now_us();
            self.look_at_flags(now);
            self.start_connections(now);
            self.fire_timers(now);
            if self.slots_alive == 0 {
                break;
            }
            let timeout_us = self.wait_us(now_us());
            let mut events = std::mem::take(&mut self.events);
            let ready = if self.scenario.exact_schedule {
                self.epoll.wait_us(&mut events, timeout_us)
            } else {
                self.epoll
                    .wait(&mut events, timeout_us.div_ceil(1000) as i32)
            };
            for event in &events[..ready] {
                let (token, flags) = (event.u64, event.events);
                self.on_ready(token, flags);
            }
            self.events = events;
        }
        ShardOutput {
            records: self.records,
            observed: self.observed,
        }
    }

    /// How long the loop may sleep, in µs: until the next timer, connection slot or flag
    /// check. Epoll waits in whole milliseconds, rounded up, unless the schedule is exact.
    fn wait_us(&self, now: u64) -> u64 {
        let mut wake = now + WAIT_MS_MAX * 1000;
        if let Some(Reverse((when, _))) = self.timers.peek() {
            wake = wake.min(*when);
        }
        if !self.connect_queue.is_empty() {
            wake = wake.min(self.next_connect_us);
        }
        if !self.publishers_released {
            wake = wake.min(now + 10_000);
        }
        wake.saturating_sub(now)
    }

    /// Reacts to the run's flags: publishers may start, the run stops, subscribers leave.
    fn look_at_flags(&mut self, now: u64) {
        let control = self.control.clone();
        if !self.publishers_released {
            let subscribers_ready = control.subscribers_ready.load(Ordering::Acquire)
                >= self.scenario.subscribers as usize;
            if subscribers_ready
                || now >= self.started_us + self.subscribers_wait_us
                || control.stopping()
            {
                self.release_publishers();
            }
        }
        if !self.stop_seen && control.stopping() {
            self.stop_seen = true;
            // Devices not connected yet will not be; connected ones drain and leave.
            while let Some(slot) = self.connect_queue.pop_front() {
                self.finish(slot, now);
            }
            for slot in 0..self.slots.len() {
                match self.slots[slot].state {
                    SlotState::Active => self.step(slot, now),
                    SlotState::Backoff => self.finish(slot, now),
                    _ => {}
                }
            }
        }
        if !self.commands_seen
            && control.commands_started_us.load(Ordering::Acquire) != 0
            && !control.stopping()
        {
            // Commands flow: arm the offline plans of the connected devices (the others
            // look at theirs when they are connected).
            self.commands_seen = true;
            for slot in 0..self.subscriber_slots {
                if self.slots[slot].offline == Offline::Planned
                    && self.slots[slot].state == SlotState::Active
                {
                    self.step(slot, now);
                }
            }
        }
        // Command receivers stay until the run stops; other subscribers until the last
        // publisher is done and a little more.
        let subscribers_done = match self.scenario.commands {
            Some(_) => control.stopping(),
            None => control.publishers_alive.load(Ordering::Acquire) == 0,
        };
        if !self.subscribers_leaving && subscribers_done {
            let done_at = match self.scenario.commands {
                Some(_) => 0,
                None => control.publishers_done_at_us.load(Ordering::Acquire),
            };
            if now >= done_at + SUBSCRIBER_LINGER_US {
                self.subscribers_leaving = true;
                for slot in 0..self.subscriber_slots {
                    if self.slots[slot].state == SlotState::Active {
                        self.step(slot, now);
                    }
                }
            }
        }
    }

    fn release_publishers(&mut self) {
        self.publishers_released = true;
        for k in 0..self.publisher_slots {
            let number = match self.scenario.churn_total {
                Some(_) => self.take_churn_number(),
                None => Some(self.scenario.id_start + (self.index + k * self.shard_count) as u64),
            };
            let slot = self.slots.len();
            match number {
                Some(number) => {
                    self.slots.push(Slot::new(Device::publisher(number)));
                    self.connect_queue.push_back(slot);
                }
                None => {
                    // More churn slots than ids: this one has nothing to do.
                    let mut idle = Slot::new(Device::publisher(0));
                    idle.state = SlotState::Done;
                    self.slots.push(idle);
                    self.slots_alive -= 1;
                    self.publisher_gone();
                }
            }
        }
    }

    fn take_churn_number(&mut self) -> Option<u64> {
        if self.churn_next >= self.scenario.publisher_ids() || self.control.stopping() {
            return None;
        }
        let number = self.scenario.id_start + self.churn_next;
        self.churn_next += self.shard_count as u64;
        Some(number)
    }

    fn publisher_gone(&self) {
        let control = &self.control;
        if control.publishers_alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            control
                .publishers_done_at_us
                .store(now_us(), Ordering::Release);
        }
    }

    /// Starts the connections the pacer allows now.
    fn start_connections(&mut self, now: u64) {
        let catch_up_us = CONNECT_CATCH_UP_US.max(self.connect_interval_us);
        let mut started = 0;
        while let Some(&slot) = self.connect_queue.front() {
            if self.next_connect_us > now || started == CONNECTS_PER_TURN_MAX {
                break;
            }
            self.connect_queue.pop_front();
            // Keep the rate; after an idle spell start from now rather than burst.
            self.next_connect_us = self.next_connect_us.max(now.saturating_sub(catch_up_us))
                + self.connect_interval_us;
            self.open(slot, now);
            started += 1;
        }
    }

    fn open(&mut self, slot: usize, now: u64) {
        let (source, target) = self.scenario.route(self.slots[slot].device.number);
        // The clock read afresh: connections started earlier in this turn are not part
        // of this one's connect latency.
        let started = now_us();
        self.observed.connect_started(started);
        self.slots[slot].attempts += 1;
        self.slots[slot].connect_started_us = started;
        let (socket, connected_now) = match net::connect(target, source) {
            Ok(started) => started,
            Err(_) => return self.close(slot, Err(Failure::ConnectRefused), now),
        };
        let s = &mut self.slots[slot];
        if self
            .epoll
            .add(socket.as_raw_fd(), token(slot, s.generation))
            .is_err()
        {
            return self.close(slot, Err(Failure::ConnectRefused), now);
        }
        s.socket = Some(socket);
        s.state = SlotState::Active;
        s.device.phase = Phase::Connecting;
        s.deadline_us = now + self.scenario.connect_timeout.as_micros() as u64;
        if connected_now && !self.tcp_connected(slot, now) {
            return;
        }
        self.step(slot, now);
    }

    /// The TCP connection is up: start TLS (its handshake goes out with the first send)
    /// and queue CONNECT, which a TLS connection holds until its handshake is done.
    /// `false` when the slot was closed.
    fn tcp_connected(&mut self, slot: usize, now: u64) -> bool {
        if let Some(client) = &self.scenario.tls {
            match client.connect() {
                Ok(connection) => self.slots[slot].tls = Some(connection),
                Err(_) => {
                    self.close(slot, Err(Failure::TlsHandshake), now);
                    return false;
                }
            }
        }
        let s = &mut self.slots[slot];
        s.device.leftover = Vec::new();
        s.device.pending_tx = Vec::new();
        s.device.connect(&self.scenario, now, &mut self.tx);
        true
    }

    fn fire_timers(&mut self, now: u64) {
        // At most the timers queued when this pass began: a step that arms its timer again
        // for `now` (a device behind its schedule whose socket is full) waits for the next
        // turn, after the sockets were polled. Without the bound the pass never ends and no
        // socket is read again (seen against Mosquitto at saturation).
        let mut budget = self.timers.len();
        while let Some(&Reverse((when, slot))) = self.timers.peek() {
            if when > now || budget == 0 {
                break;
            }
            budget -= 1;
            self.timers.pop();
            let s = &mut self.slots[slot];
            if s.timer_us != when {
                continue; // replaced by an earlier wake-up
            }
            s.timer_us = u64::MAX;
            match s.state {
                SlotState::Active => self.step(slot, now),
                SlotState::Backoff => {
                    s.state = SlotState::Queued;
                    self.connect_queue.push_back(slot);
                }
                SlotState::Queued | SlotState::Done => {}
            }
        }
    }

    fn schedule(&mut self, slot: usize, when: u64) {
        let s = &mut self.slots[slot];
        if when < s.timer_us {
            s.timer_us = when;
            self.timers.push(Reverse((when, slot)));
        }
    }

    /// A socket is ready: finish a connect, send what waits, read what arrived.
    fn on_ready(&mut self, token: u64, flags: u32) {
        let slot = (token & u64::from(u32::MAX)) as usize;
        let generation = (token >> 32) as u32;
        let now = now_us();
        let s = &mut self.slots[slot];
        if s.generation != generation || s.state != SlotState::Active {
            return;
        }
        let Some(fd) = s.socket.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        if s.device.phase == Phase::Connecting {
            if net::take_error(fd).is_some() || flags & WRITABLE == 0 {
                if flags & CLOSED != 0 {
                    return self.close(slot, Err(Failure::ConnectRefused), now);
                }
                return;
            }
            if !self.tcp_connected(slot, now) {
                return;
            }
        } else if flags & WRITABLE != 0 && !s.device.pending_tx.is_empty() {
            match net::send(fd, &s.device.pending_tx) {
                Transfer::Done(n) => {
                    s.device.pending_tx.drain(..n);
                    if s.device.pending_tx.is_empty() {
                        s.device.pending_tx = Vec::new();
                    }
                }
                Transfer::WouldBlock => {}
                Transfer::Closed | Transfer::Failed => return self.lost(slot, now),
            }
        }
        if flags & (READABLE | CLOSED) != 0 && !self.read(slot, fd, now) {
            return;
        }
        self.step(slot, now);
    }

    /// Reads until the socket is drained; `false` once the slot was closed.
    fn read(&mut self, slot: usize, fd: i32, now: u64) -> bool {
        if self.slots[slot].tls.is_some() {
            return self.read_tls(slot, fd, now);
        }
        loop {
            match net::recv(fd, &mut self.rx) {
                Transfer::Done(n) => {
                    if let Err(failure) = self.receive(slot, n, now) {
                        self.close(slot, Err(failure), now);
                        return false;
                    }
                    if self.slots[slot].state != SlotState::Active {
                        return false;
                    }
                    if n < self.rx.len() {
                        return true;
                    }
                }
                Transfer::WouldBlock => return true,
                Transfer::Closed | Transfer::Failed => {
                    self.lost(slot, now);
                    return false;
                }
            }
        }
    }

    /// [`Driver::read`] for a TLS device: ciphertext from the socket into its connection,
    /// plaintext out of it into the shard's read buffer and on to the device.
    fn read_tls(&mut self, slot: usize, fd: i32, now: u64) -> bool {
        loop {
            let s = &mut self.slots[slot];
            let Some(connection) = s.tls.as_mut() else {
                return false;
            };
            match tls::read(connection, fd, &mut self.rx) {
                tls::Read::Plaintext(n) => {
                    if let Err(failure) = self.receive(slot, n, now) {
                        self.close(slot, Err(failure), now);
                        return false;
                    }
                    if self.slots[slot].state != SlotState::Active {
                        return false;
                    }
                }
                tls::Read::WouldBlock => return true,
                tls::Read::Refused => {
                    // Tell the broker why (the alert rustls queued), then give up.
                    tls::flush(connection, fd);
                    let failure = match s.device.phase {
                        Phase::Connecting | Phase::AwaitConnAck => Failure::TlsHandshake,
                        _ => Failure::Tls,
                    };
                    self.close(slot, Err(failure), now);
                    return false;
                }
                tls::Read::Closed | tls::Read::Failed => {
                    self.lost(slot, now);
                    return false;
                }
            }
        }
    }

    /// The connection ended from the broker's side (or an error): expected only after
    /// our DISCONNECT.
    fn lost(&mut self, slot: usize, now: u64) {
        let result = if self.slots[slot].device.phase == Phase::Disconnecting {
            Ok(())
        } else {
            Err(Failure::ClosedByBroker)
        };
        self.close(slot, result, now);
    }

    /// Decodes the `n` bytes just read (after the device's partial packet) and lets the
    /// device act on each packet.
    fn receive(&mut self, slot: usize, n: usize, now: u64) -> Result<(), Failure> {
        let scenario = &*self.scenario;
        let counters = &self.control.counters[self.index];
        let s = &mut self.slots[slot];
        let device = &mut s.device;
        let buf = &mut self.decode;
        buf.clear();
        if !device.leftover.is_empty() {
            buf.extend_from_slice(&device.leftover);
            device.leftover = Vec::new();
        }
        buf.extend_from_slice(&self.rx[..n]);
        let mut decoder = Decoder::client(scenario.protocol, PACKET_SIZE_BYTES_MAX);
        let mut connected = false;
        loop {
            let packet = match decoder.decode(buf) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(_) => return Err(Failure::Decode),
            };
            match device.handle(
                packet,
                scenario,
                now,
                &mut self.tx,
                &mut self.observed,
                counters,
            )? {
                Event::Connected => connected = true,
                Event::Subscribed => {
                    if !s.subscribed {
                        s.subscribed = true;
                        self.control
                            .subscribers_ready
                            .fetch_add(1, Ordering::AcqRel);
                    }
                }
                Event::None => {}
            }
        }
        if !buf.is_empty() {
            device.leftover = buf.to_vec();
            buf.clear();
        }
        if connected {
            device.next_publish_us = first_publish_us(scenario, device.number, now);
            s.connected = true;
            if s.offline == Offline::Away {
                s.offline = Offline::Never;
                counters.offline.fetch_sub(1, Ordering::Relaxed);
                self.observed.reconnected(s.connect_started_us, now);
            } else {
                self.observed.connected(s.connect_started_us, now);
            }
            let counters = self.counters();
            counters.connected.fetch_add(1, Ordering::Relaxed);
            ShardCounters::add(&counters.connects, 1);
        }
        Ok(())
    }

    /// Lets the device act on time and on the run's flags, sends, and sets its next
    /// wake-up.
    fn step(&mut self, slot: usize, now: u64) {
        let scenario = &*self.scenario;
        let control = &*self.control;
        let drain_us = scenario.drain.as_micros() as u64;
        let s = &mut self.slots[slot];
        let device = &mut s.device;
        let mut wake = u64::MAX;
        match device.phase {
            Phase::Idle => return,
            Phase::Connecting | Phase::AwaitConnAck | Phase::AwaitSubAck => {
                if now >= s.deadline_us {
                    let failure = if device.phase == Phase::AwaitSubAck {
                        Failure::SubAckRefused
                    } else {
                        Failure::ConnectTimeout
                    };
                    return self.close(slot, Err(failure), now);
                }
                wake = s.deadline_us;
            }
            Phase::Running => {
                let leave = match device.subscriber_slot {
                    Some(_) => self.subscribers_leaving,
                    None => {
                        // Publish only once what was sent before is out of the process.
                        let blocked = !device.pending_tx.is_empty()
                            || s.tls.as_ref().is_some_and(|c| c.wants_write());
                        if !self.stop_seen && device.has_messages_left(scenario) && !blocked {
                            let sent = device.maybe_publish(
                                scenario,
                                now,
                                &mut self.tx,
                                &control.counters[self.index],
                            );
                            if sent > 0 {
                                let first = &mut self.observed.first_publish_us;
                                *first = (*first).min(now);
                            }
                        }
                        let done_publishing = self.stop_seen || !device.has_messages_left(scenario);
                        let drained = device.inflight.is_empty() && device.awaiting_pubcomp == 0;
                        let oldest_due = device.inflight.first().map(|m| m.sent_us + drain_us);
                        let stop_due = self
                            .stop_seen
                            .then(|| control.stop_at_us.load(Ordering::Acquire) + drain_us);
                        let drain_over = oldest_due.is_some_and(|t| now >= t)
                            || stop_due.is_some_and(|t| now >= t);
                        if done_publishing && !drained && drain_over {
                            for _ in 0..device.inflight.len() {
                                self.observed.count(Failure::AckTimeout);
                            }
                        }
                        if let Some(t) = oldest_due {
                            wake = wake.min(t);
                        }
                        if let Some(t) = stop_due.filter(|_| !drained) {
                            wake = wake.min(t);
                        }
                        done_publishing && (drained || drain_over)
                    }
                };
                // A command receiver whose time to go offline came.
                let mut go_offline = false;
                if s.offline == Offline::Planned && !leave {
                    let started = control.commands_started_us.load(Ordering::Acquire);
                    let plan = scenario
                        .commands
                        .as_ref()
                        .and_then(|c| c.leaves_after_us(scenario.id_start + device.number));
                    if let (Some(after), true) = (plan, started != 0) {
                        if now >= started + after {
                            go_offline = true;
                        } else {
                            wake = wake.min(started + after);
                        }
                    }
                }
                let drop_now =
                    go_offline && scenario.commands.as_ref().is_some_and(|c| c.offline_drop);
                if go_offline {
                    s.offline = Offline::Leaving;
                }
                if drop_now {
                    // Like a device losing its network: what it owes goes out (its
                    // PUBACKs), then the connection closes without a DISCONNECT.
                    if !self.send(slot) {
                        return self.lost(slot, now);
                    }
                    return self.close(slot, Ok(()), now);
                }
                if leave || go_offline {
                    // A command receiver leaving at the end takes its session with it.
                    let end_session = leave && scenario.commands.is_some();
                    device.disconnect(scenario, &mut self.tx, end_session);
                    s.deadline_us = now + DISCONNECT_WAIT_US;
                    wake = s.deadline_us;
                } else {
                    device.maybe_ping(scenario, now, &mut self.tx);
                    wake = wake.min(device.next_wake_us(scenario, !self.stop_seen));
                }
            }
            Phase::Disconnecting => {
                if now >= s.deadline_us {
                    return self.close(slot, Ok(()), now);
                }
                wake = s.deadline_us;
            }
        }
        if !self.send(slot) {
            return self.lost(slot, now);
        }
        if wake != u64::MAX {
            self.schedule(slot, wake);
        }
    }

    /// Sends what the device encoded into the shard's write buffer: at once if nothing of
    /// its own waits, else behind what does. `false` when the socket failed.
    fn send(&mut self, slot: usize) -> bool {
        let s = &mut self.slots[slot];
        if let Some(connection) = s.tls.as_mut() {
            // TLS: the connection keeps what the socket did not take (ciphertext, or
            // plaintext while the handshake is under way), and sends it when it can.
            let sent = match s.socket.as_ref() {
                Some(fd) => tls::write(connection, fd.as_raw_fd(), &self.tx),
                None => true,
            };
            self.tx.clear();
            return sent;
        }
        if self.tx.is_empty() {
            return true;
        }
        let Some(fd) = s.socket.as_ref().map(|f| f.as_raw_fd()) else {
            self.tx.clear();
            return true;
        };
        if !s.device.pending_tx.is_empty() {
            s.device.pending_tx.extend_from_slice(&self.tx);
            self.tx.clear();
            return true;
        }
        let sent = match net::send(fd, &self.tx) {
            Transfer::Done(n) => n,
            Transfer::WouldBlock => 0,
            Transfer::Closed | Transfer::Failed => {
                self.tx.clear();
                return false;
            }
        };
        if sent < self.tx.len() {
            s.device.pending_tx.extend_from_slice(&self.tx[sent..]);
        }
        self.tx.clear();
        true
    }

    /// Ends the slot's connection (if any); then retries, takes the next churn id or
    /// finishes.
    fn close(&mut self, slot: usize, result: Result<(), Failure>, now: u64) {
        let s = &mut self.slots[slot];
        s.socket = None; // closing the descriptor also removes it from the epoll set
        s.tls = None;
        s.generation = s.generation.wrapping_add(1);
        s.timer_us = u64::MAX;
        if s.connected {
            s.connected = false;
            self.control.counters[self.index]
                .connected
                .fetch_sub(1, Ordering::Relaxed);
        }
        s.device.abandon_inflight();
        let Err(failure) = result else {
            if s.offline == Offline::Leaving {
                return self.stay_away(slot, now);
            }
            return self.finish(slot, now);
        };
        self.observed.count(failure);
        let counters = &self.control.counters[self.index];
        if failure.is_connect() {
            ShardCounters::add(&counters.connect_errors, 1);
        } else {
            ShardCounters::add(&counters.errors, 1);
        }
        if self.slots[slot].offline == Offline::Leaving {
            // It was going offline anyway.
            return self.stay_away(slot, now);
        }
        let s = &mut self.slots[slot];
        let wants_more =
            s.device.subscriber_slot.is_some() || s.device.has_messages_left(&self.scenario);
        if wants_more && s.attempts < CONNECT_ATTEMPTS_MAX && !self.stop_seen {
            s.state = SlotState::Backoff;
            self.schedule(slot, now + RECONNECT_PAUSE_US);
        } else {
            self.finish(slot, now);
        }
    }

    /// A command receiver went offline: it reconnects to its session once its time away
    /// is over (unless the run stops first).
    fn stay_away(&mut self, slot: usize, now: u64) {
        let away_us = self
            .scenario
            .commands
            .as_ref()
            .map_or(0, |c| c.offline_us());
        if self.stop_seen {
            self.slots[slot].offline = Offline::Never;
            return self.finish(slot, now);
        }
        self.slots[slot].offline = Offline::Away;
        self.slots[slot].state = SlotState::Backoff;
        self.observed.went_offline += 1;
        self.control.counters[self.index]
            .offline
            .fetch_add(1, Ordering::Relaxed);
        self.schedule(slot, now + away_us);
    }

    /// The slot's device is done: record it, then start the next churn id or retire.
    fn finish(&mut self, slot: usize, _now: u64) {
        let s = &mut self.slots[slot];
        s.timer_us = u64::MAX;
        if s.offline == Offline::Away {
            // Offline for good (it gave up reconnecting, or the run stopped).
            s.offline = Offline::Never;
            self.control.counters[self.index]
                .offline
                .fetch_sub(1, Ordering::Relaxed);
        }
        let s = &mut self.slots[slot];
        if s.device.subscriber_slot.is_some() {
            s.state = SlotState::Done;
            self.slots_alive -= 1;
            return;
        }
        let device = &mut s.device;
        // A device that never connected and sent nothing did not take part.
        if device.seq_next > 0 || s.attempts > 0 {
            self.records.push(DeviceRecord {
                number: device.number,
                sent: device.seq_next,
                sent_qos0: device.sent_qos0,
                acked: device.acked,
                unacked: std::mem::take(&mut device.unacked),
            });
        }
        let next = match self.scenario.churn_total {
            Some(_) if !self.stop_seen => self.take_churn_number(),
            _ => None,
        };
        let s = &mut self.slots[slot];
        match next {
            Some(number) => {
                s.device = Device::publisher(number);
                s.attempts = 0;
                s.state = SlotState::Queued;
                self.connect_queue.push_back(slot);
            }
            None => {
                s.state = SlotState::Done;
                s.device = Device::publisher(s.device.number);
                self.slots_alive -= 1;
                self.publisher_gone();
            }
        }
    }
}

/// When a freshly connected device publishes first: at once with churn (it connected to
/// publish), else at a phase within the interval that spreads devices evenly.
fn first_publish_us(scenario: &Scenario, number: u64, now: u64) -> u64 {
    let interval_us = scenario.publish_interval.as_micros() as u64;
    if scenario.churn_total.is_some() || interval_us == 0 {
        return now;
    }
    now + mix64(number) % interval_us
}
