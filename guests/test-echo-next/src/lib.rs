//! The "next version" of `test-echo` (see there): upper-cases payloads
//! starting with `changed:` and fails on payloads starting with `fail-next`.

const NEXT: bool = true;

#[path = "../../test-echo/src/echo.rs"]
mod echo;
