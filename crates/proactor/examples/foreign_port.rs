//! The problem that crashed the Go runtime (golang/go#58870), and proactor's answer.
//!
//! A socket is associated with a completion port that stands for "the runtime" (tokio, Go,
//! .NET), with a thread dequeuing it. Issuing an ordinary overlapped operation on that socket
//! would queue a packet on the runtime's port with an `OVERLAPPED` the runtime never made.
//! proactor borrows the socket as `Foreign`, issues an overlapped `WSAIoctl` (keep-alive) and a
//! receive through its low-order-bit event path, and gets both completions on its own port;
//! the runtime's port receives nothing.
//!
//! `cargo run -p proactor --example foreign_port` on Windows (here, the cross-built .exe runs
//! under `wine64`). The same scenario is a test: `tests/foreign.rs`.

#[cfg(windows)]
fn main() -> std::io::Result<()> {
    use std::{
        io::Write,
        net::{TcpListener, TcpStream},
        os::windows::io::AsSocket,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        thread,
        time::Duration,
    };

    use proactor::{
        Iocp,
        windows::{Foreign, IocpExt},
    };

    // The runtime: a port and a thread dequeuing it, counting what it receives.
    let runtime = Arc::new(Iocp::new()?);
    let seen = Arc::new(AtomicUsize::new(0));
    let runtime_thread = {
        let (runtime, seen) = (runtime.clone(), seen.clone());
        thread::spawn(move || {
            while let Ok(c) = runtime.get_completion(Some(Duration::from_secs(10))) {
                if c.context() == usize::MAX {
                    break;
                }
                println!("runtime port: unexpected packet {c:?}");
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // A connection whose server side the runtime owns.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let owned = runtime.add_handle(listener.accept()?.0, 1)?;
    println!(
        "socket {:?} is associated with the runtime's port",
        owned.as_socket()
    );

    // proactor borrows it and issues its own overlapped operations.
    let port = Iocp::new()?;
    let borrowed = port.add_handle(Foreign::socket(owned.as_socket()), 42)?;
    port.keepalive(
        &borrowed,
        true,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let mut done = port.get_completion(Some(Duration::from_secs(10)))?;
    println!(
        "proactor: {} completed: {:?}, input handed back: {} bytes",
        done.kind(),
        done.result(),
        done.take_ioctl().map_or(0, |(i, _)| i.len())
    );

    port.recv(&borrowed, Vec::with_capacity(64));
    client.write_all(b"hello through the event")?;
    let mut done = port.get_completion(Some(Duration::from_secs(10)))?;
    let data = done.take_buffer().unwrap_or_default();
    println!(
        "proactor: {} completed with {} bytes: {:?}",
        done.kind(),
        done.result()?,
        String::from_utf8_lossy(&data)
    );

    thread::sleep(Duration::from_millis(300));
    runtime.post(usize::MAX, 0)?;
    runtime_thread.join().expect("runtime thread");
    let packets = seen.load(Ordering::SeqCst);
    println!("runtime port received {packets} packets");
    if packets == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other("the runtime's port received packets"))
    }
}

#[cfg(not(windows))]
fn main() {
    eprintln!("foreign_port: completion ports owned by another runtime are a Windows matter");
    std::process::exit(1);
}
