//! virtio-pci
#![no_std]
