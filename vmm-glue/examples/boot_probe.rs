//! `boot_probe`: boots a kernel (bzImage or bare-metal ELF) with [`vmm_glue::boot`] and the ACPI tables of
//! [`vmm_glue::acpi`] on a [`vmm_glue::Vm`], printing the guest's COM1 output on stdout.
//!
//! ```text
//! boot_probe KERNEL [--initrd FILE] [--cmdline STR] [--mem MIB] [--vcpus N] [--mmio N] [--no-pci]
//! ```
//!
//! `--mmio N` attaches N placeholder virtio-mmio devices (an entropy device id with one queue that never completes a
//! buffer) so that the guest's `virtio_mmio` driver has something to find through the DSDT's `LNRO0005` entries.
//! Prints `boot_probe: exit <reason>` at the end and exits with the VM's exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use virtio_core::device::{ActiveQueue, VirtioDevice};
use virtio_core::{Features, NotificationData};
use virtio_mmio::{MmioInterrupt, MmioVersion};
use vmm_glue::acpi::{MachineDescription, MmioDeviceDesc, PciHostBridgeDesc};
use vmm_glue::{boot, RingMemory, Vm, VmConfig};

/// A device that is found and negotiated, and does nothing with its queue.
#[derive(Default)]
struct Placeholder {
    queues: Vec<ActiveQueue<RingMemory>>,
}

impl VirtioDevice for Placeholder {
    type Memory = RingMemory;
    type Interrupt = MmioInterrupt;
    fn device_type(&self) -> u32 {
        virtio_core::device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64]
    }
    fn offered_features(&self) -> Features {
        Features::VERSION_1
    }
    fn read_config(&self, _offset: usize, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: usize, _data: &[u8]) {}
    fn activate(
        &mut self,
        _features: Features,
        queues: Vec<ActiveQueue<RingMemory>>,
        _interrupt: MmioInterrupt,
    ) -> virtio_core::Result<()> {
        self.queues = queues;
        Ok(())
    }
    fn reset(&mut self) -> Vec<ActiveQueue<RingMemory>> {
        std::mem::take(&mut self.queues)
    }
    fn queue_notify(&mut self, _queue: u16, _data: Option<NotificationData>) {}
}

struct Args {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    mem_mib: u64,
    vcpus: u8,
    mmio: u32,
    pci: bool,
    dump_cpuid: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: "console=ttyS0 panic=-1".into(),
        mem_mib: 256,
        vcpus: 1,
        mmio: 0,
        pci: true,
        dump_cpuid: false,
    };
    let mut kernel = None;
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--initrd" => a.initrd = Some(val("--initrd")?.into()),
            "--cmdline" => a.cmdline = val("--cmdline")?,
            "--mem" => a.mem_mib = val("--mem")?.parse().map_err(|e| format!("--mem: {e}"))?,
            "--vcpus" => {
                a.vcpus = val("--vcpus")?
                    .parse()
                    .map_err(|e| format!("--vcpus: {e}"))?
            }
            "--mmio" => a.mmio = val("--mmio")?.parse().map_err(|e| format!("--mmio: {e}"))?,
            "--no-pci" => a.pci = false,
            "--dump-cpuid" => a.dump_cpuid = true,
            other if kernel.is_none() && !other.starts_with("--") => kernel = Some(other.into()),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    a.kernel = kernel.ok_or("usage: boot_probe KERNEL [--initrd F] [--cmdline S] [--mem MIB] [--vcpus N] [--mmio N] [--no-pci]")?;
    Ok(a)
}

fn run(a: &Args) -> Result<i32, Box<dyn std::error::Error>> {
    let mem_size = a.mem_mib << 20;
    let mut vm = Vm::new(VmConfig::new(mem_size).vcpus(a.vcpus))?;
    if a.dump_cpuid {
        let cpuid = vm
            .kvm()
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
        for e in cpuid.as_slice() {
            eprintln!(
                "cpuid {:#010x}.{}: eax {:#010x} ebx {:#010x} ecx {:#010x} edx {:#010x}",
                e.function, e.index, e.eax, e.ebx, e.ecx, e.edx
            );
        }
    }
    boot::mask_legacy_pic(vm.vm_fd())?;
    vm.add_serial(Box::new(std::io::stdout()))?;
    let mut machine = MachineDescription::new(mem_size, a.vcpus);
    for _ in 0..a.mmio {
        let (slot, _) = vm.attach_mmio(Placeholder::default(), MmioVersion::Modern, None)?;
        machine = machine.with_mmio_device(MmioDeviceDesc::new(slot.address, slot.size, slot.gsi));
    }
    if a.pci {
        machine = machine.with_pci(PciHostBridgeDesc::standard());
    }
    let info = boot::load_kernel_file(
        vm.memory(),
        &machine,
        &a.kernel,
        a.initrd.as_deref(),
        &a.cmdline,
    )?;
    eprintln!(
        "boot_probe: {:?} entry {:#x}, kernel {:#x}..{:#x}, initrd {:x?}, RSDP {:#x}, {} vCPU(s), {} virtio-mmio",
        info.kind, info.entry, info.kernel_start, info.kernel_end, info.initrd, info.rsdp, a.vcpus, a.mmio
    );
    for (i, vcpu) in (0u8..).zip(vm.vcpus()) {
        boot::configure_vcpu(vm.kvm(), vcpu, i, a.vcpus, &info)?;
    }
    let reason = vm.run()?;
    eprintln!("boot_probe: exit {reason:?}");
    Ok(reason.exit_status())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot_probe: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(2)),
        Err(e) => {
            eprintln!("boot_probe: {e}");
            ExitCode::from(2)
        }
    }
}
