//! `cargo xtask check-vendor`: the patched copies under `vendor/` are exactly
//! the crates.io releases named in `vendor/VENDOR.toml` plus the patches
//! listed there. For each crate of the manifest:
//! - `vendor/pristine/<name>-<version>.crate` has the sha256 the manifest
//!   records (crates.io's checksum of the release; `--online` also compares
//!   it with the crates.io index);
//! - unpacked, with the manifest's `remove` paths deleted, every patch of
//!   `vendor/patches/<name>/` applies (`git apply`, no fuzz), each with a
//!   README (`<patch stem>.md`) that has an `Upstream:` line;
//! - the result equals `vendor/<name>/` file for file, byte for byte;
//! - the build uses `vendor/<name>/`: it is the `[patch.crates-io]` path of
//!   the workspace `Cargo.toml` (and `fuzz/Cargo.toml`), and `Cargo.lock`
//!   resolves the crate at the manifest's version.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// `vendor/VENDOR.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "crate")]
    pub crates: Vec<Vendored>,
}

/// One vendored crate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vendored {
    pub name: String,
    pub version: String,
    /// sha256 of the `.crate` file, as crates.io's index records it.
    pub sha256: String,
    /// Files and folders of the `.crate` left out of the copy.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Patch files in `vendor/patches/<name>/`, applied in this order.
    #[serde(default)]
    pub patches: Vec<String>,
}

/// Checks the workspace's `vendor/`, printing one line per crate.
pub fn run(online: bool) -> Result<()> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for line in check(root, online)? {
        println!("{line}");
    }
    Ok(())
}

/// Checks the `vendor/` of the workspace at `root`: one summary line per
/// crate when all is well, otherwise an error listing every problem found.
pub fn check(root: &Path, online: bool) -> Result<Vec<String>> {
    let manifest_path = root.join("vendor/VENDOR.toml");
    let text = fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: Manifest =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest_path.display()))?;
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for v in &manifest.crates {
        let before = problems.len();
        if let Err(e) = check_crate(root, v, online, &mut problems) {
            problems.push(format!("{e:#}"));
        }
        if problems.len() == before {
            summary.push(format!(
                "{} {}: .crate checksum ok{}, {} patch(es) apply, vendor/{} matches",
                v.name,
                v.version,
                if online { " (= crates.io index)" } else { "" },
                v.patches.len(),
                v.name
            ));
        }
    }
    check_build_uses(root, &manifest.crates, &mut problems);
    if !problems.is_empty() {
        bail!(
            "check-vendor: {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(summary)
}

/// A name that is one plain path component (no separators, not `.`/`..`).
fn plain(name: &str) -> bool {
    let mut c = Path::new(name).components();
    matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
}

/// A relative path of plain components.
fn relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn check_crate(root: &Path, v: &Vendored, online: bool, problems: &mut Vec<String>) -> Result<()> {
    ensure!(
        plain(&v.name) && plain(&v.version),
        "vendor/VENDOR.toml: `{} {}` is not a crate name and version",
        v.name,
        v.version
    );
    let stem = format!("{}-{}", v.name, v.version);
    let krate = root.join(format!("vendor/pristine/{stem}.crate"));
    let sum = sha256_file(&krate)?;
    ensure!(
        sum == v.sha256,
        "vendor/pristine/{stem}.crate: sha256 is {sum}, vendor/VENDOR.toml records {} \
         (not the crates.io release)",
        v.sha256
    );
    if online {
        let published = crates_io_checksum(&v.name, &v.version)?;
        ensure!(
            published == v.sha256,
            "{} {}: crates.io's checksum is {published}, vendor/VENDOR.toml records {}",
            v.name,
            v.version,
            v.sha256
        );
    }
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let tree = tmp
        .path()
        .canonicalize()
        .context("resolving the temporary folder")?
        .join(&stem);
    unpack(&krate, &stem, &tree)?;
    for r in &v.remove {
        ensure!(
            relative(r),
            "vendor/VENDOR.toml: {}: bad remove path `{r}`",
            v.name
        );
        let p = tree.join(r);
        if p.is_dir() {
            fs::remove_dir_all(&p)?;
        } else if p.is_file() {
            fs::remove_file(&p)?;
        } else {
            bail!(
                "vendor/VENDOR.toml: {}: `{r}` (remove) is not in {stem}.crate",
                v.name
            );
        }
    }
    let patch_dir = root.join("vendor/patches").join(&v.name);
    for p in &v.patches {
        ensure!(
            plain(p) && p.ends_with(".patch"),
            "vendor/VENDOR.toml: {}: `{p}` is not a .patch file name",
            v.name
        );
        let shown = format!("vendor/patches/{}/{p}", v.name);
        let readme = patch_dir.join(readme_name(p));
        match fs::read_to_string(&readme) {
            Ok(t) if t.lines().any(|l| l.starts_with("Upstream:")) => {}
            Ok(_) => problems.push(format!("{}: no `Upstream:` line", readme_name(&shown))),
            Err(_) => problems.push(format!(
                "{}: missing (every patch has a README)",
                readme_name(&shown)
            )),
        }
        git_apply(&tree, &patch_dir.join(p), &shown)?;
    }
    if patch_dir.is_dir() {
        for entry in fs::read_dir(&patch_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".patch") && !v.patches.contains(&name) {
                problems.push(format!(
                    "vendor/patches/{}/{name}: not listed in vendor/VENDOR.toml",
                    v.name
                ));
            }
        }
    }
    compare(
        &tree,
        &root.join("vendor").join(&v.name),
        &format!("vendor/{}", v.name),
        problems,
    )
}

/// `NNNN-topic.md` for `NNNN-topic.patch` (any folder prefix kept).
fn readme_name(patch: &str) -> String {
    format!("{}.md", patch.strip_suffix(".patch").unwrap_or(patch))
}

/// Hex sha256 of a file's bytes.
pub fn sha256_file(p: &Path) -> Result<String> {
    let bytes = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Unpacks a `.crate` (a gzipped tar whose entries all lie under `stem/`)
/// into `into`; anything but plain files and folders is refused.
fn unpack(krate: &Path, stem: &str, into: &Path) -> Result<()> {
    let shown = krate.display();
    let file = fs::File::open(krate).with_context(|| format!("opening {shown}"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    fs::create_dir_all(into)?;
    for entry in archive
        .entries()
        .with_context(|| format!("reading {shown}"))?
    {
        let mut entry = entry.with_context(|| format!("reading {shown}"))?;
        let path = entry.path()?.into_owned();
        let rel = match path.strip_prefix(stem) {
            Ok(r) if r.components().all(|c| matches!(c, Component::Normal(_))) => r.to_owned(),
            _ => bail!("{shown}: entry {} is not under {stem}/", path.display()),
        };
        let dest = into.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => fs::create_dir_all(&dest)?,
            tar::EntryType::Regular => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut out = fs::File::create(&dest)?;
                std::io::copy(&mut entry, &mut out)
                    .with_context(|| format!("{shown}: unpacking {}", path.display()))?;
            }
            t => bail!("{shown}: entry {} is a {t:?}, not a file", path.display()),
        }
    }
    Ok(())
}

/// Applies `patch` to the plain (non-git) folder `tree` with `git apply`.
fn git_apply(tree: &Path, patch: &Path, shown: &str) -> Result<()> {
    let patch = patch
        .canonicalize()
        .with_context(|| format!("{shown}: missing"))?;
    let ceiling = tree.parent().unwrap_or(tree);
    let out = Command::new("git")
        .args(["apply", "--whitespace=nowarn"])
        .arg(&patch)
        .current_dir(tree)
        // never look for a repository above the unpacked tree: outside one,
        // `git apply` patches the files of the current folder
        .env("GIT_CEILING_DIRECTORIES", ceiling)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .context("running git apply (is git installed?)")?;
    ensure!(
        out.status.success(),
        "{shown}: does not apply cleanly: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Relative paths of the files under `dir` (sorted); links and other
/// non-files are errors.
fn files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for entry in fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))? {
            let entry = entry?;
            let r = rel.join(entry.file_name());
            let t = entry.file_type()?;
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                out.insert(r);
            } else {
                bail!("{}: not a plain file or folder", dir.join(&r).display());
            }
        }
    }
    Ok(out)
}

/// Every difference between the expected tree and the one in use (shown as
/// `shown`): missing, extra and differing files.
fn compare(expected: &Path, actual: &Path, shown: &str, problems: &mut Vec<String>) -> Result<()> {
    ensure!(actual.is_dir(), "{shown}: missing (the build's copy)");
    let want = files(expected)?;
    let have = files(actual)?;
    for rel in want.union(&have) {
        let name = format!("{shown}/{}", rel.display());
        match (want.contains(rel), have.contains(rel)) {
            (true, false) => problems.push(format!("{name}: missing (pristine + patches has it)")),
            (false, true) => problems.push(format!("{name}: not in pristine + patches")),
            _ => {
                let a = fs::read(expected.join(rel))?;
                let b = fs::read(actual.join(rel))?;
                if a != b {
                    let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
                    let line = 1 + a[..same].iter().filter(|&&c| c == b'\n').count();
                    problems.push(format!(
                        "{name}: differs from pristine + patches (first at line {line})"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The build's manifests patch each vendored crate from `vendor/<name>`
/// (and nothing else from vendor/), and Cargo.lock has the manifest's version.
fn check_build_uses(root: &Path, crates: &[Vendored], problems: &mut Vec<String>) {
    for manifest in ["Cargo.toml", "fuzz/Cargo.toml"] {
        let path = root.join(manifest);
        if manifest != "Cargo.toml" && !path.exists() {
            continue;
        }
        let doc = match read_toml(&path) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{e:#}"));
                continue;
            }
        };
        let patch = doc
            .get("patch")
            .and_then(|p| p.get("crates-io"))
            .and_then(|p| p.as_table());
        let base = path.parent().unwrap_or(root);
        for v in crates {
            let want = root.join("vendor").join(&v.name);
            let to = patch
                .and_then(|p| p.get(&v.name))
                .and_then(|e| e.get("path"))
                .and_then(|p| p.as_str());
            match to {
                None => problems.push(format!(
                    "{manifest}: [patch.crates-io] has no path for {} (the build would use crates.io's copy)",
                    v.name
                )),
                Some(to) if !same_dir(&base.join(to), &want) => problems.push(format!(
                    "{manifest}: [patch.crates-io] {} = {to}, not vendor/{}",
                    v.name, v.name
                )),
                Some(_) => {}
            }
        }
        for (name, entry) in patch.into_iter().flatten() {
            let to = entry.get("path").and_then(|p| p.as_str());
            let in_vendor = to.is_some_and(|to| {
                let (a, b) = (
                    base.join(to).canonicalize(),
                    root.join("vendor").canonicalize(),
                );
                matches!((a, b), (Ok(a), Ok(b)) if a.starts_with(&b))
            });
            if in_vendor && !crates.iter().any(|v| &v.name == name) {
                problems.push(format!(
                    "{manifest}: {name} is patched from vendor/ but not listed in vendor/VENDOR.toml"
                ));
            }
        }
    }
    let lock = match read_toml(&root.join("Cargo.lock")) {
        Ok(l) => l,
        Err(e) => {
            problems.push(format!("{e:#}"));
            return;
        }
    };
    let packages = lock.get("package").and_then(|p| p.as_array());
    for v in crates {
        // a [patch]ed path crate is the one entry of its name without a source
        let version = packages.into_iter().flatten().find_map(|p| {
            (p.get("name")?.as_str()? == v.name && p.get("source").is_none())
                .then(|| p.get("version")?.as_str())
                .flatten()
        });
        match version {
            Some(ver) if ver == v.version => {}
            Some(ver) => problems.push(format!(
                "Cargo.lock: {} resolves to the vendored copy at {ver}, vendor/VENDOR.toml says {}",
                v.name, v.version
            )),
            None => problems.push(format!(
                "Cargo.lock: no path package {} (is vendor/{} used by the build?)",
                v.name, v.name
            )),
        }
    }
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// The path of a crate's file in the crates.io sparse index.
pub fn index_path(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.len() {
        1 => format!("1/{n}"),
        2 => format!("2/{n}"),
        3 => format!("3/{}/{n}", &n[..1]),
        _ => format!("{}/{}/{n}", &n[..2], &n[2..4]),
    }
}

/// The `cksum` crates.io's index records for `name` `version`.
fn crates_io_checksum(name: &str, version: &str) -> Result<String> {
    let url = format!("https://index.crates.io/{}", index_path(name));
    let body = ureq::get(&url)
        .call()
        .context("fetching the crates.io index")?
        .into_string()
        .with_context(|| format!("reading {url}"))?;
    index_checksum(&body, version)
        .with_context(|| format!("{url}: no checksum for version {version}"))
}

/// The `cksum` of `version` in a sparse-index file (one JSON object a line).
pub fn index_checksum(body: &str, version: &str) -> Option<String> {
    body.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["vers"] == version)
        .and_then(|e| e["cksum"].as_str().map(str::to_owned))
}
