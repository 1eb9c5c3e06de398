//! The command line every peer echo server takes (`--port`, `--buffer-size`), shared by the
//! peer binaries through `#[path]`.

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
