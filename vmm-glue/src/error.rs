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
}
