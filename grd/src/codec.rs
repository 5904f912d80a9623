//! The protocol crates' message codec: the shared little-endian reader and writer of
//! [`interconnect::codec`], plus the GRD's own field, the resource id. It must never panic on
//! any input (the shared reader never does).

pub use interconnect::codec::{DecodeError, Reader, put_u8, put_u16, put_u32, put_u64};

use crate::ResourceId;

/// Appends a resource id (18 bytes).
#[inline]
pub fn put_resource(out: &mut Vec<u8>, r: &ResourceId) {
    put_u16(out, r.kind);
    put_u64(out, r.object);
    put_u64(out, r.item);
}

/// Reads a resource id.
pub fn read_resource(r: &mut Reader<'_>) -> Result<ResourceId, DecodeError> {
    Ok(ResourceId::new(r.u16()?, r.u64()?, r.u64()?))
}
