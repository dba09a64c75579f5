//! The `fleet` scenario, the shape Culex exists for: many devices at a modest rate. Each device
//! subscribes to its own command topic and publishes telemetry; one backend subscribes to all
//! the telemetry through a wildcard and sends every device commands. One event loop (tokio on
//! this thread) drives every connection: a device costs the load generator a task, not a
//! thread, so 19,000 of them fit beside the broker on two cores, and the generator's own CPU is
//! reported beside the broker's. Bounded by the run's duration, a connect deadline and a drain
//! limit.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use culex::protocol::{
    Ack, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName, PACKET_SIZE_MAX,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};

use crate::accounting::{latency_histogram, stamp, Tally, HEADER_BYTES};
use crate::broker::{resident_kb, usage_of};
use crate::scenario::{Outcome, Params, Percentiles};

/// The fleet's own knobs (the rest are the run's: devices are `--clients`, QoS, payload).
#[derive(Debug, Clone, Copy)]
pub struct FleetShape {
    /// Telemetry messages per second per device.
    pub device_rate: f64,
    /// Commands per second the backend sends each device.
    pub command_rate: f64,
    /// Levels of a telemetry topic (`fleet/<i>/tele` is 3; deeper ones add levels between).
    pub depth: usize,
}

/// What only a fleet run reports, beside the counts every scenario has.
#[derive(Debug, Clone, Serialize)]
pub struct FleetFigures {
    pub devices: usize,
    /// Devices that connected and subscribed (the rest are counted as failed, not run).
    pub devices_connected: usize,
    /// From the first device's connect to the last device's SUBACK.
    pub connect_seconds: f64,
    pub telemetry_sent: u64,
    pub telemetry_received: u64,
    pub telemetry_latency_us: Percentiles,
    pub commands_sent: u64,
    pub commands_received: u64,
    pub command_latency_us: Percentiles,
    /// Commands the backend did not send because every packet id was unacknowledged.
    pub commands_held_back: u64,
}

/// Devices connecting at once: more would overflow the broker's accept queue, and a dropped
/// SYN costs a one-second retransmission that measures the kernel, not the broker.
const CONNECTING_MAX: usize = 256;
/// A device that has not connected and subscribed by then counts as failed.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// Time for the broker to finish setting up the last connections before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the backend sends the commands that have come due.
const COMMAND_TICK: Duration = Duration::from_millis(10);
/// After publishing ends, the run waits for what is still on its way: it stops when nothing
/// arrived for this long, or at `DRAIN_MAX`.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
const DRAIN_MAX: Duration = Duration::from_secs(20);
const KEEP_ALIVE_SECS: u16 = 60;

struct Topics {
    /// The levels between the device's number and `tele`.
    middle: String,
}

impl Topics {
    fn new(depth: usize) -> Topics {
        Topics { middle: (3..depth.max(3)).map(|level| format!("/l{level}")).collect() }
    }

    fn telemetry(&self, device: usize) -> TopicName {
        TopicName::new(format!("fleet/{device}{}/tele", self.middle)).expect("valid topic")
    }

    fn telemetry_filter(&self) -> String {
        format!("fleet/+{}/tele", self.middle)
    }

    fn command(device: usize) -> TopicName {
        TopicName::new(format!("fleet/{device}/cmd")).expect("valid topic")
    }
}

/// What every task of the run shares (one thread: `Rc` and `RefCell`).
struct Run {
    params: Params,
    topics: Topics,
    epoch: Instant,
    /// Publishing starts here (each device offset within its first period) and stops at `end`.
    start: Instant,
    end: Instant,
    /// Telemetry as the backend saw it; commands as the devices saw them.
    telemetry: RefCell<Tally>,
    commands: RefCell<Tally>,
    telemetry_sent: RefCell<Vec<u64>>,
    commands_sent: RefCell<Vec<u64>>,
    commands_held_back: Cell<u64>,
    /// Devices still publishing, and the backend's commanding task: the drain begins when
    /// none is left (a publisher's last tick can come a little after `end`; a drain that did
    /// not wait for it counted its messages as lost).
    publishing: Cell<usize>,
    /// Errors of connections that ended before the run did (the first is reported).
    failures: Cell<u64>,
    first_failure: RefCell<Option<anyhow::Error>>,
}

impl Run {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn done_publishing(&self) {
        self.publishing.set(self.publishing.get() - 1);
    }

    fn fail(&self, error: anyhow::Error) {
        self.failures.set(self.failures.get() + 1);
        self.first_failure.borrow_mut().get_or_insert(error);
    }

    fn payload(&self, publisher: usize, sequence: u64) -> Bytes {
        let mut payload = vec![0; self.params.payload_bytes.max(HEADER_BYTES)];
        stamp(&mut payload, self.now_ns(), publisher as u32, sequence);
        Bytes::from(payload)
    }
}

pub fn run(params: &Params, broker: &str) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        params.target.tls.is_none() && !params.target.websockets,
        "fleet speaks MQTT over TCP only (no --tls or --websockets yet)"
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&runtime, fleet(params.clone(), broker))
}

/// A connection's reading side: the bytes read and not yet decoded.
struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Reader {
    /// The next packet; `None` at the end of the stream.
    async fn next(&mut self) -> io::Result<Option<Packet>> {
        loop {
            let decoded = Packet::decode(&mut self.buf, self.version, PACKET_SIZE_MAX)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(packet) = decoded {
                return Ok(Some(packet));
            }
            self.buf.reserve(512);
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// A connected and subscribed client: its halves, and the broker's Receive Maximum (5.0).
struct Client {
    reader: Reader,
    write: OwnedWriteHalf,
    receive_maximum: u16,
}

fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    packet.encode(version, out);
}

/// Connects as `client_id` (clean session) and subscribes to `filter`.
async fn connect(
    addr: SocketAddr,
    client_id: String,
    version: ProtocolVersion,
    filter: String,
    qos: QoS,
) -> anyhow::Result<Client> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = Reader { read, buf: BytesMut::new(), version };
    let mut out = BytesMut::new();
    let connect = Connect {
        protocol: version,
        bridge: false,
        clean_start: true,
        keep_alive_secs: KEEP_ALIVE_SECS,
        properties: Properties::default(),
        client_id: client_id.as_str().into(),
        will: None,
        username: None,
        password: None,
    };
    encode(&Packet::Connect(Box::new(connect)), version, &mut out);
    let subscribe = Subscribe {
        packet_id: NonZeroU16::MIN,
        properties: Properties::default(),
        filters: vec![(
            TopicFilter::new(filter)?,
            SubscriptionOptions { qos, ..Default::default() },
        )],
    };
    // SUBSCRIBE right behind CONNECT, as many device libraries send them.
    encode(&Packet::Subscribe(subscribe), version, &mut out);
    write.write_all(&out).await?;
    let receive_maximum = match reader.next().await? {
        Some(Packet::ConnAck(ack)) if !ack.reason.is_error() => {
            ack.properties.receive_maximum.map_or(u16::MAX, NonZeroU16::get)
        }
        other => bail!("{client_id}: CONNECT refused: {other:?}"),
    };
    match reader.next().await? {
        Some(Packet::SubAck(ack)) if !ack.reasons.iter().any(|r| r.is_error()) => {}
        other => bail!("{client_id}: SUBSCRIBE refused: {other:?}"),
    }
    Ok(Client { reader, write, receive_maximum })
}

fn publish(topic: TopicName, payload: Bytes, qos: QoS, packet_id: Option<PacketId>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id,
        properties: Properties::default(),
        payload,
    })
}

/// The answer a received PUBLISH needs, if any.
fn acknowledgement(publish: &Publish) -> Option<Packet> {
    let id = publish.packet_id?;
    match publish.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Packet::PubAck(Ack::new(id))),
        QoS::ExactlyOnce => Some(Packet::PubRec(Ack::new(id))),
    }
}

async fn fleet(params: Params, broker: &str) -> anyhow::Result<Outcome> {
    let shape = params.fleet;
    anyhow::ensure!(
        shape.device_rate > 0.0 && shape.device_rate <= 1000.0,
        "--device-rate must be in (0, 1000]"
    );
    anyhow::ensure!(
        (0.0..=1000.0).contains(&shape.command_rate),
        "--command-rate must be in [0, 1000]"
    );
    anyhow::ensure!(shape.depth <= 32, "--depth must be at most 32");
    let devices = params.clients;
    let addr = params.target.addr;
    let version = params.version;
    let run_id = std::process::id();
    let topics = Topics::new(shape.depth);
    let rss_before_kb = params.broker_pid.and_then(resident_kb);

    let backend_client = connect(
        params.subscribe_target.addr,
        format!("lt-{run_id}-backend"),
        version,
        topics.telemetry_filter(),
        params.qos,
    )
    .await
    .context("the backend")?;

    // A client connected before the fleet times round trips to itself while the fleet
    // connects: what a storm of connections costs the clients a broker already serves.
    let bystander_topic = TopicName::new(format!("loadtest/bystander/{run_id}"))?;
    let bystander = connect(
        addr,
        format!("lt-{run_id}-bystander"),
        version,
        bystander_topic.to_string(),
        QoS::AtMostOnce,
    )
    .await
    .context("the bystander")?;
    let storming = Rc::new(Cell::new(true));
    let probing = tokio::task::spawn_local(probe_round_trips(
        bystander,
        bystander_topic,
        version,
        storming.clone(),
    ));

    // Connect the fleet, at most CONNECTING_MAX at a time.
    let qos = params.qos;
    let connecting = Rc::new(Semaphore::new(CONNECTING_MAX));
    let connect_began = Instant::now();
    let handles: Vec<_> = (0..devices)
        .map(|i| {
            let connecting = connecting.clone();
            let filter = format!("fleet/{i}/cmd");
            tokio::task::spawn_local(async move {
                let _permit = connecting.acquire().await.expect("never closed");
                let client_id = format!("lt-{run_id}-d{i}");
                let connected = connect(addr, client_id, version, filter, qos);
                tokio::time::timeout(CONNECT_DEADLINE, connected)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("not connected within a minute")))
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(devices);
    let mut connect_failures = 0u64;
    let mut first_connect_error = None;
    for handle in handles {
        match handle.await? {
            Ok(client) => clients.push(Some(client)),
            Err(error) => {
                connect_failures += 1;
                first_connect_error.get_or_insert(error);
                clients.push(None);
            }
        }
    }
    let connect_seconds = connect_began.elapsed().as_secs_f64();
    storming.set(false);
    let bystander_ns = probing.await?.context("the bystander")?;
    let connected = clients.iter().filter(|c| c.is_some()).count();
    if connected == 0 {
        bail!("no device connected: {:#}", first_connect_error.expect("devices > 0"));
    }
    tokio::time::sleep(SETTLE).await;
    let rss_per_connection_kb = match (rss_before_kb, params.broker_pid.and_then(resident_kb)) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / (connected + 1) as f64)
        }
        _ => None,
    };

    let epoch = Instant::now();
    let start = epoch + Duration::from_millis(100);
    let measure_from = start + params.warmup;
    let end = measure_from + params.duration;
    let measure_from_ns = (measure_from - epoch).as_nanos() as u64;
    let run = Rc::new(Run {
        topics,
        epoch,
        start,
        end,
        telemetry: RefCell::new(Tally::new(devices, measure_from_ns)),
        commands: RefCell::new(Tally::new(devices, measure_from_ns)),
        telemetry_sent: RefCell::new(vec![0; devices]),
        commands_sent: RefCell::new(vec![0; devices]),
        commands_held_back: Cell::new(0),
        publishing: Cell::new(connected + 1),
        failures: Cell::new(connect_failures),
        first_failure: RefCell::new(first_connect_error),
        params,
    });
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::with_capacity(devices + 3);
    // Commands go only to the devices that are there to receive them.
    let mut present = Vec::with_capacity(connected);
    for (i, client) in clients.into_iter().enumerate() {
        if let Some(client) = client {
            present.push(i);
            tasks.push(tokio::task::spawn_local(device(run.clone(), i, client, stopped.clone())));
        }
    }
    tasks.extend(backend(run.clone(), backend_client, present, stopped));

    // CPU is counted over the measured span alone: not the connecting, not the drain.
    let pids = [run.params.broker_pid, Some(std::process::id())];
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = pids.map(|pid| pid.and_then(usage_of));
    tokio::time::sleep_until(end.into()).await;
    let cpu_after = pids.map(|pid| pid.and_then(usage_of));
    drain(&run).await;
    let _ = stop.send(true);
    for task in tasks {
        task.await?;
    }

    let telemetry_sent = run.telemetry_sent.borrow();
    let commands_sent = run.commands_sent.borrow();
    let telemetry = run.telemetry.borrow();
    let commands = run.commands.borrow();
    let mut latency = latency_histogram();
    latency.add(&telemetry.latency_ns)?;
    latency.add(&commands.latency_ns)?;
    let mut outcome = Outcome::new(broker, &run.params, &latency);
    let (tele_sent, cmd_sent) =
        (telemetry_sent.iter().sum::<u64>(), commands_sent.iter().sum::<u64>());
    outcome.publishers = connected + 1;
    outcome.subscribers = connected + 1;
    outcome.sent = tele_sent + cmd_sent;
    outcome.expected = outcome.sent;
    outcome.received = telemetry.received + commands.received;
    outcome.lost = telemetry.missing(&telemetry_sent) + commands.missing(&commands_sent);
    outcome.duplicates = telemetry.duplicates + commands.duplicates;
    outcome.out_of_order = telemetry.out_of_order + commands.out_of_order;
    let measured = telemetry.measured + commands.measured;
    outcome.seconds = run.params.duration.as_secs_f64();
    outcome.msgs_per_sec = measured as f64 / outcome.seconds;
    outcome.mb_per_sec = outcome.msgs_per_sec * run.params.payload_bytes as f64 / 1e6;
    let per_million = |i: usize| match (cpu_before[i], cpu_after[i]) {
        (Some(before), Some(after)) if measured > 0 => {
            Some((after.cpu_seconds - before.cpu_seconds) / (measured as f64 / 1e6))
        }
        _ => None,
    };
    outcome.broker_cpu_s_per_million = per_million(0);
    outcome.loadtest_cpu_s_per_million = per_million(1);
    outcome.broker_rss_per_connection_kb = rss_per_connection_kb;
    outcome.bystander_latency_us = Some(Percentiles::of(&bystander_ns));
    outcome.fleet = Some(FleetFigures {
        devices,
        devices_connected: connected,
        connect_seconds,
        telemetry_sent: tele_sent,
        telemetry_received: telemetry.received,
        telemetry_latency_us: Percentiles::of(&telemetry.latency_ns),
        commands_sent: cmd_sent,
        commands_received: commands.received,
        command_latency_us: Percentiles::of(&commands.latency_ns),
        commands_held_back: run.commands_held_back.get(),
    });
    let failures = run.failures.get();
    if let Some(error) = run.first_failure.borrow().as_ref() {
        eprintln!("{broker}: {failures} connections failed or ended early; the first: {error:#}");
    }
    Ok(outcome)
}

/// How often the bystander sends its probe while the fleet connects.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// The bystander: publishes to the topic it subscribes to every `PROBE_EVERY` and times each
/// round trip, while `storming` holds.
async fn probe_round_trips(
    mut client: Client,
    topic: TopicName,
    version: ProtocolVersion,
    storming: Rc<Cell<bool>>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut latency_ns = latency_histogram();
    let mut out = BytesMut::new();
    while storming.get() {
        let began = Instant::now();
        encode(
            &publish(topic.clone(), Bytes::from_static(b"probe"), QoS::AtMostOnce, None),
            version,
            &mut out,
        );
        client.write.write_all(&out).await?;
        out.clear();
        loop {
            match client.reader.next().await? {
                Some(Packet::Publish(_)) => break,
                Some(_) => continue,
                None => bail!("the broker closed the bystander"),
            }
        }
        latency_ns.saturating_record(began.elapsed().as_nanos() as u64);
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok(latency_ns)
}

/// A device: publishes telemetry every period (the fleet spread evenly over the first one),
/// keeps at most `--window` of it unacknowledged, and takes its commands, until the run stops.
async fn device(run: Rc<Run>, i: usize, client: Client, mut stopped: watch::Receiver<bool>) {
    let Client { mut reader, mut write, receive_maximum } = client;
    let params = &run.params;
    let (version, qos) = (params.version, params.qos);
    let window = params.window.min(usize::from(receive_maximum));
    let period = Duration::from_secs_f64(1.0 / params.fleet.device_rate);
    let mut next = run.start + period.mul_f64(i as f64 / params.clients as f64);
    let topic = run.topics.telemetry(i);
    let mut sequence = 0u64;
    let mut unacknowledged = 0usize;
    let mut last_id = 0u16;
    let mut last_sent = Instant::now();
    let mut out = BytesMut::new();
    let mut publishing = true;
    let result: anyhow::Result<()> = async {
        loop {
            if publishing && next >= run.end {
                publishing = false;
                run.done_publishing();
            }
            let ping_due = last_sent + Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 2);
            tokio::select! {
                packet = reader.next() => match packet? {
                    Some(Packet::Publish(command)) => {
                        run.commands.borrow_mut().record(&command.payload, run.now_ns());
                        if let Some(ack) = acknowledgement(&command) {
                            encode(&ack, version, &mut out);
                        }
                    }
                    Some(Packet::PubRel(ack)) => {
                        encode(&Packet::PubComp(Ack::new(ack.packet_id)), version, &mut out);
                    }
                    Some(Packet::PubRec(ack)) => {
                        encode(&Packet::PubRel(Ack::new(ack.packet_id)), version, &mut out);
                    }
                    Some(Packet::PubAck(_) | Packet::PubComp(_)) => {
                        unacknowledged = unacknowledged.saturating_sub(1);
                    }
                    Some(_) => {}
                    None if *stopped.borrow() => return Ok(()),
                    None => bail!("device {i}: the broker closed the connection"),
                },
                _ = tokio::time::sleep_until(next.into()), if publishing => {
                    next += period;
                    if qos == QoS::AtMostOnce || unacknowledged < window {
                        let packet_id = (qos != QoS::AtMostOnce).then(|| {
                            unacknowledged += 1;
                            last_id = last_id % u16::MAX + 1;
                            NonZeroU16::new(last_id).expect("from 1")
                        });
                        let payload = run.payload(i, sequence);
                        encode(&publish(topic.clone(), payload, qos, packet_id), version, &mut out);
                        sequence += 1;
                        run.telemetry_sent.borrow_mut()[i] = sequence;
                    }
                }
                _ = tokio::time::sleep_until(ping_due.into()) => {
                    encode(&Packet::PingReq, version, &mut out);
                }
                _ = stopped.changed() => {
                    encode(&Packet::Disconnect(Default::default()), version, &mut out);
                    write.write_all(&out).await?;
                    return Ok(());
                }
            }
            if !out.is_empty() {
                write.write_all(&out).await?;
                out.clear();
                last_sent = Instant::now();
            }
        }
    }
    .await;
    if publishing {
        run.done_publishing();
    }
    if let Err(error) = result {
        run.fail(error);
    }
}

/// The backend: one connection whose reading task takes all the telemetry, whose commanding
/// task sends each present device `--command-rate` commands a second (round robin, every
/// `COMMAND_TICK`), and whose writing task writes what both queue. Reading never waits on
/// writing, as a real backend's must not, or a broker pacing it could deadlock the two.
fn backend(
    run: Rc<Run>,
    client: Client,
    present: Vec<usize>,
    stopped: watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 3] {
    let Client { mut reader, mut write, receive_maximum } = client;
    let version = run.params.version;
    let out = Rc::new(RefCell::new(BytesMut::new()));
    let wake = Rc::new(Notify::new());
    // Ids of commands in flight are taken from here and given back when acknowledged.
    let free_ids: Rc<RefCell<Vec<PacketId>>> = Rc::new(RefCell::new(
        (1..=receive_maximum).rev().map(|id| NonZeroU16::new(id).expect("from 1")).collect(),
    ));

    let reading = {
        let (run, out, wake, free_ids, mut stopped) =
            (run.clone(), out.clone(), wake.clone(), free_ids.clone(), stopped.clone());
        tokio::task::spawn_local(async move {
            let result: anyhow::Result<()> = async {
                loop {
                    let packet = tokio::select! {
                        packet = reader.next() => packet?,
                        _ = stopped.changed() => return Ok(()),
                    };
                    let answer = match packet {
                        Some(Packet::Publish(telemetry)) => {
                            run.telemetry.borrow_mut().record(&telemetry.payload, run.now_ns());
                            acknowledgement(&telemetry)
                        }
                        Some(Packet::PubRec(ack)) => Some(Packet::PubRel(ack)),
                        Some(Packet::PubRel(ack)) => Some(Packet::PubComp(ack)),
                        Some(Packet::PubAck(ack) | Packet::PubComp(ack)) => {
                            free_ids.borrow_mut().push(ack.packet_id);
                            None
                        }
                        Some(_) => None,
                        None if *stopped.borrow() => return Ok(()),
                        None => bail!("backend: the broker closed the connection"),
                    };
                    if let Some(answer) = answer {
                        encode(&answer, version, &mut out.borrow_mut());
                        wake.notify_one();
                    }
                }
            }
            .await;
            if let Err(error) = result {
                run.fail(error);
            }
        })
    };

    let commanding = {
        let (run, out, wake) = (run.clone(), out.clone(), wake.clone());
        tokio::task::spawn_local(async move {
            let (qos, rate) = (run.params.qos, run.params.fleet.command_rate);
            if rate == 0.0 || present.is_empty() {
                run.done_publishing();
                return;
            }
            let mut tick = tokio::time::interval_at(run.start.into(), COMMAND_TICK);
            let mut issued = 0u64;
            let mut last = false;
            while !last {
                tick.tick().await;
                // The tick at or after `end` issues what is due up to `end` exactly.
                last = Instant::now() >= run.end;
                let elapsed = run.start.elapsed().min(run.end - run.start).as_secs_f64();
                let due = (elapsed * present.len() as f64 * rate) as u64;
                let mut out = out.borrow_mut();
                for n in issued..due {
                    let device = present[(n % present.len() as u64) as usize];
                    let packet_id = match qos {
                        QoS::AtMostOnce => None,
                        _ => match free_ids.borrow_mut().pop() {
                            Some(id) => Some(id),
                            None => {
                                run.commands_held_back.set(run.commands_held_back.get() + 1);
                                continue;
                            }
                        },
                    };
                    let sequence = {
                        let mut sent = run.commands_sent.borrow_mut();
                        sent[device] += 1;
                        sent[device] - 1
                    };
                    let command = publish(
                        Topics::command(device),
                        run.payload(device, sequence),
                        qos,
                        packet_id,
                    );
                    encode(&command, version, &mut out);
                }
                issued = issued.max(due);
                wake.notify_one();
            }
            run.done_publishing();
        })
    };

    let writing = tokio::task::spawn_local(async move {
        let mut stopped = stopped;
        let mut stopping = false;
        let result: anyhow::Result<()> = async {
            while !stopping {
                let keep_alive = Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 2);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = stopped.changed() => {
                        stopping = true;
                        encode(&Packet::Disconnect(Default::default()), version, &mut out.borrow_mut());
                    }
                    _ = tokio::time::sleep(keep_alive) => {
                        encode(&Packet::PingReq, version, &mut out.borrow_mut());
                    }
                }
                let chunk = out.borrow_mut().split();
                if !chunk.is_empty() {
                    write.write_all(&chunk).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            run.fail(error);
        }
    });
    [reading, commanding, writing]
}

/// Waits until every publisher has stopped, then until everything sent arrived, or nothing
/// arrived for `DRAIN_IDLE`; never longer than `DRAIN_MAX` in all.
async fn drain(run: &Run) {
    let began = Instant::now();
    while run.publishing.get() > 0 && began.elapsed() < DRAIN_MAX {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = || run.telemetry.borrow().received + run.commands.borrow().received;
    let sent = || {
        run.telemetry_sent.borrow().iter().sum::<u64>()
            + run.commands_sent.borrow().iter().sum::<u64>()
    };
    let (mut last, mut last_change) = (received(), began);
    while received() < sent() && began.elapsed() < DRAIN_MAX && last_change.elapsed() < DRAIN_IDLE {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if received() != last {
            (last, last_change) = (received(), Instant::now());
        }
    }
}
