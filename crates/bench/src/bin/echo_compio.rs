//! A compio echo server (io_uring, thread-per-core): a task per connection, one owned buffer.

#[cfg(target_os = "linux")]
#[path = "../peer.rs"]
mod peer;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    use clap::Parser;
    use compio::{
        BufResult,
        io::{AsyncRead, AsyncWriteExt},
        net::TcpListener,
    };

    let args = peer::Args::parse();
    compio::runtime::Runtime::new()?.block_on(async move {
        let listener = TcpListener::from_std(peer::listen(args.port)?)?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (mut stream, _) = listener.accept().await?;
            let size = args.buffer_size;
            compio::runtime::spawn(async move {
                let mut buf: Vec<u8> = Vec::with_capacity(size);
                loop {
                    let BufResult(res, b) = stream.read(buf).await;
                    buf = b;
                    match res {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let BufResult(res, b) = stream.write_all(buf).await;
                            buf = b;
                            if res.is_err() {
                                return;
                            }
                            buf.clear();
                        }
                    }
                }
            })
            .detach();
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("echo-compio: benchmarks run on Linux");
    std::process::exit(1);
}
