//! Our driver drives our device through its whole life, register by register, for every variant, interface, ring
//! format and interrupt mode: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK re-read, queue setup, DRIVER_OK,
//! echo traffic on two queues, a configuration change interrupt, reset and re-initialisation.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs
)]

mod common;

use common::scenario;
use virtio_core::Features;
use virtio_pci::{Interface, InterruptMode, PciVariant};

const SPLIT: Features = Features::VERSION_1.union(Features::INDIRECT_DESC);
const SPLIT_EVENT_IDX: Features = SPLIT.union(Features::EVENT_IDX);
const PACKED: Features = Features::VERSION_1.union(Features::RING_PACKED);
const PACKED_EVENT_IDX: Features = PACKED.union(Features::EVENT_IDX);
/// What a legacy driver supports (bits 0..31 only).
const LEGACY: Features = Features::INDIRECT_DESC.union(Features::EVENT_IDX);

use InterruptMode::{Intx, PerQueueVectors as PerQueue, SharedVector as Shared};
use PciVariant::{Legacy, Modern, Transitional};

// ----- modern -----

#[test]
fn modern_split_per_queue_vectors_full_lifecycle_succeeds() {
    scenario(Modern, None, SPLIT, PerQueue, PerQueue);
}

#[test]
fn modern_split_event_idx_per_queue_vectors_full_lifecycle_succeeds() {
    scenario(Modern, None, SPLIT_EVENT_IDX, PerQueue, PerQueue);
}

#[test]
fn modern_split_shared_vector_full_lifecycle_succeeds() {
    scenario(Modern, None, SPLIT, Shared, Shared);
}

#[test]
fn modern_split_intx_full_lifecycle_succeeds() {
    scenario(Modern, None, SPLIT, Intx, Intx);
}

#[test]
fn modern_packed_per_queue_vectors_full_lifecycle_succeeds() {
    scenario(Modern, None, PACKED, PerQueue, PerQueue);
}

#[test]
fn modern_packed_event_idx_shared_vector_full_lifecycle_succeeds() {
    scenario(Modern, None, PACKED_EVENT_IDX, Shared, Shared);
}

#[test]
fn modern_packed_intx_full_lifecycle_succeeds() {
    scenario(Modern, None, PACKED, Intx, Intx);
}

#[test]
fn modern_notification_data_full_lifecycle_succeeds() {
    for packed in [false, true] {
        let mut f = SPLIT_EVENT_IDX | Features::NOTIFICATION_DATA;
        f.set(Features::RING_PACKED, packed);
        scenario(Modern, None, f, PerQueue, PerQueue);
    }
}

// ----- transitional, through its modern interface -----

#[test]
fn transitional_modern_interface_split_per_queue_vectors_full_lifecycle_succeeds() {
    scenario(
        Transitional,
        Some(Interface::Modern),
        SPLIT,
        PerQueue,
        PerQueue,
    );
}

#[test]
fn transitional_modern_interface_packed_shared_vector_full_lifecycle_succeeds() {
    scenario(
        Transitional,
        Some(Interface::Modern),
        PACKED_EVENT_IDX,
        Shared,
        Shared,
    );
}

#[test]
fn transitional_modern_interface_split_intx_full_lifecycle_succeeds() {
    scenario(
        Transitional,
        Some(Interface::Modern),
        SPLIT_EVENT_IDX,
        Intx,
        Intx,
    );
}

#[test]
fn transitional_auto_interface_prefers_modern() {
    let h = common::Harness::new(Transitional, None);
    assert_eq!(h.transport.interface(), Interface::Modern);
}

// ----- transitional, through its legacy interface -----

#[test]
fn transitional_legacy_interface_split_per_queue_vectors_full_lifecycle_succeeds() {
    scenario(
        Transitional,
        Some(Interface::Legacy),
        LEGACY,
        PerQueue,
        PerQueue,
    );
}

#[test]
fn transitional_legacy_interface_shared_vector_full_lifecycle_succeeds() {
    scenario(
        Transitional,
        Some(Interface::Legacy),
        LEGACY,
        Shared,
        Shared,
    );
}

#[test]
fn transitional_legacy_interface_intx_full_lifecycle_succeeds() {
    scenario(Transitional, Some(Interface::Legacy), LEGACY, Intx, Intx);
}

#[test]
fn transitional_legacy_interface_never_negotiates_modern_features() {
    // A legacy driver asking for everything still gets only bits 0..31: no VERSION_1, no packed ring.
    let mut h = common::Harness::new(Transitional, Some(Interface::Legacy));
    h.init(Features::all(), PerQueue);
    assert_eq!(h.features.bits() >> 32, 0);
    assert_eq!(h.pci.borrow().driver_features().bits() >> 32, 0);
    h.traffic(3);
}

// ----- legacy-only -----

#[test]
fn legacy_split_per_queue_vectors_full_lifecycle_succeeds() {
    scenario(Legacy, None, LEGACY, PerQueue, PerQueue);
}

#[test]
fn legacy_split_shared_vector_full_lifecycle_succeeds() {
    scenario(Legacy, None, LEGACY, Shared, Shared);
}

#[test]
fn legacy_split_intx_full_lifecycle_succeeds() {
    scenario(Legacy, None, LEGACY, Intx, Intx);
}

#[test]
fn legacy_device_has_only_the_legacy_interface() {
    let h = common::Harness::new(Legacy, None);
    assert_eq!(h.transport.interface(), Interface::Legacy);
    let (pci, ..) = common::device(Legacy, |o| o);
    let err = virtio_pci::PciTransport::with_interface(
        virtio_pci::LocalAccess::new(pci),
        Interface::Modern,
    )
    .unwrap_err();
    assert_eq!(err, virtio_pci::Error::NoSuchInterface { wanted: "modern" });
}

#[test]
fn modern_device_has_no_legacy_interface() {
    let (pci, ..) = common::device(Modern, |o| o);
    let err = virtio_pci::PciTransport::with_interface(
        virtio_pci::LocalAccess::new(pci),
        Interface::Legacy,
    )
    .unwrap_err();
    assert_eq!(err, virtio_pci::Error::NoSuchInterface { wanted: "legacy" });
}

// ----- variations -----

#[test]
fn modern_notify_multiplier_zero_full_lifecycle_succeeds() {
    let mut h = common::Harness::with_options(Modern, None, |o| o.notify_off_multiplier(0));
    assert_eq!(h.init(SPLIT_EVENT_IDX, PerQueue), PerQueue);
    h.traffic(10);
}

#[test]
fn modern_extended_config_space_full_lifecycle_succeeds() {
    let mut h = common::Harness::with_options(Modern, None, |o| o.extended_config(true));
    assert_eq!(h.init(PACKED, PerQueue), PerQueue);
    h.traffic(5);
    h.config_change(7);
}

#[test]
fn reinit_switches_interrupt_mode_between_resets() {
    let mut h = common::Harness::new(Transitional, Some(Interface::Modern));
    assert_eq!(h.init(SPLIT, PerQueue), PerQueue);
    h.traffic(2);
    h.reset();
    assert_eq!(h.init(SPLIT, Intx), Intx);
    assert!(!h.pci.borrow().msix_enabled());
    h.traffic(2);
    h.reset();
    assert_eq!(h.init(PACKED, Shared), Shared);
    h.traffic(2);
}
