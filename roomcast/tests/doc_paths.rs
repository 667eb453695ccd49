//! Every file the docs name exists: a renamed or deleted file must take its mentions
//! with it. A path is a backticked token, or a relative markdown link, that has a `/`
//! or a file extension. It resolves from the repository root or the document's folder,
//! or as the tail of a tracked path (`conn/mod.rs`, `overlays/gke/ingress.yaml`).

use std::path::Path;
use std::process::Command;

/// Files the docs tell a reader to create (gitignored), or that a run writes (a
/// benchmark's output folder).
const CREATED_BY_THE_READER: &[&str] = &[
    "secrets.env",
    "terraform.tfvars",
    "backend.hcl",
    "roomcast-external-secrets.yaml",
    "metrics/histograms.md",
    "steps.tsv",
    "summary.txt",
    "summary.json",
    "machine.txt",
];
/// Folders that runs write into (gitignored): what the docs name there is an output.
const OUTPUT_FOLDERS: &[&str] = &["test-output/", "target/", ".tools/"];
const EXTENSIONS: &[&str] =
    &["rs", "md", "yaml", "yml", "tf", "py", "sh", "json", "js", "html", "toml", "tsv", "proto", "hcl", "txt"];

fn tracked(root: &Path) -> Vec<String> {
    let out = Command::new("git").arg("ls-files").current_dir(root).output().expect("git ls-files (a git checkout)");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Backticked tokens and relative link targets of a markdown text.
fn mentions(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, part) in text.split('`').enumerate() {
        if n % 2 == 1 && !part.contains(' ') {
            found.push(part.to_owned());
        }
    }
    for part in text.split("](").skip(1) {
        if let Some(end) = part.find(')') {
            found.push(part[..end].split('#').next().unwrap_or_default().to_owned());
        }
    }
    found
}

fn looks_like_a_path(token: &str) -> bool {
    let token = token.trim_end_matches(['.', ',', ':']);
    if token.is_empty()
        || token.contains("://")
        || token.contains(['*', '$', '{', '<', '=', '@'])
        || token.starts_with('-')
    {
        return false;
    }
    let extension = token.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    EXTENSIONS.contains(&extension) && !token.starts_with('.')
}

#[test]
fn every_file_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    let files = tracked(root);
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in files.iter().filter(|f| f.ends_with(".md") && !f.contains("node_modules")) {
        let text = std::fs::read_to_string(root.join(doc)).unwrap_or_else(|err| panic!("read {doc}: {err}"));
        let folder = Path::new(doc).parent().unwrap_or(Path::new(""));
        for token in mentions(&text).into_iter().filter(|t| looks_like_a_path(t)) {
            let path = token.trim_end_matches(['.', ',', ':']).trim_start_matches("./");
            if CREATED_BY_THE_READER.iter().any(|c| path.ends_with(c))
                || OUTPUT_FOLDERS.iter().any(|folder| path.starts_with(folder))
            {
                continue;
            }
            checked += 1;
            // Tracked files only: an output left in this checkout by an earlier run would
            // hide a stale name that a fresh clone does not have.
            let here = folder.join(path).to_string_lossy().into_owned();
            let resolves = files.iter().any(|f| f == path || f == &here || f.ends_with(&format!("/{path}")))
                || files.iter().any(|f| f.starts_with(&format!("{}/", path.trim_end_matches('/'))));
            if !resolves {
                missing.push(format!("{doc}: `{path}`"));
            }
        }
    }
    assert!(checked > 100, "only {checked} paths found: is the scan broken?");
    assert!(missing.is_empty(), "the docs name files that do not exist:\n{}", missing.join("\n"));
}
