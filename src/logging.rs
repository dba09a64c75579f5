//! Mosquitto's logging options on `tracing`: `log_dest` (stdout, stderr, file, syslog, topic),
//! `log_type`, `connection_messages`, `log_timestamp`, `log_timestamp_format`, `log_facility`,
//! and `-v`. The broker logs through `tracing` everywhere; this module only decides which
//! events go where and how their time is written.
//!
//! Mosquitto's types map onto levels and targets: `error`, `warning`, `debug` are the levels of
//! those names, `notice` and `information` both mean INFO (Culex does not tell them apart), and
//! `subscribe`/`unsubscribe` are events of the targets [`SUBSCRIBE`]/[`UNSUBSCRIBE`], shown only
//! when their type is on, whatever the levels. Connects and disconnects use [`CONNECTION`], off
//! with `connection_messages false`.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogDest, LogTypes, Logging};

/// The target of client connect and disconnect events (`connection_messages`).
pub const CONNECTION: &str = "culex::connection";
/// The target of SUBSCRIBE events (`log_type subscribe`).
pub const SUBSCRIBE: &str = "culex::subscribe";
/// The target of UNSUBSCRIBE events (`log_type unsubscribe`).
pub const UNSUBSCRIBE: &str = "culex::unsubscribe";

/// Lines for `log_dest topic` wait here for shard 0 to publish them; beyond this many, new
/// lines are dropped rather than let a flood of logging grow memory.
const TOPIC_BACKLOG_MAX: usize = 4096;

/// A log line for `$SYS/broker/log/<kind>`.
pub struct TopicLine {
    /// Mosquitto's letter for the line's type: E, W, N, D, M (subscribe), U (unsubscribe).
    pub kind: char,
    pub line: String,
}

static TOPIC_LINES: OnceLock<crossbeam_channel::Receiver<TopicLine>> = OnceLock::new();
/// The other end of `TOPIC_LINES`, for the layers a reload builds.
static TOPIC_SENDER: OnceLock<crossbeam_channel::Sender<TopicLine>> = OnceLock::new();

/// The lines waiting for `$SYS/broker/log/...` (`log_dest topic`), if that is configured.
pub fn topic_lines() -> Option<&'static crossbeam_channel::Receiver<TopicLine>> {
    TOPIC_LINES.get()
}

/// Files that SIGHUP reopens (after logrotate moved them), as Mosquitto does.
static FILES: Mutex<Vec<Arc<LogFile>>> = Mutex::new(Vec::new());

/// The types logged (`LogTypes` bits) and `connection_messages`: read by the filter for every
/// event, changed by a reload.
static TYPES: AtomicU8 = AtomicU8::new(0);
static CONNECTION_MESSAGES: AtomicBool = AtomicBool::new(true);

/// Builds the destinations' layers again and puts them in place of the running ones.
type Rebuild = Box<dyn Fn(&Logging) -> io::Result<()> + Send + Sync>;
static REBUILD: OnceLock<Rebuild> = OnceLock::new();

/// SIGHUP: reopens every `log_dest file`. Safe from any thread.
pub fn reopen_files() {
    let files = FILES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    for file in files {
        if let Err(error) = file.reopen() {
            tracing::error!(file = %file.path.display(), %error, "cannot reopen log file");
        }
    }
}

/// Whether an event of this target and level is logged under these types.
pub fn allows(types: LogTypes, connection_messages: bool, metadata: &Metadata<'_>) -> bool {
    match metadata.target() {
        SUBSCRIBE => return types.contains(LogTypes::SUBSCRIBE),
        UNSUBSCRIBE => return types.contains(LogTypes::UNSUBSCRIBE),
        CONNECTION if !connection_messages => return false,
        _ => {}
    }
    match *metadata.level() {
        Level::ERROR => types.contains(LogTypes::ERROR),
        Level::WARN => types.contains(LogTypes::WARNING),
        Level::INFO => types.intersects(LogTypes::NOTICE | LogTypes::INFORMATION),
        Level::DEBUG => types.contains(LogTypes::DEBUG),
        Level::TRACE => false,
    }
}

/// Installs the global subscriber. `verbose` (`-v`) logs every type, as Mosquitto's does. The
/// `CULEX_LOG` environment variable (tracing's directives, e.g. `culex::broker=debug`), when
/// set, replaces the type filter, for debugging Culex itself.
pub fn init(logging: &Logging, verbose: bool) -> io::Result<()> {
    set_types(logging, verbose);
    let env_filter = tracing_subscriber::EnvFilter::try_from_env("CULEX_LOG").ok();
    let type_filter = env_filter.is_none().then(|| {
        tracing_subscriber::filter::filter_fn(|metadata| {
            let types = LogTypes::from_bits(TYPES.load(Ordering::Relaxed));
            allows(types, CONNECTION_MESSAGES.load(Ordering::Relaxed), metadata)
        })
    });
    if logging.destinations.contains(&LogDest::Topic) {
        let (sender, receiver) = crossbeam_channel::bounded(TOPIC_BACKLOG_MAX);
        let _ = TOPIC_LINES.set(receiver);
        let _ = TOPIC_SENDER.set(sender);
    }
    let (layers, handle) = tracing_subscriber::reload::Layer::new(destinations(logging)?);
    tracing_subscriber::registry()
        .with(env_filter)
        .with(type_filter)
        .with(layers)
        .try_init()
        .map_err(io::Error::other)?;
    let rebuild: Rebuild = Box::new(move |logging: &Logging| {
        let layers = destinations(logging)?;
        handle.reload(layers).map_err(io::Error::other)
    });
    let _ = REBUILD.set(rebuild);
    // glommio reports memlock and placement problems through `log`.
    let _ = tracing_log::LogTracer::init();
    Ok(())
}

/// A reload's logging options: the types at once, the destinations and time stamps rebuilt
/// (a destination that cannot be opened keeps the running ones, logged). `log_dest topic` is
/// as at start: shard 0's task for it starts with the broker.
pub fn reconfigure(logging: &Logging, verbose: bool) {
    set_types(logging, verbose);
    // The filter's answer is cached per call site: ask again.
    tracing::callsite::rebuild_interest_cache();
    let Some(rebuild) = REBUILD.get() else { return };
    if let Err(error) = rebuild(logging) {
        tracing::error!("SIGHUP: {error}; the log destinations in force stay");
    }
}

fn set_types(logging: &Logging, verbose: bool) {
    let types = if verbose { LogTypes::all() } else { logging.types };
    TYPES.store(types.bits(), Ordering::Relaxed);
    CONNECTION_MESSAGES.store(logging.connection_messages, Ordering::Relaxed);
}

/// A layer per `log_dest`, each writing lines as `log_timestamp` says; the files opened become
/// the ones SIGHUP reopens.
fn destinations<S>(logging: &Logging) -> io::Result<Vec<Box<dyn Layer<S> + Send + Sync>>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let timer = Timestamp::new(logging.timestamp_format.as_deref())?;
    let mut layers = Vec::new();
    let mut files = Vec::new();
    for dest in &logging.destinations {
        macro_rules! fmt_layer {
            ($writer:expr, $ansi:expr) => {{
                let layer = tracing_subscriber::fmt::layer().with_writer($writer).with_ansi($ansi);
                if logging.timestamp {
                    layer.with_timer(timer.clone()).boxed()
                } else {
                    layer.without_time().boxed()
                }
            }};
        }
        let layer = match dest {
            LogDest::Stdout => {
                fmt_layer!(io::stdout, std::io::IsTerminal::is_terminal(&io::stdout()))
            }
            LogDest::Stderr => {
                fmt_layer!(io::stderr, std::io::IsTerminal::is_terminal(&io::stderr()))
            }
            LogDest::File(path) => {
                let file = Arc::new(LogFile::open(path)?);
                files.push(file.clone());
                fmt_layer!(SharedFile(file), false)
            }
            LogDest::Syslog => {
                let facility =
                    logging.facility.map_or(libc::LOG_DAEMON, |n| (16 + i32::from(n)) << 3);
                // SAFETY: openlog(3) keeps the identity pointer, so it is a static string.
                unsafe { libc::openlog(c"culex".as_ptr(), libc::LOG_PID, facility) };
                // syslog stamps its own time.
                tracing_subscriber::fmt::layer()
                    .with_writer(Syslog)
                    .with_ansi(false)
                    .without_time()
                    .boxed()
            }
            LogDest::Topic => {
                let Some(sender) = TOPIC_SENDER.get() else { continue };
                tracing_subscriber::fmt::layer()
                    .with_writer(TopicWriter { sender: sender.clone() })
                    .with_ansi(false)
                    .without_time()
                    .with_target(false)
                    .with_level(false)
                    .boxed()
            }
        };
        layers.push(layer);
    }
    *FILES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = files;
    Ok(layers)
}

/// `log_timestamp`: Mosquitto's seconds since the epoch, or `log_timestamp_format` through
/// strftime(3) in local time.
#[derive(Clone)]
struct Timestamp {
    format: Option<Arc<CString>>,
}

impl Timestamp {
    fn new(format: Option<&str>) -> io::Result<Timestamp> {
        let format = format
            .map(|f| CString::new(f).map(Arc::new))
            .transpose()
            .map_err(|_| io::Error::other("log_timestamp_format contains a NUL byte"))?;
        Ok(Timestamp { format })
    }

    fn render(&self, seconds: libc::time_t) -> String {
        let Some(format) = &self.format else { return format!("{seconds}:") };
        // SAFETY: `tm` is plain data; localtime_r fills it from `seconds`.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to a time_t and a tm.
        if unsafe { libc::localtime_r(&seconds, &mut tm) }.is_null() {
            return format!("{seconds}:");
        }
        let mut out = [0u8; 256];
        // SAFETY: strftime writes at most `out.len()` bytes, NUL included, and returns the
        // length written without the NUL (0 if it did not fit).
        let written =
            unsafe { libc::strftime(out.as_mut_ptr().cast(), out.len(), format.as_ptr(), &tm) };
        String::from_utf8_lossy(&out[..written]).into_owned()
    }
}

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        write!(w, "{}", self.render(now as libc::time_t))
    }
}

/// `log_dest file`: appended to, reopened on SIGHUP.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        let file = Self::open_append(path)?;
        Ok(LogFile { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    fn open_append(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot open log file {}: {error}", path.display()),
            )
        })
    }

    fn reopen(&self) -> io::Result<()> {
        let file = Self::open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = file;
        Ok(())
    }
}

/// A `LogFile` as the fmt layer writes to it (the registry of files for SIGHUP holds it too).
struct SharedFile(Arc<LogFile>);

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = LockedFile<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LockedFile(self.0.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// The log file, held for one line (so lines from different shards never interleave).
struct LockedFile<'a>(std::sync::MutexGuard<'a, File>);

impl Write for LockedFile<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Where a finished line goes.
enum Sink<'a> {
    /// syslog(3) at this priority.
    Syslog(libc::c_int),
    /// `$SYS/broker/log/<kind>`.
    Topic(&'a crossbeam_channel::Sender<TopicLine>, char),
}

/// Collects one formatted event, and hands it to its sink when dropped.
struct Line<'a> {
    text: Vec<u8>,
    sink: Sink<'a>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let line = text.trim_end();
        if line.is_empty() {
            return;
        }
        match self.sink {
            Sink::Syslog(priority) => {
                if let Ok(line) = CString::new(line) {
                    // SAFETY: a constant format taking one C string, and that string.
                    unsafe { libc::syslog(priority, c"%s".as_ptr(), line.as_ptr()) };
                }
            }
            Sink::Topic(sender, kind) => {
                // A full backlog drops the line: logging must never block a shard.
                let _ = sender.try_send(TopicLine { kind, line: line.to_string() });
            }
        }
    }
}

/// `log_dest syslog`: one syslog(3) call per event, at the priority of its level.
struct Syslog;

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Line<'a>;

    /// Not used by the fmt layer, which always says which event it writes.
    fn make_writer(&'a self) -> Self::Writer {
        Line { text: Vec::new(), sink: Sink::Syslog(libc::LOG_NOTICE) }
    }

    fn make_writer_for(&'a self, metadata: &Metadata<'_>) -> Self::Writer {
        let priority = match *metadata.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_NOTICE,
            Level::DEBUG | Level::TRACE => libc::LOG_DEBUG,
        };
        Line { text: Vec::new(), sink: Sink::Syslog(priority) }
    }
}

/// `log_dest topic`: each event becomes a line for `$SYS/broker/log/<kind>`.
struct TopicWriter {
    sender: crossbeam_channel::Sender<TopicLine>,
}

impl<'a> MakeWriter<'a> for TopicWriter {
    type Writer = Line<'a>;

    /// Not used by the fmt layer, which always says which event it writes.
    fn make_writer(&'a self) -> Self::Writer {
        Line { text: Vec::new(), sink: Sink::Topic(&self.sender, 'N') }
    }

    fn make_writer_for(&'a self, metadata: &Metadata<'_>) -> Self::Writer {
        let kind = match (metadata.target(), *metadata.level()) {
            (SUBSCRIBE, _) => 'M',
            (UNSUBSCRIBE, _) => 'U',
            (_, Level::ERROR) => 'E',
            (_, Level::WARN) => 'W',
            (_, Level::INFO) => 'N',
            (_, Level::DEBUG | Level::TRACE) => 'D',
        };
        Line { text: Vec::new(), sink: Sink::Topic(&self.sender, kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timestamp_is_mosquittos_seconds() {
        assert_eq!(Timestamp::new(None).unwrap().render(1_700_000_000), "1700000000:");
    }

    #[test]
    fn timestamp_format_is_strftime() {
        // SAFETY: the test sets the zone before any other thread reads it in this process
        // (localtime_r reads TZ); UTC makes the expected text fixed.
        std::env::set_var("TZ", "UTC");
        let stamp = Timestamp::new(Some("%Y-%m-%dT%H:%M:%S")).unwrap();
        assert_eq!(stamp.render(1_700_000_000), "2023-11-14T22:13:20");
    }
}
