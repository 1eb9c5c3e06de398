//! What the `proactor-echo` server and the `lifecycle` demo share: the step log format.

pub mod steplog;
