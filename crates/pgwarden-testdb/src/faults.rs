//! Pausing and resuming a whole server (SIGSTOP / SIGCONT).

use nix::sys::signal::Signal;

use crate::sys;
use crate::{HarnessError, PgServer};

impl PgServer {
    /// Freezes the server: SIGSTOP to the postmaster and all its children (backends, WAL
    /// writer, checkpointer, ...), found through /proc. Connections hang until [`resume`].
    /// `stop`, `restart` and drop resume first.
    ///
    /// [`resume`]: PgServer::resume
    ///
    /// # Errors
    /// [`HarnessError::NotRunning`].
    pub fn pause(&self) -> Result<(), HarnessError> {
        let mut control = self.lock_control();
        let pm = self.postmaster_pid().ok_or(HarnessError::NotRunning)?;
        if !control.paused.contains(&pm) {
            // The postmaster first, so it forks nothing new while we stop its children.
            sys::signal(pm, Signal::SIGSTOP);
            control.paused.push(pm);
        }
        // A child forked just before the postmaster stopped shows up on a second scan.
        loop {
            let fresh: Vec<i32> = sys::children_of(pm)
                .into_iter()
                .filter(|pid| !control.paused.contains(pid))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                sys::signal(pid, Signal::SIGSTOP);
                control.paused.push(pid);
            }
        }
        Ok(())
    }

    /// Lets a paused server run again (SIGCONT to every process paused). No-op when not paused.
    ///
    /// # Errors
    /// None today; kept fallible for symmetry.
    pub fn resume(&self) -> Result<(), HarnessError> {
        let mut control = self.lock_control();
        control.resume_paused();
        Ok(())
    }

    /// True between `pause` and `resume`.
    pub fn is_paused(&self) -> bool {
        !self.lock_control().paused.is_empty()
    }
}
