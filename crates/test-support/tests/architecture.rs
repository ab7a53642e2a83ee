//! ARCHITECTURE.md stays true: every repository path it names exists, every
//! Rust module of the crates is on its code map, and the crate dependencies
//! point the one way it says (gguf <- core <- {cpu, cuda} <- cli).

use std::collections::BTreeSet;
use std::path::Path;

use metallic_test_support::repo_path;

/// Where a backticked span must start to be read as a repository path.
const PATH_PREFIXES: &[&str] = &["crates/", "docs/", "scripts/", ".ci/"];
const ROOT_FILES: &[&str] = &[
    "README.md",
    "BENCHMARKS.md",
    "ARCHITECTURE.md",
    "Cargo.toml",
];

fn architecture() -> String {
    let path = repo_path("ARCHITECTURE.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The backticked spans of `text` outside fenced blocks that name a
/// repository path (templates such as `crates/cuda/kernels/<op>.cu` are not).
fn named_paths(text: &str) -> BTreeSet<String> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            (PATH_PREFIXES.iter().any(|p| s.starts_with(p)) || ROOT_FILES.contains(s))
                && !s.contains(|c: char| c.is_whitespace() || "<>*{}$".contains(c))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_path_architecture_md_names_exists() {
    let paths = named_paths(&architecture());
    // Guards the parser: the document names well over a hundred paths.
    assert!(paths.len() > 100, "only {} paths found", paths.len());
    let missing: Vec<&String> = paths.iter().filter(|p| !repo_path(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist (update the document): {missing:?}"
    );
}

fn rust_files(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{rel}/{name}");
        let path = e.path();
        if path.is_dir() {
            rust_files(&path, &rel, out);
        } else if name.ends_with(".rs") {
            out.push(rel);
        }
    }
}

#[test]
fn every_crate_module_is_on_the_code_map() {
    let named = named_paths(&architecture());
    let mut modules = Vec::new();
    for krate in std::fs::read_dir(repo_path("crates")).unwrap().flatten() {
        let name = krate.file_name().to_string_lossy().into_owned();
        rust_files(
            &krate.path().join("src"),
            &format!("crates/{name}/src"),
            &mut modules,
        );
    }
    assert!(modules.len() > 50, "only {} modules found", modules.len());
    let absent: Vec<&String> = modules.iter().filter(|m| !named.contains(*m)).collect();
    assert!(
        absent.is_empty(),
        "modules missing from the code map of ARCHITECTURE.md (add a line saying what each owns): {absent:?}"
    );
}

/// The package name and the metallic crates among the normal dependencies of
/// a Cargo.toml (dev-dependencies are free: tests may compare backends).
fn metallic_dependencies(manifest: &str) -> (String, BTreeSet<String>) {
    let (mut name, mut deps, mut section) = (String::new(), BTreeSet::new(), String::new());
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if section == "package" && key == "name" {
            name = value.trim().trim_matches('"').to_string();
        }
        let normal = section == "dependencies"
            || section == "build-dependencies"
            || (section.starts_with("target.") && section.ends_with(".dependencies"));
        let dep = key.trim_end_matches(".workspace");
        if normal && dep.starts_with("metallic") {
            deps.insert(dep.to_string());
        }
    }
    (name, deps)
}

#[test]
fn crate_dependencies_point_from_cli_towards_gguf() {
    let allowed: &[(&str, &[&str])] = &[
        ("metallic-gguf", &[]),
        ("metallic", &["metallic-gguf"]),
        ("metallic-cpu", &["metallic", "metallic-gguf"]),
        ("metallic-cuda", &["metallic", "metallic-gguf"]),
        ("metallic-server", &["metallic", "metallic-gguf"]),
        (
            "metallic-cli",
            &[
                "metallic",
                "metallic-gguf",
                "metallic-cpu",
                "metallic-cuda",
                "metallic-server",
            ],
        ),
        ("metallic-test-support", &[]),
    ];
    let mut seen = BTreeSet::new();
    for krate in std::fs::read_dir(repo_path("crates")).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(krate.path().join("Cargo.toml")) else {
            continue;
        };
        let (name, deps) = metallic_dependencies(&text);
        let Some((_, ok)) = allowed.iter().find(|(n, _)| *n == name) else {
            continue; // a crate of its own: only the crates below must not depend on it
        };
        seen.insert(name.clone());
        let extra: Vec<&String> = deps.iter().filter(|d| !ok.contains(&d.as_str())).collect();
        assert!(
            extra.is_empty(),
            "{name} depends on {extra:?}; ARCHITECTURE.md allows only {ok:?}"
        );
    }
    assert_eq!(seen.len(), allowed.len(), "crates found: {seen:?}");
}

#[test]
fn the_path_reader_keeps_paths_and_drops_templates_code_and_prose() {
    let text = "`crates/a.rs` and `Exec::op`, `crates/x/<op>.cu`, `README.md`\n\
                ```\n`crates/in_fence.rs`\n```\n`impl Backend for\nCpuBackend`";
    let got: Vec<String> = named_paths(text).into_iter().collect();
    assert_eq!(got, ["README.md", "crates/a.rs"]);
    let (name, deps) = metallic_dependencies(
        "[package]\nname = \"metallic-cpu\"\n[dependencies]\nmetallic.workspace = true\n\
         rayon = \"1\"\n[dev-dependencies]\nmetallic-cuda.workspace = true\n",
    );
    assert_eq!(name, "metallic-cpu");
    assert_eq!(deps.into_iter().collect::<Vec<_>>(), ["metallic"]);
}
