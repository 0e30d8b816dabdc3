//! A minimal blocking NBD client: fixed newstyle, NBD_OPT_GO, simple replies, one
//! request in flight. For benchmarks and tests that need the same client against
//! different servers; interoperability itself is tested with libnbd and QEMU.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::proto::*;
use crate::NbdError;

pub struct Client<S> {
    stream: S,
    size: u64,
    flags: u16,
    cookie: u64,
}

impl Client<UnixStream> {
    pub fn connect_unix(path: impl AsRef<Path>, export: &str) -> Result<Self, NbdError> {
        let s = UnixStream::connect(path).map_err(NbdError::io("connecting"))?;
        Client::handshake(s, export)
    }
}

impl Client<TcpStream> {
    pub fn connect_tcp(addr: SocketAddr, export: &str) -> Result<Self, NbdError> {
        let s = TcpStream::connect(addr).map_err(NbdError::io("connecting"))?;
        let _ = s.set_nodelay(true);
        Client::handshake(s, export)
    }
}

fn read_exact<S: Read>(s: &mut S, buf: &mut [u8]) -> Result<(), NbdError> {
    s.read_exact(buf)
        .map_err(NbdError::io("reading from server"))
}

impl<S: Read + Write> Client<S> {
    /// Negotiate `export` with NBD_OPT_GO on an already connected stream.
    pub fn handshake(mut stream: S, export: &str) -> Result<Self, NbdError> {
        let mut greet = [0u8; 18];
        read_exact(&mut stream, &mut greet)?;
        let magic = u64::from_be_bytes(greet[..8].try_into().expect("8 bytes"));
        if magic != NBDMAGIC {
            return Err(NbdError::BadMagic {
                what: "greeting",
                got: magic,
            });
        }
        let opt = u64::from_be_bytes(greet[8..16].try_into().expect("8 bytes"));
        if opt != IHAVEOPT {
            return Err(NbdError::BadMagic {
                what: "newstyle",
                got: opt,
            });
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&OPT_GO.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&data);
        stream
            .write_all(&out)
            .map_err(NbdError::io("writing to server"))?;
        let mut export_info = None;
        loop {
            let mut h = [0u8; 20];
            read_exact(&mut stream, &mut h)?;
            let magic = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
            if magic != OPTION_REPLY_MAGIC {
                return Err(NbdError::BadMagic {
                    what: "option reply",
                    got: magic,
                });
            }
            let reply = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes"));
            if len > MAX_OPTION_LEN {
                return Err(NbdError::Malformed {
                    what: "option reply longer than expected",
                });
            }
            let mut body = vec![0u8; len as usize];
            read_exact(&mut stream, &mut body)?;
            match reply {
                REP_ACK => break,
                REP_INFO if body.len() == 12 && body[..2] == INFO_EXPORT.to_be_bytes() => {
                    let size = u64::from_be_bytes(body[2..10].try_into().expect("8 bytes"));
                    let flags = u16::from_be_bytes([body[10], body[11]]);
                    export_info = Some((size, flags));
                }
                REP_INFO => {}
                _ => {
                    return Err(NbdError::OptionRefused {
                        option: OPT_GO,
                        reply,
                    })
                }
            }
        }
        let (size, flags) = export_info.ok_or(NbdError::Malformed {
            what: "GO acknowledged without NBD_INFO_EXPORT",
        })?;
        Ok(Client {
            stream,
            size,
            flags,
            cookie: 0,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn transmission_flags(&self) -> u16 {
        self.flags
    }

    fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<(), NbdError> {
        self.cookie += 1;
        let req = encode_request(&Request {
            flags,
            command,
            cookie: self.cookie,
            offset,
            len,
        });
        self.stream
            .write_all(&req)
            .and_then(|()| self.stream.write_all(payload))
            .map_err(NbdError::io("writing to server"))
    }

    fn reply(&mut self, command: u16) -> Result<(), NbdError> {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        read_exact(&mut self.stream, &mut h)?;
        let r = parse_simple_reply(&h)?;
        if r.cookie != self.cookie {
            return Err(NbdError::Malformed {
                what: "reply cookie does not match the request",
            });
        }
        if r.error != 0 {
            return Err(NbdError::CommandFailed {
                command,
                errno: r.error,
            });
        }
        Ok(())
    }

    /// Issue one command and wait for its reply (no payload in either direction).
    pub fn command(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
    ) -> Result<(), NbdError> {
        self.send(command, flags, offset, len, &[])?;
        self.reply(command)
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.send(CMD_READ, 0, offset, buf.len() as u32, &[])?;
        self.reply(CMD_READ)?;
        read_exact(&mut self.stream, buf)
    }

    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.send(CMD_WRITE, flags, offset, data.len() as u32, data)?;
        self.reply(CMD_WRITE)
    }

    pub fn flush(&mut self) -> Result<(), NbdError> {
        self.command(CMD_FLUSH, 0, 0, 0)
    }

    /// The stream after the handshake, for callers that drive transmission themselves
    /// (for example with several requests in flight).
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Send NBD_CMD_DISC and close.
    pub fn disconnect(mut self) -> Result<(), NbdError> {
        self.send(CMD_DISC, 0, 0, 0, &[])
    }
}
