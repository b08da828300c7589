//! virtio-net
#![no_std]
