//! NIfTI-1 (`.nii`, `.nii.gz`) through the `nifti` crate: 3D and 4D volumes of
//! every common datatype in either byte order, `scl_slope`/`scl_inter` by the
//! NIfTI rule, and the affine as nibabel gives it (sform, else qform, else
//! the pixdim-based base affine). NIfTI-2 files are refused with a clear error.

use crate::error::{Error, Result};
use crate::volume::{check_size, Format, Layout, Stats, StoredType, Volume};
use nifti::{Endianness, NiftiHeader, NiftiObject, NiftiType, ReaderOptions};
use std::io::Read;
use std::path::Path;

const FORMAT: &str = "NIfTI";

/// Header facts beyond those in [`Volume`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NiftiInfo {
    pub dim: Vec<usize>,
    pub datatype: i16,
    pub pixdim: [f32; 8],
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub qform_code: i16,
    pub sform_code: i16,
    pub vox_offset: f32,
    pub big_endian: bool,
    pub qform_affine: [[f64; 4]; 4],
    pub sform_affine: [[f64; 4]; 4],
}

/// Largest accepted `vox_offset` (header + extensions), bytes: 64 MiB.
const MAX_VOX_OFFSET: u32 = 64 << 20;

/// Reads the first four bytes of the (possibly gzipped) file: sizeof_hdr.
fn sniff_header_size(path: &Path) -> Result<i32> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut b = [0u8; 4];
    reader
        .read_exact(&mut b)
        .map_err(|e| Error::decode(path, FORMAT, format!("cannot read the header: {e}")))?;
    let le = i32::from_le_bytes(b);
    let be = i32::from_be_bytes(b);
    Ok(if le == 348 || le == 540 {
        le
    } else if be == 348 || be == 540 {
        be
    } else if le.unsigned_abs() <= be.unsigned_abs() {
        le
    } else {
        be
    })
}

fn stored_type(path: &Path, t: NiftiType) -> Result<StoredType> {
    Ok(match t {
        NiftiType::Uint8 => StoredType::Uint8,
        NiftiType::Int8 => StoredType::Int8,
        NiftiType::Int16 => StoredType::Int16,
        NiftiType::Uint16 => StoredType::Uint16,
        NiftiType::Int32 => StoredType::Int32,
        NiftiType::Uint32 => StoredType::Uint32,
        NiftiType::Int64 => StoredType::Int64,
        NiftiType::Uint64 => StoredType::Uint64,
        NiftiType::Float32 => StoredType::Float32,
        NiftiType::Float64 => StoredType::Float64,
        other => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                format: FORMAT,
                reason: format!("datatype {other:?} (only real scalar voxels are read)"),
            })
        }
    })
}

/// Decodes raw voxel bytes of type `t` in byte order `e` to f64.
fn decode(raw: &[u8], t: StoredType, e: Endianness) -> Vec<f64> {
    macro_rules! conv {
        ($ty:ty, $n:expr) => {
            raw.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().expect("chunk of the element size");
                    (match e {
                        Endianness::Little => <$ty>::from_le_bytes(a),
                        Endianness::Big => <$ty>::from_be_bytes(a),
                    }) as f64
                })
                .collect()
        };
    }
    match t {
        StoredType::Bool | StoredType::Uint8 => raw.iter().map(|&v| v as f64).collect(),
        StoredType::Int8 => raw.iter().map(|&v| v as i8 as f64).collect(),
        StoredType::Uint16 => conv!(u16, 2),
        StoredType::Int16 => conv!(i16, 2),
        StoredType::Uint32 => conv!(u32, 4),
        StoredType::Int32 => conv!(i32, 4),
        StoredType::Uint64 => conv!(u64, 8),
        StoredType::Int64 => conv!(i64, 8),
        StoredType::Float32 => conv!(f32, 4),
        StoredType::Float64 => conv!(f64, 8),
    }
}

/// Quaternion-based (qform) affine, as nibabel computes it.
pub fn qform_affine(h: &NiftiHeader) -> [[f64; 4]; 4] {
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let w2 = 1.0 - (b * b + c * c + d * d);
    let a = if w2 < 0.0 { 0.0 } else { w2.sqrt() };
    // quaternion (a, b, c, d) to rotation matrix
    let n = a * a + b * b + c * c + d * d;
    let s = if n == 0.0 { 0.0 } else { 2.0 / n };
    let (x, y, z) = (b * s, c * s, d * s);
    let (wx, wy, wz) = (a * x, a * y, a * z);
    let (xx, xy, xz) = (b * x, b * y, b * z);
    let (yy, yz, zz) = (c * y, c * z, d * z);
    let r = [
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ];
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let zooms = [
        h.pixdim[1] as f64,
        h.pixdim[2] as f64,
        h.pixdim[3] as f64 * qfac,
    ];
    let t = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * zooms[j];
        }
        m[i][3] = t[i];
    }
    m[3][3] = 1.0;
    m
}

/// The sform affine (srow_x/y/z).
pub fn sform_affine(h: &NiftiHeader) -> [[f64; 4]; 4] {
    let row = |r: [f32; 4]| [r[0] as f64, r[1] as f64, r[2] as f64, r[3] as f64];
    [
        row(h.srow_x),
        row(h.srow_y),
        row(h.srow_z),
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// nibabel's base affine from pixdim, origin at the volume centre (used when
/// neither sform nor qform is set).
pub fn base_affine(h: &NiftiHeader) -> [[f64; 4]; 4] {
    let dims = [
        h.dim[1].max(1) as f64,
        h.dim[2].max(1) as f64,
        h.dim[3].max(1) as f64,
    ];
    let z = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
    let zooms = [-z[0], z[1], z[2]];
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        m[i][i] = zooms[i];
        m[i][3] = -(dims[i] - 1.0) / 2.0 * zooms[i];
    }
    m[3][3] = 1.0;
    m
}

/// nibabel's choice: sform if sform_code > 0, else qform if qform_code > 0,
/// else the base affine.
pub fn best_affine(h: &NiftiHeader) -> [[f64; 4]; 4] {
    if h.sform_code > 0 {
        sform_affine(h)
    } else if h.qform_code > 0 {
        qform_affine(h)
    } else {
        base_affine(h)
    }
}

/// Reads a NIfTI-1 file with its header facts.
pub fn read_nifti_with_info(path: &Path) -> Result<(Volume, NiftiInfo)> {
    match sniff_header_size(path)? {
        348 => {}
        540 => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                format: FORMAT,
                reason: "this is a NIfTI-2 file (540-byte header); seg reads NIfTI-1 — convert it, e.g. with nibabel: nib.save(nib.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz')".into(),
            })
        }
        n => {
            return Err(Error::decode(path, FORMAT, format!("sizeof_hdr is {n}, expected 348")));
        }
    }
    let header = NiftiHeader::from_file(path).map_err(|e| Error::decode(path, FORMAT, e))?;
    let ndim = header.dim[0] as usize;
    if !(1..=7).contains(&ndim) {
        return Err(Error::decode(
            path,
            FORMAT,
            format!("dim[0] is {ndim}, expected 1 to 7"),
        ));
    }
    let dims: Vec<usize> = header.dim[1..=ndim].iter().map(|&d| d as usize).collect();
    check_size(path, "volume", &dims)?;
    // the bytes between the header and the voxels (extensions) are read, and
    // held, before the voxels: bound them too (a gzip bomb could fill them)
    let vox = header.vox_offset;
    if !vox.is_finite() || vox < 0.0 || vox as f64 > MAX_VOX_OFFSET as f64 {
        return Err(Error::decode(
            path,
            FORMAT,
            format!("vox_offset {vox} is outside 0..={MAX_VOX_OFFSET} bytes"),
        ));
    }
    let datatype = header
        .data_type()
        .map_err(|e| Error::decode(path, FORMAT, e))?;
    let stored = stored_type(path, datatype)?;
    // the nifti crate sizes its voxel buffer from `bitpix`, not from the
    // datatype: a crafted bitpix would make a legal voxel count ask for a
    // huge allocation (found by fuzzing), so the two must agree
    if header.bitpix as usize != datatype.size_of() * 8 {
        return Err(Error::decode(
            path,
            FORMAT,
            format!(
                "bitpix is {}, but datatype {datatype:?} has {} bits per voxel",
                header.bitpix,
                datatype.size_of() * 8
            ),
        ));
    }
    let obj = ReaderOptions::new().read_file(path).map_err(|e| match e {
        nifti::NiftiError::IncompatibleLength(got, want) => Error::decode(
            path,
            FORMAT,
            format!("voxel data is truncated: {got} bytes of the {want} the header describes"),
        ),
        nifti::NiftiError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::decode(path, FORMAT, "the file ends early (truncated)")
        }
        other => Error::decode(path, FORMAT, other),
    })?;
    let h = obj.header().clone();
    let raw_values = decode(obj.volume().raw_data(), stored, h.endianness);
    let raw = Stats::of(raw_values.iter().copied());
    let (slope, inter) = if h.scl_slope.is_finite() && h.scl_slope != 0.0 {
        (
            h.scl_slope as f64,
            if h.scl_inter.is_finite() {
                h.scl_inter as f64
            } else {
                0.0
            },
        )
    } else {
        (1.0, 0.0)
    };
    let values: Vec<f32> = raw_values
        .iter()
        .map(|&v| (v * slope + inter) as f32)
        .collect();
    let spacing = (1..=ndim.min(3)).map(|i| h.pixdim[i] as f64).collect();
    let info = NiftiInfo {
        dim: dims.clone(),
        datatype: h.datatype,
        pixdim: h.pixdim,
        scl_slope: h.scl_slope,
        scl_inter: h.scl_inter,
        qform_code: h.qform_code,
        sform_code: h.sform_code,
        vox_offset: h.vox_offset,
        big_endian: h.endianness == Endianness::Big,
        qform_affine: qform_affine(&h),
        sform_affine: sform_affine(&h),
    };
    let vol = Volume {
        format: Format::Nifti,
        shape: dims,
        layout: Layout::ColumnMajor,
        stored,
        raw,
        values,
        spacing,
        affine: Some(best_affine(&h)),
        window: None,
        transfer_syntax: None,
        photometric: None,
    };
    Ok((vol, info))
}

/// Reads a NIfTI-1 file: shape = the header dims, values in file order
/// (x fastest), scaled by scl_slope/scl_inter.
pub fn read_nifti(path: &Path) -> Result<Volume> {
    read_nifti_with_info(path).map(|(v, _)| v)
}

/// Writes a float32 NIfTI-1 volume (`.nii` or `.nii.gz`) with `affine` as both
/// sform and qform (code 1, scanner), atomically. `values` are in x-fastest
/// order over `dims` (1 to 4 axes).
pub fn write_nifti(
    path: &Path,
    dims: &[usize],
    values: &[f32],
    affine: &[[f64; 4]; 4],
) -> Result<()> {
    write_typed(path, dims, values, affine)
}

/// Writes an integer label map as NIfTI-1 (uint8 when every value fits,
/// else int16, else int32; the smallest type viewers read as labels), with
/// the same geometry rules as [`write_nifti`]. A value no int32 holds is an
/// error.
pub fn write_nifti_labels(
    path: &Path,
    dims: &[usize],
    values: &[i64],
    affine: &[[f64; 4]; 4],
) -> Result<()> {
    let (lo, hi) = values
        .iter()
        .fold((0i64, 0i64), |(l, h), &v| (l.min(v), h.max(v)));
    if lo >= 0 && hi <= u8::MAX as i64 {
        let v: Vec<u8> = values.iter().map(|&x| x as u8).collect();
        write_typed(path, dims, &v, affine)
    } else if lo >= i16::MIN as i64 && hi <= i16::MAX as i64 {
        let v: Vec<i16> = values.iter().map(|&x| x as i16).collect();
        write_typed(path, dims, &v, affine)
    } else if lo >= i32::MIN as i64 && hi <= i32::MAX as i64 {
        let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
        write_typed(path, dims, &v, affine)
    } else {
        Err(Error::Unsupported {
            path: path.to_path_buf(),
            format: FORMAT,
            reason: format!("label values {lo}..{hi} do not fit in int32"),
        })
    }
}

fn write_typed<T>(path: &Path, dims: &[usize], values: &[T], affine: &[[f64; 4]; 4]) -> Result<()>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    use ndarray::ShapeBuilder;
    let n: usize = dims.iter().product();
    if n != values.len() || dims.is_empty() || dims.len() > 4 {
        return Err(Error::ShapeMismatch {
            what: format!("NIfTI volume {}", path.display()),
            a: vec![values.len()],
            b: dims.to_vec(),
        });
    }
    let mut h = NiftiHeader::default();
    let srow = |r: [f64; 4]| [r[0] as f32, r[1] as f32, r[2] as f32, r[3] as f32];
    h.srow_x = srow(affine[0]);
    h.srow_y = srow(affine[1]);
    h.srow_z = srow(affine[2]);
    h.sform_code = 1;
    h.qform_code = 0;
    let mut zooms = [1.0f32; 3];
    for (j, z) in zooms.iter_mut().enumerate() {
        *z = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt() as f32;
    }
    h.pixdim = [1.0, zooms[0], zooms[1], zooms[2], 1.0, 1.0, 1.0, 1.0];
    h.xyzt_units = 2; // mm
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let gz = name.to_ascii_lowercase().ends_with(".gz");
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}-{name}", std::process::id()));
    let write = || -> std::result::Result<(), String> {
        let opts = nifti::writer::WriterOptions::new(&tmp)
            .reference_header(&h)
            .compress(gz);
        match dims.len() {
            1 => opts.write_nifti(
                &ndarray::Array::from_shape_vec(dims[0], values.to_vec())
                    .map_err(|e| e.to_string())?,
            ),
            2 => opts.write_nifti(
                &ndarray::Array::from_shape_vec((dims[0], dims[1]).f(), values.to_vec())
                    .map_err(|e| e.to_string())?,
            ),
            3 => opts.write_nifti(
                &ndarray::Array::from_shape_vec((dims[0], dims[1], dims[2]).f(), values.to_vec())
                    .map_err(|e| e.to_string())?,
            ),
            _ => opts.write_nifti(
                &ndarray::Array::from_shape_vec(
                    (dims[0], dims[1], dims[2], dims[3]).f(),
                    values.to_vec(),
                )
                .map_err(|e| e.to_string())?,
            ),
        }
        .map_err(|e| e.to_string())
    };
    if let Err(reason) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::decode(
            path,
            FORMAT,
            format!("cannot write: {reason}"),
        ));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a 2×2×1 float32 volume with an identity affine to `p` and
    /// returns the file's bytes.
    fn tiny_file(p: &Path) -> Vec<u8> {
        let eye = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        write_nifti(p, &[2, 2, 1], &[1.0, 2.0, 3.0, 4.0], &eye).unwrap();
        std::fs::read(p).unwrap()
    }

    #[test]
    fn huge_or_invalid_vox_offset_is_refused_before_reading() {
        let d = std::env::temp_dir().join(format!("seg-nifti-vox-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("v.nii");
        let good = tiny_file(&p);
        // vox_offset is the float32 at byte 108; extensions flagged at 348
        for bad in [1e12f32, f32::NAN, -4.0] {
            let mut b = good.clone();
            b[108..112].copy_from_slice(&bad.to_le_bytes());
            b[348] = 1;
            std::fs::write(&p, &b).unwrap();
            let e = read_nifti(&p).unwrap_err().to_string();
            assert!(e.contains("vox_offset") && e.contains("v.nii"), "{e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Fuzzing regression: a header whose voxel count is within the limit
    /// but whose bitpix claims 1152 bytes per voxel made the nifti crate ask
    /// for a 1.35 TB buffer (libFuzzer: allocation-size-too-big).
    #[test]
    fn bitpix_that_disagrees_with_the_datatype_is_refused_before_reading() {
        let d = std::env::temp_dir().join(format!("seg-nifti-bitpix-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("b.nii");
        let good = tiny_file(&p);
        assert!(read_nifti(&p).is_ok());
        // dim[1..=3] (bytes 42..48) made large but within the element limit,
        // bitpix (bytes 72..74) 9216 for a float32 datatype
        let mut b = good.clone();
        b[42..44].copy_from_slice(&1280u16.to_le_bytes());
        b[44..46].copy_from_slice(&1792u16.to_le_bytes());
        b[46..48].copy_from_slice(&256u16.to_le_bytes());
        b[72..74].copy_from_slice(&9216u16.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("bitpix is 9216") && e.contains("b.nii"), "{e}");
        // a smaller mismatch is refused too (16 bits for float32)
        let mut b = good;
        b[72..74].copy_from_slice(&16u16.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("bitpix is 16"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_read_round_trip_keeps_values_shape_and_affine() {
        let d = std::env::temp_dir().join(format!("seg-nifti-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let affine = [
            [-0.5, 0.0, 0.0, 10.0],
            [0.0, 0.7, 0.0, -3.0],
            [0.0, 0.0, 2.0, 1.5],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let dims = [3usize, 4, 5];
        let values: Vec<f32> = (0..60).map(|i| i as f32 * 0.5 - 7.0).collect();
        for name in ["v.nii.gz", "v.nii"] {
            let p = d.join(name);
            write_nifti(&p, &dims, &values, &affine).unwrap();
            let (v, info) = read_nifti_with_info(&p).unwrap();
            assert_eq!(v.shape, dims.to_vec());
            assert_eq!(v.values, values);
            assert_eq!(info.sform_code, 1);
            let a = v.affine.unwrap();
            for i in 0..4 {
                for j in 0..4 {
                    assert!((a[i][j] - affine[i][j]).abs() < 1e-6, "{a:?}");
                }
            }
            assert!((v.spacing[2] - 2.0).abs() < 1e-6);
        }
        assert!(std::fs::read_dir(&d).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp")));
    }

    #[test]
    fn nan_voxels_are_kept_and_counted_and_nifti2_is_refused() {
        let d = std::env::temp_dir().join(format!("seg-nifti-nan-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("nan.nii.gz");
        let eye = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        write_nifti(&p, &[2, 2, 1], &[1.0, f32::NAN, 3.0, f32::NAN], &eye).unwrap();
        let v = read_nifti(&p).unwrap();
        assert!(v.values[1].is_nan());
        let s = v.value_stats();
        assert_eq!((s.nan_count, s.min, s.max), (2, 1.0, 3.0));
        // a NIfTI-2 header (sizeof_hdr 540) gets a clear refusal
        let mut bytes = vec![0u8; 560];
        bytes[..4].copy_from_slice(&540i32.to_le_bytes());
        let q = d.join("two.nii");
        std::fs::write(&q, &bytes).unwrap();
        let err = read_nifti(&q).unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { .. }) && err.to_string().contains("NIfTI-2"),
            "{err}"
        );
        // a header claiming more voxels than the limit is refused before reading
        let r = d.join("huge.nii");
        write_nifti(&r, &[2, 2, 1], &[0.0; 4], &eye).unwrap();
        let mut bytes = std::fs::read(&r).unwrap();
        for (k, v) in [(42, 30000i16), (44, 30000), (46, 30000)] {
            bytes[k..k + 2].copy_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&r, &bytes).unwrap();
        let err = read_nifti(&r).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
