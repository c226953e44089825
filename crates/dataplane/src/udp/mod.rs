//! UDP flows and batches: the pure flow table, and which datagrams of a batch travel
//! together. The worker's I/O shell for UDP lives in `worker::udp`, the syscalls in `sys`.

pub mod batch;
pub mod flow_table;
