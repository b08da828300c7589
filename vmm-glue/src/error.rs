//! The crate's error type.

/// Errors from vmm-glue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// An I/O or system call failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Creating guest memory failed.
    #[error("guest memory mapping: {0}")]
    MemoryMap(String),
    /// A bus range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    BusOverlap {
        /// Start of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// Every virtio-mmio slot (or PCI device number) is taken.
    #[error("no free {0} slot")]
    NoSlot(&'static str),
    /// The PCI I/O or MMIO window has no room for a BAR.
    #[error("PCI window full: no room for a {size:#x}-byte BAR")]
    PciWindowFull {
        /// The BAR size.
        size: u64,
    },
    /// The virtio-mmio transport refused the device.
    #[error("virtio-mmio: {0}")]
    Mmio(#[from] virtio_mmio::Error),
    /// The virtio-pci transport refused the device.
    #[error("virtio-pci: {0}")]
    Pci(#[from] virtio_pci::Error),
    /// A vCPU thread could not be started or failed.
    #[error("vCPU {id}: {reason}")]
    Vcpu {
        /// vCPU index.
        id: u8,
        /// What happened.
        reason: String,
    },
    /// An invalid configuration (a caller error).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// linux-loader refused or failed to load the kernel image.
    #[error("kernel loader: {0}")]
    KernelLoad(#[from] linux_loader::loader::Error),
    /// The kernel, initrd or machine cannot be booted as asked (unsupported image, does not fit in RAM, ...).
    #[error("boot: {0}")]
    Boot(String),
}
