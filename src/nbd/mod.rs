//! The NBD front end: the pool exported over the Network Block Device protocol, so that the
//! Linux kernel's nbd-client, qemu, libnbd's tools (`nbdinfo`, `nbdcopy`, `nbdfuse`) and fio can
//! use a volume from another program or another machine.
//!
//! * [`proto`]: the wire format, pure (no I/O, no state). The fuzz target and the
//!   malformed-request tests call it directly. It lives in [`crate::nbd_wire`] (with the
//!   client), below the devices, since `device::nbd` speaks the same protocol as a client.
//! * `connection`: one client, from the greeting to the last reply. The negotiation runs on
//!   the connection's thread; in the transmission phase that thread only reads requests and
//!   queues them to the connection's workers (started on demand, up to 16, so many requests
//!   are in flight; the pool is internally parallel), and replies are serialised through a
//!   mutex on the socket's write half, in completion order. A write is acknowledged only once [`Pool::write_at`](crate::Pool::write_at) has
//!   returned (and, with `FUA`, once [`Pool::flush`](crate::Pool::flush) has).
//! * `server`: the listener (TCP or Unix socket), the connection threads and graceful
//!   shutdown: new connections stop, every socket's read side is shut so its reader sees end
//!   of input, requests already read finish and are answered, then [`Server::run`] returns and
//!   the caller closes (flushes) the pool.
//! * [`client`] (re-exported here with feature `testing`, for the tests and the benchmark):
//!   the client (handshake, one request at a time or pipelined); `device::nbd` builds its
//!   members on other hosts on it.
//!
//! This module never sees devices or stripes: it maps requests to `Pool` calls only.

#[cfg(feature = "testing")]
pub use crate::nbd_wire::client;
mod connection;
pub use crate::nbd_wire::proto;
mod server;

pub use connection::{serve_stream, ConnectionEnd, ExportConfig, MAX_REQUEST_BYTES};
pub use server::{Listen, ServeOptions, ServeReport, Server, StopHandle};
