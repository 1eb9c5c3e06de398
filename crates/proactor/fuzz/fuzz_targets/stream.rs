//! The byte streams both fuzz targets check: each byte is a function of its connection's
//! generation, its direction and its offset in the stream, so a byte of another connection, a
//! duplicate or a gap shows at once, and a wrong byte can be traced to where it came from.

/// Direction: bytes the handle sends, which the peer reads.
pub const OUT: u64 = 0;
/// Direction: bytes the peer writes, which the handle receives.
pub const IN: u64 = 1;

/// Byte `offset` of the stream of connection generation `generation`, direction `dir`.
pub fn pattern(generation: u64, dir: u64, offset: u64) -> u8 {
    let x = (generation << 33 ^ dir << 32 ^ offset).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

/// `len` bytes of a stream from offset `from`.
pub fn stream(generation: u64, dir: u64, from: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| pattern(generation, dir, from + i))
        .collect()
}

/// Which stream `bytes` come from, for the failure message: the first (generation, direction,
/// offset) whose bytes they are, among `generations` connections and the first `MAX_STREAM`
/// bytes of each stream.
pub fn whose(bytes: &[u8], generations: u64) -> String {
    const MAX_STREAM: u64 = 1 << 20;
    let probe = &bytes[..bytes.len().min(16)];
    for generation in 0..generations {
        for dir in [OUT, IN] {
            for offset in 0..MAX_STREAM {
                if probe
                    .iter()
                    .enumerate()
                    .all(|(i, b)| pattern(generation, dir, offset + i as u64) == *b)
                {
                    let dir = if dir == OUT {
                        "sent by handle"
                    } else {
                        "written by peer"
                    };
                    return format!("bytes {dir} of connection {generation} at offset {offset}");
                }
            }
        }
    }
    "bytes of no connection".into()
}

/// The largest TCP segment of a fuzzed connection, against loopback's 64 KiB. With windows and
/// segments sized at the handshake from larger buffers than the 4 KiB set later, once a window
/// closed the sender would not send into a reopened one smaller than a segment (silly-window
/// avoidance) and went on at one persist probe every 200 ms or more (seconds for an input that
/// leaves a few tens of KiB unread until its end).
const MSS: u32 = 1024;

/// Small kernel buffers and segments on `socket`, set before its connection is made (the
/// window it announces is then sized from them).
fn small(socket: socket2::SockRef<'_>) {
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_tcp_mss(MSS).expect("TCP_MAXSEG");
}

/// A loopback connection through `listener`: (the accepted socket, the peer, non-blocking),
/// both with small kernel buffers, so that sends of a few KiB already complete in parts, and
/// small segments (`MSS`).
pub fn small_pair(listener: &std::net::TcpListener) -> (std::net::TcpStream, std::net::TcpStream) {
    let addr = listener.local_addr().expect("addr");
    // The accepted socket takes the listener's settings.
    small(socket2::SockRef::from(listener));
    let peer = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    small((&peer).into());
    peer.connect(&addr.into()).expect("connect");
    let peer = std::net::TcpStream::from(peer);
    let (accepted, _) = listener.accept().expect("accept");
    for s in [&peer, &accepted] {
        socket2::SockRef::from(s)
            .set_tcp_nodelay(true)
            .expect("TCP_NODELAY");
    }
    peer.set_nonblocking(true).expect("nonblocking");
    (accepted, peer)
}

/// The input, read as a sequence of choices (zeros once it runs out).
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// A length from 1 to `max`: mostly small, sometimes large (the large ones force partial
    /// transfers through the small socket buffers).
    pub fn len(&mut self, max: usize) -> usize {
        let raw = u16::from_le_bytes([self.byte(), self.byte()]) as usize;
        if raw & 1 == 0 {
            1 + (raw >> 1) % 512
        } else {
            1 + (raw >> 1) * max / 32768 % max
        }
    }
}
