//! The NBD protocol on the wire, below both of its users: the server front end ([`crate::nbd`],
//! which re-exports these modules under its own name) and the device backend that keeps a pool
//! member on another host (`device::nbd`).
//!
//! * [`proto`]: constants and pure encoding and decoding (no I/O, no state).
//! * [`client`]: the client side: negotiation, requests, replies checked strictly.
//!
//! It owns bytes on a stream only: nothing here knows of devices, pools or stripes, and it must
//! not import any module above `format` (see `tests/layering.rs`).

pub mod client;
pub mod proto;
