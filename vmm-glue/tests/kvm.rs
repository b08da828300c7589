//! vmm-glue against this host's `/dev/kvm`, with tiny hand-written real-mode guests (machine code below, each
//! instruction commented): port I/O and MMIO exit dispatch, ioeventfd with datamatch (no exit), irqfd delivery
//! through the in-kernel PIC to a guest interrupt handler, and the ways a guest ends the VM.
//!
//! Without `/dev/kvm` these tests fail, unless `VMM_GLUE_SKIP_KVM=1` is set (then they print that they skipped).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    clippy::type_complexity,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    missing_docs
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::IoEventAddress;
use vm_memory::{Bytes, GuestAddress};
use vmm_glue::{layout, BusDevice, ExitReason, IrqfdLine, Vm, VmConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where the guest code is loaded and starts (real mode, CS = 0).
const CODE: u64 = 0x1000;
/// Guest RAM: 32 KiB, so that MMIO devices can sit just above it, within real-mode reach.
const MEM: u64 = 0x8000;

/// `true` if the test should run; panics if KVM is missing and skipping was not asked for.
fn kvm_available() -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("VMM_GLUE_SKIP_KVM").as_deref() == Ok("1") {
        eprintln!("SKIPPED: /dev/kvm is absent and VMM_GLUE_SKIP_KVM=1");
        return false;
    }
    panic!("/dev/kvm is absent: these tests need KVM (set VMM_GLUE_SKIP_KVM=1 to skip them explicitly)");
}

/// A one-vCPU VM running `code` at [`CODE`] in real mode, stack at 0x7000.
fn real_mode_vm(code: &[u8]) -> Vm {
    let vm = Vm::new(VmConfig::new(MEM)).unwrap();
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let vcpu = &vm.vcpus()[0];
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ss.base = 0;
    sregs.ss.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rsp = 0x7000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    vm
}

/// Runs `vm` with a 20 s watchdog.
fn run(vm: Vm) -> ExitReason {
    let control = vm.control().clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        control.request_exit(ExitReason::Error("watchdog: guest did not finish".into()));
    });
    vm.run().unwrap()
}

/// Records writes; reads return `reply`.
struct Recorder {
    writes: Arc<Mutex<Vec<(u64, Vec<u8>)>>>,
    reads: Arc<Mutex<Vec<(u64, usize)>>>,
    reply: u64,
}

impl Recorder {
    fn new(
        reply: u64,
    ) -> (
        Self,
        Arc<Mutex<Vec<(u64, Vec<u8>)>>>,
        Arc<Mutex<Vec<(u64, usize)>>>,
    ) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let reads = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                writes: writes.clone(),
                reads: reads.clone(),
                reply,
            },
            writes,
            reads,
        )
    }
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.lock().unwrap().push((offset, data.len()));
        let bytes = self.reply.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
    }
}

#[test]
fn pio_exit_dispatch_reaches_bus_device_and_exit_port_ends_vm() {
    if !kvm_available() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xba, 0x00, 0x05,   // mov dx, 0x500
        0xb0, 0x42,         // mov al, 0x42
        0xee,               // out dx, al        -> Recorder write (offset 0, [0x42])
        0x42,               // inc dx
        0xec,               // in al, dx         -> Recorder read (offset 1, 1 byte) = 0x17
        0xe6, 0xf4,         // out 0xf4, al      -> exit port, value 0x17
        0xeb, 0xfe,         // jmp $
    ];
    let vm = real_mode_vm(&code);
    let (rec, writes, reads) = Recorder::new(0x17);
    vm.pio_bus()
        .insert(0x500, 2, Arc::new(Mutex::new(rec)))
        .unwrap();
    let reason = run(vm);
    assert_eq!(reason, ExitReason::ExitPort(0x17));
    assert_eq!(reason.exit_status(), (0x17 << 1) | 1);
    assert_eq!(*writes.lock().unwrap(), vec![(0, vec![0x42])]);
    assert_eq!(*reads.lock().unwrap(), vec![(1, 1)]);
}

#[test]
fn mmio_exit_dispatch_reads_and_writes_and_ioeventfd_datamatch_skips_exit() {
    if !kvm_available() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xa1, 0x00, 0x80,   // mov ax, [0x8000]  -> MMIO read of 2 bytes at 0x8000 = 0x1234
        0xa3, 0x04, 0x80,   // mov [0x8004], ax  -> MMIO write of 0x1234 at 0x8004
        0xb8, 0x07, 0x00,   // mov ax, 7
        0xa3, 0x00, 0x90,   // mov [0x9000], ax  -> matches the ioeventfd (datamatch 7, 2 bytes): no exit
        0xa3, 0x00, 0x90,   // mov [0x9000], ax  -> again (eventfd counter 2)
        0xb8, 0x08, 0x00,   // mov ax, 8
        0xa3, 0x00, 0x90,   // mov [0x9000], ax  -> no match: exits to the bus device at 0x9000
        0xe6, 0xf4,         // out 0xf4, al      -> exit port, value 8
        0xeb, 0xfe,         // jmp $
    ];
    let vm = real_mode_vm(&code);
    let (rec, writes, reads) = Recorder::new(0x1234);
    vm.mmio_bus()
        .insert(0x8000, 0x1000, Arc::new(Mutex::new(rec)))
        .unwrap();
    let (kick_rec, kick_writes, _) = Recorder::new(0);
    vm.mmio_bus()
        .insert(0x9000, 0x1000, Arc::new(Mutex::new(kick_rec)))
        .unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.vm_fd()
        .register_ioevent(&kick, &IoEventAddress::Mmio(0x9000), 7u16)
        .unwrap();
    let reason = run(vm);
    assert_eq!(reason, ExitReason::ExitPort(8));
    assert_eq!(*reads.lock().unwrap(), vec![(0, 2)]);
    assert_eq!(*writes.lock().unwrap(), vec![(4, vec![0x34, 0x12])]);
    // The two matching writes signalled the eventfd and never reached user space.
    assert_eq!(kick.read().unwrap(), 2);
    assert_eq!(*kick_writes.lock().unwrap(), vec![(0, vec![8, 0])]);
}

/// Triggers an irqfd line when the guest writes to its port.
struct IrqOnWrite(IrqfdLine);

impl BusDevice for IrqOnWrite {
    fn read(&mut self, _: u64, _: &mut [u8]) {}
    fn write(&mut self, _: u64, _: &[u8]) {
        self.0.trigger();
    }
}

#[test]
fn irqfd_interrupt_reaches_guest_handler_through_pic() {
    if !kvm_available() {
        return;
    }
    // Vector 0x25 = PIC master base 0x20 + IRQ 5 (GSI 5, the first virtio-mmio slot's line).
    const HANDLER: u16 = 0x1100;
    #[rustfmt::skip]
    let code = [
        // Program the master 8259: ICW1..4, then unmask IRQ 5 only.
        0xb0, 0x11, 0xe6, 0x20,   // mov al, 0x11; out 0x20, al   (ICW1: edge, cascade, ICW4 needed)
        0xb0, 0x20, 0xe6, 0x21,   // mov al, 0x20; out 0x21, al   (ICW2: vector base 0x20)
        0xb0, 0x04, 0xe6, 0x21,   // mov al, 0x04; out 0x21, al   (ICW3: slave on IRQ 2)
        0xb0, 0x01, 0xe6, 0x21,   // mov al, 0x01; out 0x21, al   (ICW4: 8086 mode)
        0xb0, 0xdf, 0xe6, 0x21,   // mov al, 0xdf; out 0x21, al   (OCW1: mask all but IRQ 5)
        0xfb,                     // sti
        0xe6, 0x80,               // out 0x80, al                 -> host triggers the irqfd on GSI 5
        0xf4,                     // hlt                          (woken by the interrupt)
        0xeb, 0xfd,               // jmp hlt
    ];
    #[rustfmt::skip]
    let handler = [
        0xb0, 0x55,               // mov al, 0x55
        0xe6, 0xf4,               // out 0xf4, al                 -> exit port, value 0x55
        0xeb, 0xfe,               // jmp $
    ];
    let vm = real_mode_vm(&code);
    vm.memory()
        .write_slice(&handler, GuestAddress(u64::from(HANDLER)))
        .unwrap();
    // IVT entry 0x25: offset HANDLER, segment 0.
    vm.memory()
        .write_obj(u32::from(HANDLER), GuestAddress(0x25 * 4))
        .unwrap();
    let line = IrqfdLine::new(vm.vm_fd(), layout::mmio_slot_gsi(0)).unwrap();
    vm.pio_bus()
        .insert(0x80, 1, Arc::new(Mutex::new(IrqOnWrite(line))))
        .unwrap();
    assert_eq!(run(vm), ExitReason::ExitPort(0x55));
}

#[test]
fn guest_power_off_and_reset_ports_end_vm_with_their_reasons() {
    if !kvm_available() {
        return;
    }
    #[rustfmt::skip]
    let poweroff = [
        0xb0, 0x34,               // mov al, (5 << 2) | SLP_EN
        0xba, 0xc0, 0x03,         // mov dx, 0x3c0
        0xee,                     // out dx, al       -> ACPI sleep control: power off
        0xeb, 0xfe,               // jmp $
    ];
    let reason = run(real_mode_vm(&poweroff));
    assert_eq!(reason, ExitReason::PowerOff);
    assert_eq!(reason.exit_status(), 0);

    #[rustfmt::skip]
    let reset = [
        0xb0, 0xfe,               // mov al, 0xfe
        0xe6, 0x64,               // out 0x64, al     -> i8042 reset
        0xeb, 0xfe,               // jmp $
    ];
    let reason = run(real_mode_vm(&reset));
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(reason.exit_status(), 1);

    #[rustfmt::skip]
    let word = [
        0xb8, 0x02, 0x01,         // mov ax, 0x0102
        0xe7, 0xf4,               // out 0xf4, ax     -> exit port, 2-byte value 0x102
        0xeb, 0xfe,               // jmp $
    ];
    assert_eq!(run(real_mode_vm(&word)), ExitReason::ExitPort(0x102));
}

#[test]
fn pci_config_ports_show_host_bridge_and_empty_slots() {
    if !kvm_available() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0x66, 0xb8, 0x00, 0x00, 0x00, 0x80, // mov eax, 0x8000_0000 (bus 0, device 0, register 0)
        0xba, 0xf8, 0x0c,                   // mov dx, 0xcf8
        0x66, 0xef,                         // out dx, eax
        0xba, 0xfc, 0x0c,                   // mov dx, 0xcfc
        0x66, 0xed,                         // in eax, dx        (vendor/device of 00:00.0)
        0x66, 0xa3, 0x00, 0x80,             // mov [0x8000], eax -> recorder
        0x66, 0xb8, 0x00, 0x08, 0x00, 0x80, // mov eax, 0x8000_0800 (device 1: empty)
        0xba, 0xf8, 0x0c,                   // mov dx, 0xcf8
        0x66, 0xef,                         // out dx, eax
        0xba, 0xfc, 0x0c,                   // mov dx, 0xcfc
        0x66, 0xed,                         // in eax, dx        (all ones)
        0x66, 0xa3, 0x04, 0x80,             // mov [0x8004], eax -> recorder
        0xe6, 0xf4,                         // out 0xf4, al
        0xeb, 0xfe,                         // jmp $
    ];
    let vm = real_mode_vm(&code);
    let (rec, writes, _) = Recorder::new(0);
    vm.mmio_bus()
        .insert(0x8000, 0x1000, Arc::new(Mutex::new(rec)))
        .unwrap();
    assert_eq!(run(vm), ExitReason::ExitPort(0xff));
    let writes = writes.lock().unwrap();
    assert_eq!(writes[0], (0, 0x0008_1b36u32.to_le_bytes().to_vec()));
    assert_eq!(writes[1], (4, vec![0xff; 4]));
}

/// Whether `vector` is pending in the local APIC's IRR (KVM_GET_LAPIC: IRR at 0x200, 32 vectors per 16 bytes).
fn irr_has(vm: &Vm, vector: u8) -> bool {
    let lapic = vm.vcpus()[0].get_lapic().unwrap();
    let at = 0x200 + usize::from(vector / 32) * 0x10;
    let word = u32::from_le_bytes(
        lapic.regs[at..at + 4]
            .iter()
            .map(|b| *b as u8)
            .collect::<Vec<_>>()
            .try_into()
            .unwrap(),
    );
    word & (1 << (vector % 32)) != 0
}

#[test]
fn msi_vector_programs_its_route_on_first_signal_and_follows_reprogramming() {
    if !kvm_available() {
        return;
    }
    use virtio_pci::{MsiMessage, MsiSink};
    let vm = Vm::new(VmConfig::new(MEM)).unwrap();
    // Software-enable the local APIC (SVR bit 8) so that it accepts fixed interrupts.
    let vcpu = &vm.vcpus()[0];
    let mut lapic = vcpu.get_lapic().unwrap();
    lapic.regs[0xf0] = 0xff_u8 as _;
    lapic.regs[0xf1] = 0x01;
    vcpu.set_lapic(&lapic).unwrap();

    let vectors = vmm_glue::MsiVectors::new(vm.irq_router().clone(), 2).unwrap();
    assert!(!irr_has(&vm, 0x31));
    // Vector 1 fires with the message the guest programmed: fixed delivery to APIC ID 0, vector 0x31.
    vectors.signal(MsiMessage {
        vector: 1,
        address: layout::LAPIC_ADDRESS,
        data: 0x31,
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !irr_has(&vm, 0x31) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        irr_has(&vm, 0x31),
        "MSI through the irqfd did not reach the LAPIC"
    );
    // The guest reprogrammed the entry: the route follows.
    vectors.signal(MsiMessage {
        vector: 1,
        address: layout::LAPIC_ADDRESS,
        data: 0x42,
    });
    while !irr_has(&vm, 0x42) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(irr_has(&vm, 0x42), "reprogrammed MSI route not followed");
    // A vector beyond the table is ignored.
    vectors.signal(MsiMessage {
        vector: 7,
        address: layout::LAPIC_ADDRESS,
        data: 0x50,
    });
    assert!(!irr_has(&vm, 0x50));
}

#[test]
fn jump_to_reset_vector_resets_through_the_stub() {
    if !kvm_available() {
        return;
    }
    // What Linux's last-resort reboot does: real mode, far jump to F000:FFF0.
    #[rustfmt::skip]
    let code = [
        0xea, 0xf0, 0xff, 0x00, 0xf0, // jmp 0xf000:0xfff0
    ];
    let vm = Vm::new(VmConfig::new(2 << 20)).unwrap();
    vm.memory().write_slice(&code, GuestAddress(CODE)).unwrap();
    let vcpu = &vm.vcpus()[0];
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    vm.install_reset_vector().unwrap();
    // A second install finds the area in use.
    assert!(vm.install_reset_vector().is_err());
    assert_eq!(run(vm), ExitReason::Reset);
}
