//! Any string: the UDI parser returns a value or an error, never panics; what parses
//! round-trips through both printed forms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use penwarden_domain::Udi;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(udi) = Udi::parse(text) {
        assert_eq!(Udi::parse(&udi.to_human_readable()).as_ref(), Ok(&udi));
        assert_eq!(Udi::parse(&udi.to_raw()).as_ref(), Ok(&udi));
    }
});
