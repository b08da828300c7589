//! virtio-mmio
#![no_std]
