//! The IOCP lifecycle, step by step: create the port, associate a listening socket, start a
//! worker thread, accept clients, associate each, submit a read and a write (a greeting), and
//! log every completion. For people learning completion ports.
//!
//! `cargo run -p proactor-echo --bin lifecycle -- --port 8081`, then connect with any TCP client:
//! it greets you and echoes what you send.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    thread,
};

use clap::Parser;
use proactor::{Handle, Iocp, OpKind};
use proactor_echo::{
    step,
    steplog::{
        completed_overlapped, error_code, operation_type, raw_socket as raw, submitted_overlapped,
    },
};

/// Shows each step of I/O completion port use.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// Exit after this many clients have disconnected [default: run until stopped].
    #[arg(long)]
    exit_after: Option<usize>,
}

const LISTENER_KEY: usize = 0;
const GREETING: &[u8] = b"Hello from the IOCP lifecycle demo!\r\n";

/// What each operation is for, carried as its per-operation user value (`Iocp::with_user`)
/// and handed back by its completion (`Completion::user`): the handle's key says which client,
/// this says which of its operations (a greeting's write from an echo's), with no table of
/// operation ids.
#[derive(Clone, Copy)]
enum Purpose {
    Accept = 1,
    Read,
    Greeting,
    Echo,
}

impl Purpose {
    fn of(user: usize) -> &'static str {
        match user {
            u if u == Purpose::Accept as usize => "accept",
            u if u == Purpose::Read as usize => "read",
            u if u == Purpose::Greeting as usize => "greeting",
            u if u == Purpose::Echo as usize => "echo",
            _ => "unknown",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifecycle: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(windows)]
fn port_handle(port: &Iocp) -> usize {
    use std::os::windows::io::AsRawHandle;
    port.as_raw_handle() as usize
}
#[cfg(not(windows))]
fn port_handle(_port: &Iocp) -> usize {
    0
}

fn run(args: &Args) -> std::io::Result<()> {
    step!("Creating IOCP...");
    let port = Iocp::new()?;
    step!("IOCP created. Handle: {:#x}", port_handle(&port));
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port);
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let listener_raw = raw(&listener);
    step!("Listening socket created. Handle: {listener_raw:#x}");
    step!("Associating listening socket {listener_raw:#x} with IOCP...");
    let listener = port.add_handle(listener, LISTENER_KEY)?;
    let id = port.with_user(Purpose::Accept as usize).accept(&listener);
    step!(
        "Accept submitted. Overlapped: {:#x}",
        submitted_overlapped(&port, id)
    );
    step!("Starting IOCP worker thread...");
    let exit_after = args.exit_after;
    let worker = thread::scope(|s| {
        let handle = s.spawn(|| worker(&port, &listener, exit_after));
        step!("Listening for connections on {local}...");
        handle.join()
    });
    worker.unwrap_or(Ok(()))
}

/// Dequeues and logs completions until `exit_after` clients have left.
fn worker(
    port: &Iocp,
    listener: &Handle<TcpListener>,
    exit_after: Option<usize>,
) -> std::io::Result<()> {
    let mut clients: HashMap<usize, Handle<TcpStream>> = HashMap::new();
    let (mut next_key, mut gone) = (1usize, 0usize);
    while exit_after.is_none_or(|n| gone < n) {
        let mut done = port.get_completion(None)?;
        step!(
            "Completion received. BytesTransferred: {}, Key: {}, Overlapped: {:#x}",
            done.bytes_transferred(),
            done.context(),
            completed_overlapped(&done)
        );
        let kind = operation_type(done.kind());
        step!("Operation type: {kind}, for: {}", Purpose::of(done.user()));
        let key = done.context();
        if let Err(e) = done.result() {
            let socket = clients.get(&key).map_or(0, |c| raw(c.get_ref()));
            step!(
                "{kind} operation failed for client socket {socket:#x}. Error: {} {e}",
                error_code(&e)
            );
            if done.kind() == OpKind::Accept {
                port.with_user(Purpose::Accept as usize).accept(listener);
            } else if clients.remove(&key).is_some() {
                step!("Closing client socket {socket:#x}.");
                gone += 1;
            }
            continue;
        }
        match done.kind() {
            OpKind::Accept => {
                let accepted = done
                    .take_accepted()
                    .expect("a successful accept has a socket");
                let socket = raw(&accepted.stream);
                step!(
                    "Client connected. Handle: {socket:#x} (peer {})",
                    accepted.peer_addr
                );
                let client = port.add_handle(accepted.stream, next_key)?;
                step!("Associated client socket {socket:#x} with IOCP. Key: {next_key}");
                submit(port, &client, Vec::with_capacity(4096), Purpose::Read);
                submit(port, &client, GREETING.to_vec(), Purpose::Greeting);
                clients.insert(next_key, client);
                next_key += 1;
                port.with_user(Purpose::Accept as usize).accept(listener);
            }
            OpKind::Recv if done.bytes_transferred() == 0 => {
                if let Some(client) = clients.remove(&key) {
                    let socket = raw(client.get_ref());
                    step!("Client disconnected gracefully. Handle: {socket:#x}");
                    step!("Closing client socket {socket:#x}.");
                    gone += 1;
                }
            }
            OpKind::Recv => {
                let data = done.take_buffer().unwrap_or_default();
                if let Some(client) = clients.get(&key) {
                    step!("Received: {:?}", String::from_utf8_lossy(&data));
                    submit(port, client, data, Purpose::Echo);
                    submit(port, client, Vec::with_capacity(4096), Purpose::Read);
                }
            }
            OpKind::Send => step!(
                "Write completed: {} ({} bytes)",
                Purpose::of(done.user()),
                done.bytes_transferred()
            ),
            _ => {}
        }
    }
    Ok(())
}

fn submit(port: &Iocp, client: &Handle<TcpStream>, buf: Vec<u8>, purpose: Purpose) {
    let op = port.with_user(purpose as usize);
    let (id, what) = match purpose {
        Purpose::Read => (op.recv(client, buf), "Read"),
        _ => (op.send(client, buf), "Write"),
    };
    step!(
        "{what} submitted ({}). Overlapped: {:#x}",
        Purpose::of(purpose as usize),
        submitted_overlapped(port, id)
    );
}
