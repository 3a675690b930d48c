//! What every crate's tests share: the test devices, through which one test body runs on
//! `flex` always and on `wgpu` when an adapter is found ([`test_device!`](crate::test_device)),
//! a fresh temporary directory per test, and a free TCP port.
//!
//! Without an adapter a wgpu test says so and passes, unless `KILN_REQUIRE_WGPU` is set, when it
//! fails: CI installs a software Vulkan driver and sets it, so GPU tests cannot silently skip.

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};

/// The `flex` CPU device.
pub fn flex() -> Device {
    Device::flex()
}

/// The default wgpu device, or `None` when no adapter is found (and `KILN_REQUIRE_WGPU` is
/// unset; when it is set a missing adapter panics with the reason).
pub fn wgpu() -> Option<Device> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        // wgpu panics when it finds no adapter; a probe tensor turns that into a skip.
        std::panic::catch_unwind(|| {
            let device = Device::wgpu(Default::default());
            let sum: f32 = Tensor::<1>::from_floats([1.0, 2.0], &device)
                .sum()
                .into_scalar();
            assert_eq!(sum, 3.0, "wgpu probe computed a wrong sum");
        })
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string())
        })
    });
    match probe {
        Ok(()) => Some(Device::wgpu(Default::default())),
        Err(reason) if std::env::var_os("KILN_REQUIRE_WGPU").is_some() => {
            panic!("KILN_REQUIRE_WGPU is set but no wgpu adapter works: {reason}")
        }
        Err(reason) => {
            eprintln!(
                "skipped: no wgpu adapter ({reason}); set KILN_REQUIRE_WGPU=1 to fail instead"
            );
            None
        }
    }
}

/// An empty directory for the test `name`, unique to this test process; whatever a previous
/// run left there is removed.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs one test body on every device: `flex` always, `wgpu` when an adapter is found.
///
/// ```ignore
/// kiln_kernels::test_device!(adds, |device: Device| {
///     let x = Tensor::<1>::ones([2], &device);
///     assert_eq!(x.sum().into_scalar::<f32>(), 2.0);
/// });
/// ```
#[macro_export]
macro_rules! test_device {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn flex() {
                let body = $body;
                body($crate::testing::flex());
            }

            #[test]
            fn wgpu() {
                if let Some(device) = $crate::testing::wgpu() {
                    let body = $body;
                    body(device);
                }
            }
        }
    };
}
