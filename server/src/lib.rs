//! Odradek's production runtime: the real disk, clock and network behind the
//! core's interfaces, and the commands of the `odradek` binary.

pub mod broker_thread;
pub mod cluster_run;
pub mod dev_cmd;
pub mod disk;
pub mod format;
pub mod kafka_listener;
pub mod peer;
pub mod perf;
pub mod server_cmd;
pub mod sim_cmd;

/// Writes to standard output, exiting quietly if the reader has gone away
/// (`odradek sim run --trace | head`): `println!` would panic on the broken
/// pipe, and a closed pipe is not an error worth a backtrace.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = write!(stdout, $($arg)*).and_then(|_| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// [`out!`] with a newline.
#[macro_export]
macro_rules! outln {
    () => { $crate::out!("\n") };
    ($($arg:tt)*) => {{ $crate::out!($($arg)*); $crate::out!("\n"); }};
}
