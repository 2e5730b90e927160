//! `cargo xtask bench` on a tiny configuration: without a peer, and with a
//! stand-in peer (a shell script printing a fixed JSON line) to check the
//! alternation and the ratio.

use serde_json::Value;
use std::process::Command;

fn xtask() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bench_reports_seg_alone_and_ratios_against_a_peer() {
    let args = [
        "bench",
        "--model",
        "unet",
        "--base",
        "2",
        "--in-channels",
        "1",
        "--mode",
        "train",
        "--batch",
        "2",
        "--size",
        "32",
        "--reps",
        "2",
        "--warmup",
        "0",
    ];
    let out = xtask().args(args).args(["--rounds", "1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_lines(&out.stdout);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["shape"], serde_json::json!([2, 1, 32, 32]));
    assert!(r["seg_ms_median"].as_f64().unwrap() > 0.0);
    assert!(r["ratio"].is_null() && r["peer_ms_median"].is_null());
    assert!(String::from_utf8_lossy(&out.stderr).contains("| unet | 2 | train |"));

    // a stand-in peer that always takes "1000 ms": ratio = seg / 1000
    let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("peer.sh");
    std::fs::write(
        &script,
        "echo '{\"impl\": \"pytorch\", \"ms_median\": 1000.0, \"peak_rss_mib\": 123.0}'\n",
    )
    .unwrap();
    let out = xtask()
        .args(args)
        .args(["--rounds", "2", "--peer", "sh", "--peer-script"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &json_lines(&out.stdout)[0];
    let (seg, ratio) = (
        r["seg_ms_median"].as_f64().unwrap(),
        r["ratio"].as_f64().unwrap(),
    );
    assert_eq!(r["peer_ms_median"].as_f64(), Some(1000.0));
    assert_eq!(r["peer_peak_rss_mib"].as_f64(), Some(123.0));
    assert!(
        ratio > 0.0 && (ratio - seg / 1000.0).abs() < seg / 1000.0 * 0.5,
        "{ratio} vs {seg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_dims_3_runs_volumes_and_tells_the_peer() {
    // a stand-in peer that answers only when given the 3D infer volume
    let dir = std::env::temp_dir().join(format!("xtask-bench3d-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("peer3d.sh");
    std::fs::write(
        &script,
        "case \"$*\" in *'--dims 3 --depth 16 --height 16 --width 16'*) \
         echo '{\"impl\": \"pytorch\", \"ms_median\": 1000.0, \"peak_rss_mib\": 1.0}';; \
         *) echo \"unexpected: $*\" >&2; exit 1;; esac\n",
    )
    .unwrap();
    let out = xtask()
        .args([
            "bench",
            "--dims",
            "3",
            "--base",
            "2",
            "--size",
            "16",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "--mode",
            "infer",
            "--peer",
            "sh",
            "--peer-script",
        ])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_lines(&out.stdout);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["shape"], serde_json::json!([1, 1, 16, 16, 16]));
    assert_eq!(rows[0]["peer_ms_median"].as_f64(), Some(1000.0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("| unet | 2 | infer | [1,1,16,16,16] |"));

    // a train step on a 3D batch, seg alone
    let out = xtask()
        .args([
            "bench", "--dims", "3", "--model", "unet", "--base", "2", "--batch", "2", "--size",
            "16", "--mode", "train", "--reps", "1", "--warmup", "0", "--rounds", "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_lines(&out.stdout);
    assert_eq!(rows[0]["shape"], serde_json::json!([2, 1, 16, 16, 16]));
    assert!(rows[0]["seg_ms_median"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
