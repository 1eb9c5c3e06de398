//! Pausing a thread at a failpoint (feature `failpoints`): the tests that force an
//! interleaving hold one thread at a named point while another acts.

use std::{
    sync::{
        Mutex,
        mpsc::{self, Receiver, Sender},
    },
    time::Duration,
};

/// Holds the first thread that reaches failpoint `name` until released; later passes go on.
pub struct Pause {
    name: &'static str,
    hit: Receiver<()>,
    release: Option<Sender<()>>,
}

impl Pause {
    pub fn at(name: &'static str) -> Pause {
        let (hit_tx, hit) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let hit_tx = Mutex::new(Some(hit_tx));
        let release_rx = Mutex::new(release_rx);
        fail::cfg_callback(name, move || {
            let first = hit_tx.lock().unwrap().take();
            if let Some(tx) = first {
                let _ = tx.send(());
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
            }
        })
        .expect("configure the failpoint");
        Pause {
            name,
            hit,
            release: Some(release),
        }
    }

    /// Waits until a thread is held at the point.
    pub fn wait_hit(&self) {
        self.hit
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no thread reached {}", self.name));
    }

    pub fn release(&mut self) {
        fail::remove(self.name);
        if let Some(r) = self.release.take() {
            let _ = r.send(());
        }
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.release();
    }
}

/// Failpoint `name` configured to `action` while this lives (removed also when the test fails
/// midway, so that the next test does not find it).
pub struct Failpoint(&'static str);

impl Failpoint {
    pub fn set(name: &'static str, action: &str) -> Failpoint {
        fail::cfg(name, action).expect("configure the failpoint");
        Failpoint(name)
    }
}

impl Drop for Failpoint {
    fn drop(&mut self) {
        fail::remove(self.0);
    }
}
