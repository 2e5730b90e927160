//! The layering rules of the workspace, checked from `cargo metadata`:
//! - seg-core is layer 0; seg-data and seg-models layer 1; seg-train layer 2;
//!   seg-cli layer 3. A crate depends (normal, build or dev) only on crates of
//!   strictly lower layers.
//! - Only seg-core names candle (`candle-core`, `candle-nn`, any `candle-*`).
//! - No crate depends on xtask.
//! - Every seg crate declares the features `cuda`, `cudnn`, `metal`, `mkl`,
//!   `accelerate`, none on by default, each forwarded to the seg crates it
//!   depends on (and, for seg-core, to candle).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::process::Command;

/// The layer of each seg crate.
pub const LAYERS: [(&str, u8); 5] = [
    ("seg-core", 0),
    ("seg-data", 1),
    ("seg-models", 1),
    ("seg-train", 2),
    ("seg-cli", 3),
];

/// Backend features every crate forwards.
pub const FEATURES: [&str; 5] = ["cuda", "cudnn", "metal", "mkl", "accelerate"];

fn layer(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// Runs `cargo metadata --no-deps` for this workspace.
pub fn metadata() -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
            root,
        ])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing cargo metadata")
}

/// Every rule violated by the workspace described by `meta`.
pub fn violations(meta: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    for p in &packages {
        let name = p["name"].as_str().unwrap_or("?");
        let deps = p["dependencies"].as_array().cloned().unwrap_or_default();
        let my_layer = layer(name);
        if name.starts_with("seg-") && my_layer.is_none() {
            v.push(format!("{name} has no layer: add it to xtask's LAYERS"));
        }
        for d in &deps {
            let dn = d["name"].as_str().unwrap_or("?");
            let kind = d["kind"].as_str().unwrap_or("normal");
            if dn == "xtask" {
                v.push(format!("{name} depends on xtask ({kind})"));
            }
            if dn.starts_with("candle") && name != "seg-core" {
                v.push(format!(
                    "{name} names {dn} ({kind}): only seg-core may depend on candle"
                ));
            }
            if let (Some(mine), Some(theirs)) = (my_layer, layer(dn)) {
                if theirs >= mine {
                    v.push(format!(
                        "{name} (layer {mine}) depends on {dn} (layer {theirs}, {kind}): only strictly lower layers are allowed"
                    ));
                }
            }
        }
        if my_layer.is_none() {
            continue;
        }
        let features = &p["features"];
        if features["default"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
        {
            v.push(format!("{name} turns on default features"));
        }
        for f in FEATURES {
            let Some(list) = features[f].as_array() else {
                v.push(format!("{name} lacks the feature {f}"));
                continue;
            };
            let list: Vec<&str> = list.iter().filter_map(|x| x.as_str()).collect();
            let normal_deps = deps.iter().filter(|d| d["kind"].is_null());
            for d in normal_deps {
                let dn = d["name"].as_str().unwrap_or("?");
                let forwards = |target: &str| {
                    list.iter()
                        .any(|e| *e == format!("{target}/{f}") || *e == format!("{target}?/{f}"))
                };
                if layer(dn).is_some() && !forwards(dn) {
                    v.push(format!("{name}'s feature {f} does not forward to {dn}"));
                }
                if dn == "candle-core" && !forwards(dn) {
                    v.push(format!(
                        "{name}'s feature {f} does not forward to candle-core"
                    ));
                }
            }
        }
    }
    v
}

/// `cargo xtask check-layers`.
pub fn run() -> Result<()> {
    let v = violations(&metadata()?);
    if v.is_empty() {
        println!(
            "layers ok: {}",
            LAYERS
                .iter()
                .map(|(n, l)| format!("{n}=L{l}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    } else {
        for line in &v {
            eprintln!("{line}");
        }
        bail!("{} layering violation(s)", v.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workspace_respects_the_layers() {
        let v = violations(&metadata().unwrap());
        assert!(v.is_empty(), "layering violations:\n{}", v.join("\n"));
    }

    fn pkg(name: &str, deps: &[(&str, Option<&str>)]) -> Value {
        let features: serde_json::Map<String, Value> = FEATURES
            .iter()
            .map(|f| {
                let fwd: Vec<String> = deps
                    .iter()
                    .filter(|(_, k)| k.is_none())
                    .map(|(d, _)| format!("{d}/{f}"))
                    .collect();
                (f.to_string(), json!(fwd))
            })
            .chain([("default".to_string(), json!([]))])
            .collect();
        json!({
            "name": name,
            "dependencies": deps.iter().map(|(d, k)| json!({"name": d, "kind": k})).collect::<Vec<_>>(),
            "features": features,
        })
    }

    #[test]
    fn detects_upward_and_candle_dependencies() {
        let meta = json!({"packages": [
            pkg("seg-core", &[("candle-core", None)]),
            pkg("seg-models", &[("seg-core", None), ("seg-data", Some("dev"))]),
            pkg("seg-data", &[("seg-core", None), ("candle-nn", None)]),
            pkg("seg-train", &[("seg-models", None), ("xtask", Some("dev"))]),
            pkg("seg-extra", &[]),
        ]});
        let v = violations(&meta);
        assert!(
            v.iter()
                .any(|l| l.contains("seg-models (layer 1) depends on seg-data")),
            "{v:?}"
        );
        assert!(
            v.iter().any(|l| l.contains("seg-data names candle-nn")),
            "{v:?}"
        );
        assert!(
            v.iter().any(|l| l.contains("seg-train depends on xtask")),
            "{v:?}"
        );
        assert!(
            v.iter().any(|l| l.contains("seg-extra has no layer")),
            "{v:?}"
        );
        assert_eq!(v.len(), 4, "{v:?}");
    }

    #[test]
    fn detects_missing_feature_forwarding() {
        let mut p = pkg("seg-models", &[("seg-core", None)]);
        p["features"]["metal"] = json!([]);
        let v = violations(&json!({"packages": [pkg("seg-core", &[("candle-core", None)]), p]}));
        assert_eq!(
            v,
            vec!["seg-models's feature metal does not forward to seg-core".to_string()]
        );
    }
}
