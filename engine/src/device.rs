//! Opening the device `--device` names, and what `--device auto` finds on this machine: CUDA
//! when this build has it and a driver sees a GPU, else a hardware GPU through wgpu, else the
//! CPU. A software adapter (Mesa's llvmpipe) is never picked unless asked for by name
//! (`--device wgpu`): it is correct but slower than the CPU backend.

use std::sync::OnceLock;

use burn::tensor::{Device, DeviceKind as WgpuKind};

use crate::config::DeviceKind;
use crate::error::EngineError;

/// Which of kiln's backends a device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn's flex, kiln's CPU kernels.
    Cpu,
    /// cubecl on wgpu (WGSL).
    Wgpu,
    /// cubecl on CUDA.
    Cuda,
    /// cubecl on wgpu pinned to Vulkan (SPIR-V; `--features vulkan`).
    Vulkan,
}

impl Backend {
    /// Its `--device` name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
            Backend::Vulkan => "vulkan",
        }
    }
}

/// A device opened for `--device`, with the words that say which one it is.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The burn device (without autodiff).
    pub device: Device,
    /// Its backend.
    pub backend: Backend,
    /// What was opened, for the start line: `cpu`, `cuda:0 (2 devices)`,
    /// `wgpu: NVIDIA H200 (Vulkan, discrete GPU)`, each with `auto: ` before it when picked.
    pub name: String,
}

impl Opened {
    fn new(device: Device, backend: Backend, name: impl Into<String>) -> Self {
        Self {
            device,
            backend,
            name: name.into(),
        }
    }
}

/// Opens the device `kind` names; `auto` picks one as this module says.
pub fn open(kind: DeviceKind) -> Result<Opened, EngineError> {
    Ok(match kind {
        DeviceKind::Cpu => Opened::new(Device::flex(), Backend::Cpu, "cpu"),
        DeviceKind::Wgpu => Opened::new(Device::wgpu(WgpuKind::default()), Backend::Wgpu, "wgpu"),
        DeviceKind::Cuda => cuda().map_err(|reason| EngineError::NoDevice {
            device: "cuda",
            reason,
        })?,
        DeviceKind::Vulkan => vulkan().map_err(|reason| EngineError::NoDevice {
            device: "vulkan",
            reason,
        })?,
        DeviceKind::Auto => {
            let picked = pick();
            Opened {
                name: format!("auto: {}", picked.name),
                ..picked
            }
        }
    })
}

/// The first CUDA device, once the driver says there is one (cudarc panics when it cannot
/// load the driver: look first); why not, otherwise.
#[cfg(feature = "cuda")]
fn cuda() -> Result<Opened, String> {
    let count = cuda_devices()?;
    let name = format!("cuda:0 ({count} device(s))");
    Ok(Opened::new(Device::cuda(0), Backend::Cuda, name))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Opened, String> {
    Err(
        "this build has no CUDA support (build with `--features cuda`; \
         scripts/setup-cuda-build.sh where LLVM cannot be downloaded)"
            .into(),
    )
}

/// The first Vulkan adapter (hardware first; a software one such as llvmpipe counts when it is
/// all there is, as for `--device wgpu`), pinned to Vulkan and so compiled to SPIR-V.
#[cfg(feature = "vulkan")]
fn vulkan() -> Result<Opened, String> {
    let adapters = adapters(wgpu::Backends::VULKAN);
    let order = [
        wgpu::DeviceType::DiscreteGpu,
        wgpu::DeviceType::IntegratedGpu,
        wgpu::DeviceType::VirtualGpu,
        wgpu::DeviceType::Cpu,
    ];
    for (rank, device_type) in order.into_iter().enumerate() {
        let Some(first) = adapters.iter().find(|a| a.device_type == device_type) else {
            continue;
        };
        let kind = match rank {
            0 => WgpuKind::DiscreteGpu(0),
            1 => WgpuKind::IntegratedGpu(0),
            2 => WgpuKind::VirtualGpu(0),
            _ => WgpuKind::Cpu,
        };
        let name = format!("vulkan: {} ({device_type:?}, SPIR-V)", first.name);
        return Ok(Opened::new(Device::vulkan(kind), Backend::Vulkan, name));
    }
    Err("no Vulkan adapter found (is a Vulkan driver installed?)".into())
}

#[cfg(not(feature = "vulkan"))]
fn vulkan() -> Result<Opened, String> {
    Err("this build has no SPIR-V support (build with `--features vulkan`)".into())
}

/// What `auto` picks, worked out once per process.
fn pick() -> Opened {
    static PICKED: OnceLock<Opened> = OnceLock::new();
    PICKED
        .get_or_init(|| {
            if let Ok(opened) = cuda() {
                return opened;
            }
            let cuda = if cfg!(feature = "cuda") {
                "no CUDA device"
            } else {
                "a build without CUDA"
            };
            match gpu_device_nodes().then(hardware_adapter).flatten() {
                Some((kind, name)) => {
                    Opened::new(Device::wgpu(kind), Backend::Wgpu, format!("wgpu: {name}"))
                }
                None => Opened::new(
                    Device::flex(),
                    Backend::Cpu,
                    format!("cpu ({cuda}, no hardware GPU adapter)"),
                ),
            }
        })
        .clone()
}

/// The number of CUDA devices the driver sees, or why there are none: asks the driver
/// (`libcuda.so.1`) itself, as cudarc would, without letting a missing one panic.
pub fn cuda_devices() -> Result<usize, String> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: dlopen and dlsym with NUL-terminated names; the handle is never closed, as
    // cudarc keeps the same library loaded for the process's life.
    unsafe {
        let mut handle = std::ptr::null_mut();
        for name in [c"libcuda.so.1", c"libcuda.so"] {
            handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            if !handle.is_null() {
                break;
            }
        }
        if handle.is_null() {
            return Err("no CUDA driver found (libcuda.so.1 cannot be loaded)".into());
        }
        let init = libc::dlsym(handle, c"cuInit".as_ptr());
        let count = libc::dlsym(handle, c"cuDeviceGetCount".as_ptr());
        if init.is_null() || count.is_null() {
            return Err("the CUDA driver library lacks cuInit or cuDeviceGetCount".into());
        }
        let init: CuInit = std::mem::transmute(init);
        let get_count: CuDeviceGetCount = std::mem::transmute(count);
        let code = init(0);
        if code != 0 {
            return Err(format!(
                "the CUDA driver did not start (cuInit returned error {code}; 100 is no device)"
            ));
        }
        let mut n = 0i32;
        let code = get_count(&mut n);
        if code != 0 || n <= 0 {
            return Err(format!(
                "the CUDA driver sees no device (cuDeviceGetCount: error {code}, {n} devices)"
            ));
        }
        Ok(n as usize)
    }
}

/// Whether this machine may have a GPU to ask wgpu about: always, except on Linux without a
/// GPU's device node (`/dev/dri/renderD*`, `/dev/nvidia*`), where only a software adapter
/// could answer and asking costs a Vulkan instance (and Mesa's complaints on stderr).
fn gpu_device_nodes() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let any = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    any("/dev/dri", "renderD") || any("/dev", "nvidia")
}

/// The first hardware GPU adapter wgpu finds (discrete, then integrated, then virtual),
/// as the burn device that selects it, with its name, graphics API and kind.
fn hardware_adapter() -> Option<(WgpuKind, String)> {
    let adapters = adapters(wgpu::Backends::PRIMARY);
    let kinds = [
        (wgpu::DeviceType::DiscreteGpu, "discrete GPU"),
        (wgpu::DeviceType::IntegratedGpu, "integrated GPU"),
        (wgpu::DeviceType::VirtualGpu, "virtual GPU"),
    ];
    for (device_type, words) in kinds {
        let Some(first) = adapters.iter().find(|a| a.device_type == device_type) else {
            continue;
        };
        // burn counts each kind from zero, in enumeration order: the first is 0.
        let kind = match device_type {
            wgpu::DeviceType::DiscreteGpu => WgpuKind::DiscreteGpu(0),
            wgpu::DeviceType::IntegratedGpu => WgpuKind::IntegratedGpu(0),
            _ => WgpuKind::VirtualGpu(0),
        };
        return Some((
            kind,
            format!("{} ({:?}, {words})", first.name, first.backend),
        ));
    }
    None
}

/// What wgpu says of each adapter `backends` offer.
fn adapters(backends: wgpu::Backends) -> Vec<wgpu::AdapterInfo> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(wgpu::Adapter::get_info)
        .collect()
}

/// Runs a future to its end on this thread (wgpu's native futures are ready at once).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_never_picks_a_software_adapter() {
        let opened = open(DeviceKind::Auto).unwrap();
        assert!(opened.name.starts_with("auto: "), "{}", opened.name);
        // This project's machines have no GPU: at most Mesa's llvmpipe, a CPU adapter, which
        // the probe itself passes over.
        if !gpu_device_nodes() && cuda_devices().is_err() {
            if let Some((kind, name)) = hardware_adapter() {
                panic!("a GPU-less machine offered {kind:?}: {name}");
            }
            assert!(opened.name.starts_with("auto: cpu ("), "{}", opened.name);
            assert!(kiln_kernels::is_flex_device(&opened.device));
            assert_eq!(opened.backend, Backend::Cpu);
        }
    }

    #[test]
    fn vulkan_in_a_build_without_it_is_a_named_error() {
        if cfg!(feature = "vulkan") {
            return;
        }
        let e = open(DeviceKind::Vulkan).unwrap_err().to_string();
        assert!(
            e.starts_with("--device vulkan: ") && e.contains("--features vulkan"),
            "{e}"
        );
    }

    #[test]
    fn cuda_without_a_driver_is_a_named_error() {
        if cuda_devices().is_ok() {
            return;
        }
        let e = open(DeviceKind::Cuda).unwrap_err().to_string();
        assert!(e.starts_with("--device cuda: "), "{e}");
        if cfg!(feature = "cuda") {
            assert!(e.contains("no CUDA driver found"), "{e}");
        } else {
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
