//! Shared helpers for Quorate's system tests.
