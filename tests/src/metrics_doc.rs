//! docs/metrics.md's tables read back, and a real agent's `/metrics`
//! checked against them: every family it serves is documented, with its
//! type and only documented labels.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// A family of docs/metrics.md's tables: its type and labels.
pub struct Documented {
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// The families of docs/metrics.md's tables, by name.
pub fn documented() -> BTreeMap<String, Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut families = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | `label`, `label` | what |
        let Some(name) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        if !(name.starts_with("crossover_") || name.starts_with("process_")) {
            continue;
        }
        let labels = cells
            .get(3)
            .unwrap_or(&"")
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty() && l != "none")
            .collect();
        let kind = cells.get(2).unwrap_or(&"").to_string();
        families.insert(name.to_owned(), Documented { kind, labels });
    }
    families
}

/// Every family in `exposition` is documented, and its samples carry
/// only documented labels.
pub fn check_documented(exposition: &str) {
    let docs = documented();
    let mut kinds = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let doc = docs
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in docs/metrics.md"));
            assert_eq!(doc.kind, kind, "{name}'s type in docs/metrics.md");
            kinds.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    series
                        .strip_suffix(s)
                        .filter(|f| kinds.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(series);
            let labels = line
                .split_once('{')
                .map(|(_, rest)| rest.rsplit_once('}').unwrap().0)
                .unwrap_or_default();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let name = pair.split('=').next().unwrap();
                assert!(
                    docs[family].labels.contains(name) || name == "le",
                    "{family}: label {name} is not in docs/metrics.md"
                );
            }
        }
    }
    assert!(kinds.len() >= 20, "{kinds:?}");
}
