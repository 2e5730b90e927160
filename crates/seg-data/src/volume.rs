//! [`Volume`]: the one type every reader returns — values as f32 (after the
//! DICOM modality LUT or NIfTI scaling), the shape in the format's own
//! convention, the stored type and statistics of the stored values, spacing,
//! affine and the metadata a user needs.

use serde::Serialize;

/// The file format a volume came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// PNG, TIFF, GIF, JPEG or BMP.
    Image,
    /// NIfTI-1.
    Nifti,
    /// DICOM (a file or a series folder).
    Dicom,
}

/// How values are laid out in [`Volume::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Row-major over `shape`, last axis fastest: 2D images `[height, width,
    /// channels]`, DICOM `[frames, rows, cols, samples]`.
    RowMajor,
    /// Column-major over `shape`, first axis fastest: NIfTI `[nx, ny, nz(, nt)]`
    /// as stored in the file (nibabel's `get_fdata()` in Fortran order).
    ColumnMajor,
}

/// The stored element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredType {
    Bool,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Uint32,
    Int32,
    Uint64,
    Int64,
    Float32,
    Float64,
}

impl StoredType {
    /// The name as numpy spells it (`uint16`, `float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Uint8 => "uint8",
            Self::Int8 => "int8",
            Self::Uint16 => "uint16",
            Self::Int16 => "int16",
            Self::Uint32 => "uint32",
            Self::Int32 => "int32",
            Self::Uint64 => "uint64",
            Self::Int64 => "int64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
        }
    }
}

/// min, max, mean and sum of a set of values (NaN excluded and counted).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub sum: f64,
    pub nan_count: u64,
}

impl Stats {
    /// Statistics of `values`, accumulated in f64.
    pub fn of<I: IntoIterator<Item = f64>>(values: I) -> Self {
        let (mut min, mut max, mut sum, mut n, mut nan) =
            (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0u64, 0u64);
        for v in values {
            if v.is_nan() {
                nan += 1;
                continue;
            }
            min = min.min(v);
            max = max.max(v);
            sum += v;
            n += 1;
        }
        let mean = if n > 0 { sum / n as f64 } else { f64::NAN };
        if n == 0 {
            min = f64::NAN;
            max = f64::NAN;
        }
        Self {
            min,
            max,
            mean,
            sum,
            nan_count: nan,
        }
    }
}

/// A display window (DICOM VOI LUT, linear function).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}

/// A 2D image or a volume, with its values as f32.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// Where it came from.
    pub format: Format,
    /// Shape in the format's convention (see [`Layout`]).
    pub shape: Vec<usize>,
    /// Order of `values`.
    pub layout: Layout,
    /// The stored element type.
    pub stored: StoredType,
    /// Statistics of the stored values as decoded (no scaling).
    pub raw: Stats,
    /// Values after the modality LUT (DICOM) or `scl_slope`/`scl_inter` (NIfTI).
    #[serde(skip)]
    pub values: Vec<f32>,
    /// Physical spacing per spatial axis (mm): DICOM `[row, col]` or
    /// `[slice, row, col]`, NIfTI `[dx, dy, dz]`, images `[1, 1]`.
    pub spacing: Vec<f64>,
    /// The voxel-to-world (RAS for NIfTI, LPS for DICOM) 4×4 matrix, when known.
    pub affine: Option<[[f64; 4]; 4]>,
    /// The window stored in the file (DICOM), if any.
    pub window: Option<Window>,
    /// DICOM transfer syntax UID.
    pub transfer_syntax: Option<String>,
    /// DICOM photometric interpretation / image colour type.
    pub photometric: Option<String>,
}

impl Volume {
    /// An in-memory float32 NIfTI-style volume (column-major `dims`, x
    /// fastest) with `spacing` and a diagonal affine: for building volumes in
    /// code (tests, synthetic data) rather than reading them.
    pub fn from_nifti_values(dims: &[usize], values: Vec<f32>, spacing: [f64; 3]) -> Self {
        let raw = Stats::of(values.iter().map(|&v| v as f64));
        let mut affine = [[0.0; 4]; 4];
        for (i, row) in affine.iter_mut().enumerate() {
            row[i] = if i < 3 { spacing[i] } else { 1.0 };
        }
        Self {
            format: Format::Nifti,
            shape: dims.to_vec(),
            layout: Layout::ColumnMajor,
            stored: StoredType::Float32,
            raw,
            values,
            spacing: spacing.to_vec(),
            affine: Some(affine),
            window: None,
            transfer_syntax: None,
            photometric: None,
        }
    }

    /// A 2D image (`h × w × c`, row-major, interleaved channels) stored as
    /// 8-bit: the readers set their own stored type and photometric
    /// interpretation over it; also for building images in code.
    pub fn from_image_values(h: usize, w: usize, c: usize, values: Vec<f32>) -> Self {
        let raw = Stats::of(values.iter().map(|&v| v as f64));
        Self {
            format: Format::Image,
            shape: vec![h, w, c],
            layout: Layout::RowMajor,
            stored: StoredType::Uint8,
            raw,
            values,
            spacing: vec![1.0, 1.0],
            affine: None,
            window: None,
            transfer_syntax: None,
            photometric: None,
        }
    }

    /// Statistics of the values (after scaling), NaN counted.
    pub fn value_stats(&self) -> Stats {
        Stats::of(self.values.iter().map(|&v| v as f64))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The most elements a header may claim before it is refused without
/// allocating: `SEG_MAX_ELEMENTS` from the environment, else 2^31.
pub fn max_elements() -> u64 {
    std::env::var("SEG_MAX_ELEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1u64 << 31)
}

/// Refuses a claimed element count above [`max_elements`].
pub(crate) fn check_size(
    path: &std::path::Path,
    what: &'static str,
    dims: &[usize],
) -> crate::Result<()> {
    let elements: u128 = dims.iter().map(|&d| d as u128).product();
    let limit = max_elements();
    if elements > limit as u128 {
        return Err(crate::Error::TooLarge {
            path: path.to_path_buf(),
            what,
            elements,
            limit,
        });
    }
    Ok(())
}
