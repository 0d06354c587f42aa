//! The four interfaces through which the core reaches the world.

pub mod clock;
pub mod disk;
pub mod net;
pub mod rand;

pub use clock::{Clock, Instant, TimerId, TimerQueue};
pub use disk::{Disk, DiskError, DiskFile, DiskResult};
pub use net::{Address, Envelope, Network, NodeId};
pub use rand::Random;
