//! UDP flows and batches: the pure flow table, which datagrams of a batch travel together,
//! and the interface to the kernel that forwards offloaded flows. The worker's I/O shell for UDP lives in `worker::udp`, the syscalls in `sys`.

pub mod batch;
pub mod exchange;
pub mod flow_table;
pub mod offload;
