//! RDMA transport (feature `rdma`): placeholder, filled below.

pub mod conn;
pub mod credit;
pub mod imm;
pub mod qp_info;
