//! DICOM through dicom-object and dicom-pixeldata: explicit/implicit VR
//! little endian, big endian, multi-frame; RLE, JPEG baseline and lossless,
//! and JPEG 2000 (OpenJPEG 2.5, the C library, through `openjpeg-sys`: see
//! docs/reliability.md for why not the `openjp2` port). The modality LUT (rescale
//! slope/intercept) is applied to the values; the stored window and the
//! photometric interpretation are kept so that display windowing can invert
//! MONOCHROME1. A series folder becomes one 3D volume ([`read_series`]).

use crate::error::{Error, Result};
use crate::volume::{check_size, Format, Layout, Stats, StoredType, Volume, Window};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, PixelRepresentation};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "DICOM";

fn open(path: &Path) -> Result<DefaultDicomObject> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    // no value can be longer than the file (or, deflated, than the file
    // inflated at DEFLATE's maximum ratio): the parser reserves a value's
    // declared length before reading it, so the bound keeps a few crafted
    // header bytes from costing gigabytes (found by fuzzing)
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let bound = if is_deflated(path) {
        size.saturating_mul(1032)
    } else {
        size
    };
    dicom_parser::with_max_value_length(bound, || OpenFileOptions::new().open_file(path))
        .map_err(|e| Error::decode(path, FORMAT, flatten(&e)))
}

/// Whether the file's meta group names the deflated transfer syntax
/// (1.2.840.10008.1.2.1.99). The meta group comes first and is small, so
/// the first 64 KiB hold it.
fn is_deflated(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .is_ok()
        && head
            .windows(DEFLATED_TS.len())
            .any(|w| w == DEFLATED_TS.as_bytes())
}

const DEFLATED_TS: &str = "1.2.840.10008.1.2.1.99";

/// One line from an error and its sources.
fn flatten(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn floats(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
}

fn string(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        })
}

/// Pixel spacing [row, col]: PixelSpacing, else ImagerPixelSpacing, else the
/// shared functional groups (enhanced multi-frame), else [1, 1].
fn pixel_spacing(obj: &DefaultDicomObject) -> Vec<f64> {
    if let Some(v) =
        floats(obj, tags::PIXEL_SPACING).or_else(|| floats(obj, tags::IMAGER_PIXEL_SPACING))
    {
        if v.len() >= 2 {
            return v[..2].to_vec();
        }
    }
    let nested = obj
        .element_opt(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items().and_then(|i| i.first().cloned()))
        .and_then(|item| {
            item.element(tags::PIXEL_MEASURES_SEQUENCE)
                .ok()
                .and_then(|e| e.items().and_then(|i| i.first().cloned()))
        })
        .and_then(|pm| {
            pm.element(tags::PIXEL_SPACING)
                .ok()
                .and_then(|e| e.to_multi_float64().ok())
        });
    match nested {
        Some(v) if v.len() >= 2 => v[..2].to_vec(),
        _ => vec![1.0, 1.0],
    }
}

/// Runs a third-party pixel-data decoder, turning a panic inside it into a
/// decode error naming the file. Some decoders index past the end of a
/// corrupt stream (dicom-transfer-syntax-registry 0.10.1's RLE decoder on a
/// truncated segment, found by fuzzing: docs/reliability.md) instead of
/// returning an error.
fn guard_decoder<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Error::decode(
            path,
            FORMAT,
            format!("the pixel data is corrupt (the decoder failed: {what})"),
        )
    })
}

/// Reads one DICOM file: shape `[frames, rows, cols, samples]`, values after
/// the modality LUT, raw statistics of the stored values as decoded.
pub fn read_dicom(path: &Path) -> Result<Volume> {
    let obj = open(path)?;
    read_object(path, &obj)
}

fn read_object(path: &Path, obj: &DefaultDicomObject) -> Result<Volume> {
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let rows = floats(obj, tags::ROWS)
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0) as usize;
    let cols = floats(obj, tags::COLUMNS)
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0) as usize;
    let frames = string(obj, tags::NUMBER_OF_FRAMES)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0) as usize;
    let spp = floats(obj, tags::SAMPLES_PER_PIXEL)
        .and_then(|v| v.first().copied())
        .unwrap_or(1.0) as usize;
    if rows == 0 || cols == 0 {
        return Err(Error::decode(
            path,
            FORMAT,
            "no image: Rows/Columns missing or zero",
        ));
    }
    check_size(path, "pixel data", &[frames.max(1), rows, cols, spp.max(1)])?;
    let decoded = guard_decoder(path, || obj.decode_pixel_data())?.map_err(|e| {
        Error::decode(
            path,
            FORMAT,
            format!("cannot decode the pixel data: {}", flatten(&e)),
        )
    })?;
    let (rows, cols) = (decoded.rows() as usize, decoded.columns() as usize);
    let frames = decoded.number_of_frames() as usize;
    let spp = decoded.samples_per_pixel() as usize;
    let expected = rows * cols * frames * spp;
    let raw_opts = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    let mut raw: Vec<f64> = guard_decoder(path, || decoded.to_vec_with_options(&raw_opts))?
        .map_err(|e| {
            Error::decode(
                path,
                FORMAT,
                format!("cannot convert the pixel data: {}", flatten(&e)),
            )
        })?;
    if raw.len() != expected {
        return Err(Error::decode(
            path,
            FORMAT,
            format!(
                "pixel data holds {} samples, {frames}x{rows}x{cols}x{spp} expected",
                raw.len()
            ),
        ));
    }
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let (bits_alloc, bits_stored) = (decoded.bits_allocated(), decoded.bits_stored());
    // sign-extend / mask to BitsStored, as pydicom does
    if bits_stored < bits_alloc && bits_stored > 0 && bits_alloc <= 32 {
        let mask = (1i64 << bits_stored) - 1;
        for v in raw.iter_mut() {
            let mut x = (*v as i64) & mask;
            if signed && x & (1 << (bits_stored - 1)) != 0 {
                x -= 1 << bits_stored;
            }
            *v = x as f64;
        }
    }
    let stored = match (bits_alloc, signed) {
        (1, _) => StoredType::Bool,
        (8, false) => StoredType::Uint8,
        (8, true) => StoredType::Int8,
        (16, false) => StoredType::Uint16,
        (16, true) => StoredType::Int16,
        (32, false) => StoredType::Uint32,
        (32, true) => StoredType::Int32,
        (b, _) => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                format: FORMAT,
                reason: format!("BitsAllocated {b}"),
            })
        }
    };
    let rescale = decoded.rescale().ok().and_then(|r| r.first().copied());
    let (slope, intercept) = rescale
        .map(|r| (r.slope, r.intercept))
        .unwrap_or((1.0, 0.0));
    let values = raw
        .iter()
        .map(|&v| (v * slope + intercept) as f32)
        .collect();
    let window = decoded.window().ok().flatten().and_then(|w| {
        w.first().map(|w| Window {
            center: w.center,
            width: w.width,
        })
    });
    let photometric = decoded.photometric_interpretation().as_str().to_string();
    Ok(Volume {
        format: Format::Dicom,
        shape: vec![frames, rows, cols, spp],
        layout: Layout::RowMajor,
        stored,
        raw: Stats::of(raw.iter().copied()),
        values,
        spacing: pixel_spacing(obj),
        affine: None,
        window,
        transfer_syntax: Some(ts),
        photometric: Some(photometric),
    })
}

/// One slice of a series.
struct Slice {
    path: PathBuf,
    position: [f64; 3],
    orientation: [f64; 6],
    volume: Volume,
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The series (SeriesInstanceUID → files) found in a folder.
pub fn list_series(dir: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut series: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for p in paths {
        let Ok(obj) = OpenFileOptions::new().open_file(&p) else {
            continue;
        };
        let uid = string(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        series.entry(uid).or_default().push(p);
    }
    Ok(series)
}

/// Reads a folder of single-frame DICOM files as one volume, shape
/// `[slices, rows, cols, samples]`: slices sorted by ImagePositionPatient
/// projected on the slice normal, slice spacing from the positions, and the
/// voxel (col, row, slice) → patient (LPS, mm) affine from the orientation.
/// Several series in one folder are refused, listing their UIDs, unless
/// `series_uid` chooses one.
pub fn read_series(dir: &Path, series_uid: Option<&str>) -> Result<Volume> {
    let all = list_series(dir)?;
    let files = match series_uid {
        Some(uid) => all.get(uid).cloned().ok_or_else(|| Error::Series {
            path: dir.to_path_buf(),
            reason: format!(
                "no series {uid:?}; found {:?}",
                all.keys().collect::<Vec<_>>()
            ),
        })?,
        None if all.len() > 1 => {
            return Err(Error::Series {
                path: dir.to_path_buf(),
                reason: format!(
                    "{} series in one folder, choose one: {}",
                    all.len(),
                    all.iter()
                        .map(|(k, v)| format!("{k} ({} files)", v.len()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
        None => all.into_values().next().ok_or_else(|| Error::Series {
            path: dir.to_path_buf(),
            reason: "no DICOM files".into(),
        })?,
    };
    let mut slices = Vec::new();
    for p in files {
        let obj = open(&p)?;
        let volume = read_object(&p, &obj)?;
        let pos = floats(&obj, tags::IMAGE_POSITION_PATIENT).filter(|v| v.len() == 3);
        let ori = floats(&obj, tags::IMAGE_ORIENTATION_PATIENT).filter(|v| v.len() == 6);
        let (Some(pos), Some(ori)) = (pos, ori) else {
            return Err(Error::Series {
                path: p,
                reason: "no ImagePositionPatient/ImageOrientationPatient: cannot place the slice"
                    .into(),
            });
        };
        if volume.shape[0] != 1 {
            return Err(Error::Series {
                path: p,
                reason: "multi-frame file inside a series folder".into(),
            });
        }
        slices.push(Slice {
            path: p,
            position: [pos[0], pos[1], pos[2]],
            orientation: ori.try_into().expect("six values"),
            volume,
        });
    }
    let ori0 = slices[0].orientation;
    let (rowdir, coldir) = ([ori0[0], ori0[1], ori0[2]], [ori0[3], ori0[4], ori0[5]]);
    let normal = cross(rowdir, coldir);
    let shape0 = slices[0].volume.shape.clone();
    let sp = slices[0].volume.spacing.clone(); // [row spacing, col spacing]
    for s in &slices {
        if s.volume.shape != shape0 {
            return Err(Error::Series {
                path: s.path.clone(),
                reason: format!("slice shape {:?} differs from {:?}", s.volume.shape, shape0),
            });
        }
        if s.orientation
            .iter()
            .zip(&ori0)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(Error::Series {
                path: s.path.clone(),
                reason: "slice orientation differs within the series".into(),
            });
        }
    }
    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let n = slices.len();
    let proj: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
    if proj.windows(2).any(|w| (w[1] - w[0]).abs() < 1e-6) {
        return Err(Error::Series {
            path: dir.to_path_buf(),
            reason: "two slices share one position".into(),
        });
    }
    let slice_spacing = if n > 1 {
        (proj[n - 1] - proj[0]) / (n - 1) as f64
    } else {
        1.0
    };
    let step = if n > 1 {
        let (a, b) = (slices[0].position, slices[n - 1].position);
        [
            (b[0] - a[0]) / (n - 1) as f64,
            (b[1] - a[1]) / (n - 1) as f64,
            (b[2] - a[2]) / (n - 1) as f64,
        ]
    } else {
        normal
    };
    let origin = slices[0].position;
    let mut affine = [[0.0; 4]; 4];
    for i in 0..3 {
        affine[i][0] = rowdir[i] * sp[1];
        affine[i][1] = coldir[i] * sp[0];
        affine[i][2] = step[i];
        affine[i][3] = origin[i];
    }
    affine[3][3] = 1.0;
    let mut values = Vec::with_capacity(n * slices[0].volume.values.len());
    let mut raw_sum = 0.0;
    let (mut rmin, mut rmax) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in &slices {
        values.extend_from_slice(&s.volume.values);
        raw_sum += s.volume.raw.sum;
        rmin = rmin.min(s.volume.raw.min);
        rmax = rmax.max(s.volume.raw.max);
    }
    let count = values.len() as f64;
    let mut v = slices.swap_remove(0).volume;
    v.shape = vec![n, shape0[1], shape0[2], shape0[3]];
    v.values = values;
    v.raw = Stats {
        min: rmin,
        max: rmax,
        mean: raw_sum / count,
        sum: raw_sum,
        nan_count: 0,
    };
    v.spacing = vec![slice_spacing.abs(), sp[0], sp[1]];
    v.affine = Some(affine);
    Ok(v)
}

/// A single-channel DICOM volume (`[slices, rows, cols, 1]`, row-major, LPS
/// affine) as the NIfTI volume it is in memory: shape `[cols, rows,
/// slices]`, column-major, spacing `[col, row, slice]`, the affine in RAS
/// (NIfTI's convention: x and y negated). Training on series folders and
/// aligning NIfTI labels with them go through this.
pub fn as_nifti(vol: &Volume) -> Result<Volume> {
    if vol.format != Format::Dicom || vol.shape.len() != 4 || vol.shape[3] != 1 {
        return Err(Error::Shape {
            what: "a DICOM volume",
            expected: "a single-channel [slices, rows, cols, 1] volume",
            got: vol.shape.clone(),
        });
    }
    let (f, r, c) = (vol.shape[0], vol.shape[1], vol.shape[2]);
    let sp = |i: usize| vol.spacing.get(i).copied().unwrap_or(1.0);
    let spacing = vec![sp(2), sp(1), sp(0)];
    let mut affine = vol.affine.unwrap_or([
        [spacing[0], 0.0, 0.0, 0.0],
        [0.0, spacing[1], 0.0, 0.0],
        [0.0, 0.0, spacing[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    for row in affine.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    Ok(Volume {
        format: Format::Nifti,
        shape: vec![c, r, f],
        layout: Layout::ColumnMajor,
        spacing,
        affine: Some(affine),
        ..vol.clone()
    })
}
