//! Random and hostile metadata: errors, never panics (the same entry points as the
//! fuzz targets in fuzz/).

use lazyvol::fuzzing::{open_store_with_metadata, parse_region_map};
use proptest::prelude::*;

proptest! {
    #[test]
    fn region_map_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_region_map(&bytes);
    }

    #[test]
    fn store_metadata_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = open_store_with_metadata(&bytes);
    }
}

#[test]
fn metadata_naming_missing_layers_or_bad_indices_is_an_error() {
    let cases = [
        r#"{"version":1,"next_layer":1,"volumes":{"v":{"kind":"volume","size":4096,"region_size":4096,"layers":["L9"],"own_from":0,"depends_on":null,"hydrate":false,"rate":null}}}"#,
        r#"{"version":1,"next_layer":1,"volumes":{"v":{"kind":"clone","size":4096,"region_size":4096,"layers":[],"own_from":5,"depends_on":null,"hydrate":true,"rate":null}}}"#,
        r#"{"version":1,"next_layer":1,"volumes":{"../v":{"kind":"volume","size":0,"region_size":3,"layers":["../../etc"],"own_from":9,"depends_on":"x","hydrate":false,"rate":null}}}"#,
    ];
    for c in cases {
        assert!(
            open_store_with_metadata(c.as_bytes()).is_err(),
            "accepted: {c}"
        );
    }
}
