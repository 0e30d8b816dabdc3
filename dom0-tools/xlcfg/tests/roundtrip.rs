//! Any config built from xl's grammar reads back as written, edits keep every other
//! setting, and what a replica's derivation writes parses again.

use proptest::prelude::*;
use xlcfg::{Value, XlConfig};

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "[ -~]{0,20}".prop_map(Value::Str),
        "[0-9]{1,6}".prop_map(Value::Num),
        "\"'\\\\\n[a-z]{0,3}".prop_map(Value::Str),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Value::List)
    })
}

fn config() -> impl Strategy<Value = Vec<(String, Value, Option<String>)>> {
    prop::collection::vec(
        (
            "[a-z_][a-z0-9_]{0,8}",
            value(),
            prop::option::of("[ -~]{0,12}"),
        ),
        0..8,
    )
}

proptest! {
    #[test]
    fn written_configs_read_back(settings in config()) {
        let mut text = String::from("# generated\n");
        for (k, v, comment) in &settings {
            text.push_str(&format!("{k} = {}", v.render()));
            if let Some(c) = comment {
                text.push_str(&format!("  # {c}"));
            }
            text.push('\n');
        }
        let cfg = XlConfig::parse(&text).unwrap();
        prop_assert_eq!(cfg.render(), text.clone());
        for (k, _, _) in &settings {
            // The last setting of a key is the one xl sees.
            let last = settings.iter().rev().find(|(kk, _, _)| kk == k).unwrap();
            prop_assert_eq!(cfg.get(k), Some(last.1.clone()));
        }
        // An edit keeps everything else.
        let mut edited = cfg.clone();
        edited.set("name", Value::Str("r1".into()));
        let again = XlConfig::parse(&edited.render()).unwrap();
        for k in cfg.keys() {
            if k != "name" {
                prop_assert_eq!(again.get(k), cfg.get(k));
            }
        }
        let name = again.get_str("name");
        prop_assert_eq!(name.as_deref(), Some("r1"));
    }
}
