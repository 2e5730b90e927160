//! Every DRIVE file decoded as Pillow decodes it (shared/datasets/DRIVE-reference.json).

use crate::shared_or_skip;
use seg_data::{read_image, read_mask};
use serde_json::Value;

#[test]
fn every_drive_file_matches_pillow() {
    let refpath = shared_or_skip!("datasets/DRIVE-reference.json");
    let root = refpath.parent().unwrap().to_path_buf();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&refpath).unwrap()).unwrap();
    let files = r["files"].as_array().unwrap();
    assert_eq!(files.len(), 100);
    for e in files {
        let file = e["file"].as_str().unwrap();
        let path = root.join(file);
        let v = read_image(&path).unwrap_or_else(|err| panic!("{file}: {err}"));
        let (h, w) = (
            e["height"].as_u64().unwrap() as usize,
            e["width"].as_u64().unwrap() as usize,
        );
        assert_eq!((v.shape[0], v.shape[1]), (h, w), "{file}");
        let c = v.shape[2];
        let at = |row: usize, col: usize| -> Vec<f32> {
            v.values[(row * w + col) * c..(row * w + col + 1) * c].to_vec()
        };
        if let Some(sums) = e["channel_sums"].as_array() {
            assert_eq!(c, sums.len(), "{file}");
            for (ch, want) in sums.iter().enumerate() {
                let got: f64 = v.values.iter().skip(ch).step_by(c).map(|&x| x as f64).sum();
                assert_eq!(got, want.as_f64().unwrap(), "{file}: channel {ch} sum");
            }
            for p in e["probes_row_col"].as_array().unwrap() {
                let want: Vec<f32> = p["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(
                    at(
                        p["row"].as_u64().unwrap() as usize,
                        p["col"].as_u64().unwrap() as usize
                    ),
                    want,
                    "{file}"
                );
            }
        } else {
            assert_eq!(c, 1, "{file}: greyscale GIF");
            let sum: f64 = v.values.iter().map(|&x| x as f64).sum();
            assert_eq!(sum, e["sum"].as_f64().unwrap(), "{file}: sum");
            for p in e["probes_row_col"].as_array().unwrap() {
                let want = p["value"].as_f64().unwrap() as f32;
                assert_eq!(
                    at(
                        p["row"].as_u64().unwrap() as usize,
                        p["col"].as_u64().unwrap() as usize
                    ),
                    vec![want],
                    "{file}"
                );
            }
            let counts = e["value_counts"].as_object().unwrap();
            let ones = counts.get("255").and_then(|x| x.as_u64()).unwrap_or(0) as usize;
            let m = read_mask(&path).unwrap();
            assert_eq!(
                m.data.iter().filter(|&&x| x == 1).count(),
                ones,
                "{file}: foreground count"
            );
        }
    }
}
