//! The VM: guest memory, in-kernel irqchip and PIT, vCPU threads running the exit loop, the buses, the event loop,
//! and the reason the VM ended.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::error::Error;
use crate::event_loop::EventLoop;
use crate::irq::IrqRouter;
use crate::layout;
use crate::legacy::{AcpiSleep, ExitPort, Serial, I8042};
use crate::pci::PciRoot;

/// Guest RAM.
pub type GuestRam = GuestMemoryMmap;
/// Guest RAM as virtio ring memory (what device models attached to a [`Vm`] use as `VirtioDevice::Memory`).
pub type RingMemory = virtio_core::VmMemory<GuestRam>;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The guest powered off (ACPI sleep control register with SLP_EN, or a KVM system event).
    PowerOff,
    /// The guest reset the machine (i8042 0xFE, or a KVM reset system event). A Linux panic with `panic=-1` ends
    /// here.
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN): treated as a reset.
    TripleFault,
    /// The guest wrote `value` to the exit port ([`layout::EXIT_PORT`], like QEMU's `isa-debug-exit`).
    ExitPort(u32),
    /// A vCPU stopped on something the VMM cannot handle (internal error, failed entry, unknown exit).
    Error(String),
    /// [`VmControl::request_exit`] was called by the VMM.
    Requested,
}

impl ExitReason {
    /// The process exit status a VMM conventionally reports: 0 for power off, 1 for a reset (or triple fault),
    /// `(v << 1) | 1` for an exit-port write of `v` (QEMU's `isa-debug-exit`), 2 for an error.
    pub fn exit_status(&self) -> i32 {
        match self {
            Self::PowerOff | Self::Requested => 0,
            Self::Reset | Self::TripleFault => 1,
            Self::ExitPort(v) => i32::try_from((u64::from(*v) << 1 | 1) & 0xff).unwrap_or(255),
            Self::Error(_) => 2,
        }
    }
}

/// The run state shared by vCPU threads and devices: the first exit reason wins.
#[derive(Debug, Default)]
pub struct VmControl {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
    /// Set with the reason; read by vCPU threads on every exit without taking the lock.
    exiting: AtomicBool,
    /// Bumped to ask every vCPU to print its registers at its next return from KVM_RUN (see
    /// `VMM_GLUE_DUMP_SECS` in [`Vm::run`]).
    dump_requests: std::sync::atomic::AtomicU32,
}

impl VmControl {
    /// Ends the VM with `reason` (ignored if it is already ending).
    pub fn request_exit(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if r.is_none() {
            *r = Some(reason);
            // Release pairs with the Acquire load in `is_exiting`.
            self.exiting.store(true, Ordering::Release);
            self.cond.notify_all();
        }
    }

    /// Whether the VM is ending (cheap: one atomic load).
    pub fn is_exiting(&self) -> bool {
        self.exiting.load(Ordering::Acquire)
    }

    /// The exit reason, once the VM is ending.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn wait(&self) -> ExitReason {
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(reason) = r.clone() {
                return reason;
            }
            r = self.cond.wait(r).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// How to build a [`Vm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmConfig {
    /// RAM in bytes (page-aligned).
    pub mem_size: u64,
    /// Number of vCPUs (at least 1).
    pub vcpus: u8,
}

impl VmConfig {
    /// `mem_size` bytes of RAM and one vCPU.
    pub const fn new(mem_size: u64) -> Self {
        Self { mem_size, vcpus: 1 }
    }

    /// Sets the number of vCPUs.
    pub const fn vcpus(mut self, vcpus: u8) -> Self {
        self.vcpus = vcpus;
        self
    }
}

/// One guest: memory, vCPUs, buses, interrupt routing, the device event loop.
///
/// Build it, attach devices, set up vCPU state (e.g. with [`crate::boot`]), then [`run`](Self::run).
pub struct Vm {
    kvm: Kvm,
    vm: Arc<VmFd>,
    memory: GuestRam,
    vcpus: Vec<VcpuFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    router: Arc<IrqRouter>,
    event_loop: EventLoop,
    control: Arc<VmControl>,
    pub(crate) pci: Arc<Mutex<PciRoot>>,
    pub(crate) mmio_slots: Vec<crate::virtio::MmioSlot>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Creates the VM: guest memory (laid out by [`layout::ram_regions`]), the TSS and identity-map pages, the
    /// in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT, the vCPUs, and the platform devices: exit port, i8042
    /// reset, ACPI sleep control, PCI host bridge (type-1 config ports, ECAM, windows).
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        if config.vcpus == 0 || config.mem_size == 0 || config.mem_size % layout::PAGE_SIZE != 0 {
            return Err(Error::Config(format!("bad VM shape: {config:?}")));
        }
        let kvm = Kvm::new()?;
        let vm = Arc::new(kvm.create_vm()?);
        let ranges = layout::ram_regions(config.mem_size)
            .into_iter()
            .map(|(start, len)| {
                usize::try_from(len)
                    .map(|len| (GuestAddress(start), len))
                    .map_err(|_| Error::Config("memory size".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let memory = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| Error::MemoryMap(format!("{e:?}")))?;
        for (slot, region) in (0u32..).zip(memory.iter()) {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::MemoryMap(format!("{e:?}")))?;
            let entry = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live anonymous mapping of `memory_size` bytes owned by `memory`, which the
            // `Vm` keeps for as long as the VM fd (and its vCPUs) exist; it is never unmapped or resized meanwhile.
            unsafe { vm.set_user_memory_region(entry)? };
        }
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)?;
        let tss = usize::try_from(layout::KVM_TSS_ADDRESS)
            .map_err(|_| Error::Config("TSS address".into()))?;
        vm.set_tss_address(tss)?;
        vm.create_irq_chip()?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })?;
        let vcpus = (0..config.vcpus)
            .map(|id| vm.create_vcpu(u64::from(id)))
            .collect::<Result<Vec<_>, _>>()?;
        let control = Arc::new(VmControl::default());
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let router = Arc::new(IrqRouter::new(vm.clone()));
        let pci = Arc::new(Mutex::new(PciRoot::new(vm.clone())));

        pio.insert(
            u64::from(layout::EXIT_PORT),
            4,
            Arc::new(Mutex::new(ExitPort::new(control.clone()))),
        )?;
        pio.insert(
            u64::from(layout::I8042_DATA_PORT),
            (layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT + 1).into(),
            Arc::new(Mutex::new(I8042::new(control.clone()))),
        )?;
        pio.insert(
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
            2,
            Arc::new(Mutex::new(AcpiSleep::new(control.clone()))),
        )?;
        crate::pci::install(&pci, &pio, &mmio)?;

        Ok(Self {
            kvm,
            vm,
            memory,
            vcpus,
            pio,
            mmio,
            router,
            event_loop: EventLoop::new()?,
            control,
            pci,
            mmio_slots: Vec::new(),
        })
    }

    /// The KVM system fd (for CPUID queries).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM fd.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestRam {
        &self.memory
    }

    /// Guest memory as virtio ring memory, for device models.
    pub fn ring_memory(&self) -> RingMemory {
        virtio_core::VmMemory::new(self.memory.clone())
    }

    /// The vCPUs (set their registers before [`run`](Self::run)).
    pub fn vcpus(&self) -> &[VcpuFd] {
        &self.vcpus
    }

    /// The vCPUs, mutably.
    pub fn vcpus_mut(&mut self) -> &mut [VcpuFd] {
        &mut self.vcpus
    }

    /// The port I/O bus.
    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// The GSI router.
    pub fn irq_router(&self) -> &Arc<IrqRouter> {
        &self.router
    }

    /// The device event loop (add backend fds and work before [`run`](Self::run); devices run on it).
    pub fn event_loop(&mut self) -> &mut EventLoop {
        &mut self.event_loop
    }

    /// The run state (to end the VM from the VMM, or give to devices that end it).
    pub fn control(&self) -> &Arc<VmControl> {
        &self.control
    }

    /// Writes a real-mode stub at [`layout::RESET_VECTOR`] that resets the machine through the i8042 (`mov al, 0xfe;
    /// out 0x64, al; hlt`): a guest jumping to the reset vector (Linux's last-resort "BIOS" reboot) then ends the VM
    /// with [`ExitReason::Reset`] instead of running zeros. Call after the ACPI tables are written; fails, writing
    /// nothing, if the 16 bytes there are not zero (something else lives there).
    pub fn install_reset_vector(&self) -> Result<(), Error> {
        use vm_memory::Bytes;
        #[rustfmt::skip]
        const STUB: [u8; 7] = [
            0xb0, layout::I8042_RESET,                 // mov al, 0xfe
            0xe6, 0x64,                                // out 0x64, al (layout::I8042_COMMAND_PORT)
            0xf4,                                      // hlt
            0xeb, 0xfd,                                // jmp hlt
        ];
        let at = GuestAddress(layout::RESET_VECTOR);
        let mut current = [0u8; 16];
        self.memory.read_slice(&mut current, at)?;
        if current.iter().any(|b| *b != 0) {
            return Err(Error::Config(format!(
                "reset vector {:#x} is not free",
                layout::RESET_VECTOR
            )));
        }
        self.memory.write_slice(&STUB, at)?;
        Ok(())
    }

    /// Adds the COM1 8250 UART ([`layout::SERIAL_PORT`], GSI [`layout::SERIAL_GSI`] through an irqfd), writing the
    /// guest's output to `out`.
    pub fn add_serial(&mut self, out: Box<dyn Write + Send>) -> Result<(), Error> {
        let line = crate::irq::IrqfdLine::new(&self.vm, layout::SERIAL_GSI)?;
        let serial = Serial::new(line.eventfd()?, out);
        self.pio.insert(
            u64::from(layout::SERIAL_PORT),
            8,
            Arc::new(Mutex::new(serial)),
        )?;
        // The irqfd stays registered for the VM's life; its eventfd is duplicated into the UART.
        std::mem::forget(line);
        Ok(())
    }

    /// Starts the event loop and one thread per vCPU, waits until the guest ends the VM (or a vCPU fails), stops
    /// every thread, and returns why the VM ended.
    pub fn run(self) -> Result<ExitReason, Error> {
        let Self {
            vcpus,
            pio,
            mmio,
            event_loop,
            control,
            memory,
            vm,
            pci,
            ..
        } = self;
        install_kick_handler()?;
        let (loop_handle, loop_thread) = event_loop.spawn()?;
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (id, vcpu) in (0u8..).zip(vcpus) {
            let (pio, mmio, control) = (pio.clone(), mmio.clone(), control.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || run_vcpu(id, vcpu, &pio, &mmio, &control))
                .map_err(|e| Error::Vcpu {
                    id,
                    reason: e.to_string(),
                })?;
            threads.push(thread);
        }
        // Debugging aid: with VMM_GLUE_DUMP_SECS=N, every N seconds each vCPU is kicked out of KVM_RUN and prints
        // its registers (a guest spinning or halted without exits shows where it is).
        let join_guard = Arc::new(Mutex::new(()));
        if let Some(secs) = std::env::var("VMM_GLUE_DUMP_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s > 0)
        {
            let (control, guard) = (control.clone(), join_guard.clone());
            let targets: Vec<libc::pthread_t> =
                threads.iter().map(|t| t.pthread_handle()).collect();
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(secs));
                let _held = guard.lock().unwrap_or_else(PoisonError::into_inner);
                if control.is_exiting() {
                    return;
                }
                control.dump_requests.fetch_add(1, Ordering::AcqRel);
                for t in &targets {
                    // SAFETY: `run` joins the vCPU threads only after the VM is exiting and after taking
                    // `join_guard`, which is held here and checked after `is_exiting`: every handle is of a thread
                    // that is running or finished but not yet joined, so it is valid for pthread_kill.
                    unsafe { libc::pthread_kill(*t, kick_signal()) };
                }
            });
        }
        let reason = control.wait();
        for thread in &threads {
            // A vCPU blocked in KVM_RUN returns with EINTR when signalled; repeat until it noticed, since a
            // signal that lands just before it enters KVM_RUN is lost.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                let _ = thread.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let _no_more_dumps = join_guard.lock().unwrap_or_else(PoisonError::into_inner);
        for thread in threads {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        loop_handle.stop();
        let _ = loop_thread.join();
        // Devices hold guest memory; drop them before the memory and VM fd go.
        drop(pci);
        drop((pio, mmio));
        drop(memory);
        drop(vm);
        Ok(reason)
    }
}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), Error> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| Error::Io(std::io::Error::from_raw_os_error(e.errno())));
    });
    result
}

/// KVM_SYSTEM_EVENT types (linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;

fn run_vcpu(id: u8, mut vcpu: VcpuFd, pio: &Bus, mmio: &Bus, control: &VmControl) {
    let mut exits = 0u64;
    let mut dumped = 0u32;
    loop {
        if control.is_exiting() {
            return;
        }
        let generation = control.dump_requests.load(Ordering::Acquire);
        if generation != dumped {
            dumped = generation;
            let regs = vcpu.get_regs().ok();
            let sregs = vcpu.get_sregs().ok();
            eprintln!(
                "vmm-glue: vCPU {id}: {exits} exits, rip {:#x}, rsp {:#x}, rflags {:#x}, cr0 {:#x}, cr3 {:#x}",
                regs.map_or(0, |r| r.rip),
                regs.map_or(0, |r| r.rsp),
                regs.map_or(0, |r| r.rflags),
                sregs.map_or(0, |s| s.cr0),
                sregs.map_or(0, |s| s.cr3),
            );
        }
        exits += 1;
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                pio.read(u64::from(port), data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
            }
            // With the in-kernel irqchip `hlt` does not exit; without it, nothing will wake the vCPU.
            Ok(VcpuExit::Hlt) => control.request_exit(ExitReason::Error(format!(
                "vCPU {id} halted with no interrupt source"
            ))),
            Ok(VcpuExit::Shutdown) => control.request_exit(ExitReason::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => control.request_exit(match kind {
                SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                SYSTEM_EVENT_RESET => ExitReason::Reset,
                other => ExitReason::Error(format!("vCPU {id}: system event {other}")),
            }),
            Ok(VcpuExit::IrqWindowOpen | VcpuExit::Intr) => {}
            Ok(VcpuExit::InternalError) => {
                let run = vcpu.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal` member of the
                // union (plain integers).
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = usize::try_from(internal.ndata)
                    .unwrap_or(0)
                    .min(internal.data.len());
                let data = internal.data.get(..n).unwrap_or(&[]).to_vec();
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                control.request_exit(ExitReason::Error(format!(
                    "vCPU {id}: KVM internal error, suberror {} data {data:x?} at rip {rip:#x}",
                    internal.suberror
                )));
            }
            Ok(other) => {
                let what = format!("{other:?}");
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                control.request_exit(ExitReason::Error(format!(
                    "vCPU {id}: unhandled exit {what} at rip {rip:#x}"
                )));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => control.request_exit(ExitReason::Error(format!("vCPU {id}: KVM_RUN: {e}"))),
        }
    }
}
