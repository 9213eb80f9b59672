//! Task verifiers: Countdown, exact match and numeric answers. A new task plugs in as one more
//! [`crate::Reward`] implementation reading its fields from [`crate::Sample::fields`].

pub mod countdown;
pub mod exact;
