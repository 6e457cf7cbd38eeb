//! The embedded MQTT broker (`waypoint serve --embedded`, `waypoint demo`):
//! an in-process [rumqttd] so a demo or a small pilot needs no Mosquitto.
//!
//! ## Two listeners, one router
//! rumqttd speaks exactly one protocol version per listener (a v5 listener
//! refuses a 3.1.1 CONNECT and vice versa), so the broker opens two, both on
//! one router:
//! - the **device listener** on the address asked for (`serve --embedded --mqtt-addr`, `demo --mqtt-port`), MQTT
//!   3.1.1: what firmware-sim, OwnTracks and typical tags speak;
//! - the **ingest listener** on a free loopback port chosen at start, MQTT
//!   v5, for the server's own clients (the ingest session and the alert
//!   publisher), which connect to [`EmbeddedBroker::ingest_addr`].
//!
//! ## What rumqttd 0.20 does and does not do (measured in
//! `tests/embedded_broker.rs`, read in its source; see docs/embedded.md)
//! - v4 publishers and a v5 subscriber interoperate through the router.
//! - A persistent session (clean start off) survives a disconnect: on
//!   reconnect rumqttd re-sends, from its log, every QoS 1 message it had
//!   sent and not received a PUBACK for, then continues. It requires PUBACKs
//!   in the order it sent the messages (an out-of-order PUBACK ends the
//!   connection); Waypoint's acker sends them in arrival order.
//! - **Receive Maximum is ignored.** rumqttd has at most
//!   [`INFLIGHT_PER_CONNECTION`] (a constant in rumqttd: 100) unacknowledged
//!   QoS 1 publishes towards any client. That is below Waypoint's default
//!   Receive Maximum (5000) so the shard queues cannot overflow; a server
//!   configured with a Receive Maximum under 100 would see deferrals. As
//!   acks wait for commits, the window also caps ingest at about 100
//!   messages per batch round trip: measured 5.2k–5.5k msg/s end to end
//!   with the default 10 ms batch delay, ~9k–10k with 1–2 ms, against
//!   17k–20k through Mosquitto in the same runs (docs/embedded.md).
//! - **The client's Maximum Packet Size is ignored**: rumqttd forwards any
//!   publish it accepted. A publish larger than the server's client accepts
//!   would end the ingest connection on every redelivery, so the broker's
//!   own limit must stay below it: [`BrokerOptions::for_ingest`] does that.
//!   A device sending more than the limit is disconnected (3.1.1 has no
//!   way to refuse one publish), as Mosquitto does with `max_packet_size`.
//! - Session Expiry is ignored: persistent sessions (the server's and every
//!   device's) are kept until the process ends.
//!
//! ## Limits that make it a demo and pilot broker, not a production one
//! - **The log is in memory.** A message the server has not acknowledged is
//!   lost if the process dies; acceptable only because the broker lives and
//!   dies with the server (nothing acknowledged by Waypoint is lost: it is
//!   in PostgreSQL). rumqttd has already sent the device its PUBACK, though,
//!   so the device will not send the message again.
//! - **The log is a ring per subscription filter** of
//!   [`BrokerOptions::log_segment_bytes`] × [`BrokerOptions::log_segments`]
//!   bytes. While the server cannot keep up (database down), messages pile
//!   up there; once a filter's ring is full the oldest are dropped, and
//!   rumqttd only logs a warning ("jumping to head"). Its memory is held
//!   once filled, whether or not the messages were consumed.
//! - **A publish that matches no subscription is dropped** (acknowledged to
//!   the device, routed to nobody), and each start of the process is a
//!   fresh broker: whatever devices send before the server's session
//!   exists is lost. [`EmbeddedBroker::prepare_ingest_session`] creates that
//!   session right after the broker starts, so the server's start-up (which
//!   reads the database first) is covered; only the milliseconds between
//!   the two calls are not.
//! - **No topic ACL, no authentication, no TLS** (built without rumqttd's
//!   TLS features): any client that reaches the port may publish as any
//!   device and read every alert. Bind to loopback unless the network is
//!   trusted; [`EmbeddedBroker::start`] warns otherwise.
//! - **It cannot be stopped**: rumqttd has no shutdown, its threads run until
//!   the process exits. Dropping [`EmbeddedBroker`] leaves them running.
//!
//! ## Ports
//! rumqttd binds its listeners in its own threads and, if binding fails,
//! only logs an error, and it cannot report the port it bound for port 0.
//! So [`EmbeddedBroker::start`] binds each address itself first (which is
//! how a taken or forbidden port becomes a clear [`BrokerError`]), picks a
//! free port when asked for port 0, releases it and hands the concrete
//! address to rumqttd, then waits until both listeners accept connections.
//! Readiness is an MQTT CONNECT of the listener's protocol version that
//! must be accepted, not just a TCP connect. Another program could still
//! take the port in the instant between the check and rumqttd's bind: if
//! it is not an MQTT broker the start fails after 5 s
//! ([`BrokerError::Start`]); if it is one, that goes unnoticed.
//!
//! ## Logging
//! rumqttd logs through `tracing`: INFO for every connection and
//! subscription, ERROR for ordinary events (a client's clean disconnect).
//! Waypoint's default log filter should include [`LOG_DIRECTIVE`], which
//! keeps only the warning that messages were dropped from a full log ring;
//! `WAYPOINT_LOG=info,rumqttd=info` shows everything.
//!
//! ```no_run
//! use waypoint::broker::{BrokerOptions, EmbeddedBroker};
//! let broker = EmbeddedBroker::start("127.0.0.1:1883".parse().unwrap(), BrokerOptions::default())?;
//! println!("devices: mqtt://{}", broker.local_addr());
//! println!("server:  mqtt://{}", broker.ingest_addr());
//! # Ok::<(), waypoint::broker::BrokerError>(())
//! ```
//!
//! [rumqttd]: https://docs.rs/rumqttd/0.20

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::ingest::mqtt::MqttConfig;
use crate::ingest::topic;

/// Unacknowledged QoS 1 publishes rumqttd sends any one client: a constant
/// in rumqttd 0.20 (`MAX_INFLIGHT`), whatever Receive Maximum the client
/// asks for.
pub const INFLIGHT_PER_CONNECTION: u16 = 100;

/// The tracing directives for rumqttd in Waypoint's default log filter
/// (`info,sqlx=warn,` + this; `WAYPOINT_LOG` replaces the whole filter).
/// rumqttd logs ordinary events at ERROR (a client's clean DISCONNECT gives
/// "no-connection id .. is already gone"), so it is silenced except for its
/// commit log, whose warning ("jumping to head") is the one sign that
/// messages were dropped from a full log ring.
pub const LOG_DIRECTIVE: &str = "rumqttd=off,rumqttd::segments=warn";

/// Largest MQTT packet (remaining length) the broker accepts by default: the
/// value deploy/mosquitto.conf uses, below Waypoint's default payload cap
/// (256 KiB) and its client's maximum (320 KiB).
pub const DEFAULT_MAX_PACKET_BYTES: usize = 128 * 1024;

/// What rumqttd may add to a packet when it forwards it to a v5 client
/// (a properties length, a subscription identifier): the broker's limit
/// stays this far below the ingest client's.
const FORWARD_OVERHEAD: usize = 1024;

/// How long [`EmbeddedBroker::start`] waits for the listeners to accept.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerOptions {
    /// Largest packet accepted from any client (remaining length: topic,
    /// packet id and payload). Must stay below the ingest client's maximum
    /// packet size, because rumqttd does not honour the one a client
    /// advertises ([`BrokerOptions::for_ingest`]).
    pub max_packet_bytes: usize,
    /// Simultaneous connections, the server's own included (rumqttd
    /// preallocates for them; beyond it a CONNECT gets no answer).
    pub max_connections: usize,
    /// Size of one in-memory log segment per subscription filter.
    pub log_segment_bytes: usize,
    /// Segments kept per filter: with `log_segment_bytes` this bounds both
    /// the memory of a filter and how much can wait for a slow server.
    pub log_segments: usize,
    /// How long a new connection may take to send its CONNECT (at most
    /// about 65 s: rumqttd keeps it as a `u16` of milliseconds).
    pub connect_timeout: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_connections: 2048,
            // 4 × 16 MiB: about 150k typical Waypoint messages (~400 bytes)
            // can wait per filter while the database is unreachable.
            log_segment_bytes: 16 * 1024 * 1024,
            log_segments: 4,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl BrokerOptions {
    /// Defaults, with the packet limit lowered if needed so that whatever
    /// the broker accepts also fits the ingest client (`mqtt` is the
    /// server's configuration).
    pub fn for_ingest(mqtt: &MqttConfig) -> Self {
        let client_max = usize::try_from(mqtt.max_packet_bytes).unwrap_or(usize::MAX);
        Self {
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES
                .min(client_max.saturating_sub(FORWARD_OVERHEAD)),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), BrokerError> {
        let bad = |m: &str| Err(BrokerError::InvalidOptions(m.to_owned()));
        // rumqttd panics (in its router thread) on these.
        if self.log_segment_bytes < 1024 {
            return bad("log_segment_bytes must be at least 1024");
        }
        if self.log_segments == 0 {
            return bad("log_segments must be at least 1");
        }
        if self.max_packet_bytes == 0 || self.max_connections == 0 {
            return bad("max_packet_bytes and max_connections must be positive");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive");
        }
        Ok(())
    }
}

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Another program listens on the port.
    #[error(
        "port {port} on {ip} is in use: pick another (serve --mqtt-addr, demo --mqtt-port) or stop the program using it"
    )]
    PortInUse {
        /// Address asked for.
        ip: IpAddr,
        /// Port asked for.
        port: u16,
    },
    /// The OS refused the port (below 1024 without the privilege).
    #[error("not permitted to listen on port {port} on {ip} (ports below 1024 need privileges): pick another (serve --mqtt-addr, demo --mqtt-port)")]
    PortNotPermitted {
        /// Address asked for.
        ip: IpAddr,
        /// Port asked for.
        port: u16,
    },
    /// Any other bind failure, e.g. an address that is not this machine's.
    #[error("cannot listen on {addr} for the embedded MQTT broker: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        source: io::Error,
    },
    /// Limits rumqttd cannot work with.
    #[error("invalid embedded broker options: {0}")]
    InvalidOptions(String),
    /// The server's session could not be set up in advance.
    #[error("cannot prepare the server's MQTT session on the embedded broker: {0}")]
    IngestSession(String),
    /// rumqttd did not come up (its threads failed or never listened).
    #[error("the embedded MQTT broker did not start: {0}")]
    Start(String),
}

/// A running embedded broker. Its threads run until the process exits.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// Where devices connect (MQTT 3.1.1).
    device_addr: SocketAddr,
    /// Where the server's own clients connect (MQTT v5, loopback).
    ingest_addr: SocketAddr,
    /// rumqttd's `Broker::start`, which returns only if every listener died.
    thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts rumqttd with a device listener on `addr` (port 0: a free port,
    /// see [`EmbeddedBroker::local_addr`]) and an ingest listener on a free
    /// loopback port, and returns once both accept connections.
    ///
    /// Blocks the calling thread for as long as that takes (milliseconds;
    /// at most a few seconds).
    pub fn start(addr: SocketAddr, opts: BrokerOptions) -> Result<Self, BrokerError> {
        opts.validate()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the embedded MQTT broker has no authentication, ACL or TLS: \
                 anyone who reaches this address can publish as any device"
            );
        }
        // Checked (and port 0 resolved) here, before rumqttd gets the port:
        // rumqttd would only log its bind failure in a thread of its own.
        // Both are held until both are known, so that port 0 cannot be
        // given out twice.
        let device = check_bind(addr)?;
        let ingest = check_bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
        let (device_addr, ingest_addr) = (device.1, ingest.1);
        drop((device.0, ingest.0));

        let config = rumqttd_config(device_addr, ingest_addr, &opts);
        let thread = std::thread::Builder::new()
            .name("waypoint-broker".into())
            .spawn(move || {
                // Spawns the router thread, then one thread per listener,
                // and blocks joining the listeners: it returns only if all
                // of them stopped (a failed bind among them).
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded MQTT broker failed");
                }
            })
            .map_err(|e| BrokerError::Start(format!("cannot spawn its thread: {e}")))?;

        let broker = Self {
            device_addr,
            ingest_addr,
            thread,
        };
        broker.wait_listening(addr)?;
        tracing::info!(
            devices = %device_addr,
            ingest = %ingest_addr,
            "embedded MQTT broker listening (devices: MQTT 3.1.1)"
        );
        Ok(broker)
    }

    /// The device listener's address (MQTT 3.1.1), with the port actually
    /// bound when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// The ingest listener's address (MQTT v5, loopback): the server's
    /// ingest source and alert publisher connect here.
    pub fn ingest_addr(&self) -> SocketAddr {
        self.ingest_addr
    }

    /// Creates the server's persistent session, subscribed to the ingest
    /// filters, before the server itself connects: rumqttd routes a publish
    /// only to subscriptions that exist when it arrives, so without this
    /// everything devices send while the server is still starting is
    /// acknowledged to them and dropped. When the server then connects with
    /// the same client id (clean start off), it finds the session and
    /// receives what was kept for it. Call right after [`Self::start`]; the
    /// window left is the few milliseconds between the two.
    pub fn prepare_ingest_session(&self, mqtt: &MqttConfig) -> Result<(), BrokerError> {
        let filters = [
            topic::native_filter(&mqtt.topic_prefix),
            topic::owntracks_filter(&mqtt.topic_prefix),
        ];
        prepare_session(
            self.ingest_addr,
            &mqtt.client_id,
            mqtt.session_expiry_secs,
            &filters,
        )
        .map_err(|e| BrokerError::IngestSession(e.to_string()))
    }

    /// False once rumqttd's listeners have all stopped.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    fn wait_listening(&self, asked: SocketAddr) -> Result<(), BrokerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pending = vec![self.device_addr, self.ingest_addr];
        loop {
            if self.thread.is_finished() {
                // Every listener failed; most likely someone took the port
                // between our check and rumqttd's bind.
                return Err(if pending.contains(&self.device_addr) {
                    BrokerError::PortInUse {
                        ip: asked.ip(),
                        port: self.device_addr.port(),
                    }
                } else {
                    BrokerError::Start("its listeners stopped (see the log above)".into())
                });
            }
            pending.retain(|a| {
                let version = if *a == self.device_addr { 4 } else { 5 };
                !mqtt_answers(*a, version)
            });
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrokerError::Start(format!(
                    "no MQTT CONNACK from {pending:?} within {START_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether the device listener at `addr` still completes an MQTT 3.1.1
/// CONNECT (blocking, up to ~0.7 s). rumqttd can lose it without stopping:
/// after a refused connection (e.g. beyond its connection limit) the same
/// client id connecting again panics its listener thread and poisons a lock
/// every later CONNECT takes, and rumqttd cannot be restarted in the
/// process. [`crate::embedded`] watches this.
pub fn devices_can_connect(addr: SocketAddr) -> bool {
    mqtt_answers(addr, 4)
}

/// True if an MQTT broker on `addr` accepts a clean-session CONNECT of the
/// given protocol version (4 = 3.1.1, 5). More than a TCP connect: it
/// checks that the listener speaks the protocol version it was configured
/// for, and that what answers on the port is an MQTT broker.
fn mqtt_answers(addr: SocketAddr, version: u8) -> bool {
    let attempt = || -> io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.set_write_timeout(Some(Duration::from_millis(500)))?;
        // Clean session, keep-alive 10 s, (v5) no properties.
        let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', version, 0x02, 0, 10];
        if version == 5 {
            connect.push(0);
        }
        // A fresh client id for every probe: rumqttd 0.20 panics, and
        // poisons a lock every later CONNECT needs, when a client id
        // connects again while its previous connection's will handler is
        // stale (server/broker.rs: `try_send(..).unwrap()` under the lock).
        // Reusing one id across both listeners and retries crashed 2 of 17
        // starts in the capacity runs.
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        put_str(
            &mut connect,
            &format!("waypoint-probe-{}-{n}", std::process::id()),
        )?;
        write_packet(&mut s, 0x10, &connect)?;
        // CONNACK: flags, then the return (v4) or reason (v5) code, 0 = success.
        let (kind, body) = read_packet(&mut s)?;
        write_packet(&mut s, 0xE0, &[])?;
        Ok(kind == 0x20 && body.get(1) == Some(&0))
    };
    attempt().unwrap_or(false)
}

/// Connects to a v5 listener as `client_id` with clean start off,
/// subscribes to `filters` at QoS 1 and disconnects, leaving the session
/// (and its subscriptions) with the broker. Hand-written packets: this runs
/// before (and outside) any async runtime.
fn prepare_session(
    addr: SocketAddr,
    client_id: &str,
    session_expiry_secs: u32,
    filters: &[String],
) -> io::Result<()> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;

    // CONNECT: protocol name, level 5, flags 0 (clean start off, no
    // credentials: the embedded broker has no authentication), keep-alive
    // 10 s, properties: Session Expiry Interval (0x11); payload: client id.
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 10, 5, 0x11];
    connect.extend(session_expiry_secs.to_be_bytes());
    put_str(&mut connect, client_id)?;
    write_packet(&mut s, 0x10, &connect)?;
    let (kind, body) = read_packet(&mut s)?;
    // CONNACK: flags, reason code (0 = success), properties.
    if kind != 0x20 || body.get(1) != Some(&0) {
        return Err(invalid(format!("CONNECT refused ({kind:#x}, {body:?})")));
    }

    // SUBSCRIBE: packet id 1, no properties, each filter with QoS 1.
    let mut subscribe = vec![0, 1, 0];
    for f in filters {
        put_str(&mut subscribe, f)?;
        subscribe.push(0x01);
    }
    write_packet(&mut s, 0x82, &subscribe)?;
    let (kind, body) = read_packet(&mut s)?;
    // SUBACK: packet id, properties length (rumqttd sends none), then one
    // reason code per filter; 0x80 and above are refusals.
    let codes = body.get(3..).unwrap_or_default();
    if kind != 0x90 || codes.len() != filters.len() || codes.iter().any(|c| *c >= 0x80) {
        return Err(invalid(format!("SUBSCRIBE refused ({kind:#x}, {body:?})")));
    }
    // DISCONNECT, normal: the session stays.
    write_packet(&mut s, 0xE0, &[])?;
    Ok(())
}

/// Appends an MQTT UTF-8 string (two-byte length, then the bytes).
fn put_str(buf: &mut Vec<u8>, s: &str) -> io::Result<()> {
    let len = u16::try_from(s.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} is too long for MQTT"),
        )
    })?;
    buf.extend(len.to_be_bytes());
    buf.extend(s.as_bytes());
    Ok(())
}

/// Writes one packet: the first byte, the remaining length as a variable
/// byte integer, the body.
fn write_packet(s: &mut TcpStream, first: u8, body: &[u8]) -> io::Result<()> {
    let mut packet = vec![first];
    let mut len = body.len();
    loop {
        // Seven bits per byte, high bit set while more follow.
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    s.write_all(&packet)
}

/// Reads one packet: its type byte (upper four bits, flags cleared) and body.
fn read_packet(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte)?;
    let kind = byte[0] & 0xF0;
    let mut len = 0usize;
    for shift in [0, 7, 14, 21] {
        s.read_exact(&mut byte)?;
        len |= usize::from(byte[0] & 0x7F) << shift;
        if byte[0] & 0x80 == 0 {
            let mut body = vec![0; len];
            s.read_exact(&mut body)?;
            return Ok((kind, body));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed remaining length",
    ))
}

/// Binds `addr` to check it is usable (and to let the OS pick a port for
/// port 0); the caller releases the listener before rumqttd binds.
fn check_bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let listener = TcpListener::bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => BrokerError::PortInUse {
            ip: addr.ip(),
            port: addr.port(),
        },
        io::ErrorKind::PermissionDenied => BrokerError::PortNotPermitted {
            ip: addr.ip(),
            port: addr.port(),
        },
        _ => BrokerError::Bind { addr, source },
    })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// rumqttd's configuration, built in code (no configuration file).
fn rumqttd_config(device: SocketAddr, ingest: SocketAddr, o: &BrokerOptions) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: u16::try_from(o.connect_timeout.as_millis()).unwrap_or(u16::MAX),
        // rumqttd compares it with the packet's remaining length.
        max_payload_size: o.max_packet_bytes,
        // Not an in-flight limit despite its name: how many packets one
        // connection's read hands to the router at once.
        max_inflight_count: usize::from(INFLIGHT_PER_CONNECTION),
        auth: None,
        external_auth: None,
        // A publish that matches no subscription is dropped rather than
        // creating a log for its topic that nobody reads.
        dynamic_filters: false,
    };
    let listener = |name: &str, listen: SocketAddr| {
        HashMap::from([(
            name.to_owned(),
            ServerSettings {
                name: name.to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connections.clone(),
            },
        )])
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: o.max_connections,
            // QoS 0 publishes handed to one connection per router turn.
            max_outgoing_packet_count: 200,
            max_segment_size: o.log_segment_bytes,
            max_segment_count: o.log_segments,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(listener("waypoint-devices", device)),
        v5: Some(listener("waypoint-ingest", ingest)),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_limit_stays_below_the_ingest_clients() {
        let cfg = |max_packet_bytes| MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            credentials: None,
            client_id: "t".into(),
            topic_prefix: String::new(),
            session_expiry_secs: 60,
            receive_maximum: 5000,
            max_packet_bytes,
            keep_alive: Duration::from_secs(30),
        };
        // The server's default client maximum (320 KiB) leaves the default.
        let o = BrokerOptions::for_ingest(&cfg(320 * 1024));
        assert_eq!(o.max_packet_bytes, DEFAULT_MAX_PACKET_BYTES);
        // A smaller one (--max-payload-bytes 8192 gives 72 KiB) lowers it.
        let o = BrokerOptions::for_ingest(&cfg(72 * 1024));
        assert_eq!(o.max_packet_bytes, 71 * 1024);
    }

    #[test]
    fn options_rumqttd_would_panic_on_are_refused() {
        let o = BrokerOptions {
            log_segment_bytes: 10,
            ..BrokerOptions::default()
        };
        assert!(matches!(
            EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), o),
            Err(BrokerError::InvalidOptions(_))
        ));
    }
}
