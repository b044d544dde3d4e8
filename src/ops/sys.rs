//! The few socket calls `std` does not offer: binding a Unix socket whose file is
//! private from the first instant, connecting with a timeout, polling two
//! descriptors, and asking the kernel who is on the other end.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// `sockaddr_un` for `path`, with its length. Fails (InvalidInput) when the path does
/// not fit `sun_path` (108 bytes with the terminating NUL on Linux).
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid admin socket path",
        ));
    }
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "admin socket path is too long for a Unix socket ({} bytes, at most {}): use a shorter data directory path",
                bytes.len(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn new_socket() -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: plain syscall; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    // SAFETY: plain syscalls; the result is checked below.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        fd
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds and listens on `path` with the socket file created as `mode`.
///
/// On Linux the file's mode is taken from the socket's inode at `bind` time, so
/// restricting that inode first (`fchmod`) means there is no moment in which the file
/// exists with wider permissions. The caller still `chmod`s the path afterwards, which
/// covers systems where the `fchmod` has no effect.
pub(crate) fn bind_listener(
    path: &Path,
    mode: libc::mode_t,
    backlog: i32,
) -> io::Result<UnixListener> {
    let (addr, len) = sockaddr(path)?;
    let fd = new_socket()?;
    // SAFETY: valid descriptor; failure is harmless (see above).
    unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
    // SAFETY: `addr` is a valid sockaddr_un of length `len`.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: valid, bound descriptor.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixListener::from(fd))
}

fn timeval(d: Duration) -> libc::timeval {
    // A zero timeout means "block forever" to the kernel: never pass one.
    let d = d.max(Duration::from_millis(1));
    libc::timeval {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

/// Connects to the Unix socket at `path`, waiting at most `timeout` (a blocking Unix
/// connect only waits when the listener's backlog is full; the kernel bounds that wait
/// with the send timeout). Timeouts come back as `ErrorKind::TimedOut`.
pub(crate) fn connect_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let (addr, len) = sockaddr(path)?;
    let fd = new_socket()?;
    let tv = timeval(timeout);
    // SAFETY: valid descriptor, option value of the right type and size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of length `len`.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EISCONN) => break,
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) | Some(libc::ETIMEDOUT) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out connecting to the admin socket",
                ));
            }
            _ => return Err(err),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    Ok(stream)
}

/// Waits up to `timeout_ms` for any of `fds` to be readable (or hung up / in error).
/// Returns one flag per descriptor; all false on timeout.
pub(crate) fn poll_readable<const N: usize>(
    fds: [RawFd; N],
    timeout_ms: i32,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `pfds` is a valid array of N pollfd structures.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfds.map(|p| p.revents != 0))
}

/// User id of the process on the other end of `stream`, where the platform tells.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_uid(stream: &UnixStream) -> Option<u32> {
    // SAFETY: ucred is plain old data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid descriptor, output buffer of the right type and size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer_uid(_stream: &UnixStream) -> Option<u32> {
    None
}

pub(crate) fn effective_uid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::geteuid() }
}
