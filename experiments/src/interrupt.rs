//! Stopping a training run cleanly: Ctrl-C (SIGINT), SIGTERM or SIGHUP stops burn-train at the
//! next batch and the run is dropped (its staging directory removed, an earlier run of the same
//! name kept); a second signal ends the process at once, except a repeated SIGHUP: a sweep's
//! child gets one from the kernel for each thread of the killed sweep that exits. The dashboard's own stop (`q`, then `s`; the terminal
//! dashboard reads Ctrl-C as a key) is treated the same way.

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use burn::train::Interrupter;

/// What stopped a training run before it completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// Ctrl-C or `kill -INT`.
    Interrupt,
    /// `kill` (SIGTERM).
    Terminate,
    /// SIGHUP: the terminal closed, or the sweep that started the run died.
    Hangup,
    /// The stop command of burn-train's terminal dashboard.
    Dashboard,
}

impl StopCause {
    /// The exit code: 128 + the signal number, as a shell reports a process ended by the signal.
    pub fn exit_code(self) -> u8 {
        match self {
            StopCause::Interrupt | StopCause::Dashboard => 130,
            StopCause::Terminate => 143,
            StopCause::Hangup => 129,
        }
    }
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopCause::Interrupt => "interrupted (Ctrl-C)",
            StopCause::Terminate => "terminated (SIGTERM)",
            StopCause::Hangup => {
                "hung up (SIGHUP: the terminal or the sweep that started it ended)"
            }
            StopCause::Dashboard => "stopped from the dashboard",
        })
    }
}

/// Signal number of SIGHUP (the same on every Unix).
const SIGHUP: i32 = 1;
/// Signal number of SIGINT (the same on every Unix).
const SIGINT: i32 = 2;
/// Signal number of SIGTERM (the same on every Unix).
const SIGTERM: i32 = 15;

/// While alive, SIGINT and SIGTERM stop the training behind `interrupter` instead of killing the
/// process mid-write. Dropping it stops listening.
pub struct StopOnSignal {
    interrupter: Interrupter,
    received: Arc<AtomicI32>,
    #[cfg(unix)]
    listener: Option<(signal_hook::iterator::Handle, std::thread::JoinHandle<()>)>,
}

impl StopOnSignal {
    /// Starts listening; `left_behind` describes, for a second signal's message, what stays on
    /// disk when the process ends at once.
    pub fn install(interrupter: Interrupter, left_behind: String) -> std::io::Result<Self> {
        let received = Arc::new(AtomicI32::new(0));
        #[cfg(unix)]
        let listener = {
            let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            let handle = signals.handle();
            let (received, interrupter) = (received.clone(), interrupter.clone());
            let thread = std::thread::spawn(move || {
                for signal in signals.forever() {
                    let first = received
                        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                    if !first && signal != SIGHUP {
                        // Not `eprintln!`: it panics when stderr is closed, and the exit must come.
                        let message =
                            format!("error: a second signal: stopped at once; {left_behind}\n");
                        let _ = std::io::stderr().write_all(message.as_bytes());
                        std::process::exit(128 + signal);
                    }
                    interrupter.stop(Some("signal"));
                }
            });
            Some((handle, thread))
        };
        #[cfg(not(unix))]
        let _ = left_behind;
        Ok(Self {
            interrupter,
            received,
            #[cfg(unix)]
            listener,
        })
    }

    /// What stopped training, if anything did.
    pub fn cause(&self) -> Option<StopCause> {
        match self.received.load(Ordering::SeqCst) {
            SIGINT => Some(StopCause::Interrupt),
            SIGTERM => Some(StopCause::Terminate),
            SIGHUP => Some(StopCause::Hangup),
            // The dashboard resets the flag when training ends, not the message.
            _ if self.interrupter.get_message().is_some() => Some(StopCause::Dashboard),
            _ => None,
        }
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some((handle, thread)) = self.listener.take() {
            handle.close();
            let _ = thread.join();
        }
    }
}
