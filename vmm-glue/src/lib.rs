//! vmm-glue: KVM VMM kit (filled in by the VMM issue).
