//! Device status and feature negotiation (virtio 1.3 §2.1, §2.2, §3.1), as the device side tracks it.
//!
//! Both transports feed register writes into one [`Negotiation`], so the rules live in one place.

use crate::error::{Error, Result};
use crate::spec::{DeviceStatus, Features};

/// What a status write did, for the transport to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusChange {
    /// Nothing that needs action (a bit added on the way to DRIVER_OK).
    None,
    /// The driver wrote 0: reset the device and every queue.
    Reset,
    /// FEATURES_OK was requested and accepted; the features are now fixed.
    FeaturesAccepted(Features),
    /// FEATURES_OK was requested and refused (bits never offered, or an inconsistent set): the bit stays clear, so
    /// the driver's re-read sees it missing.
    FeaturesRejected,
    /// DRIVER_OK was set: activate the device with the negotiated features.
    DriverOk(Features),
    /// The driver set FAILED.
    Failed,
}

/// Device-side status field plus the feature words the driver wrote.
#[derive(Debug, Clone)]
pub struct Negotiation {
    offered: Features,
    driver: Features,
    status: DeviceStatus,
    modern_only: bool,
}

impl Negotiation {
    /// A fresh device offering `offered`; legacy drivers (no VERSION_1) are accepted if the transport has a legacy
    /// interface.
    pub fn new(offered: Features) -> Self {
        Self {
            offered,
            driver: Features::empty(),
            status: DeviceStatus::empty(),
            modern_only: false,
        }
    }

    /// A fresh device with no legacy interface (MMIO v2, modern-only PCI): it offers VERSION_1 and refuses a driver
    /// that does not accept it (virtio 1.3 §6.1).
    pub fn modern(offered: Features) -> Self {
        Self {
            modern_only: true,
            ..Self::new(offered | Features::VERSION_1)
        }
    }

    /// Whether this device refuses legacy drivers.
    pub fn is_modern_only(&self) -> bool {
        self.modern_only
    }

    /// What the device offers.
    pub fn offered(&self) -> Features {
        self.offered
    }

    /// What the driver has written so far (final once FEATURES_OK is set).
    pub fn driver_features(&self) -> Features {
        self.driver
    }

    /// The status as the driver reads it.
    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    /// Whether the driver set DRIVER_OK (and the device has not been reset since).
    pub fn is_live(&self) -> bool {
        self.status.contains(DeviceStatus::DRIVER_OK)
    }

    /// Whether the features may still be written (FEATURES_OK not yet set).
    pub fn features_writable(&self) -> bool {
        !self.status.contains(DeviceStatus::FEATURES_OK)
    }

    /// Writes one 32-bit window of the driver features; ignored once FEATURES_OK is set (the spec forbids the driver
    /// to change features after that, and the device keeps what it accepted).
    pub fn write_driver_features(&mut self, select: u32, value: u32) {
        if self.features_writable() {
            self.driver = self.driver.with_window(select, value);
        }
    }

    /// Sets DEVICE_NEEDS_RESET (the device hit an error it cannot recover from, e.g. a peer fault on a queue).
    pub fn set_needs_reset(&mut self) {
        if self.status.contains(DeviceStatus::DRIVER_OK) {
            self.status |= DeviceStatus::DEVICE_NEEDS_RESET;
        }
    }

    /// Applies a status write from the driver.
    ///
    /// Zero resets. Otherwise bits may only be added, in the order ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK
    /// (FEATURES_OK is skipped by legacy drivers, which never set it when VERSION_1 is not negotiated); FAILED may
    /// come at any time. A write that clears bits or skips a step is refused with an error and changes nothing.
    pub fn write_status(&mut self, value: u8) -> Result<StatusChange> {
        let new = DeviceStatus::from_bits_retain(value);
        if new.is_empty() {
            *self = Self {
                modern_only: self.modern_only,
                ..Self::new(self.offered)
            };
            return Ok(StatusChange::Reset);
        }
        let old = self.status;
        let needs_reset = old & DeviceStatus::DEVICE_NEEDS_RESET;
        let invalid = || Error::InvalidStatusTransition {
            from: old.bits(),
            to: value,
        };
        // The driver cannot clear bits (other than by reset) and never writes DEVICE_NEEDS_RESET itself.
        if !new.contains(old - DeviceStatus::DEVICE_NEEDS_RESET)
            || new.bits() & !DeviceStatus::all().bits() != 0
        {
            return Err(invalid());
        }
        let added = new - old - DeviceStatus::DEVICE_NEEDS_RESET;
        if added.contains(DeviceStatus::FAILED) {
            self.status = new | needs_reset;
            return Ok(StatusChange::Failed);
        }
        let requires =
            |bit: DeviceStatus, before: DeviceStatus| !added.contains(bit) || new.contains(before);
        let legacy = !self.modern_only && !self.driver.contains(Features::VERSION_1);
        let ordered = requires(DeviceStatus::DRIVER, DeviceStatus::ACKNOWLEDGE)
            && requires(DeviceStatus::FEATURES_OK, DeviceStatus::DRIVER)
            && requires(DeviceStatus::DRIVER_OK, DeviceStatus::DRIVER)
            && (legacy || requires(DeviceStatus::DRIVER_OK, DeviceStatus::FEATURES_OK));
        if !ordered {
            return Err(invalid());
        }
        if added.contains(DeviceStatus::FEATURES_OK) {
            if !self.features_acceptable() {
                // The bit is not set: the driver's re-read tells it the features were refused (§3.1.1 step 6).
                self.status =
                    (new - DeviceStatus::FEATURES_OK - DeviceStatus::DRIVER_OK) | needs_reset;
                return Ok(StatusChange::FeaturesRejected);
            }
            self.status = new | needs_reset;
            if added.contains(DeviceStatus::DRIVER_OK) {
                return Ok(StatusChange::DriverOk(self.driver));
            }
            return Ok(StatusChange::FeaturesAccepted(self.driver));
        }
        self.status = new | needs_reset;
        if added.contains(DeviceStatus::DRIVER_OK) {
            if legacy && !self.features_acceptable() {
                self.status = old;
                return Err(Error::FeaturesRejected);
            }
            return Ok(StatusChange::DriverOk(self.driver));
        }
        Ok(StatusChange::None)
    }

    fn features_acceptable(&self) -> bool {
        let d = self.driver;
        if !self.offered.contains(d) || (self.modern_only && !d.contains(Features::VERSION_1)) {
            return false;
        }
        // A legacy (pre-1.0) driver cannot use features defined only for VERSION_1 devices.
        d.contains(Features::VERSION_1) || !d.intersects(Features::MODERN_ONLY)
    }
}

/// Chooses the features a driver accepts: what it supports ∩ what the device offers. When that includes VERSION_1,
/// the legacy-only bits ([`Features::LEGACY_ONLY`], §6.3) count as not offered. Fails if a `required` bit is missing.
pub fn select_features(
    offered: Features,
    supported: Features,
    required: Features,
) -> Result<Features> {
    let offered = if (offered & supported).contains(Features::VERSION_1) {
        offered - Features::LEGACY_ONLY
    } else {
        offered
    };
    let missing = required - offered;
    if !missing.is_empty() {
        return Err(Error::MissingFeatures {
            missing: missing.bits(),
        });
    }
    Ok(offered & supported)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: u8 = DeviceStatus::ACKNOWLEDGE.bits();
    const DRV: u8 = ACK | DeviceStatus::DRIVER.bits();
    const FOK: u8 = DRV | DeviceStatus::FEATURES_OK.bits();
    const DOK: u8 = FOK | DeviceStatus::DRIVER_OK.bits();

    fn offered() -> Features {
        Features::VERSION_1 | Features::RING_PACKED | Features::EVENT_IDX
    }

    #[test]
    fn negotiation_in_order_reaches_driver_ok() {
        let mut n = Negotiation::new(offered());
        assert_eq!(n.write_status(ACK), Ok(StatusChange::None));
        assert_eq!(n.write_status(DRV), Ok(StatusChange::None));
        n.write_driver_features(1, (Features::VERSION_1 | Features::RING_PACKED).window(1));
        let want = Features::VERSION_1 | Features::RING_PACKED;
        assert_eq!(
            n.write_status(FOK),
            Ok(StatusChange::FeaturesAccepted(want))
        );
        n.write_driver_features(0, 0xffff_ffff);
        assert_eq!(
            n.driver_features(),
            want,
            "features are frozen after FEATURES_OK"
        );
        assert_eq!(n.write_status(DOK), Ok(StatusChange::DriverOk(want)));
        assert!(n.is_live());
        assert_eq!(n.write_status(0), Ok(StatusChange::Reset));
        assert_eq!(n.status(), DeviceStatus::empty());
    }

    #[test]
    fn negotiation_features_never_offered_are_refused() {
        let mut n2 = Negotiation::new(offered());
        n2.write_status(ACK).expect("ack");
        n2.write_status(DRV).expect("driver");
        n2.write_driver_features(
            1,
            Features::VERSION_1.window(1) | Features::RING_RESET.window(1),
        );
        assert_eq!(n2.write_status(FOK), Ok(StatusChange::FeaturesRejected));
        assert!(!n2.status().contains(DeviceStatus::FEATURES_OK));
        assert_ne!(
            n2.write_status(DOK),
            Ok(StatusChange::DriverOk(n2.driver_features()))
        );
        assert!(
            !n2.status().contains(DeviceStatus::DRIVER_OK),
            "a refused feature set never goes live"
        );
    }

    #[test]
    fn negotiation_clearing_bits_is_refused() {
        let mut n = Negotiation::new(offered());
        n.write_status(ACK).expect("ack");
        n.write_status(DRV).expect("driver");
        assert!(matches!(
            n.write_status(ACK),
            Err(Error::InvalidStatusTransition { .. })
        ));
        assert_eq!(n.status().bits(), DRV);
    }

    #[test]
    fn negotiation_skipping_steps_is_refused() {
        let mut n = Negotiation::new(offered());
        assert!(n.write_status(DeviceStatus::DRIVER.bits()).is_err());
        n.write_status(ACK).expect("ack");
        assert!(n
            .write_status(ACK | DeviceStatus::FEATURES_OK.bits())
            .is_err());
    }

    #[test]
    fn negotiation_legacy_driver_goes_straight_to_driver_ok() {
        let mut n = Negotiation::new(Features::EVENT_IDX | Features::VERSION_1);
        n.write_status(ACK).expect("ack");
        n.write_status(DRV).expect("driver");
        n.write_driver_features(0, Features::EVENT_IDX.window(0));
        let ok = DRV | DeviceStatus::DRIVER_OK.bits();
        assert_eq!(
            n.write_status(ok),
            Ok(StatusChange::DriverOk(Features::EVENT_IDX))
        );
    }

    #[test]
    fn negotiation_modern_only_refuses_legacy_driver() {
        let mut n = Negotiation::modern(Features::EVENT_IDX);
        assert!(n.offered().contains(Features::VERSION_1));
        n.write_status(ACK).expect("ack");
        n.write_status(DRV).expect("driver");
        n.write_driver_features(0, Features::EVENT_IDX.window(0));
        assert!(
            n.write_status(DRV | DeviceStatus::DRIVER_OK.bits())
                .is_err(),
            "no legacy shortcut to DRIVER_OK"
        );
        assert_eq!(n.write_status(FOK), Ok(StatusChange::FeaturesRejected));
        assert_eq!(n.write_status(0), Ok(StatusChange::Reset));
        assert!(n.is_modern_only(), "reset keeps the device modern-only");
    }

    #[test]
    fn negotiation_failed_is_accepted_any_time() {
        let mut n = Negotiation::new(offered());
        n.write_status(ACK).expect("ack");
        assert_eq!(
            n.write_status(ACK | DeviceStatus::FAILED.bits()),
            Ok(StatusChange::Failed)
        );
    }

    #[test]
    fn select_features_reports_missing_required_bits() {
        let r = select_features(
            Features::VERSION_1,
            Features::all(),
            Features::VERSION_1 | Features::RING_PACKED,
        );
        assert_eq!(
            r,
            Err(Error::MissingFeatures {
                missing: Features::RING_PACKED.bits()
            })
        );
    }

    #[test]
    fn select_features_leaves_legacy_only_bits_to_legacy_negotiations() {
        let legacy_bits = Features::ANY_LAYOUT | Features::NOTIFY_ON_EMPTY;
        let offered = Features::VERSION_1 | Features::EVENT_IDX | legacy_bits;
        let all = offered | Features::INDIRECT_DESC;
        // A modern negotiation drops them, even when the driver supports them.
        assert_eq!(
            select_features(offered, all, Features::empty()),
            Ok(Features::VERSION_1 | Features::EVENT_IDX)
        );
        // A driver that requires one cannot get it from a modern negotiation.
        assert_eq!(
            select_features(offered, all, Features::ANY_LAYOUT),
            Err(Error::MissingFeatures {
                missing: Features::ANY_LAYOUT.bits()
            })
        );
        // Without VERSION_1 on both sides they pass as any other bit.
        assert_eq!(
            select_features(offered, all - Features::VERSION_1, Features::empty()),
            Ok(Features::EVENT_IDX | legacy_bits)
        );
        assert_eq!(
            select_features(offered - Features::VERSION_1, all, Features::ANY_LAYOUT),
            Ok(Features::EVENT_IDX | legacy_bits)
        );
    }
}
