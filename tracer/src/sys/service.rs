//! Running under a service manager: readiness by systemd's notify protocol (`Type=notify`),
//! and journald's priorities on stderr lines (`<3>` an error, `<4>` a warning) when stderr is
//! the journal's stream — so `journalctl -p warning` shows the tracer's warnings.

use std::{
    io,
    os::unix::{
        ffi::OsStrExt as _,
        fs::MetadataExt as _,
        net::{SocketAddr, UnixDatagram},
    },
    path::Path,
};

use tracing::Level;
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};

/// Tells the service manager every program is attached (`READY=1` to `$NOTIFY_SOCKET`, a
/// path or an abstract name); nothing when there is none.
pub fn notify_ready() -> io::Result<()> {
    notify_ready_to(crate::environment::get().notify_socket.as_deref())
}

fn notify_ready_to(target: Option<&std::ffi::OsStr>) -> io::Result<()> {
    let Some(target) = target else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound()?;
    let message = b"READY=1\n";
    match target.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            socket.send_to_addr(message, &SocketAddr::from_abstract_name(name)?)?;
        }
        None => {
            socket.send_to(message, Path::new(&target))?;
        }
    }
    Ok(())
}

/// Is stderr the journal's stream? `$JOURNAL_STREAM` is `DEVICE:INODE` of it, and a child
/// whose stderr was redirected elsewhere inherits the variable: compare with stderr itself.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = crate::environment::get().journal_stream.as_deref() else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The syslog priority journald reads from a `<N>` prefix.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A log line format with journald's `<N>` priority prefix before the inner format's line.
pub struct Prioritized<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reaches_a_notify_socket() {
        let dir = std::env::temp_dir().join(format!("tracer-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_ready_to(Some(path.as_os_str())).unwrap();
        let mut buf = [0u8; 32];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let _ = std::fs::remove_dir_all(&dir);
        // No socket: nothing to do.
        notify_ready_to(None).unwrap();
    }

    #[test]
    fn priorities_are_syslogs() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
    }
}
