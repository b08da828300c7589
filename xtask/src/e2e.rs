//! `cargo xtask e2e SUITE`: end-to-end suites. Each suite gets one match arm below.

/// Runs the suite named by the first argument.
pub(crate) fn run(root: &std::path::Path, args: &[String]) -> Result<(), String> {
    let Some(suite) = args.first() else {
        return Err("usage: cargo xtask e2e SUITE (`cargo xtask e2e --list` lists them)".into());
    };
    match suite.as_str() {
        // Suites are added here, one arm each.
        "vfio-smoke" => crate::vfio_e2e::run(root, args.get(1..).unwrap_or(&[])),
        "vfio" => crate::vfio_net_e2e::run(root, args.get(1..).unwrap_or(&[])),
        "vmm" => crate::vmm_e2e::run(root, args.get(1..).unwrap_or(&[])),
        "guest" => crate::guest_e2e::run(root, args.get(1..).unwrap_or(&[])),
        "--list" | "list" => {
            println!("e2e suites:");
            println!(
                "  vfio-smoke [CELL...]  PciTransport over VfioAccess against QEMU's virtio-net-pci in a TCG guest\n\
                 \x20                       (cells: split, split+event_idx, packed, packed+event_idx; about 15 s per boot)\n\
                 \x20 vfio                  examples/vfio-net (responder, echo) on QEMU's virtio-net-pci through vfio-pci:\n\
                 \x20                       modern/transitional(legacy interface)/legacy x split/packed x 1/2 queue pairs,\n\
                 \x20                       a Linux-driven peer device pings and streams 100,000 datagrams (one boot, ~4 min)\n\
                 \x20 vmm [CELL...]         nested: L1 TCG guest with kvm-amd runs mini-vmm, whose L2 Linux drives our\n\
                 \x20                       virtio-net on mmio-legacy/mmio/pci-legacy/pci-transitional/pci x split/packed\n\
                 \x20 guest [SUBSTRING]     the no_std guest kernel (examples/guest-kernel) on mini-vmm (/dev/kvm) and on\n\
                 \x20                       QEMU TCG microvm/q35 against QEMU's virtio-net devices"
            );
            Ok(())
        }
        other => Err(format!("unknown e2e suite `{other}`")),
    }
}
