//! `codec::decode_body` for every message kind (the first byte is the kind, the rest the
//! payload). A kind this build does not know is `UnknownKind`; a payload that decodes must
//! encode again, decode back equal and re-encode to the same bytes (`check_round_trip`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_shared::codec::{decode_body, DecodeError};
use vigil_shared::proto::kind;

fuzz_target!(|data: &[u8]| {
    let Some((&k, payload)) = data.split_first() else {
        return;
    };
    match decode_body(k, payload) {
        Ok(m) => {
            assert_eq!(m.kind(), k);
            vigil_fuzz::check_round_trip(&m);
        }
        Err(DecodeError::UnknownKind(u)) => {
            assert_eq!(u, k);
            assert!(!kind::is_known(k));
        }
        Err(e) => {
            assert!(kind::is_known(k), "{e}");
            assert_eq!(e.reason(), "malformed", "{e}");
        }
    }
});
