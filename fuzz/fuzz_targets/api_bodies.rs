//! The party API's body parsers on arbitrary bytes: `POST /v1/operations`
//! (one operation) and `POST /v1/operations/bulk` (`{"operations": [...]}`).
//! Never panic; every refusal is a typed `BodyError` naming a field; a bulk
//! body that parses holds 1..=MAX_BULK_OPS operations, and wrapping one
//! parsed operation's body in a bulk body parses to the same operation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_host::api::{parse_bulk, parse_operation_body, MAX_BULK_OPS};

fuzz_target!(|data: &[u8]| {
    match parse_bulk(data) {
        Ok(ops) => assert!((1..=MAX_BULK_OPS).contains(&ops.len())),
        Err(e) => assert!(!e.field.is_empty()),
    }
    match parse_operation_body(data) {
        Ok(op) => {
            let mut bulk = b"{\"operations\": [".to_vec();
            bulk.extend_from_slice(data);
            bulk.extend_from_slice(b"]}");
            match parse_bulk(&bulk) {
                Ok(ops) => assert_eq!(ops, vec![op]),
                // Two more levels of nesting can pass serde_json's depth limit.
                Err(e) => assert!(e.reason.contains("recursion limit"), "{e}"),
            }
        }
        Err(e) => assert!(!e.field.is_empty()),
    }
});
