//! A tokio echo server, the way tokio's own examples write one: a task per connection, one
//! buffer each. `--flavor multi` (a worker per CPU, or `--workers N`) or `--flavor current`.

#[cfg(target_os = "linux")]
#[path = "../peer.rs"]
mod peer;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    use clap::Parser;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        common: peer::Args,
        #[arg(long, default_value = "multi")]
        flavor: String,
        #[arg(long)]
        workers: Option<usize>,
    }
    let args = Args::parse();
    let runtime = match args.flavor.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.workers {
                b.worker_threads(n);
            }
            b.enable_all().build()?
        }
    };
    runtime.block_on(async move {
        let std_listener = peer::listen(args.common.port)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (mut stream, _) = listener.accept().await?;
            let size = args.common.buffer_size;
            tokio::spawn(async move {
                let mut buf = vec![0u8; size];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("echo-tokio: benchmarks run on Linux");
    std::process::exit(1);
}
