//! `cargo xtask cuda-check`: proves that the `cuda` feature builds.
//!
//! Without a system CUDA toolkit, the toolkit's pieces come from NVIDIA's
//! wheels on the Python package index (CUDA 13.0: `nvidia-cuda-nvcc`,
//! `nvidia-nvvm`, `nvidia-cuda-crt`, `nvidia-cuda-runtime`,
//! `nvidia-cuda-nvrtc`, `nvidia-cuda-cccl`, `nvidia-cublas`,
//! `nvidia-curand`): `pip download`ed into `target/cuda-toolkit/wheels-13.0`
//! and unpacked into `target/cuda-toolkit/s13`, whose
//! `nvidia/cu13` is a CUDA_HOME-like tree (`bin/nvcc`, `include/`, `lib/`).
//! The CUDA 12 wheels (`nvidia-cuda-nvcc-cu12`) hold `ptxas` but no `nvcc`
//! driver, `cicc` or `fatbinary`, so they cannot build candle's kernels.
//!
//! The tree is completed with what a toolkit installer adds: `lib64` (a link
//! to `lib`), the unversioned `libX.so` links the linker looks for, and
//! `lib/stubs/libcuda.so`, a stub of the driver library (every `cu*` function
//! cudarc declares, each returning CUDA_ERROR_UNKNOWN), compiled with the C
//! compiler, used only to link where no NVIDIA driver is installed. The stub
//! is named `libcuda.so` with the soname `libcuda.so.1`: the binaries ask for
//! `libcuda.so.1`, which the stub folder does not have, so at run time the
//! driver's own library is loaded.
//!
//! Then, with CUDA_HOME, CUDA_PATH, NVCC, PATH and CUDA_COMPUTE_CAP set,
//! seg-cli and the xtask (for `bench --device cuda:N`) with `--features
//! cuda`, and the parity test binary (`cargo test --release -p seg-models
//! --features cuda --test parity --no-run`) are built in their own target
//! folder (`target/cuda-build`, so that the CPU build is
//! untouched). `target/cuda-toolkit/env.sh` keeps the variables for later
//! cargo commands. Nothing here runs on a GPU.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CUDA release whose wheels are installed (cudarc 0.19 knows 11.4–13.4).
pub const CUDA_VERSION: &str = "13.0";

/// The wheels of one CUDA release: pip requirement strings.
pub fn wheel_specs(version: &str) -> Result<Vec<String>> {
    let v = match version {
        "13.0" => "13.0.*",
        other => bail!("no wheel list for CUDA {other} (known: 13.0)"),
    };
    let mut specs: Vec<String> = [
        "nvidia-cuda-nvcc",
        "nvidia-nvvm",
        "nvidia-cuda-crt",
        "nvidia-cuda-runtime",
        "nvidia-cuda-nvrtc",
        "nvidia-cuda-cccl",
        "nvidia-cublas",
    ]
    .iter()
    .map(|name| format!("{name}=={v}"))
    .collect();
    // cuRAND has its own numbering: 10.4.0 is the one of CUDA 13.0
    specs.push("nvidia-curand==10.4.0.*".into());
    Ok(specs)
}

/// Settings of `cargo xtask cuda-check`.
#[derive(Debug, Clone)]
pub struct CudaCheck {
    /// The GPU architecture the kernels are built for (90: H100/H200).
    pub compute_cap: u32,
    /// A CUDA toolkit already installed (its CUDA_HOME); none: the wheels.
    pub toolkit: Option<PathBuf>,
    /// Build the dev profile instead of `--release`.
    pub dev: bool,
    /// Only seg-cli, not the parity test binary and the xtask.
    pub no_tests: bool,
    /// Where the cuda build's artifacts go.
    pub target_dir: Option<PathBuf>,
    /// The Python interpreter whose pip downloads the wheels.
    pub python: String,
}

/// The workspace root (xtask's parent folder).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `cargo xtask cuda-check`; prints one line starting with
/// `cuda-check: OK` or `cuda-check: FAILED`.
pub fn run(o: &CudaCheck) -> Result<()> {
    match check(o) {
        Ok(summary) => {
            println!("cuda-check: OK: {summary}");
            Ok(())
        }
        Err(e) => {
            println!("cuda-check: FAILED: {e:#}");
            Err(e)
        }
    }
}

fn check(o: &CudaCheck) -> Result<String> {
    let root = workspace_root();
    let base = root.join("target/cuda-toolkit");
    let home = match &o.toolkit {
        Some(dir) => dir
            .canonicalize()
            .with_context(|| format!("--toolkit {}", dir.display()))?,
        None => install_wheels(&base, CUDA_VERSION, &o.python)?,
    };
    let nvcc = home.join("bin/nvcc");
    if !nvcc.is_file() {
        bail!("no nvcc at {}", nvcc.display());
    }
    let version = nvcc_release(&nvcc)?;
    eprintln!("cuda-check: CUDA {version} at {}", home.display());
    if o.toolkit.is_none() {
        complete_tree(&home)?;
        write_driver_stub(&root, &home)?;
    }
    let env = build_env(&home, o.compute_cap);
    write_env_sh(&base.join("env.sh"), &env)?;
    let target_dir = o
        .target_dir
        .clone()
        .unwrap_or_else(|| root.join("target/cuda-build"));
    let profile = if o.dev { "debug" } else { "release" };
    // seg-cli and the xtask in one cargo call: one feature resolution, so
    // candle-kernels (nvcc, the slowest part) is compiled once for both; the
    // parity test's dev-dependencies resolve features differently and cost
    // a second compilation of it
    let mut steps: Vec<(&str, Vec<&str>)> = if o.no_tests {
        vec![(
            "seg-cli",
            vec!["build", "-p", "seg-cli", "--features", "cuda"],
        )]
    } else {
        vec![(
            "seg-cli and the xtask",
            vec![
                "build",
                "-p",
                "seg-cli",
                "-p",
                "xtask",
                "--features",
                "seg-cli/cuda,xtask/cuda",
            ],
        )]
    };
    if !o.no_tests {
        steps.push((
            "the parity test",
            vec![
                "test",
                "-p",
                "seg-models",
                "--features",
                "cuda",
                "--test",
                "parity",
                "--no-run",
            ],
        ));
    }
    for (what, args) in &steps {
        eprintln!("cuda-check: cargo {}", args.join(" "));
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&root)
            .args(args)
            .arg("--target-dir")
            .arg(&target_dir)
            .envs(env.iter().map(|(k, v)| (k, v)));
        if !o.dev {
            c.arg("--release");
        }
        let status = c
            .status()
            .with_context(|| format!("running cargo for {what}"))?;
        if !status.success() {
            bail!(
                "building {what} with --features cuda (CUDA {version}, sm_{}): cargo {} exited with {status}",
                o.compute_cap,
                args.join(" ")
            );
        }
    }
    let cli = target_dir.join(profile).join("seg-cli");
    if !cli.is_file() {
        bail!("cargo succeeded but {} is missing", cli.display());
    }
    let smoke = if has_driver() {
        "a CUDA driver is installed here: run the parity test and the bench on the GPU (docs/gpu.md)".to_string()
    } else {
        smoke_without_driver(&base, &home, &cli)?
    };
    Ok(format!(
        "{} built with --features cuda (CUDA {version}, kernels for sm_{}){}; {smoke}; environment in {}. Built, not run on a GPU",
        cli.display(),
        o.compute_cap,
        if o.no_tests {
            String::new()
        } else {
            ", with the parity test binary and the cuda xtask".into()
        },
        base.join("env.sh").display()
    ))
}

/// Whether the dynamic loader knows a CUDA driver (`libcuda.so.1`).
fn has_driver() -> bool {
    Command::new("/sbin/ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so.1"))
        .unwrap_or(false)
}

/// Without a driver the cuda binaries cannot start (they need
/// `libcuda.so.1`); with the stub under that name they do: CPU work must
/// run, and `--device cuda:0` must be a clean error (the stub's cuInit
/// fails).
fn smoke_without_driver(base: &Path, home: &Path, cli: &Path) -> Result<String> {
    let Some(lib) = ["lib", "lib64", "targets/x86_64-linux/lib"]
        .iter()
        .map(|d| home.join(d))
        .find(|d| d.join("stubs/libcuda.so").is_file())
    else {
        return Ok("no driver here and no stubs/libcuda.so in the toolkit: not run".into());
    };
    let run_stub = base.join("run-stub");
    std::fs::create_dir_all(&run_stub)?;
    std::fs::copy(lib.join("stubs/libcuda.so"), run_stub.join("libcuda.so.1"))?;
    let ld = format!("{}:{}", run_stub.display(), lib.display());
    let run = |args: &[&str]| -> Result<std::process::Output> {
        eprintln!("cuda-check: (driver stub) seg-cli {}", args.join(" "));
        Command::new(cli)
            .args(args)
            .env("LD_LIBRARY_PATH", &ld)
            .output()
            .with_context(|| format!("running {}", cli.display()))
    };
    let info = run(&["info", "--model", "unet"])?;
    if !info.status.success() {
        bail!(
            "the cuda seg-cli does not run CPU work: {}",
            String::from_utf8_lossy(&info.stderr)
        );
    }
    let out = std::env::temp_dir().join(format!("seg-cuda-check-{}", std::process::id()));
    let gpu = run(&[
        "train",
        "--device",
        "cuda:0",
        "--epochs",
        "1",
        "--out",
        &out.to_string_lossy(),
    ])?;
    let _ = std::fs::remove_dir_all(&out);
    let err = String::from_utf8_lossy(&gpu.stderr);
    // the error's own line (candle appends a backtrace under RUST_BACKTRACE)
    let line = err.lines().find(|l| l.contains("cuda:0")).unwrap_or("");
    if gpu.status.success() || !err.contains("cuda:0") || err.contains("panicked") {
        bail!(
            "--device cuda:0 without a driver should be a clean error naming cuda:0; got {}: {err}",
            gpu.status
        );
    }
    eprintln!("cuda-check: --device cuda:0 without a driver: {line}");
    Ok("without a driver (driver stub) it runs CPU work (seg-cli info) and answers --device cuda:0 with an error".into())
}

/// `nvcc --version`'s release, e.g. "13.0".
fn nvcc_release(nvcc: &Path) -> Result<String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", nvcc.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed: {}",
            nvcc.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_nvcc_release(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("{} --version: no release number", nvcc.display()))
}

/// The release number in `nvcc --version`'s
/// "Cuda compilation tools, release 13.0, V13.0.88".
pub fn parse_nvcc_release(text: &str) -> Option<String> {
    let rest = text.split("release ").nth(1)?;
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// Downloads (once) and unpacks (once) the wheels of `version`; returns the
/// CUDA_HOME-like folder.
fn install_wheels(base: &Path, version: &str, python: &str) -> Result<PathBuf> {
    let major = version.split('.').next().unwrap_or(version);
    // the unpacked wheels, laid out like site-packages (a short name: the
    // paths end up in every build script's output)
    let site = base.join(format!("s{major}"));
    let home = site.join(format!("nvidia/cu{major}"));
    let done = site.join(".unpacked");
    if done.is_file() && home.join("bin/nvcc").is_file() {
        eprintln!("cuda-check: wheels already unpacked in {}", site.display());
        return Ok(home);
    }
    let wheels = base.join(format!("wheels-{version}"));
    std::fs::create_dir_all(&wheels)?;
    let specs = wheel_specs(version)?;
    eprintln!(
        "cuda-check: {python} -m pip download {} (into {})",
        specs.join(" "),
        wheels.display()
    );
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
        ])
        .arg(&wheels)
        .args(&specs)
        .status()
        .with_context(|| format!("running {python} -m pip (pass --python)"))?;
    if !status.success() {
        bail!("pip download of the CUDA {version} wheels failed ({status})");
    }
    if site.exists() {
        std::fs::remove_dir_all(&site)?;
    }
    std::fs::create_dir_all(&site)?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    names.sort();
    for w in &names {
        let keep = specs.iter().any(|s| {
            let name = s.split("==").next().unwrap_or(s).replace('-', "_");
            w.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{name}-")))
        });
        if keep {
            eprintln!("cuda-check: unpacking {}", w.display());
            unpack_wheel(w, &site)?;
        }
    }
    if !home.join("bin/nvcc").is_file() {
        bail!("the wheels did not give {}/bin/nvcc", home.display());
    }
    std::fs::write(&done, specs.join("\n"))?;
    Ok(home)
}

/// Unpacks the `nvidia/` part of a wheel (a zip) into `dest`, keeping the
/// executable bits.
fn unpack_wheel(wheel: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .with_context(|| format!("reading {}", wheel.display()))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else {
            bail!("{}: entry {:?} escapes", wheel.display(), entry.name());
        };
        if !rel.starts_with("nvidia") || entry.is_dir() {
            continue;
        }
        let out = dest.join(&rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::File::create(&out)?;
        std::io::copy(&mut entry, &mut file)?;
        // the programs (bin/, nvvm/bin/) must be executable even where the
        // zip kept no Unix mode
        let mode = entry.unix_mode().map(|m| m & 0o777).or_else(|| {
            rel.components()
                .any(|c| c.as_os_str() == "bin")
                .then_some(0o755)
        });
        if let Some(mode) = mode {
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// What a toolkit installer adds: `lib64` → `lib`, `libX.so` → `libX.so.N`.
fn complete_tree(home: &Path) -> Result<()> {
    let lib = home.join("lib");
    let lib64 = home.join("lib64");
    if !lib64.exists() {
        std::os::unix::fs::symlink("lib", &lib64)?;
    }
    for e in std::fs::read_dir(&lib)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(link) = unversioned(&name) {
            let path = lib.join(&link);
            if path.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(&name, &path)?;
            }
        }
    }
    Ok(())
}

/// `libcublas.so.13` → `libcublas.so`; None for other names and for the
/// `.alt` variants.
pub fn unversioned(name: &str) -> Option<String> {
    let (stem, version) = name.split_once(".so.")?;
    if !name.starts_with("lib")
        || stem.contains('.')
        || version.is_empty()
        || !version.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    Some(format!("{stem}.so"))
}

/// Writes `lib/stubs/libcuda.so` (unless it exists): every `cu*` driver
/// function cudarc declares, each returning 999 (CUDA_ERROR_UNKNOWN).
fn write_driver_stub(root: &Path, home: &Path) -> Result<()> {
    let stubs = home.join("lib/stubs");
    let so = stubs.join("libcuda.so");
    if so.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(&stubs)?;
    let sys = cudarc_driver_sys(root)?;
    let text =
        std::fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
    let names = driver_functions(&text);
    if names.len() < 100 {
        bail!(
            "found only {} driver functions in {}",
            names.len(),
            sys.display()
        );
    }
    let c = stubs.join("libcuda_stub.c");
    let mut src = String::from(
        "/* Link-time stub of the CUDA driver (libcuda.so.1), written by cargo xtask cuda-check. */\n",
    );
    for n in &names {
        src.push_str(&format!("int {n}(void) {{ return 999; }}\n"));
    }
    std::fs::write(&c, src)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&so)
        .arg(&c)
        .status()
        .with_context(|| format!("running the C compiler {cc} (set CC)"))?;
    if !status.success() {
        bail!("compiling the driver stub {} failed", c.display());
    }
    eprintln!(
        "cuda-check: driver stub {} ({} functions; for linking only)",
        so.display(),
        names.len()
    );
    Ok(())
}

/// cudarc's driver bindings (`src/driver/sys/mod.rs`), found through
/// `cargo metadata` with the cuda feature on.
fn cudarc_driver_sys(root: &Path) -> Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--features",
            "seg-core/cuda",
        ])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .context("cudarc is not in the cuda build's dependencies")?;
    Ok(Path::new(manifest)
        .parent()
        .context("cudarc's manifest path")?
        .join("src/driver/sys/mod.rs"))
}

/// The driver functions in cudarc's bindings: `pub unsafe fn cuXxx(`.
pub fn driver_functions(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split("pub unsafe fn ")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (name.starts_with("cu") && rest[name.len()..].starts_with('(')).then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The variables that point candle's build (cudarc, candle-kernels through
/// cudaforge) at the toolkit.
pub fn build_env(home: &Path, compute_cap: u32) -> Vec<(String, String)> {
    let h = home.display().to_string();
    let path = std::env::var("PATH").unwrap_or_default();
    vec![
        ("CUDA_HOME".into(), h.clone()),
        ("CUDA_PATH".into(), h.clone()),
        ("NVCC".into(), format!("{h}/bin/nvcc")),
        ("PATH".into(), format!("{h}/bin:{path}")),
        ("CUDA_COMPUTE_CAP".into(), compute_cap.to_string()),
    ]
}

/// `env.sh`: the same variables for a shell (`. target/cuda-toolkit/env.sh`),
/// plus LD_LIBRARY_PATH for running the binaries on a machine with a GPU.
fn write_env_sh(path: &Path, env: &[(String, String)]) -> Result<()> {
    let mut s = String::from(
        "# written by cargo xtask cuda-check; source it before cargo build --features cuda\n",
    );
    let mut home = String::new();
    for (k, v) in env {
        if k == "PATH" {
            // the toolkit's bin before the shell's own PATH (expanded there)
            let first = v.split_once(':').map_or(v.as_str(), |(first, _)| first);
            s.push_str(&format!("export PATH='{first}':\"$PATH\"\n"));
            continue;
        }
        if k == "CUDA_HOME" {
            home = v.clone();
        }
        s.push_str(&format!("export {k}='{v}'\n"));
    }
    s.push_str(&format!(
        "# to run (not build) on a GPU machine: the toolkit's libraries, never lib/stubs\nexport LD_LIBRARY_PATH='{home}/lib'${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\n"
    ));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, s)?;
    Ok(())
}

#[cfg(test)]
mod tests;
