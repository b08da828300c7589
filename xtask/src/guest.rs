//! Linux guest images for QEMU TCG runs: `cargo xtask guest-image`, and [`build`] for e2e suites.
//!
//! Everything comes from Debian packages, fetched with `apt-get download` (no install) into `target/guest/cache/`
//! and unpacked with `dpkg -x`: the kernel package `apt-cache depends linux-image-amd64` names, and
//! `busybox-static`. An image is a gzipped newc cpio initramfs under `target/guest/<name>/` holding busybox, the
//! kernel modules asked for (flat in `/lib/modules/`, loaded by the `/init` the suite supplies), and extra files
//! (test binaries). The kernel is copied beside it as `vmlinuz`.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd;

/// The VFIO stack of Debian's 6.1 kernel, in load order (all modules there: `CONFIG_VFIO*=m`).
pub(crate) const VFIO_MODULES: &[&str] = &[
    "irqbypass",
    "vfio",
    "vfio_iommu_type1",
    "vfio_virqfd",
    "vfio-pci-core",
    "vfio-pci",
];

/// A built image.
#[derive(Debug)]
pub(crate) struct GuestImage {
    /// The kernel (`bzImage`).
    pub(crate) kernel: PathBuf,
    /// The gzipped cpio initramfs.
    pub(crate) initrd: PathBuf,
}

/// What goes into an image.
#[derive(Debug)]
pub(crate) struct ImageSpec<'a> {
    /// Directory name under `target/guest/`.
    pub(crate) name: &'a str,
    /// Kernel modules (file names without `.ko`; `-` and `_` are interchangeable), in load order. The `/init`
    /// loads them with `insmod /lib/modules/NAME.ko`.
    pub(crate) modules: &'a [&'a str],
    /// Extra files: host path, absolute path in the guest (made executable).
    pub(crate) files: Vec<(PathBuf, String)>,
    /// The `/init` script (run by busybox `sh`; it should end with `poweroff -f`).
    pub(crate) init: String,
}

/// Installs the host tools (`qemu-system-x86_64`, `cpio`) with apt-get when missing.
pub(crate) fn ensure_host_tools() -> Result<(), String> {
    let missing: Vec<&str> = [("qemu-system-x86_64", "qemu-system-x86"), ("cpio", "cpio")]
        .iter()
        .filter(|(tool, _)| {
            !cmd::succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The versioned kernel package `linux-image-amd64` depends on (e.g. `linux-image-6.1.0-56-amd64`).
fn kernel_package() -> Result<String, String> {
    let query = || -> Result<Option<String>, String> {
        let out = cmd::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
        Ok(out.lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends:")?.trim();
            dep.starts_with("linux-image-").then(|| dep.to_owned())
        }))
    };
    if let Ok(Some(p)) = query() {
        return Ok(p);
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    query()?.ok_or_else(|| "apt-cache names no kernel package for linux-image-amd64".into())
}

/// The cached `.deb` of `package`, downloading it first if needed.
fn fetch_deb(cache: &Path, package: &str) -> Result<PathBuf, String> {
    let find = || -> Option<PathBuf> {
        fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let download = |cmd_: &mut Command| cmd::run(cmd_.current_dir(cache));
    if download(Command::new("apt-get").args(["download", package])).is_err() {
        cmd::run(Command::new("apt-get").arg("update"))?;
        download(Command::new("apt-get").args(["download", package]))?;
    }
    find().ok_or_else(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            cache.display()
        )
    })
}

/// `dpkg -x deb dir` unless `dir` already holds it (a stamp file names the .deb).
fn unpack(deb: &Path, dir: &Path) -> Result<(), String> {
    let stamp = dir.join(".unpacked-from");
    let want = deb.display().to_string();
    if fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(dir))?;
    fs::write(&stamp, want).map_err(|e| format!("{}: {e}", stamp.display()))
}

/// Unpacked kernel and busybox packages.
#[derive(Debug)]
struct Unpacked {
    vmlinuz: PathBuf,
    modules_dir: PathBuf,
    busybox: PathBuf,
}

fn fetch_and_unpack(guest_dir: &Path) -> Result<Unpacked, String> {
    let cache = guest_dir.join("cache");
    let kernel_pkg = kernel_package()?;
    let kernel_deb = fetch_deb(&cache, &kernel_pkg)?;
    let busybox_deb = fetch_deb(&cache, "busybox-static")?;
    let kdir = guest_dir.join("pkg/kernel");
    let bdir = guest_dir.join("pkg/busybox");
    unpack(&kernel_deb, &kdir)?;
    unpack(&busybox_deb, &bdir)?;
    let first_entry = |dir: &Path, prefix: &str| -> Result<PathBuf, String> {
        fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .ok_or_else(|| format!("no {prefix}* in {}", dir.display()))
    };
    Ok(Unpacked {
        vmlinuz: first_entry(&kdir.join("boot"), "vmlinuz-")?,
        modules_dir: first_entry(&kdir.join("lib/modules"), "")?,
        busybox: bdir.join("bin/busybox"),
    })
}

/// Every `.ko` below `dir`.
fn find_modules(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_modules(&p, out);
        } else if p.extension().is_some_and(|x| x == "ko") {
            out.push(p);
        }
    }
}

fn copy_exec(src: &Path, dst: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fs::copy(src, dst).map_err(|e| format!("copy {} -> {}: {e}", src.display(), dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", dst.display()))
}

/// Builds `target/guest/<name>/{vmlinuz,initrd.gz}` from `spec`.
pub(crate) fn build(root: &Path, spec: &ImageSpec<'_>) -> Result<GuestImage, String> {
    let guest_dir = root.join("target/guest");
    let pkgs = fetch_and_unpack(&guest_dir)?;
    let out = guest_dir.join(spec.name);
    let rootfs = out.join("rootfs");
    let _ = fs::remove_dir_all(&rootfs);
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "lib/modules"] {
        fs::create_dir_all(rootfs.join(d)).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    }
    copy_exec(&pkgs.busybox, &rootfs.join("bin/busybox"))?;

    let mut all = Vec::new();
    find_modules(&pkgs.modules_dir, &mut all);
    let norm = |s: &str| s.replace('-', "_");
    for m in spec.modules {
        let ko = all
            .iter()
            .find(|p| {
                p.file_stem()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| norm(n) == norm(m))
            })
            .ok_or_else(|| format!("module {m}.ko not in {}", pkgs.modules_dir.display()))?;
        fs::copy(ko, rootfs.join(format!("lib/modules/{m}.ko")))
            .map_err(|e| format!("{}: {e}", ko.display()))?;
    }
    for (src, dst) in &spec.files {
        copy_exec(src, &rootfs.join(dst.trim_start_matches('/')))?;
    }
    let init = rootfs.join("init");
    fs::write(&init, &spec.init).map_err(|e| format!("{}: {e}", init.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", init.display()))?;
    }

    let initrd = out.join("initrd.gz");
    cmd::run(
        Command::new("sh")
            .args(["-c", "find . | cpio -o -H newc --quiet | gzip -1 > \"$0\""])
            .arg(&initrd)
            .current_dir(&rootfs),
    )?;
    let kernel = out.join("vmlinuz");
    fs::copy(&pkgs.vmlinuz, &kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    Ok(GuestImage { kernel, initrd })
}

/// The first lines every `/init` needs: busybox applets, `/proc`, `/sys`, `/dev`.
pub(crate) const INIT_PRELUDE: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
";

/// `cargo xtask guest-image`: builds the base image (busybox + the VFIO modules, an `/init` that loads them, lists
/// the PCI functions and powers off) and prints where it is.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("guest-image takes no arguments (got `{a}`)"));
    }
    ensure_host_tools()?;
    let mut init = String::from(INIT_PRELUDE);
    for m in VFIO_MODULES {
        init.push_str(&format!("insmod /lib/modules/{m}.ko\n"));
    }
    init.push_str("for d in /sys/bus/pci/devices/*; do echo \"$d $(cat $d/vendor) $(cat $d/device)\"; done\npoweroff -f\n");
    let image = build(
        root,
        &ImageSpec {
            name: "base",
            modules: VFIO_MODULES,
            files: Vec::new(),
            init,
        },
    )?;
    println!("kernel: {}", image.kernel.display());
    println!("initrd: {}", image.initrd.display());
    Ok(())
}

/// Runs a VM (QEMU, the command given) until it exits or `timeout`; calls `on_line` for every console line. Returns the
/// console log and whether it timed out.
pub(crate) fn run_console(
    qemu: Command,
    timeout: Duration,
    on_line: impl FnMut(&str),
) -> Result<(String, bool), String> {
    run_console_idle(qemu, timeout, None, on_line)
}

/// [`run_console`], also stopping the VM when its console stays silent for `idle` (a hung guest).
pub(crate) fn run_console_idle(
    mut qemu: Command,
    timeout: Duration,
    idle: Option<Duration>,
    mut on_line: impl FnMut(&str),
) -> Result<(String, bool), String> {
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", cmd::show(&qemu));
    let mut child = qemu
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", qemu.get_program().to_string_lossy()))?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut last_output = Instant::now();
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                last_output = Instant::now();
                let line = line.trim_end_matches('\r').to_owned();
                on_line(&line);
                log.push_str(&line);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let silent = idle.is_some_and(|idle| last_output.elapsed() >= idle);
                if Instant::now() >= deadline || silent {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok((log, true));
                }
            }
        }
    }
    let _ = child.wait();
    Ok((log, false))
}
