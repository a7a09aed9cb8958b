//! Procedural macros that turn Sentry configuration mistakes into compile
//! errors. Placeholder crate: the macros arrive with their own issue; until
//! then configurations are validated at run time by `check` and `start`.
