//! Transports: TCP and Unix-domain stream sockets behind one type.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::Address;

/// A connected stream socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP (with `TCP_NODELAY`).
    Tcp(TcpStream),
    /// Unix-domain.
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `addr`, waiting at most `timeout`.
    pub fn connect(addr: &Address, timeout: Duration) -> io::Result<Stream> {
        match addr {
            Address::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout)?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Address::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p)?)),
        }
    }

    /// Another handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Shuts both directions down (wakes a thread blocked reading it).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Asks for socket buffers of `bytes` each way (the kernel caps them at its maximum):
    /// a bulk transfer whose two ends alternate computing and copying keeps flowing while
    /// one of them computes.
    pub fn set_buffer_sizes(&self, bytes: usize) -> io::Result<()> {
        let sock = self.sock();
        sock.set_send_buffer_size(bytes)?;
        sock.set_recv_buffer_size(bytes)
    }

    /// Whether the socket is still open and has nothing to read: the peer has neither
    /// closed it nor sent anything (checked without blocking).
    pub fn is_quiet_open(&self) -> bool {
        let sock = self.sock();
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        let peeked = sock
            .set_nonblocking(true)
            .and_then(|()| sock.peek(&mut byte));
        let quiet = matches!(&peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        sock.set_nonblocking(false).is_ok() && quiet
    }

    fn sock(&self) -> socket2::SockRef<'_> {
        match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
        }
    }

    /// Sets the read and write time-outs (None: block).
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }
}

impl std::os::fd::AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix-domain, with its path, and whether dropping it removes the socket file.
    Unix(UnixListener, PathBuf, bool),
}

impl Listener {
    /// Binds `addr`. A Unix socket file left by a dead process (nobody accepts on it) is
    /// replaced; one that is in use is an error.
    pub fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a)?)),
            Address::Unix(p) => {
                remove_stale_socket(p)?;
                Ok(Listener::Unix(UnixListener::bind(p)?, p.clone(), true))
            }
        }
    }

    /// The bound address (the real port if port 0 was asked for).
    pub fn local_address(&self) -> io::Result<Address> {
        Ok(match self {
            Listener::Tcp(l) => Address::Tcp(l.local_addr()?),
            Listener::Unix(_, p, _) => Address::Unix(p.clone()),
        })
    }

    /// Another handle on the same socket (dropping it leaves the socket file alone).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l, p, _) => Listener::Unix(l.try_clone()?, p.clone(), false),
        })
    }

    /// Waits for a connection.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, ..) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }

    /// Wakes a thread blocked in [`Listener::accept`] with an error (Linux: `shutdown(2)` on a
    /// listening socket makes `accept` fail with `EINVAL`).
    pub fn wake(&self) {
        let _ = match self {
            Listener::Tcp(l) => socket2::SockRef::from(l).shutdown(Shutdown::Read),
            Listener::Unix(l, ..) => socket2::SockRef::from(l).shutdown(Shutdown::Read),
        };
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p, true) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes `path` if it is a Unix socket nobody listens on.
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_err() {
                std::fs::remove_file(path)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
