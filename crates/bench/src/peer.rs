//! The command line every peer echo server takes (`--port`, `--buffer-size`) and the listening
//! socket they all use, shared by the peer binaries through `#[path]`.

/// The listen backlog of every server in the benchmark, proactor-echo's included (tokio's own
/// default): with std's 128, a burst of connects overflows the queue and dropped SYNs retry only
/// after 1 s, so the 10,000-connection cells would measure the backlog, not the server.
pub const BACKLOG: i32 = 1024;

/// A blocking listener on 127.0.0.1:`port` with [`BACKLOG`]; each runtime adopts it with its
/// `from_std`.
pub fn listen(port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // As std does on Unix; on Windows the option would let another socket take the port.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Where to listen and how large a buffer each connection gets.
#[derive(clap::Parser)]
pub struct Args {
    /// TCP port on 127.0.0.1.
    #[arg(long, default_value_t = 9100)]
    pub port: u16,
    /// Buffer size per connection, in bytes.
    #[arg(long, default_value_t = 65_536)]
    pub buffer_size: usize,
}
