use super::*;

#[test]
fn reads_the_nvcc_release() {
    let out = "nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\nBuilt on Wed_Aug_20_01:58:59_PM_PDT_2025\nCuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0\n";
    assert_eq!(parse_nvcc_release(out).as_deref(), Some("13.0"));
    assert_eq!(parse_nvcc_release("no version here"), None);
}

#[test]
fn unversioned_library_links() {
    assert_eq!(
        unversioned("libcublas.so.13").as_deref(),
        Some("libcublas.so")
    );
    assert_eq!(
        unversioned("libcurand.so.10").as_deref(),
        Some("libcurand.so")
    );
    assert_eq!(
        unversioned("libnvrtc-builtins.so.13.0").as_deref(),
        Some("libnvrtc-builtins.so")
    );
    assert_eq!(unversioned("libnvrtc.alt.so.13"), None);
    assert_eq!(unversioned("libcudart_static.a"), None);
    assert_eq!(unversioned("libcublas.so"), None);
}

#[test]
fn driver_functions_from_bindings() {
    let text = "pub unsafe fn cuInit(Flags: u32) -> CUresult {}\n\
                pub unsafe fn cuMemAlloc_v2(p: *mut u64, n: usize) -> CUresult {}\n\
                pub unsafe fn cuInit(Flags: u32) -> CUresult {}\n\
                pub unsafe fn helper() {}\n\
                pub fn cuNotUnsafe() {}\n";
    assert_eq!(driver_functions(text), ["cuInit", "cuMemAlloc_v2"]);
}

#[test]
fn the_wheels_of_cuda_13() {
    let s = wheel_specs("13.0").unwrap();
    for name in [
        "nvidia-cuda-nvcc==",
        "nvidia-nvvm==",
        "nvidia-cublas==",
        "nvidia-curand==",
    ] {
        assert!(s.iter().any(|x| x.starts_with(name)), "{name} in {s:?}");
    }
    assert!(wheel_specs("12.9").is_err());
}

#[test]
fn env_points_at_the_toolkit() {
    let env = build_env(Path::new("/opt/cuda"), 90);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("CUDA_HOME").as_deref(), Some("/opt/cuda"));
    assert_eq!(get("NVCC").as_deref(), Some("/opt/cuda/bin/nvcc"));
    assert_eq!(get("CUDA_COMPUTE_CAP").as_deref(), Some("90"));
    assert!(get("PATH").unwrap().starts_with("/opt/cuda/bin:"));
}
