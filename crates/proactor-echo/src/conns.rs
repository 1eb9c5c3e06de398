//! The connection table: slots addressed by a context value that carries a generation, so that
//! a completion for a closed connection never acts on the connection that reused its slot.

use std::{net::SocketAddr, net::TcpStream, time::Instant};

use proactor::Handle;

/// One connection being served.
pub struct Conn {
    pub handle: Handle<TcpStream>,
    pub peer: SocketAddr,
    pub last_active: Instant,
}

impl Conn {
    /// The socket's OS handle, for logs.
    pub fn socket(&self) -> String {
        format!(
            "{:#x}",
            proactor_echo::steplog::raw_socket(self.handle.get_ref())
        )
    }
}

struct Slot<C> {
    generation: u32,
    conn: Option<C>,
}

/// Connections by context value: the slot index in the low 32 bits, its generation above.
/// `C` is what the server keeps per connection: [`Conn`] for the shared port, the worker's own
/// for a port per worker.
pub struct Conns<C = Conn> {
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
    live: usize,
    /// Set by [`drain`](Conns::drain): the server is shutting down and admits no one.
    closed: bool,
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table was drained for shutdown: nothing would ever close a connection added now.
    ShuttingDown,
    /// As many connections as allowed are being served.
    Full,
}

impl<C> Default for Conns<C> {
    fn default() -> Self {
        Conns {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            closed: false,
        }
    }
}

impl<C> Conns<C> {
    /// Reserves a slot for a new connection and returns the context value for it, unless the
    /// table was drained (shutdown) or holds `max` connections. The caller decides and inserts
    /// under one lock, so a connection accepted as shutdown drains is closed, never inserted.
    pub fn admit(&mut self, max: usize) -> Result<usize, Refused> {
        if self.closed {
            Err(Refused::ShuttingDown)
        } else if self.live >= max {
            Err(Refused::Full)
        } else {
            Ok(self.reserve())
        }
    }

    fn reserve(&mut self) -> usize {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                conn: None,
            });
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        context(index, slot.generation)
    }

    /// Fills a slot reserved by [`admit`](Conns::admit); once drained, drops `conn` (closing it).
    pub fn insert(&mut self, ctx: usize, conn: C) {
        if self.closed {
            return;
        }
        if let Some(slot) = self.slot_mut(ctx) {
            slot.conn = Some(conn);
            self.live += 1;
        }
    }

    /// Returns a slot reserved but not filled.
    pub fn release(&mut self, ctx: usize) {
        if self.slot_mut(ctx).is_some_and(|s| s.conn.is_none()) {
            self.free.push(ctx as u32);
        }
    }

    /// The connection for `ctx`, unless it was closed (and its slot perhaps reused) meanwhile.
    pub fn get_mut(&mut self, ctx: usize) -> Option<&mut C> {
        self.slot_mut(ctx)?.conn.as_mut()
    }

    /// Removes a connection; dropping it cancels its operations and closes the socket.
    pub fn remove(&mut self, ctx: usize) -> Option<C> {
        let conn = self.slot_mut(ctx)?.conn.take()?;
        self.live -= 1;
        self.free.push(ctx as u32);
        Some(conn)
    }

    /// How many connections are being served.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    /// Removes every connection, for shutdown: from now on [`admit`](Conns::admit) refuses.
    pub fn drain(&mut self) -> Vec<C> {
        self.closed = true;
        let all: Vec<C> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.conn.take())
            .collect();
        self.live = 0;
        all
    }

    fn slot_mut(&mut self, ctx: usize) -> Option<&mut Slot<C>> {
        let (index, generation) = ((ctx & 0xffff_ffff) as u32, (ctx >> 32) as u32);
        self.slots
            .get_mut(index as usize)
            .filter(|s| s.generation == generation)
    }
}

impl Conns<Conn> {
    /// Contexts of connections idle since before `cutoff`.
    pub fn idle_since(&self, cutoff: Instant) -> Vec<usize> {
        (self.slots.iter().enumerate())
            .filter_map(|(i, s)| {
                let c = s.conn.as_ref()?;
                (c.last_active < cutoff).then(|| context(i as u32, s.generation))
            })
            .collect()
    }
}

fn context(index: u32, generation: u32) -> usize {
    ((generation as usize) << 32) | index as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shutdown decision: before the drain a connection is admitted (and the drain takes
    /// it); after it, every new connection is refused, whatever the room.
    #[test]
    fn after_the_drain_nothing_is_admitted() {
        let mut conns = Conns::<Conn>::default();
        let before = conns.admit(10).unwrap();
        conns.release(before);
        assert!(conns.drain().is_empty());
        assert_eq!(conns.admit(10), Err(Refused::ShuttingDown));
        assert_eq!(conns.len(), 0);
        let mut full = Conns::<Conn>::default();
        assert_eq!(full.admit(0), Err(Refused::Full));
    }
}
