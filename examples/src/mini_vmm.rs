//! mini-vmm: a small KVM VMM built from vmm-glue. Boots a Linux bzImage (or a bare-metal ELF) with virtio-net
//! devices on virtio-mmio or PCI, over a tap, libslirp or an in-memory echo backend.
//!
//! Run `mini-vmm --help` for the options. Exit status: 0 when the guest powers off, 1 when it resets (a Linux
//! panic with `panic=-1`), `(v << 1) | 1` when it writes `v` to the exit port 0xf4, 2 on a VMM error or a vCPU
//! failure, 64 on bad options.

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, PoisonError};

use virtio_core::Features;
use virtio_mmio::{MmioInterrupt, MmioVersion};
use virtio_net::backend::NetBackend;
use virtio_net::device::NetDevice;
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::tap::{Tap, TapConfig};
use virtio_net::wire::feature;
use virtio_pci::{PciInterrupt, PciOptions, PciVariant};
use vmm_glue::{Action, EventSet, RingMemory, Vm, VmConfig};

const HELP: &str = "\
mini-vmm: boot a Linux bzImage or a bare-metal ELF under KVM with virtio-net devices

USAGE:
    mini-vmm --kernel PATH [OPTIONS]

OPTIONS:
    --kernel PATH      bzImage (Linux boot protocol) or ELF64 (PT_LOAD segments at p_paddr, 64-bit entry at
                       e_entry, interrupts off, first 4 GiB identity-mapped)
    --initrd PATH      initramfs for a Linux kernel
    --cmdline STR      kernel command line (default: \"console=ttyS0 panic=-1\")
    --mem MiB          guest RAM in MiB (default 256)
    --cpus N           vCPUs (default 1)
    --console stdout|PATH
                       where COM1 output goes (default stdout)
    --net SPEC         add a virtio-net device (repeatable). SPEC is a comma-separated list:
                         tap=NAME | user | echo      backend (first item): a tap interface (created if absent),
                                                     libslirp user-mode NAT (needs the `slirp` feature), or an
                                                     in-memory backend that reflects every frame back
                         transport=mmio|mmio-legacy|pci|pci-transitional|pci-legacy   (default mmio)
                         ring=split|packed           (default split; packed only on modern transports)
                         mq=N                        queue pairs (default 1; N > 1 adds a control queue)
                         mrg=on|off                  offer VIRTIO_NET_F_MRG_RXBUF (default on)
                         offload=on|off              offer checksum and TSO offloads both ways (default off)
                         mac=xx:xx:xx:xx:xx:xx       (default 52:54:00:12:34:5N for the N-th device)
    -h, --help         this text

EXIT STATUS:
    0 guest powered off; 1 guest reset (e.g. Linux panic with panic=-1) or triple fault;
    (v << 1) | 1 guest wrote v to port 0xf4; 2 VMM or vCPU error; 64 bad options
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Mmio,
    MmioLegacy,
    Pci,
    PciTransitional,
    PciLegacy,
}

impl Transport {
    fn modern(self) -> bool {
        matches!(self, Self::Mmio | Self::Pci | Self::PciTransitional)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    Tap(String),
    User,
    Echo,
}

#[derive(Debug, Clone)]
struct NetSpec {
    backend: Backend,
    transport: Transport,
    packed: bool,
    pairs: u16,
    mrg: bool,
    offload: bool,
    mac: Option<[u8; 6]>,
}

#[derive(Debug)]
struct Options {
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
    mem_mib: u64,
    cpus: u8,
    console: Option<String>,
    nets: Vec<NetSpec>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("bad MAC address {s:?} (want xx:xx:xx:xx:xx:xx)"));
    }
    for (slot, part) in mac.iter_mut().zip(parts) {
        *slot = u8::from_str_radix(part, 16).map_err(|_| format!("bad MAC address {s:?}"))?;
    }
    Ok(mac)
}

fn parse_net(spec: &str) -> Result<NetSpec, String> {
    let mut items = spec.split(',');
    let backend = match items.next().unwrap_or("") {
        "user" => Backend::User,
        "echo" => Backend::Echo,
        b => match b.strip_prefix("tap=") {
            Some(name) if !name.is_empty() && name.len() <= 15 => Backend::Tap(name.to_owned()),
            _ => {
                return Err(format!(
                "--net {spec:?}: the first item must be tap=NAME (at most 15 bytes), user or echo"
            ))
            }
        },
    };
    let mut net = NetSpec {
        backend,
        transport: Transport::Mmio,
        packed: false,
        pairs: 1,
        mrg: true,
        offload: false,
        mac: None,
    };
    for item in items {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("--net {spec:?}: {item:?} is not key=value"))?;
        match key {
            "transport" => {
                net.transport = match value {
                    "mmio" => Transport::Mmio,
                    "mmio-legacy" => Transport::MmioLegacy,
                    "pci" => Transport::Pci,
                    "pci-transitional" => Transport::PciTransitional,
                    "pci-legacy" => Transport::PciLegacy,
                    _ => return Err(format!("--net: unknown transport {value:?} (mmio, mmio-legacy, pci, pci-transitional, pci-legacy)")),
                }
            }
            "ring" => {
                net.packed = match value {
                    "split" => false,
                    "packed" => true,
                    _ => return Err(format!("--net: unknown ring {value:?} (split, packed)")),
                }
            }
            "mq" => {
                net.pairs = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| format!("--net: mq={value:?} (want 1..=16)"))?;
            }
            "mrg" => {
                net.mrg = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--net: mrg={value:?} (on, off)")),
                }
            }
            "offload" => {
                net.offload = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--net: offload={value:?} (on, off)")),
                }
            }
            "mac" => net.mac = Some(parse_mac(value)?),
            _ => return Err(format!("--net: unknown key {key:?}")),
        }
    }
    if net.packed && !net.transport.modern() {
        return Err(format!(
            "--net {spec:?}: the packed ring needs a modern transport (mmio, pci, pci-transitional)"
        ));
    }
    if net.backend == Backend::User && !cfg!(feature = "slirp") {
        return Err("--net user needs mini-vmm built with `--features slirp` (libslirp)".into());
    }
    Ok(net)
}

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut kernel = None;
    let mut opts = Options {
        kernel: String::new(),
        initrd: None,
        cmdline: "console=ttyS0 panic=-1".into(),
        mem_mib: 256,
        cpus: 1,
        console: None,
        nets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--kernel" => kernel = Some(value("--kernel")?),
            "--initrd" => opts.initrd = Some(value("--initrd")?),
            "--cmdline" => opts.cmdline = value("--cmdline")?,
            "--mem" => {
                let v = value("--mem")?;
                opts.mem_mib = v
                    .parse()
                    .ok()
                    .filter(|m| (16..=65536).contains(m))
                    .ok_or_else(|| format!("--mem {v:?}: want MiB in 16..=65536"))?;
            }
            "--cpus" => {
                let v = value("--cpus")?;
                opts.cpus = v
                    .parse()
                    .ok()
                    .filter(|c| (1..=64).contains(c))
                    .ok_or_else(|| format!("--cpus {v:?}: want 1..=64"))?;
            }
            "--console" => {
                let v = value("--console")?;
                opts.console = (v != "stdout").then_some(v);
            }
            "--net" => opts.nets.push(parse_net(&value("--net")?)?),
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    opts.kernel = kernel.ok_or("--kernel PATH is required (see --help)")?;
    Ok(Some(opts))
}

/// The offered features of a device built for `net`.
fn builder(net: &NetSpec, index: usize) -> virtio_net::device::NetDeviceBuilder {
    let last = u8::try_from(0x56 + index).unwrap_or(0xff);
    let mut b = NetDevice::<PairEnd, RingMemory, MmioInterrupt>::builder()
        .mac(net.mac.unwrap_or([0x52, 0x54, 0, 0x12, 0x34, last]))
        .offer(Features::EVENT_IDX | Features::INDIRECT_DESC);
    if net.packed {
        b = b.offer(Features::RING_PACKED);
    }
    if net.mrg {
        b = b.offer(feature::MRG_RXBUF);
    }
    if net.offload {
        // Checksum and segmentation offloads both ways (dropped by the device model for a backend without
        // virtio-net headers, e.g. libslirp).
        b = b.offer(
            feature::CSUM
                | feature::GUEST_CSUM
                | feature::HOST_TSO4
                | feature::HOST_TSO6
                | feature::HOST_ECN
                | feature::GUEST_TSO4
                | feature::GUEST_TSO6
                | feature::GUEST_ECN,
        );
    }
    if net.pairs > 1 {
        b = b.queue_pairs(net.pairs).ctrl(Features::empty());
    }
    b
}

/// Delivers pending backend frames into the device's receive queues.
type RxPump = Arc<dyn Fn(u16) + Send + Sync>;
/// Reads a device's counters; `None` if the device stayed locked (a stuck thread) for 2 s.
type Stats = Box<dyn Fn() -> Option<virtio_net::NetCounters>>;

/// Reads `device`'s counters through its lock, giving up after 2 s so that a VMM ended because it hung still reports.
fn counters_of<T>(
    device: &std::sync::Mutex<T>,
    counters: impl Fn(&T) -> virtio_net::NetCounters,
) -> Option<virtio_net::NetCounters> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match device.try_lock() {
            Ok(d) => return Some(counters(&d)),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(counters(&p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

static SIGTERM_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_sigterm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGTERM_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGTERM ends the VM as an error (exit status 2) after the usual report (device counters), so whoever stops a
/// hung guest still learns what the device had done.
fn end_on_sigterm(control: Arc<vmm_glue::VmControl>) -> Result<(), String> {
    vmm_glue::vmm_sys_util::signal::register_signal_handler(libc::SIGTERM, note_sigterm)
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    std::thread::spawn(move || {
        while !control.is_exiting() {
            if SIGTERM_SEEN.load(std::sync::atomic::Ordering::Relaxed) {
                control.request_exit(vmm_glue::ExitReason::Error("terminated by SIGTERM".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    Ok(())
}

/// Attaches one virtio-net device over `backend`; returns a function that moves received frames of a queue pair
/// into the guest.
///
/// `rx_after_kick`: the backend produces frames in response to transmits (echo, slirp), so receive after every kick.
/// `poll`: run before each receive pass (libslirp's socket and timer processing).
fn attach<B: NetBackend + Send + 'static>(
    vm: &mut Vm,
    net: &NetSpec,
    index: usize,
    backend: B,
    rx_after_kick: bool,
    poll: Option<fn(&mut B)>,
) -> Result<(RxPump, Stats), String> {
    let b = builder(net, index);
    let err = |e: vmm_glue::Error| format!("attaching net{index}: {e}");
    let version = |legacy: bool| {
        if legacy {
            MmioVersion::Legacy
        } else {
            MmioVersion::Modern
        }
    };
    match net.transport {
        Transport::Mmio | Transport::MmioLegacy => {
            let mut b = b;
            if net.transport == Transport::MmioLegacy {
                b = b.without(Features::VERSION_1);
            }
            let device: NetDevice<B, RingMemory, MmioInterrupt> = b.build(backend);
            let hook: Option<vmm_glue::NotifyHook<_>> = rx_after_kick.then(|| {
                Box::new(
                    move |d: &mut NetDevice<B, RingMemory, MmioInterrupt>, queue: u16| {
                        if let Some(poll) = poll {
                            poll(d.backend_mut());
                        }
                        let _ = d.process_rx(queue / 2);
                    },
                ) as vmm_glue::NotifyHook<_>
            });
            let (slot, shared) = vm
                .attach_mmio(
                    device,
                    version(net.transport == Transport::MmioLegacy),
                    hook,
                )
                .map_err(err)?;
            eprintln!(
                "mini-vmm: net{index} on virtio-mmio slot {} at {:#x}, GSI {}",
                slot.index, slot.address, slot.gsi
            );
            let stats_of = shared.clone();
            let stats: Stats = Box::new(move || counters_of(&stats_of, |d| d.device().counters()));
            let pump: RxPump = Arc::new(move |pair| {
                let mut d = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(poll) = poll {
                    poll(d.device_mut().backend_mut());
                }
                let _ = d.device_mut().process_rx(pair);
            });
            Ok((pump, stats))
        }
        Transport::Pci | Transport::PciTransitional | Transport::PciLegacy => {
            let (variant, b) = match net.transport {
                Transport::Pci => (PciVariant::Modern, b),
                Transport::PciTransitional => (PciVariant::Transitional, b),
                _ => (PciVariant::Legacy, b.without(Features::VERSION_1)),
            };
            let device: NetDevice<B, RingMemory, PciInterrupt> = b.build(backend);
            let options = PciOptions::new(variant).config_len(device.config_len());
            let hook: Option<vmm_glue::NotifyHook<_>> = rx_after_kick.then(|| {
                Box::new(
                    move |d: &mut NetDevice<B, RingMemory, PciInterrupt>, queue: u16| {
                        if let Some(poll) = poll {
                            poll(d.backend_mut());
                        }
                        let _ = d.process_rx(queue / 2);
                    },
                ) as vmm_glue::NotifyHook<_>
            });
            let (slot, shared) = vm.attach_pci(device, options, hook).map_err(err)?;
            eprintln!(
                "mini-vmm: net{index} on PCI 00:{:02x}.0 ({variant:?}), INTx GSI {}",
                slot.device, slot.intx_gsi
            );
            let stats_of = shared.clone();
            let stats: Stats = Box::new(move || counters_of(&stats_of, |d| d.device().counters()));
            let pump: RxPump = Arc::new(move |pair| {
                let mut d = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(poll) = poll {
                    poll(d.device_mut().backend_mut());
                }
                let _ = d.device_mut().process_rx(pair);
            });
            Ok((pump, stats))
        }
    }
}

fn add_net(vm: &mut Vm, net: &NetSpec, index: usize) -> Result<Stats, String> {
    match &net.backend {
        Backend::Tap(name) => {
            let tap = Tap::open(&TapConfig::new().name(name).queue_pairs(net.pairs))
                .map_err(|e| format!("opening tap {name:?}: {e}"))?;
            let fds: Vec<i32> = (0..net.pairs).filter_map(|p| tap.readiness_fd(p)).collect();
            let (pump, stats) = attach(vm, net, index, tap, false, None)?;
            for (pair, fd) in (0u16..).zip(fds) {
                let pump = pump.clone();
                // Edge-triggered: a pass drains the tap until it is empty or the guest has no buffers; in the
                // latter case the guest's refill kick resumes delivery (NetDevice's receive-queue notify).
                vm.event_loop()
                    .add(fd, EventSet::IN | EventSet::EDGE_TRIGGERED, move |_, _| {
                        pump(pair);
                        Action::Continue
                    })
                    .map_err(|e| format!("watching tap: {e}"))?;
            }
            Ok(stats)
        }
        Backend::Echo => {
            let end = PairEnd::loopback(PairConfig::new().queue_pairs(net.pairs));
            attach(vm, net, index, end, true, None).map(|(_, stats)| stats)
        }
        Backend::User => add_user(vm, net, index),
    }
}

#[cfg(feature = "slirp")]
fn add_user(vm: &mut Vm, net: &NetSpec, index: usize) -> Result<Stats, String> {
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use virtio_net::slirp::{Slirp, SlirpConfig};
    use vmm_glue::vmm_sys_util::timerfd::TimerFd;

    if net.pairs != 1 {
        return Err("--net user: libslirp serves one queue pair (mq=1)".into());
    }
    let slirp = Slirp::new(&SlirpConfig::new()).map_err(|e| format!("libslirp: {e}"))?;
    let poll: fn(&mut Slirp) = |s| {
        // Socket and timer processing without blocking the event loop.
        let _ = s.poll_once(Duration::ZERO);
    };
    let (pump, stats) = attach(vm, net, index, slirp, true, Some(poll))?;
    // libslirp's sockets are polled every 2 ms from the event loop (its fds change as connections come and go).
    let mut timer = TimerFd::new().map_err(|e| format!("timerfd: {e}"))?;
    timer
        .reset(Duration::from_millis(2), Some(Duration::from_millis(2)))
        .map_err(|e| format!("timerfd: {e}"))?;
    let fd = timer.as_raw_fd();
    vm.event_loop()
        .add(fd, EventSet::IN, move |_, _| {
            let _ = timer.wait();
            pump(0);
            Action::Continue
        })
        .map_err(|e| format!("watching slirp: {e}"))?;
    Ok(stats)
}

#[cfg(not(feature = "slirp"))]
fn add_user(_: &mut Vm, _: &NetSpec, _: usize) -> Result<Stats, String> {
    Err("--net user needs mini-vmm built with `--features slirp` (libslirp)".into())
}

fn run(opts: &Options) -> Result<vmm_glue::ExitReason, String> {
    let mem = opts.mem_mib << 20;
    let mut vm = Vm::new(VmConfig::new(mem).vcpus(opts.cpus))
        .map_err(|e| format!("creating the VM: {e}"))?;
    let out: Box<dyn Write + Send> = match &opts.console {
        None => Box::new(std::io::stdout()),
        Some(path) => Box::new(File::create(path).map_err(|e| format!("--console {path:?}: {e}"))?),
    };
    vm.add_serial(out).map_err(|e| format!("serial: {e}"))?;
    let mut stats = Vec::new();
    for (index, net) in opts.nets.iter().enumerate() {
        stats.push(add_net(&mut vm, net, index)?);
    }
    boot::load(&mut vm, opts)?;
    end_on_sigterm(vm.control().clone())?;
    let reason = vm.run().map_err(|e| format!("running the VM: {e}"))?;
    for (index, stats) in stats.iter().enumerate() {
        let Some(c) = stats() else {
            eprintln!("mini-vmm: net{index}: device lock still held after 2 s (a thread is stuck inside the device)");
            continue;
        };
        eprintln!(
            "mini-vmm: net{index}: tx_frames={} tx_bytes={} rx_frames={} rx_bytes={} drops={} queue_faults={}",
            c.tx_frames,
            c.tx_bytes,
            c.rx_frames,
            c.rx_bytes,
            c.total_drops(),
            c.queue_faults
        );
        if c.total_drops() > 0 {
            eprintln!("mini-vmm: net{index}: {c:?}");
        }
    }
    Ok(reason)
}

mod boot {
    //! Loading the kernel and setting up the vCPUs, through vmm-glue's boot and ACPI modules.
    use super::Options;
    use std::path::Path;
    use vmm_glue::acpi::{MachineDescription, MmioDeviceDesc, PciHostBridgeDesc};
    use vmm_glue::Vm;

    pub(super) fn load(vm: &mut Vm, opts: &Options) -> Result<(), String> {
        let vcpus = u8::try_from(vm.vcpus().len()).map_err(|_| "too many vCPUs".to_string())?;
        let mut machine = MachineDescription::new(opts.mem_mib << 20, vcpus)
            .with_pci(PciHostBridgeDesc::standard());
        for slot in vm.mmio_devices() {
            machine =
                machine.with_mmio_device(MmioDeviceDesc::new(slot.address, slot.size, slot.gsi));
        }
        let info = vmm_glue::boot::load_kernel_file(
            vm.memory(),
            &machine,
            Path::new(&opts.kernel),
            opts.initrd.as_deref().map(Path::new),
            &opts.cmdline,
        )
        .map_err(|e| format!("loading {:?}: {e}", opts.kernel))?;
        // Linux on a hardware-reduced ACPI machine without EFI reboots (e.g. after a panic with panic=-1) by
        // jumping to the reset vector: make that a reset.
        if let Err(e) = vm.install_reset_vector() {
            eprintln!("mini-vmm: warning: {e}; a guest reboot through the reset vector will hang");
        }
        vmm_glue::boot::mask_legacy_pic(vm.vm_fd()).map_err(|e| format!("PIC: {e}"))?;
        for (index, vcpu) in (0u8..).zip(vm.vcpus()) {
            vmm_glue::boot::configure_vcpu(vm.kvm(), vcpu, index, vcpus, &info)
                .map_err(|e| format!("vCPU {index}: {e}"))?;
        }
        eprintln!(
            "mini-vmm: {:?} kernel, entry {:#x}, {} MiB, {} vCPU(s)",
            info.kind, info.entry, opts.mem_mib, vcpus
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mini-vmm: {e}");
            return ExitCode::from(64);
        }
    };
    let start = std::time::Instant::now();
    match run(&opts) {
        Ok(reason) => {
            let _ = std::io::stdout().flush();
            eprintln!(
                "mini-vmm: guest ended after {:.2} s: {reason:?}",
                start.elapsed().as_secs_f64()
            );
            ExitCode::from(u8::try_from(reason.exit_status()).unwrap_or(2))
        }
        Err(e) => {
            eprintln!("mini-vmm: {e}");
            ExitCode::from(2)
        }
    }
}
