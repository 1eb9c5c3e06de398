//! WinSock helpers: provider checks, extension functions, socket addresses.

use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::windows::io::BorrowedSocket,
    ptr,
    sync::OnceLock,
};

use socket2::{Domain, SockAddr, SockRef};
use windows_sys::{
    Win32::Networking::WinSock::{
        AF_INET, AF_INET6, AF_UNIX, IPPROTO_TCP, IPPROTO_UDP, SIO_GET_EXTENSION_FUNCTION_POINTER,
        SIO_UDP_CONNRESET, SO_PROTOCOL_INFOW, SO_UPDATE_ACCEPT_CONTEXT, SO_UPDATE_CONNECT_CONTEXT,
        SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6, SOCKADDR_UN, SOCKET, SOCKET_ERROR, SOL_SOCKET,
        WSAEINVAL, WSAENOBUFS, WSAEnumProtocolsW, WSAGetLastError, WSAID_CONNECTEX,
        WSAID_DISCONNECTEX, WSAIoctl, WSAPROTOCOL_INFOW, XP1_IFS_HANDLES, getsockopt, setsockopt,
    },
    core::GUID,
};

/// Whether every TCP and UDP provider hands out real (IFS) handles.
///
/// `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` is only safe on IFS handles: a layered service provider
/// that is not IFS may complete an operation at once and still queue a packet. Go and libuv make
/// the same check.
pub(crate) fn providers_are_ifs() -> bool {
    static IFS: OnceLock<bool> = OnceLock::new();
    *IFS.get_or_init(|| {
        let protocols = [IPPROTO_TCP, IPPROTO_UDP, 0];
        let mut len = 0u32;
        // SAFETY: a null buffer with length 0 asks for the size needed.
        let rc = unsafe { WSAEnumProtocolsW(protocols.as_ptr(), ptr::null_mut(), &mut len) };
        // SAFETY: reads the calling thread's last WinSock error.
        if rc != SOCKET_ERROR || unsafe { WSAGetLastError() } != WSAENOBUFS {
            return false;
        }
        let count = len as usize / mem::size_of::<WSAPROTOCOL_INFOW>() + 1;
        let mut infos: Vec<WSAPROTOCOL_INFOW> = Vec::with_capacity(count);
        let mut len = (count * mem::size_of::<WSAPROTOCOL_INFOW>()) as u32;
        // SAFETY: the buffer has room for `len` bytes.
        let n = unsafe { WSAEnumProtocolsW(protocols.as_ptr(), infos.as_mut_ptr(), &mut len) };
        if n == SOCKET_ERROR || n as usize > count {
            return false;
        }
        // SAFETY: WSAEnumProtocolsW initialised `n` entries.
        unsafe { infos.set_len(n as usize) };
        let ifs = infos
            .iter()
            .all(|p| p.dwServiceFlags1 & XP1_IFS_HANDLES != 0);
        tracing::debug!(
            providers = n,
            ifs,
            "checked WinSock providers for skip-on-success"
        );
        ifs
    })
}

/// Whether this socket's own provider hands out IFS handles (`SO_PROTOCOL_INFOW`), for a
/// family [`providers_are_ifs`] does not cover: the Unix-domain (`AF_UNIX`) provider. An IP
/// socket, or one whose provider cannot say, answers `true` (the providers' check decides).
pub(crate) fn socket_is_ifs(socket: SOCKET) -> bool {
    // SAFETY: all zeros is a valid WSAPROTOCOL_INFOW (integers, arrays and a GUID).
    let mut info: WSAPROTOCOL_INFOW = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<WSAPROTOCOL_INFOW>() as i32;
    // SAFETY: the socket is open (the caller is associating it); the output buffer has room
    // for `len` bytes.
    let rc = unsafe {
        getsockopt(
            socket,
            SOL_SOCKET,
            SO_PROTOCOL_INFOW,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 || i32::from(AF_UNIX) != info.iAddressFamily {
        return true;
    }
    info.dwServiceFlags1 & XP1_IFS_HANDLES != 0
}

/// Borrows a raw socket, for socket2's safe calls through `SockRef::from(&borrowed)`.
///
/// # Safety
///
/// `s` must be an open socket for as long as the returned value is used.
pub(crate) unsafe fn borrow<'a>(s: SOCKET) -> BorrowedSocket<'a> {
    // SAFETY: the caller guarantees `s` stays open while borrowed.
    unsafe { BorrowedSocket::borrow_raw(s as _) }
}

/// The address family a bound socket uses.
pub(crate) fn domain_of(socket: &SockRef<'_>) -> io::Result<Domain> {
    Ok(socket.local_addr()?.domain())
}

/// `ConnectEx` needs a bound socket: binds `socket` to the unspecified address of `addr`'s
/// family if it is not bound yet.
pub(crate) fn bind_for_connect(socket: &SockRef<'_>, addr: &SocketAddr) -> io::Result<()> {
    match socket.local_addr() {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(WSAEINVAL) => {
            let any: SocketAddr = match addr {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            socket.bind(&SockAddr::from(any))
        }
        Err(e) => Err(e),
    }
}

/// Loads a WinSock extension function by GUID (`SIO_GET_EXTENSION_FUNCTION_POINTER`), once per
/// process: every TCP socket of the base provider returns the same address.
fn extension(socket: SOCKET, guid: GUID, cache: &OnceLock<usize>) -> io::Result<usize> {
    if let Some(&f) = cache.get() {
        return Ok(f);
    }
    let mut f: usize = 0;
    let mut bytes = 0u32;
    // SAFETY: a synchronous ioctl (no OVERLAPPED): the GUID and the output slot live across it.
    let rc = unsafe {
        WSAIoctl(
            socket,
            SIO_GET_EXTENSION_FUNCTION_POINTER,
            (&raw const guid).cast(),
            mem::size_of_val(&guid) as u32,
            (&raw mut f).cast(),
            mem::size_of::<usize>() as u32,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if rc == 0 && f != 0 {
        Ok(*cache.get_or_init(|| f))
    } else {
        // SAFETY: reads the calling thread's last WinSock error.
        Err(super::error::from_code(
            unsafe { WSAGetLastError() } as u32,
            None,
        ))
    }
}

/// The `ConnectEx` extension function, loaded once.
pub(crate) fn connect_ex(socket: SOCKET) -> io::Result<ConnectEx> {
    static CONNECT_EX: OnceLock<usize> = OnceLock::new();
    let f = extension(socket, WSAID_CONNECTEX, &CONNECT_EX)?;
    // SAFETY: the provider returned the address of its ConnectEx, whose signature is
    // LPFN_CONNECTEX's (and ConnectEx's field type).
    Ok(ConnectEx(unsafe {
        mem::transmute::<usize, ConnectExFn>(f)
    }))
}

/// The `DisconnectEx` extension function, loaded once.
pub(crate) fn disconnect_ex(socket: SOCKET) -> io::Result<DisconnectEx> {
    static DISCONNECT_EX: OnceLock<usize> = OnceLock::new();
    let f = extension(socket, WSAID_DISCONNECTEX, &DISCONNECT_EX)?;
    // SAFETY: the provider returned the address of its DisconnectEx, whose signature is
    // LPFN_DISCONNECTEX's (and DisconnectEx's field type).
    Ok(DisconnectEx(unsafe {
        mem::transmute::<usize, DisconnectExFn>(f)
    }))
}

type ConnectExFn = unsafe extern "system" fn(
    SOCKET,
    *const SOCKADDR,
    i32,
    *const core::ffi::c_void,
    u32,
    *mut u32,
    *mut windows_sys::Win32::System::IO::OVERLAPPED,
) -> windows_sys::core::BOOL;

type DisconnectExFn = unsafe extern "system" fn(
    SOCKET,
    *mut windows_sys::Win32::System::IO::OVERLAPPED,
    u32,
    u32,
) -> windows_sys::core::BOOL;

/// The `DisconnectEx` function of the TCP provider.
#[derive(Clone, Copy)]
pub(crate) struct DisconnectEx(pub(crate) DisconnectExFn);

/// The `ConnectEx` function of the TCP provider.
#[derive(Clone, Copy)]
pub(crate) struct ConnectEx(pub(crate) ConnectExFn);

/// Applies `SO_UPDATE_ACCEPT_CONTEXT`, so that the accepted socket inherits the listener's
/// properties and `getpeername`, `shutdown` and friends work on it.
pub(crate) fn update_accept_context(accepted: SOCKET, listener: SOCKET) -> io::Result<()> {
    // SAFETY: both sockets are open; the option value is the listener's SOCKET, sized as passed.
    let rc = unsafe {
        setsockopt(
            accepted,
            SOL_SOCKET,
            SO_UPDATE_ACCEPT_CONTEXT,
            (&raw const listener).cast(),
            mem::size_of::<SOCKET>() as i32,
        )
    };
    wsa_result(rc)
}

/// Applies `SO_UPDATE_CONNECT_CONTEXT` to a socket that `ConnectEx` connected.
pub(crate) fn update_connect_context(socket: SOCKET) -> io::Result<()> {
    // SAFETY: the socket is open; this option takes no value.
    let rc = unsafe {
        setsockopt(
            socket,
            SOL_SOCKET,
            SO_UPDATE_CONNECT_CONTEXT,
            ptr::null(),
            0,
        )
    };
    wsa_result(rc)
}

fn wsa_result(rc: i32) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: reads the calling thread's last WinSock error.
        Err(super::error::from_code(
            unsafe { WSAGetLastError() } as u32,
            None,
        ))
    }
}

/// Decodes a socket address the kernel wrote.
///
/// # Safety
///
/// `addr` must point to `len` readable bytes holding a socket address.
pub(crate) unsafe fn socket_addr(addr: *const SOCKADDR, len: i32) -> io::Result<SocketAddr> {
    let len = usize::try_from(len).unwrap_or(0);
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "unsupported socket address");
    if addr.is_null() || len < mem::size_of::<u16>() {
        return Err(invalid());
    }
    // SAFETY: at least the family field is readable (checked above); it may be unaligned.
    let family = unsafe { ptr::read_unaligned(addr) }.sa_family;
    match family {
        AF_INET if len >= mem::size_of::<SOCKADDR_IN>() => {
            // SAFETY: the family says it is a SOCKADDR_IN and `len` covers it.
            let a = unsafe { ptr::read_unaligned(addr.cast::<SOCKADDR_IN>()) };
            // SAFETY: every variant of IN_ADDR's union is the same four bytes.
            let ip = Ipv4Addr::from(u32::from_be(unsafe { a.sin_addr.S_un.S_addr }));
            Ok(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        AF_INET6 if len >= mem::size_of::<SOCKADDR_IN6>() => {
            // SAFETY: the family says it is a SOCKADDR_IN6 and `len` covers it.
            let a = unsafe { ptr::read_unaligned(addr.cast::<SOCKADDR_IN6>()) };
            // SAFETY: every variant of IN6_ADDR's union is the same sixteen bytes.
            let ip = Ipv6Addr::from(unsafe { a.sin6_addr.u.Byte });
            // SAFETY: both variants of the scope union are the same u32.
            let scope = unsafe { a.Anonymous.sin6_scope_id };
            Ok(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, scope).into())
        }
        _ => Err(invalid()),
    }
}

/// Copies a Unix-domain (`AF_UNIX`) address the kernel wrote; `None` for another family.
///
/// The family alone (an unnamed client, which did not bind) is kept as it is: socket2 reads
/// it as an `AF_UNIX` address with no path.
///
/// # Safety
///
/// `addr` must point to `len` readable bytes holding a socket address, or be null.
pub(crate) unsafe fn unix_addr(addr: *const SOCKADDR, len: i32) -> Option<SockAddr> {
    let len = usize::try_from(len).unwrap_or(0);
    if addr.is_null() || len < mem::size_of::<u16>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above); it may be unaligned.
    if unsafe { ptr::read_unaligned(addr) }.sa_family != AF_UNIX {
        return None;
    }
    let len = len.min(mem::size_of::<SOCKADDR_UN>());
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: the caller guarantees `len` readable bytes at `addr`; the storage is larger than
    // a SOCKADDR_UN, and `len` is no longer than one.
    unsafe { ptr::copy_nonoverlapping(addr.cast::<u8>(), (&raw mut storage).cast::<u8>(), len) };
    // SAFETY: the first `len` bytes of the storage hold the address just copied.
    Some(unsafe { SockAddr::new(storage, len as i32) })
}

/// Turns `SIO_UDP_CONNRESET` off on a datagram socket, so that an ICMP port-unreachable for
/// an earlier send does not fail the next `recv_from` (Windows' default; tokio#2017). Other
/// sockets are left alone, and so is a provider that does not know the control.
pub(crate) fn udp_connreset_off(socket: SOCKET) {
    // SAFETY: the socket is open (the caller is associating it).
    let borrowed = unsafe { borrow(socket) };
    if !matches!(SockRef::from(&borrowed).r#type(), Ok(t) if t == socket2::Type::DGRAM) {
        return;
    }
    let off: u32 = 0;
    let mut bytes = 0u32;
    // SAFETY: a synchronous ioctl (no OVERLAPPED) with a 4-byte input that lives across it.
    let rc = unsafe {
        WSAIoctl(
            socket,
            SIO_UDP_CONNRESET,
            (&raw const off).cast(),
            4,
            ptr::null_mut(),
            0,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if rc != 0 {
        tracing::debug!("SIO_UDP_CONNRESET not supported by this provider");
    }
}

/// Whether this process runs under Wine (`ntdll!wine_get_version` exists), which differs from
/// Windows in one way the port must follow: see `Port::start` on warning completions.
pub(crate) fn running_on_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    static WINE: OnceLock<bool> = OnceLock::new();
    *WINE.get_or_init(|| {
        let ntdll: Vec<u16> = "ntdll.dll".encode_utf16().chain(Some(0)).collect();
        // SAFETY: a NUL-terminated module name; ntdll is loaded in every process.
        let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
        // SAFETY: a NUL-terminated export name; only the address's presence is used.
        !module.is_null()
            && unsafe { GetProcAddress(module, c"wine_get_version".as_ptr().cast()) }.is_some()
    })
}
