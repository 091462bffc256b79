//! The library's modules depend only on modules below them (README, "Layout of the code"):
//! every `crate::X` path in a module's production code must name a module of a lower rank.
//! Test code (from the first `#[cfg(test)]` of a file on, and `*_tests.rs` files) may use
//! anything, and the test machinery (feature `testing`) may use the whole library.
//!
//! A module that imports one above it (a cycle, or the pool reaching into a front end) fails
//! this test with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rank of each top-level module: a module may use only modules of a strictly lower rank.
/// Modules of the same rank may not use each other.
fn ranks() -> BTreeMap<&'static str, u32> {
    [
        // vocabulary
        ("types", 0),
        ("error", 1),
        // mechanics
        ("geometry", 2),
        ("format", 3),
        ("codec", 3),
        ("parallel", 3),
        // the NBD protocol and its client: used by the server front end and by the device
        // backend whose storage is an NBD export
        ("nbd_wire", 3),
        // devices know the format's superblock magic (to refuse relabelling a member)
        ("device", 4),
        // shared interface of the maintenance work
        ("maintenance", 5),
        // the metadata store of format version 4: verified page I/O and the page cache
        ("meta", 5),
        // the data path of format version 4 (rows, verified reads, heal) over the map
        ("volume", 6),
        // maintenance
        ("scrub", 6),
        ("rebuild", 6),
        // public API
        ("pool", 7),
        // front ends
        ("nbd", 8),
        ("endpoint", 8),
        ("report", 8),
        // what the crate root re-exports, by the module that defines it
        ("Result", 1),
        ("Error", 1),
        ("Corruption", 1),
        ("Layout", 2),
        ("Pool", 7),
        ("PoolStatus", 7),
        ("OpenOptions", 7),
        ("CreateOptions", 7),
        ("ScrubOptions", 7),
        ("ScrubReport", 7),
        ("ScrubProgress", 7),
        ("ScrubEnd", 7),
    ]
    .into_iter()
    .collect()
}

/// Test machinery: may use anything, and nothing below may use it outside tests.
const TEST_MACHINERY: [&str; 3] = ["testing", "sim", "fuzzing"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// `(line number, module)` for every `crate::X` in production code of `text`.
fn uses(text: &str) -> Vec<(usize, String)> {
    // Production code, comments removed, with a `crate::{...}` group that rustfmt spread over
    // several lines joined onto its first line.
    let mut lines: Vec<(usize, String)> = Vec::new();
    let mut open_group = false;
    for (number, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        let code = code.split("//").next().unwrap_or("");
        match lines.last_mut() {
            Some((_, joined)) if open_group => joined.push_str(code),
            _ => lines.push((number + 1, code.to_string())),
        }
        let last = &lines[lines.len() - 1].1;
        open_group = last
            .rfind("crate::{")
            .is_some_and(|at| !last[at..].contains('}'));
    }
    let mut found = Vec::new();
    for (number, code) in lines {
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            // `crate::{a::X, b}`: every first segment inside the braces.
            let names: Vec<&str> = match after.strip_prefix('{') {
                Some(group) => group
                    .split(['}', ','])
                    .map(|item| item.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![after],
            };
            for name in names {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push((number, name));
                }
            }
            rest = after;
        }
    }
    found
}

/// Every upward or sideways import in `src`, as messages.
fn violations(src: &Path) -> Vec<String> {
    let ranks = ranks();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        if module == "lib" || TEST_MACHINERY.contains(&module.as_str()) {
            continue;
        }
        if file.to_string_lossy().ends_with("_tests.rs") {
            continue;
        }
        let Some(&rank) = ranks.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module {module} has no rank in tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, used) in uses(&text) {
            if used == module {
                continue;
            }
            let allowed = match ranks.get(used.as_str()) {
                Some(&other) => other < rank,
                // The test machinery, used only under `#[cfg(feature = "testing")]` by the
                // pool's planted bugs, is not a dependency of a default build; anything else
                // is unknown.
                None => false,
            };
            if !allowed {
                wrong.push(format!(
                    "{}:{line}: {module} (rank {rank}) uses crate::{used} ({})",
                    file.display(),
                    ranks
                        .get(used.as_str())
                        .map_or("not a library layer".to_string(), |r| format!("rank {r}"))
                ));
            }
        }
    }
    wrong
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let wrong = violations(&src);
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
}

/// The check can fail: a pool file that reaches into a front end, and a scrub file that
/// reaches into the pool, are both reported.
#[test]
fn an_upward_import_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("pool")).unwrap();
    std::fs::create_dir_all(src.join("scrub")).unwrap();
    std::fs::write(
        src.join("pool/mod.rs"),
        "//! crate::endpoint in a comment is fine\nuse crate::endpoint::serve;\nuse crate::scrub::X;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("scrub/mod.rs"),
        "use crate::{\n    types::StripeId,\n    pool::PoolInner,\n};\n#[cfg(test)]\nmod tests { use crate::pool::Pool; }\n",
    )
    .unwrap();
    let wrong = violations(src);
    assert_eq!(wrong.len(), 2, "{wrong:?}");
    assert!(wrong[0].contains("pool/mod.rs:2: pool (rank 7) uses crate::endpoint"));
    assert!(wrong[1].contains("scrub/mod.rs:1: scrub (rank 6) uses crate::pool"));
}
