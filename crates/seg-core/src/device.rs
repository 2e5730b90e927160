//! Choosing a compute device from a string such as `cpu`, `cuda:1` or `auto`.

use crate::error::{Error, Result};
use candle_core::Device;
use std::fmt;
use std::str::FromStr;

/// A parsed device request, before any device is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA GPU number N.
    Cuda(usize),
    /// Metal GPU number N.
    Metal(usize),
    /// The first GPU compiled in and present, else the CPU.
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let unknown = || Error::UnknownDevice {
            spec: s.to_string(),
        };
        let ordinal = |rest: &str| -> Result<usize> {
            if rest.is_empty() {
                Ok(0)
            } else {
                rest.strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(unknown)
            }
        };
        if t == "cpu" {
            Ok(Self::Cpu)
        } else if t == "auto" {
            Ok(Self::Auto)
        } else if let Some(rest) = t.strip_prefix("cuda") {
            Ok(Self::Cuda(ordinal(rest)?))
        } else if let Some(rest) = t.strip_prefix("metal") {
            Ok(Self::Metal(ordinal(rest)?))
        } else {
            Err(unknown())
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
            Self::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        let spec = self.to_string();
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::BackendNotCompiled {
                        spec,
                        feature: "cuda",
                    });
                }
                Device::new_cuda(n).map_err(|source| Error::DeviceInit { spec, source })
            }
            Self::Metal(n) => {
                if !cfg!(feature = "metal") {
                    return Err(Error::BackendNotCompiled {
                        spec,
                        feature: "metal",
                    });
                }
                Device::new_metal(n).map_err(|source| Error::DeviceInit { spec, source })
            }
            Self::Auto => {
                if cfg!(feature = "cuda") {
                    if let Ok(d) = Device::new_cuda(0) {
                        return Ok(d);
                    }
                }
                if cfg!(feature = "metal") {
                    if let Ok(d) = Device::new_metal(0) {
                        return Ok(d);
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

/// Parses and opens a device in one step: `parse_device("cuda:0")`.
pub fn parse_device(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.open()
}

/// A short human name for a device (`cpu`, `cuda:0`, `metal:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            "metal:0".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Metal(0)
        );
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        for bad in ["gpu", "cuda:", "cuda:x", "cpu:0", ""] {
            assert!(
                matches!(bad.parse::<DeviceSpec>(), Err(Error::UnknownDevice { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn cpu_and_auto_open() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        parse_device("auto").unwrap();
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_is_a_clear_error() {
        let err = parse_device("cuda:0").unwrap_err();
        assert!(matches!(
            err,
            Error::BackendNotCompiled {
                feature: "cuda",
                ..
            }
        ));
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
