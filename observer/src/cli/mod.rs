pub mod observe;
