//! The crate's folders form layers, each importing only from the layers below it, so the core
//! (`broker/`) never reaches up into what drives it (`runtime/`, `sys/`, `bridge/`), and no two
//! folders import each other. This test reads every `crate::` path in `src/` (comments aside)
//! and fails on an import against the order; docs/ARCHITECTURE.md ("Layers") describes it.

use std::path::Path;

/// Bottom first. A module may import from its own layer's folder and from any layer before it.
const LAYERS: &[&[&str]] = &[
    &["protocol", "proxy", "tls", "websocket"],
    &["auth"],
    &["config"],
    &["logging", "store"],
    &["broker"],
    &["sys"],
    &["runtime"],
    &["bridge"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`src/broker/shard.rs` -> `broker`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    Some(name.trim_end_matches(".rs").to_string())
}

/// Each line of `file` with its number, its comment cut off.
fn code_lines(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.split("//").next().unwrap_or("").to_string()))
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_folder_imports_from_a_folder_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer_of(&module).unwrap_or_else(|| panic!("{module} is in no layer"));
        for (number, code) in code_lines(file) {
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let target: String =
                    rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let Some(theirs) = layer_of(&target) else { continue };
                if theirs > own || (theirs == own && target != module) {
                    violations.push(format!(
                        "{}:{number}: {module} imports {target}",
                        file.strip_prefix(&src).unwrap().display(),
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layers:\n{}", violations.join("\n"));
    assert!(files.len() > 30, "found only {} files under {}", files.len(), src.display());
}

/// The core decides and never waits: nothing under `src/broker/` is async or awaits, except
/// the wake-up primitive the runtime waits on (`signal.rs`).
#[test]
fn the_core_never_awaits() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/broker");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    let mut awaiting = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("signal.rs")) {
        for (number, code) in code_lines(file) {
            let awaits = code.match_indices(".await").any(|(at, _)| {
                let next = code[at + ".await".len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if awaits || code.contains("async ") {
                awaiting.push(format!("{}:{number}: {}", file.display(), code.trim()));
            }
        }
    }
    assert!(awaiting.is_empty(), "the core awaits:\n{}", awaiting.join("\n"));
    assert!(files.len() > 10, "found only {} files under {}", files.len(), core.display());
}
