//! A deterministic test handler: publishes each payload to topic `echo`
//! with the same key and an `offset` header. Its twin `test-echo-next` is
//! the "next version": the same, except that it upper-cases payloads
//! starting with `changed:` and fails on payloads starting with `fail-next`,
//! so shadow diffs and canary rollbacks can be tested with real components.

const NEXT: bool = false;

#[path = "echo.rs"]
mod echo;
