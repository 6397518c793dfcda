//! Where the agent's log goes: to the journal, one entry per event with its fields as journal
//! fields (`F_PEER=...`, priority from the level), when systemd connected stderr to the journal
//! (`JOURNAL_STREAM`); to stderr as text otherwise. The level filter can be changed while
//! running ([`Logging::set_filter`], used by reload).
//!
//! Levels: `error` is a failure the agent cannot work around (a task died, a socket is gone);
//! `warn` a failure it works around ("…, ignoring", a peer unreachable); `info` a change an
//! operator wants in `systemctl status` (listening, joined, leader changed, shutting down);
//! `debug` and `trace` are for developers. openraft warns about the ordinary course of an
//! election (stale votes): it starts at `error`, and this agent logs leader changes itself.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter when neither `FLOTILLA_LOG` nor `RUST_LOG` is set (`EnvFilter` syntax).
pub(crate) const DEFAULT_FILTER: &str = "info,openraft=error,hickory_server=warn";

/// Logging errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The filter does not parse.
    #[error("invalid log filter {filter:?}: {source}; expected e.g. \"info,openraft=error\"")]
    Filter {
        /// The filter text.
        filter: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The subscriber is gone (cannot happen while the agent runs).
    #[error("cannot change the log filter: {0}")]
    Reload(#[from] reload::Error),
}

/// The installed subscriber: where it writes, and the handle that changes its filter.
#[derive(Clone)]
pub(crate) struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    journal: bool,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging")
            .field("journal", &self.journal)
            .finish()
    }
}

impl Logging {
    /// Installs the global subscriber: the journal if stderr is the journal (and its socket
    /// answers), stderr otherwise. The filter is `FLOTILLA_LOG`, else `RUST_LOG`, else
    /// [`DEFAULT_FILTER`]; an invalid one is reported and the default used.
    pub(crate) fn init() -> Logging {
        let (text, source) = configured_filter();
        let (initial, bad) = match parse(&text) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some((source, e))),
        };
        let (filter, handle) = reload::Layer::new(initial);
        let journald = if stderr_is_journal() {
            // Our own field names stay apart from the journal's (F_PEER, not PEER).
            tracing_journald::layer().ok()
        } else {
            None
        };
        let journal = journald.is_some();
        let fmt = (!journal).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .with(fmt)
            .init();
        if let Some((source, e)) = bad {
            tracing::warn!("{source}: {e}, using {DEFAULT_FILTER:?}");
        }
        Logging {
            filter: handle,
            journal,
        }
    }

    /// Replaces the level filter (`EnvFilter` syntax, e.g. `"debug,openraft=info"`).
    pub(crate) fn set_filter(&self, text: &str) -> Result<(), Error> {
        let f = parse(text)?;
        self.filter.reload(f)?;
        Ok(())
    }

    /// The filter in effect, as text.
    pub(crate) fn filter(&self) -> String {
        self.filter
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }
}

/// The filter text from the environment and which variable it came from.
pub(crate) fn configured_filter() -> (String, &'static str) {
    for var in ["FLOTILLA_LOG", "RUST_LOG"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return (v, var);
        }
    }
    (DEFAULT_FILTER.to_string(), "the default filter")
}

fn parse(text: &str) -> Result<EnvFilter, Error> {
    EnvFilter::builder()
        .parse(text)
        .map_err(|source| Error::Filter {
            filter: text.to_string(),
            source,
        })
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream, and it must be our stderr still (not inherited by a child
/// whose stderr was redirected), as sd_journal_stream_fd(3) says.
fn stderr_is_journal() -> bool {
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => names_stream(&var, m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// Whether `JOURNAL_STREAM`'s value names the stream with this device and inode.
fn names_stream(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_parses_and_a_bad_one_is_named() {
        assert!(parse(DEFAULT_FILTER).is_ok());
        let e = parse("info,openraft=loud").unwrap_err();
        assert!(e.to_string().contains("\"info,openraft=loud\""), "{e}");
    }

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("", 0, 0));
    }
}
