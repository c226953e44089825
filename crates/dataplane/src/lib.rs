pub mod balance;
pub mod route;
