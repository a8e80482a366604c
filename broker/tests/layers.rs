//! The broker's modules form layers, and each may import only the layers below it
//! (`docs/architecture.md` draws them). This test reads the sources and fails, naming the file,
//! when a module imports one at its own layer or above, or when a crate that belongs to the
//! edges (HTTP, the command line's `anyhow`) is used below them. The crate boundaries
//! (`tollgate-shared`, `tollgate-policy`, `tollgate-store`) are checked by the compiler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `broker/src` and its layer. A module may import only modules whose
/// layer is strictly lower (so two modules of one layer never know each other).
const LAYERS: &[(&str, f32)] = &[
    // 0: leaves
    ("jsonrpc", 0.0),
    ("sse", 0.0),
    ("trim", 0.0),
    ("tls", 0.0),
    ("listen", 0.1),
    ("browser", 0.0),
    ("metrics", 0.0),
    ("reply", 0.1),
    // 2: who a request comes from
    ("auth", 2.0),
    // 3: held calls and decisions
    ("queue", 3.0),
    // notifications follow the queue's events
    ("notify", 3.5),
    // 4: the decision for one call
    ("gateway", 4.0),
    // 5: transports, then waiting (which forwards through them)
    ("upstream", 5.0),
    ("waiting", 5.1),
    // 6: edges, which must not know each other
    ("frontend", 6.0),
    ("console_api", 6.0),
    ("admin", 6.0),
    // 7: wiring and commands
    ("config", 7.0),
    ("reload", 7.05),
    ("serve", 7.1),
    ("diagnostics", 7.1),
    ("bridge", 7.1),
    ("cli", 7.2),
    // the fuzz targets' entry points (feature `fuzzing`)
    ("fuzzing", 7.3),
];

/// Crates some modules must not use: (crate, the modules, why).
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    // Library code returns typed errors; only the commands and their wiring add context.
    (
        "anyhow",
        &[
            "jsonrpc",
            "sse",
            "trim",
            "reply",
            "auth",
            "queue",
            "gateway",
            "upstream",
            "waiting",
            "frontend",
            "console_api",
            "config",
        ],
        "library code returns typed errors (thiserror); anyhow is for the commands",
    ),
    // The queue and the gateway do not know how bytes travel.
    (
        "axum",
        &["queue", "gateway"],
        "the queue and the gateway do not know HTTP",
    ),
    (
        "reqwest",
        &["queue", "gateway"],
        "the queue and the gateway do not know HTTP",
    ),
];

fn layer(module: &str) -> Option<f32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (doc links such as [`crate::trim`] name modules
/// without importing them) and without string literals.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

/// The top-level modules a piece of code names through `crate::`, including grouped imports
/// (`use crate::{jsonrpc, sse};`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `tollgate_crate::` or the like
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut first = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        if !item.is_empty() {
                            out.push(std::mem::take(&mut item));
                        }
                        first = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && first {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        out.push(std::mem::take(&mut item));
                        first = false;
                    }
                }
            }
            if !item.is_empty() {
                out.push(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// The top-level module a source file belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut seen = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let rel = file
            .strip_prefix(&src)
            .unwrap_or(file)
            .display()
            .to_string();
        let Some(own) = layer(&module) else {
            problems.push(format!(
                "{rel}: module `{module}` has no layer in tests/layers.rs: add it to LAYERS"
            ));
            continue;
        };
        *seen.entry(module.clone()).or_insert(0) += 1;
        let text = std::fs::read_to_string(file).expect("read");
        let code = code(&text);
        for target in crate_paths(&code) {
            if target == module {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(l) => problems.push(format!(
                    "{rel}: `{module}` (layer {own}) imports `crate::{target}` (layer {l}); a module may only import layers below its own"
                )),
                None => problems.push(format!(
                    "{rel}: imports `crate::{target}`, which has no layer in tests/layers.rs"
                )),
            }
        }
        for (krate, modules, why) in FORBIDDEN {
            let used = code.contains(&format!("{krate}::"));
            if modules.contains(&module.as_str()) && used {
                problems.push(format!("{rel}: `{module}` uses `{krate}`: {why}"));
            }
        }
    }
    for (module, _) in LAYERS {
        if !seen.contains_key(*module) {
            problems.push(format!(
                "LAYERS names `{module}`, which is not a module of broker/src any more"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the layering is broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_import_reader_sees_grouped_nested_and_commented_paths() {
    let text = "use crate::{jsonrpc, reply::{self, Reply}, sse};\n// [`crate::cli`]\nlet x = crate::queue::Queue::new(\"crate::serve\");\nuse tollgate_crate::x;\n";
    assert_eq!(
        crate_paths(&code(text)),
        vec!["jsonrpc", "reply", "sse", "queue"]
    );
}
