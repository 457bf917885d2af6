//! The wire format around fastwebsockets: what it leaves out, added once.
//!
//! - [`frame`]: the frame header, parsed in one place, and unmasking.
//! - [`guard`]: the frame rules fastwebsockets does not check, before a frame is read whole.
//! - [`reassembly`]: fragments into messages, with UTF-8 checked across fragments.
//! - [`violation`]: a rule the peer broke, and the close frame that answers it.
//! - [`writer`]: frames queued and written in one flush.
//! - `deflate`: permessage-deflate (RFC 7692), feature `deflate`.

#[cfg(feature = "deflate")]
pub mod deflate;
pub(crate) mod frame;
pub(crate) mod guard;
pub(crate) mod reassembly;
pub(crate) mod violation;
pub(crate) mod writer;
