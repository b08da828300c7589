//! [`PciAccess`] for a PCI function bound to `vfio-pci`, through the `vfio-ioctls` wrappers (feature `vfio`).
//!
//! - [`VfioAccess`] opens a function by its address ([`PciAddress`]): it resolves the IOMMU group from sysfs, opens
//!   the container (`/dev/vfio/vfio`) and the group, and gets the device with `vfio-ioctls`. Configuration space and
//!   BARs are the VFIO regions (`VFIO_PCI_CONFIG_REGION_INDEX`, `VFIO_PCI_BAR0..5_REGION_INDEX`), read and written
//!   with `pread`/`pwrite` on the device file descriptor; BAR sizes come from the region info, not from sizing
//!   writes. MSI-X is set up with `VFIO_DEVICE_SET_IRQS` and one eventfd per vector; INTx gets one eventfd when the
//!   function has a line, and a driver may always poll its used rings instead.
//! - [`VfioDma`] is ring and buffer memory: an anonymous mapping, pinned and mapped into the IOMMU at an IOVA chosen by
//!   the caller (`VFIO_IOMMU_MAP_DMA`), presented as a [`ContiguousMemory`] whose device addresses are IOVAs. Drivers
//!   must negotiate `VIRTIO_F_ACCESS_PLATFORM`: the device then uses those IOVAs through the IOMMU.
//! - [`VfioPaDma`] is the same for devices that cannot negotiate it (legacy, or transitional through the legacy
//!   interface): memory in physically contiguous chunks mapped at IOVA = physical address, DPDK's IOVA-as-PA mode.
//!
//! The kernel virtualises parts of configuration space (BAR registers, the MSI-X capability's Enable bits: use
//! [`PciAccess::enable_interrupts`]) and hides the MSI-X table from BAR accesses; the Command register, including Bus
//! Master Enable, reaches the device, and `vfio-pci` leaves Bus Master Enable off until the driver sets it
//! ([`crate::PciTransport::new`] does).

use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::Arc;
use std::vec::Vec;

use std::string::String;
use vfio_ioctls::{VfioContainer, VfioDevice};
use virtio_core::{ContiguousMemory, DeviceAddr, RingMemory};
use vm_memory::mmap::MmapRegion;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::access::{IrqRequest, PciAccess};

#[path = "vfio_pa.rs"]
mod pa;
use crate::config::{BarInfo, BarKind};
use crate::error::{Error as PciError, Result as PciResult};
use crate::spec::{bar, command, header};
pub use pa::{contiguous_runs, decode_pagemap, PaChunk, VfioPaDma, HUGE_PAGE_SIZE};

// Region and IRQ indices of a vfio-pci device (linux/vfio.h, `enum { VFIO_PCI_BAR0_REGION_INDEX, ... }`): a stable
// kernel ABI.
/// Region index of BAR 0; BAR `n` is `n`.
const BAR0_REGION_INDEX: u32 = 0;
/// Region index of configuration space.
const CONFIG_REGION_INDEX: u32 = 7;
/// IRQ index of INTx.
const INTX_IRQ_INDEX: u32 = 0;
/// `VFIO_REGION_INFO_FLAG_READ`.
const REGION_FLAG_READ: u32 = 1;

/// Where sysfs is mounted.
pub const SYSFS_ROOT: &str = "/sys";

/// Errors of opening a VFIO function or mapping DMA memory. Register accesses never fail (they read all-ones, as a
/// master abort does); interrupt setup reports [`crate::Error::InterruptSetup`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfioError {
    /// The text is not a PCI address (`[DDDD:]BB:DD.F`, hexadecimal).
    #[error("`{0}` is not a PCI address ([DDDD:]BB:DD.F)")]
    InvalidAddress(String),
    /// The function has no IOMMU group in sysfs (no IOMMU, or no such function).
    #[error("{path}: no IOMMU group (is an IOMMU enabled and the function present?)")]
    NoIommuGroup {
        /// The link that was read.
        path: PathBuf,
        /// What reading it returned.
        #[source]
        source: io::Error,
    },
    /// The `iommu_group` link does not end in a group number.
    #[error("{0}: the iommu_group link does not name a group number")]
    BadIommuGroup(PathBuf),
    /// The function is bound to another driver than `vfio-pci` (or to none).
    #[error("{address} is bound to `{driver}`, not vfio-pci")]
    NotBoundToVfio {
        /// The function.
        address: PciAddress,
        /// The driver it is bound to (`(none)` if unbound).
        driver: String,
    },
    /// A `vfio-ioctls` call failed (container, group or device).
    #[error("VFIO: {0}")]
    Vfio(#[source] vfio_ioctls::VfioError),
    /// The anonymous mapping for DMA memory failed.
    #[error("cannot map {size} bytes of DMA memory: {source}")]
    Mmap {
        /// Bytes asked for.
        size: usize,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Reading `/proc/self/pagemap` failed (IOVA-as-PA memory, [`VfioPaDma`]).
    #[error("cannot read /proc/self/pagemap: {source}")]
    Pagemap {
        /// What reading it returned.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/pagemap` shows no page frame numbers: IOVA-as-PA memory needs `CAP_SYS_ADMIN` (run as root).
    #[error(
        "/proc/self/pagemap shows no physical addresses: IOVA-as-PA DMA (needed by a device without \
         ACCESS_PLATFORM) requires CAP_SYS_ADMIN (run as root)"
    )]
    NoPhysicalAddresses,
    /// A page of IOVA-as-PA memory is not resident although it was locked.
    #[error("page {page} of the DMA memory is not resident")]
    PageNotPresent {
        /// Page index in the region.
        page: usize,
    },
    /// Pages moved between reading their physical addresses and pinning them in the IOMMU.
    #[error("DMA pages moved while being pinned (physical addresses changed)")]
    PagesMoved,
    /// Allocating or locking IOVA-as-PA memory failed (`RLIMIT_MEMLOCK`?).
    #[error("{what} of DMA memory failed: {source}")]
    Lock {
        /// The call (`mmap`, `mlock`).
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A DMA region of zero bytes, not a multiple of the page size, or whose IOVA is not page-aligned or overflows.
    #[error("DMA region of {size:#x} bytes at IOVA {iova:#x} is empty, unaligned or overflows")]
    BadDmaRange {
        /// IOVA asked for.
        iova: u64,
        /// Size asked for.
        size: usize,
    },
}

/// A PCI function address: domain, bus, device, function (`DDDD:BB:DD.F`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    domain: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// The address `domain:bus:device.function`; `None` if `device > 31` or `function > 7`.
    pub const fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    /// Domain (segment).
    pub const fn domain(&self) -> u16 {
        self.domain
    }
    /// Bus number.
    pub const fn bus(&self) -> u8 {
        self.bus
    }
    /// Device number (0..=31).
    pub const fn device(&self) -> u8 {
        self.device
    }
    /// Function number (0..=7).
    pub const fn function(&self) -> u8 {
        self.function
    }

    /// The function's sysfs directory below `sysfs_root`: `<root>/bus/pci/devices/DDDD:BB:DD.F`.
    pub fn sysfs_path(&self, sysfs_root: &Path) -> PathBuf {
        sysfs_root
            .join("bus/pci/devices")
            .join(std::format!("{self}"))
    }

    /// The IOMMU group number, from the `iommu_group` link in the function's sysfs directory.
    pub fn iommu_group(&self, sysfs_root: &Path) -> Result<u32, VfioError> {
        let path = self.sysfs_path(sysfs_root).join("iommu_group");
        let target = std::fs::read_link(&path).map_err(|source| VfioError::NoIommuGroup {
            path: path.clone(),
            source,
        })?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or(VfioError::BadIommuGroup(path))
    }

    /// The driver the function is bound to (the last component of its `driver` link), `None` if unbound.
    pub fn driver(&self, sysfs_root: &Path) -> Option<String> {
        let target = std::fs::read_link(self.sysfs_path(sysfs_root).join("driver")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = VfioError;

    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), hexadecimal, as `lspci` and sysfs print them.
    fn from_str(s: &str) -> Result<Self, VfioError> {
        let bad = || VfioError::InvalidAddress(s.into());
        let hex = |t: &str, max_len: usize| -> Option<u32> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(t, 16).ok()
        };
        let (head, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [b, d] => (Some(0), hex(b, 2), hex(d, 2)),
            [dom, b, d] => (hex(dom, 4), hex(b, 2), hex(d, 2)),
            _ => return Err(bad()),
        };
        let (Some(domain), Some(bus), Some(device), Some(function)) =
            (domain, bus, device, hex(function, 1))
        else {
            return Err(bad());
        };
        Self::new(
            u16::try_from(domain).map_err(|_| bad())?,
            u8::try_from(bus).map_err(|_| bad())?,
            u8::try_from(device).map_err(|_| bad())?,
            u8::try_from(function).map_err(|_| bad())?,
        )
        .ok_or_else(bad)
    }
}

/// [`PciAccess`] over a function bound to `vfio-pci`.
pub struct VfioAccess {
    address: PciAddress,
    container: Arc<VfioContainer>,
    device: VfioDevice,
    /// One eventfd per enabled MSI-X vector (empty when MSI-X is off).
    msix: Vec<EventFd>,
    /// The INTx eventfd, when INTx is set up and the function has a line.
    intx: Option<EventFd>,
}

impl fmt::Debug for VfioAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioAccess")
            .field("address", &self.address)
            .field("msix_vectors", &self.msix.len())
            .field("intx", &self.intx.is_some())
            .finish_non_exhaustive()
    }
}

impl VfioAccess {
    /// Opens `address` with a container of its own (see [`VfioAccess::open_in`]).
    pub fn open(address: PciAddress) -> Result<Self, VfioError> {
        let container = Arc::new(VfioContainer::new(None).map_err(VfioError::Vfio)?);
        Self::open_in(container, address, Path::new(SYSFS_ROOT))
    }

    /// Opens `address` (bound to `vfio-pci`) in `container`: its IOMMU group joins the container, which gets the
    /// type-1 v2 IOMMU model when it is the first group. `sysfs_root` is normally [`SYSFS_ROOT`].
    pub fn open_in(
        container: Arc<VfioContainer>,
        address: PciAddress,
        sysfs_root: &Path,
    ) -> Result<Self, VfioError> {
        // Checked first for a clear message; vfio-ioctls reads the same link.
        address.iommu_group(sysfs_root)?;
        match address.driver(sysfs_root) {
            Some(d) if d == "vfio-pci" => {}
            other => {
                return Err(VfioError::NotBoundToVfio {
                    address,
                    driver: other.unwrap_or_else(|| "(none)".into()),
                })
            }
        }
        let device = VfioDevice::new(&address.sysfs_path(sysfs_root), container.clone(), false)
            .map_err(VfioError::Vfio)?;
        Ok(Self {
            address,
            container,
            device,
            msix: Vec::new(),
            intx: None,
        })
    }

    /// The function's address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The container, for [`VfioDma::new`] (DMA mappings are per container).
    pub fn container(&self) -> &Arc<VfioContainer> {
        &self.container
    }

    /// The `vfio-ioctls` device, for what this type does not wrap.
    pub fn device(&self) -> &VfioDevice {
        &self.device
    }

    /// The eventfd MSI-X vector `vector` signals, while MSI-X is enabled.
    pub fn msix_eventfd(&self, vector: u16) -> Option<&EventFd> {
        self.msix.get(usize::from(vector))
    }

    /// The INTx eventfd, while INTx is set up (the kernel masks the line after each interrupt: call
    /// [`VfioAccess::unmask_intx`] after handling it).
    pub fn intx_eventfd(&self) -> Option<&EventFd> {
        self.intx.as_ref()
    }

    /// Unmasks INTx after an interrupt was handled.
    pub fn unmask_intx(&self) -> PciResult<()> {
        self.device
            .unmask_irq(INTX_IRQ_INDEX)
            .map_err(|_| PciError::InterruptSetup)
    }

    /// Reads and clears the count of MSI-X vector `vector` (non-blocking): how many times it fired since the last
    /// call (the eventfd counter), 0 if none or the vector is not enabled.
    pub fn take_msix(&self, vector: u16) -> u64 {
        self.msix_eventfd(vector)
            .and_then(|e| e.read().ok())
            .unwrap_or(0)
    }

    fn disable_all_irqs(&mut self) {
        if !self.msix.is_empty() {
            let _ = self.device.disable_msix();
            self.msix.clear();
        }
        if self.intx.take().is_some() {
            let _ = self.device.disable_irq(INTX_IRQ_INDEX);
        }
    }
}

impl Drop for VfioAccess {
    fn drop(&mut self) {
        self.disable_all_irqs();
    }
}

impl PciAccess for VfioAccess {
    fn config_read_bytes(&mut self, offset: u16, data: &mut [u8]) {
        self.device
            .region_read(CONFIG_REGION_INDEX, data, u64::from(offset));
    }
    fn config_write_bytes(&mut self, offset: u16, data: &[u8]) {
        self.device
            .region_write(CONFIG_REGION_INDEX, data, u64::from(offset));
    }
    fn bar_read_bytes(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar < header::BAR_COUNT {
            self.device
                .region_read(BAR0_REGION_INDEX + u32::from(bar), data, offset);
        }
    }
    fn bar_write_bytes(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar < header::BAR_COUNT {
            self.device
                .region_write(BAR0_REGION_INDEX + u32::from(bar), data, offset);
        }
    }

    /// The region size VFIO reports (no sizing writes); the kind from the BAR register's flag bits, which the kernel
    /// keeps in its virtualised copy.
    fn bar_info(&mut self, index: u8) -> Option<BarInfo> {
        if index >= header::BAR_COUNT {
            return None;
        }
        let region = BAR0_REGION_INDEX + u32::from(index);
        let size = self.device.get_region_size(region);
        if size == 0 || self.device.get_region_flags(region) & REGION_FLAG_READ == 0 {
            return None; // unimplemented, or the upper half of a 64-bit BAR
        }
        let reg = header::BAR0 + 4 * u16::from(index);
        let low = self.config_read_u32(reg);
        let (kind, address) = if low & bar::IO != 0 {
            (BarKind::Io, u64::from(low & !bar::IO_FLAGS_MASK))
        } else if low & 0b110 == bar::MEM_64 {
            let high = self.config_read_u32(reg + 4);
            (
                BarKind::Memory64 {
                    prefetchable: low & bar::PREFETCHABLE != 0,
                },
                (u64::from(high) << 32) | u64::from(low & !bar::MEM_FLAGS_MASK),
            )
        } else {
            (BarKind::Memory32, u64::from(low & !bar::MEM_FLAGS_MASK))
        };
        Some(BarInfo::new(index, kind, size, address))
    }

    /// MSI-X: one non-blocking eventfd per vector, handed to the kernel with `VFIO_DEVICE_SET_IRQS` (which programs
    /// the table and the capability); fails with [`crate::Error::InterruptSetup`] if the kernel refuses, so the
    /// transport falls back. INTx: MSI-X off, Interrupt Disable cleared, and an eventfd if the function has a line;
    /// without one this still succeeds and the driver polls.
    fn enable_interrupts(&mut self, request: IrqRequest) -> PciResult<()> {
        self.disable_all_irqs();
        match request {
            IrqRequest::Msix { vectors, .. } => {
                if vectors == 0 {
                    return Err(PciError::InterruptSetup);
                }
                let fds = (0..vectors)
                    .map(|_| EventFd::new(EFD_NONBLOCK))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| PciError::InterruptSetup)?;
                self.device
                    .enable_msix(fds.iter().collect())
                    .map_err(|_| PciError::InterruptSetup)?;
                self.msix = fds;
                Ok(())
            }
            IrqRequest::Intx => {
                let cmd = self.config_read_u16(header::COMMAND);
                self.config_write_u16(header::COMMAND, cmd & !command::INTX_DISABLE);
                let has_line = self
                    .device
                    .get_irq_info(INTX_IRQ_INDEX)
                    .is_some_and(|i| i.count > 0);
                if has_line {
                    if let Ok(fd) = EventFd::new(EFD_NONBLOCK) {
                        if self.device.enable_irq(INTX_IRQ_INDEX, vec_of(&fd)).is_ok() {
                            self.intx = Some(fd);
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn vec_of(fd: &EventFd) -> Vec<&EventFd> {
    std::vec![fd]
}

/// Page size assumed for DMA mappings (x86-64, the VFIO type-1 minimum granule there).
pub const DMA_PAGE_SIZE: usize = 4096;

/// Device-visible memory: an anonymous mapping, mapped for DMA at `iova` in a container, presented as a
/// [`ContiguousMemory`] whose device addresses are IOVAs. Dropping it removes the IOMMU mapping first, then the
/// memory; if the IOMMU refuses to unmap, the memory is leaked rather than reused under a live mapping.
pub struct VfioDma {
    container: Arc<VfioContainer>,
    region: ManuallyDrop<MmapRegion>,
    memory: ContiguousMemory,
}

impl fmt::Debug for VfioDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioDma")
            .field("iova", &self.memory.base())
            .field("len", &self.memory.len())
            .finish_non_exhaustive()
    }
}

impl VfioDma {
    /// Maps `size` bytes (a non-zero multiple of [`DMA_PAGE_SIZE`]) of fresh zeroed memory at IOVA `iova`
    /// (page-aligned) in `container`. The container must already hold a group (open a [`VfioAccess`] first).
    pub fn new(container: &Arc<VfioContainer>, iova: u64, size: usize) -> Result<Self, VfioError> {
        let page = DMA_PAGE_SIZE as u64;
        let size_ok = size != 0 && size % DMA_PAGE_SIZE == 0;
        let end_ok = u64::try_from(size)
            .ok()
            .and_then(|s| iova.checked_add(s))
            .is_some();
        if !size_ok || iova % page != 0 || !end_ok {
            return Err(VfioError::BadDmaRange { iova, size });
        }
        let region = MmapRegion::new(size).map_err(|source| VfioError::Mmap { size, source })?;
        let ptr = NonNull::new(region.as_ptr()).ok_or(VfioError::BadDmaRange { iova, size })?;
        // SAFETY: `[ptr, ptr + size)` is the mapping `region` owns; it stays mapped until `Drop` (after the IOMMU
        // mapping is gone, or never if that fails). No Rust reference to these bytes is ever created: the memory is
        // reached only through `ContiguousMemory`'s raw pointers and atomics, which is what `vfio_dma_map` permits.
        unsafe { container.vfio_dma_map(iova, size, ptr.as_ptr()) }.map_err(VfioError::Vfio)?;
        // SAFETY: valid for reads and writes while `self` lives (see above); the mapping is page-aligned and `iova` is
        // page-aligned, so `ptr % 16 == iova % 16`; no Rust reference to the bytes exists.
        let memory = unsafe { ContiguousMemory::from_raw_parts(DeviceAddr::new(iova), ptr, size) };
        Ok(Self {
            container: container.clone(),
            region: ManuallyDrop::new(region),
            memory,
        })
    }

    /// The memory, addressed by IOVA.
    pub fn memory(&self) -> &ContiguousMemory {
        &self.memory
    }

    /// IOVA of the first byte.
    pub fn iova(&self) -> DeviceAddr {
        self.memory.base()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// Whether the region is empty (never: construction refuses empty regions).
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }
}

// SAFETY: delegates to the `ContiguousMemory` this value owns, which stays valid while `self` lives.
unsafe impl RingMemory for VfioDma {
    #[inline]
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        self.memory.translate(addr, len)
    }
}

impl Drop for VfioDma {
    fn drop(&mut self) {
        let iova = self.memory.base().raw();
        if self
            .container
            .vfio_dma_unmap(iova, self.memory.len())
            .is_ok()
        {
            // SAFETY: the IOMMU mapping is gone, so nothing else uses the memory; `region` is not used again.
            unsafe { ManuallyDrop::drop(&mut self.region) };
        }
        // Otherwise the device may still reach the pages: leak them.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Result<PciAddress, VfioError> {
        s.parse()
    }

    #[test]
    fn pci_address_full_form_parses_and_round_trips() {
        let a = addr("0000:00:03.0").expect("valid in this test");
        assert_eq!(a, PciAddress::new(0, 0, 3, 0).expect("valid in this test"));
        assert_eq!(std::format!("{a}"), "0000:00:03.0");
        let b = addr("abcd:Ef:1f.7").expect("valid in this test");
        assert_eq!(
            (b.domain(), b.bus(), b.device(), b.function()),
            (0xabcd, 0xef, 0x1f, 7)
        );
        assert_eq!(std::format!("{b}"), "abcd:ef:1f.7");
    }

    #[test]
    fn pci_address_short_form_means_domain_zero() {
        assert_eq!(
            addr("01:00.1").expect("valid in this test"),
            PciAddress::new(0, 1, 0, 1).expect("valid in this test")
        );
    }

    #[test]
    fn pci_address_malformed_text_is_rejected() {
        for bad in [
            "",
            "00:03",
            "0000:00:03",
            "0000:00:20.0",
            "0000:00:03.8",
            "00000:00:03.0",
            "0000:000:03.0",
            "0000:00:03.0.1",
            "g000:00:03.0",
            "0000:00:+3.0",
            "1:2:3:4.0",
            "0000:00:03.",
            ":00:03.0",
        ] {
            assert!(
                matches!(addr(bad), Err(VfioError::InvalidAddress(_))),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn pci_address_out_of_range_device_or_function_is_none() {
        assert!(PciAddress::new(0, 0, 32, 0).is_none());
        assert!(PciAddress::new(0, 0, 0, 8).is_none());
    }

    #[test]
    fn sysfs_path_names_the_function_directory() {
        let a = addr("00:03.0").expect("valid in this test");
        assert_eq!(
            a.sysfs_path(Path::new("/sys")),
            PathBuf::from("/sys/bus/pci/devices/0000:00:03.0")
        );
    }

    /// A fake sysfs tree under a fresh temporary directory.
    fn fake_sysfs(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(std::format!(
            "virtio-pci-vfio-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bus/pci/devices/0000:00:03.0"))
            .expect("valid in this test");
        std::fs::create_dir_all(root.join("kernel/iommu_groups/7")).expect("valid in this test");
        std::fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).expect("valid in this test");
        root
    }

    #[test]
    fn iommu_group_and_driver_links_are_resolved() {
        let root = fake_sysfs("links");
        let dev = root.join("bus/pci/devices/0000:00:03.0");
        std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", dev.join("iommu_group"))
            .expect("valid in this test");
        std::os::unix::fs::symlink("../../../../bus/pci/drivers/vfio-pci", dev.join("driver"))
            .expect("valid in this test");
        let a = addr("0000:00:03.0").expect("valid in this test");
        assert_eq!(a.iommu_group(&root).expect("valid in this test"), 7);
        assert_eq!(a.driver(&root).as_deref(), Some("vfio-pci"));
        std::fs::remove_dir_all(&root).expect("valid in this test");
    }

    #[test]
    fn iommu_group_missing_link_is_a_typed_error() {
        let root = fake_sysfs("nogroup");
        let a = addr("0000:00:03.0").expect("valid in this test");
        assert!(matches!(
            a.iommu_group(&root),
            Err(VfioError::NoIommuGroup { .. })
        ));
        assert_eq!(a.driver(&root), None);
        std::fs::remove_dir_all(&root).expect("valid in this test");
    }

    #[test]
    fn iommu_group_link_without_a_number_is_a_typed_error() {
        let root = fake_sysfs("badgroup");
        let dev = root.join("bus/pci/devices/0000:00:03.0");
        std::os::unix::fs::symlink(
            "../../../../kernel/iommu_groups/x7",
            dev.join("iommu_group"),
        )
        .expect("valid in this test");
        let a = addr("0000:00:03.0").expect("valid in this test");
        assert!(matches!(
            a.iommu_group(&root),
            Err(VfioError::BadIommuGroup(_))
        ));
        std::fs::remove_dir_all(&root).expect("valid in this test");
    }
}
