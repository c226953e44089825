pub mod duration;
pub mod locate;
pub mod model;
pub use model::*;
