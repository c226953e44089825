pub mod model;
pub use model::*;
mod interim;
pub use interim::*;
