//! Socket facts the kernel keeps, read by whoever needs them (the QUIC
//! listener registers its socket, the metrics read its drop count). Leaf
//! modules: nothing here imports the rest of the appliance.

pub mod udp_drops;
