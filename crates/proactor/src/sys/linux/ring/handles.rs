//! Handles: fixed-file slots, registered at `add_handle`, cleared at close, reused only once
//! no operation names them.

use super::*;

impl State {
    pub(super) fn handle_of(&self, key: u32) -> Option<u32> {
        let idx = key & 0xffff;
        let h = self.handles.get(idx as usize)?;
        (h.open && u32::from(h.generation) == key >> 16).then_some(idx)
    }

    pub(super) fn register(&mut self, raw: RawFd, context: usize) -> io::Result<u32> {
        let super::super::Nature {
            socket,
            stream,
            datagram,
            file,
        } = super::super::nature(raw)?;
        let idx = match self.free_handles.pop() {
            Some(idx) => idx,
            None if (self.handles.len() as u32) < self.table_size => {
                self.handles.push(Handle {
                    context: 0,
                    ops: 0,
                    kernel: 0,
                    armed: NONE,
                    busy: [NONE; 2],
                    queued: 0,
                    waiters: Fifo::EMPTY,
                    lanes: [Fifo::EMPTY; 2],
                    generation: 0,
                    open: false,
                    socket: false,
                    stream: false,
                    datagram: false,
                    starved: false,
                    eof: false,
                    watched: false,
                    hup: false,
                });
                self.cold.push(Cold {
                    raw: -1,
                    raw_ops: 0,
                    data: VecDeque::new(),
                    accepted: VecDeque::new(),
                    gather: None,
                    unreported: 0,
                    reset: op::Reset::default(),
                });
                self.handles.len() as u32 - 1
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "the local port's fixed-file table is full ({} handles)",
                        self.table_size
                    ),
                ));
            }
        };
        if let Err(e) = self.ring.submitter().register_files_update(idx, &[raw]) {
            self.free_handles.push(idx);
            return Err(e);
        }
        let h = &mut self.handles[idx as usize];
        h.generation = if h.generation == u16::MAX {
            1
        } else {
            h.generation + 1
        };
        h.open = true;
        h.context = context;
        h.socket = socket;
        h.stream = stream;
        h.datagram = datagram;
        h.starved = false;
        h.eof = false;
        h.watched = false;
        h.hup = false;
        h.armed = NONE;
        self.cold[idx as usize].raw = raw;
        self.cold[idx as usize].reset = op::Reset::default();
        self.files.associate(raw, file);
        Ok((u32::from(h.generation) << 16) | idx)
    }

    /// Frees handle `idx`'s slot once it is closed and no operation names it.
    pub(super) fn maybe_free_handle(&mut self, idx: u32) {
        let h = &self.handles[idx as usize];
        if !h.open && h.ops == 0 && self.cold[idx as usize].raw >= 0 {
            self.cold[idx as usize].raw = -1;
            self.free_handles.push(idx);
        }
    }

    pub(super) fn close(&mut self, key: u32) {
        let Some(idx) = self.handle_of(key) else {
            return;
        };
        // A send waiting for the next enter goes out first, as it would have anyway.
        self.undefer(idx);
        let h = &mut self.handles[idx as usize];
        h.open = false;
        h.starved = false;
        h.queued = 0;
        let kernel = h.kernel;
        let cold = &mut self.cold[idx as usize];
        cold.data.clear();
        cold.accepted.clear();
        self.cancel_waiting(idx);
        if kernel > 0 {
            // Cancel what is in flight on the slot, and have the kernel take it now: the owner
            // closes the descriptor next.
            self.push_cancels(idx);
            if let Err(e) = self.enter(false, None) {
                tracing::warn!(error = %e, "submitting the cancels of a closing handle");
            }
        }
        self.files.forget(self.cold[idx as usize].raw);
        // Clear the slot: the connection closes with the owner's descriptor.
        if let Err(e) = self.ring.submitter().register_files_update(idx, &[-1]) {
            tracing::warn!(error = %e, "clearing a fixed-file slot");
        }
        self.maybe_free_handle(idx);
    }
}
