//! Name validation: any name a client or the network sends that validates
//! must be a single path component inside the directory it is joined to.
#![no_main]

use drd_proto::{NodeId, SegmentName, StreamName};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fn one_normal_component(name: &str) {
    let base = Path::new("/var/lib/drd/streams");
    let joined = base.join(name);
    assert_eq!(
        joined.parent(),
        Some(base),
        "{name:?} escapes its directory"
    );
    let comps: Vec<_> = Path::new(name).components().collect();
    assert!(
        matches!(comps.as_slice(), [Component::Normal(_)]),
        "{name:?}"
    );
    assert!(!name.contains('\0') && !name.starts_with('.'));
}

fuzz_target!(|name: &str| {
    if let Ok(s) = SegmentName::new(name) {
        one_normal_component(s.as_str());
        one_normal_component(&s.partial_file_name());
        assert!(!s.as_str().ends_with(".partial"));
    }
    if let Ok(s) = StreamName::new(name) {
        one_normal_component(s.as_str());
    }
    if let Ok(s) = NodeId::new(name) {
        one_normal_component(s.as_str());
    }
});
