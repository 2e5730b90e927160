//! A DICOM series folder → one volume: made here from the real CT_small.dcm
//! by rewriting its position, instance and series tags.

use crate::shared_or_skip;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use seg_data::io::dicom::{list_series, read_series};
use seg_data::Error;
use std::path::Path;

fn write_slice(src: &Path, dst: &Path, z: f64, instance: u32, series: &str, orientation: &str) {
    let mut obj = dicom_object::open_file(src).unwrap();
    obj.put(DataElement::new(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        PrimitiveValue::from(format!("-10\\20\\{z}")),
    ));
    obj.put(DataElement::new(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        PrimitiveValue::from(orientation),
    ));
    obj.put(DataElement::new(
        tags::INSTANCE_NUMBER,
        VR::IS,
        PrimitiveValue::from(instance.to_string()),
    ));
    obj.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(series),
    ));
    obj.write_to_file(dst).unwrap();
}

#[test]
fn series_folder_becomes_a_sorted_volume_with_its_affine() {
    let src = shared_or_skip!("medical/dicom/CT_small.dcm");
    let dir = std::env::temp_dir().join(format!("seg-series-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let axial = "1\\0\\0\\0\\1\\0";
    // files named out of order; positions 2.5 mm apart
    for (name, z, inst) in [
        ("c.dcm", 5.0, 3),
        ("a.dcm", 0.0, 1),
        ("b.dcm", 2.5, 2),
        ("d.dcm", 7.5, 4),
    ] {
        write_slice(&src, &dir.join(name), z, inst, "1.2.3.4", axial);
    }
    let v = read_series(&dir, None).unwrap();
    assert_eq!(v.shape, vec![4, 128, 128, 1]);
    assert!((v.spacing[0] - 2.5).abs() < 1e-9, "{:?}", v.spacing);
    let a = v.affine.unwrap();
    let ps = 0.661468;
    assert!((a[0][0] - ps).abs() < 1e-6 && (a[1][1] - ps).abs() < 1e-6);
    assert!((a[2][2] - 2.5).abs() < 1e-9);
    assert_eq!([a[0][3], a[1][3], a[2][3]], [-10.0, 20.0, 0.0]);
    // every slice holds CT_small's pixels (same source), so sums add up
    let one = seg_data::io::dicom::read_dicom(&src).unwrap();
    assert_eq!(v.raw.sum, 4.0 * one.raw.sum);
    // reversed positions along the normal sort the other way round
    let rev = dir.join("rev");
    std::fs::create_dir_all(&rev).unwrap();
    for (name, z) in [("x.dcm", 10.0), ("y.dcm", -5.0)] {
        write_slice(&src, &rev.join(name), z, 1, "9.9", axial);
    }
    let r = read_series(&rev, None).unwrap();
    assert_eq!(r.affine.unwrap()[2][3], -5.0);
    // two series in one folder: refused with both UIDs, unless one is chosen
    write_slice(&src, &dir.join("other.dcm"), 0.0, 1, "5.6.7", axial);
    let err = read_series(&dir, None).unwrap_err();
    assert!(matches!(err, Error::Series { .. }));
    let msg = err.to_string();
    assert!(msg.contains("1.2.3.4") && msg.contains("5.6.7"), "{msg}");
    assert_eq!(list_series(&dir).unwrap().len(), 2);
    assert_eq!(read_series(&dir, Some("1.2.3.4")).unwrap().shape[0], 4);
    assert!(read_series(&dir, Some("0.0")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
