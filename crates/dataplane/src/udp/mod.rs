//! UDP flows: the pure flow table. The worker's I/O shell for UDP lives in `worker::udp`.

pub mod flow_table;
