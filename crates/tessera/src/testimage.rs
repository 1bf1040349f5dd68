//! `tessera manage image create-test-image`: a tiny bootable Linux disk built from Debian packages on this
//! machine, uploaded to the Image service.
//!
//! The disk is a FAT filesystem with SYSLINUX in its boot sector (an unpartitioned "superfloppy", which
//! SeaBIOS boots like any disk), holding the host's kernel and an initramfs made here: a static busybox, an
//! `/init` script, and the virtio modules of that kernel when they are present. The initramfs is the root
//! filesystem, so the image needs no disk driver; it brings up its NICs with DHCP, prints a marker line on the
//! serial console and runs a shell there.
//!
//! Pieces and the Debian packages that provide them: a kernel in /boot (`linux-image-cloud-amd64` or
//! `linux-image-amd64`), a statically linked busybox (`busybox-static`), `mkfs.vfat` (`dosfstools`),
//! `syslinux` (`syslinux`, `syslinux-common`), `mcopy` (`mtools`); `qemu-img` (`qemu-utils`) only for a qcow2
//! result. A missing piece is named with its package, all at once.

use crate::StartError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Printed by the image's init on the serial console once it is up (tests wait for it).
pub const BOOT_MARKER: &str = "TESSERA-TEST-IMAGE BOOTED";

/// Modules loaded at boot when the kernel has them as modules (built-in ones need nothing).
const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "virtio_console"];

#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub disk_format: String,
    pub visibility: String,
    pub boot_dir: PathBuf,
    pub kernel: Option<PathBuf>,
    pub busybox: Option<PathBuf>,
    pub modules_dir: PathBuf,
    /// Keep a copy of the built disk here.
    pub output: Option<PathBuf>,
    /// Build only (needs `output`).
    pub no_upload: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            name: "tessera-test-image".into(),
            disk_format: "raw".into(),
            visibility: "public".into(),
            boot_dir: "/boot".into(),
            kernel: None,
            busybox: None,
            modules_dir: "/lib/modules".into(),
            output: None,
            no_upload: false,
        }
    }
}

/// What the build uses, found on this machine.
#[derive(Debug)]
pub struct Pieces {
    pub kernel: PathBuf,
    pub kernel_version: String,
    pub busybox: PathBuf,
    /// Module files in load order (dependencies first).
    pub modules: Vec<PathBuf>,
    pub mkfs_vfat: PathBuf,
    pub syslinux: PathBuf,
    pub mcopy: PathBuf,
    pub qemu_img: Option<PathBuf>,
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Compare `vmlinuz-6.1.0-9-amd64`-style versions by their numeric runs.
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                out.push((0, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(0), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(0), String::new()));
    }
    if !text.is_empty() {
        out.push((0, text));
    }
    out
}

/// Whether an ELF executable is statically linked (has no `PT_INTERP` program header).
pub fn elf_is_static(data: &[u8]) -> bool {
    if data.len() < 64 || &data[0..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return false; // only 64-bit little-endian ELF is recognised
    }
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    let phoff = phoff as usize;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        match data.get(o..o + 4) {
            Some(t) if u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3 => return false,
            Some(_) => {}
            None => return false,
        }
    }
    true
}

/// Module load order for `wanted` from a `modules.dep` text: each module after its dependencies.
pub fn module_order(modules_dep: &str, wanted: &[&str]) -> Vec<String> {
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((m, d)) = line.split_once(':') else {
            continue;
        };
        let m = m.trim().to_string();
        let name = Path::new(&m)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = name.split(".ko").next().unwrap_or_default().replace('-', "_");
        by_name.insert(name, m.clone());
        deps.insert(m, d.split_whitespace().map(str::to_string).collect());
    }
    fn visit(m: &str, deps: &BTreeMap<String, Vec<String>>, out: &mut Vec<String>) {
        if out.iter().any(|x| x == m) {
            return;
        }
        // modules.dep lists a module's dependencies in the order modprobe unloads them: load them reversed.
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, out);
        }
        if !out.iter().any(|x| x == m) {
            out.push(m.to_string());
        }
    }
    let mut out = Vec::new();
    for w in wanted {
        if let Some(m) = by_name.get(*w) {
            visit(m, &deps, &mut out);
        }
    }
    out
}

/// Find everything the build needs; a missing piece is reported with the package that provides it.
pub fn find_pieces(o: &Options) -> Result<Pieces, StartError> {
    let mut missing = Vec::new();
    let kernel = match &o.kernel {
        Some(k) if k.is_file() => Some(k.clone()),
        Some(k) => {
            missing.push(format!(
                "the kernel {} does not exist (install linux-image-cloud-amd64 or linux-image-amd64)",
                k.display()
            ));
            None
        }
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&o.boot_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
                .collect();
            found.sort_by_key(|p| version_key(&p.to_string_lossy()));
            let k = found.pop();
            if k.is_none() {
                missing.push(format!(
                    "no Linux kernel (vmlinuz-*) in {} (install linux-image-cloud-amd64 or linux-image-amd64)",
                    o.boot_dir.display()
                ));
            }
            k
        }
    };
    let busybox = o
        .busybox
        .clone()
        .or_else(|| {
            ["/bin/busybox", "/usr/bin/busybox"]
                .map(PathBuf::from)
                .into_iter()
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    match std::fs::read(&busybox) {
        Ok(data) if elf_is_static(&data) => {}
        Ok(_) => missing.push(format!(
            "{} is not a statically linked busybox (install busybox-static)",
            busybox.display()
        )),
        Err(_) => missing.push(format!(
            "no busybox at {} (install busybox-static)",
            busybox.display()
        )),
    }
    let mut tool = |name: &str, pkg: &str| {
        let t = which(name);
        if t.is_none() {
            missing.push(format!("{name} is not installed (install {pkg})"));
        }
        t
    };
    let mkfs_vfat = tool("mkfs.vfat", "dosfstools");
    let syslinux = tool("syslinux", "syslinux and syslinux-common");
    let mcopy = tool("mcopy", "mtools");
    let qemu_img = if o.disk_format == "qcow2" {
        tool("qemu-img", "qemu-utils")
    } else {
        None
    };
    let (Some(kernel), Some(mkfs_vfat), Some(syslinux), Some(mcopy), true) =
        (kernel, mkfs_vfat, syslinux, mcopy, missing.is_empty())
    else {
        return Err(StartError::Failed(format!(
            "cannot build the test image:\n  - {}",
            missing.join("\n  - ")
        )));
    };
    let kernel_version = kernel
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches("vmlinuz-").to_string())
        .unwrap_or_default();
    let mod_root = o.modules_dir.join(&kernel_version);
    let modules = match std::fs::read_to_string(mod_root.join("modules.dep")) {
        Ok(dep) => module_order(&dep, WANTED_MODULES)
            .into_iter()
            .filter(|m| {
                let ok = m.ends_with(".ko");
                if !ok {
                    tracing::warn!(module = %m, "compressed module skipped (busybox insmod loads plain .ko files)");
                }
                ok
            })
            .map(|m| mod_root.join(m))
            .collect(),
        Err(_) => {
            tracing::warn!(dir = %mod_root.display(), "no modules for this kernel; the image relies on built-in virtio drivers");
            Vec::new()
        }
    };
    Ok(Pieces {
        kernel,
        kernel_version,
        busybox,
        modules,
        mkfs_vfat,
        syslinux,
        mcopy,
        qemu_img,
    })
}

/// A `newc` cpio archive, written in memory (the kernel unpacks it as the initramfs).
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data, (0, 0));
    }
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | perm, &[], (major, minor));
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

fn init_script(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
# init of the Tessera test image: busybox userland on the initramfs.
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp && mount -t devpts devpts /dev/pts
hostname tessera-test
for m in {modules}; do insmod /lib/modules/$m 2>/dev/null; done
ifconfig lo 127.0.0.1 up
for n in /sys/class/net/*; do
  n=${{n##*/}}
  [ "$n" = lo ] && continue
  ifconfig "$n" up && udhcpc -i "$n" -n -q -t 3 -T 2 -s /etc/udhcpc.script >/dev/null 2>&1 &
done
wait
echo "{marker}: kernel $(uname -r)"
ip -o -4 addr show 2>/dev/null | awk '{{print "  " $2 " " $4}}'
while true; do setsid cttyhack sh -l; done
"#,
        modules = if modules.is_empty() {
            String::from("")
        } else {
            modules.join(" ")
        },
        marker = BOOT_MARKER,
    )
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# Apply a DHCP lease (busybox udhcpc).
case "$1" in
  bound|renew)
    ifconfig "$interface" "$ip" ${subnet:+netmask $subnet} up
    [ -n "$router" ] && route add default gw ${router%% *} dev "$interface" 2>/dev/null
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
  deconfig) ifconfig "$interface" 0.0.0.0 ;;
esac
exit 0
"#;

/// The initramfs: busybox, `/init`, device nodes the kernel needs before devtmpfs, the modules.
pub fn build_initramfs(p: &Pieces) -> Result<Vec<u8>, StartError> {
    let read = |path: &Path| std::fs::read(path).map_err(crate::io_err("cannot read", path));
    let mut c = Cpio::default();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "etc",
        "lib",
        "lib/modules",
        "tmp",
        "root",
        "run",
        "var",
    ] {
        c.dir(d);
    }
    c.file("bin/busybox", 0o755, &read(&p.busybox)?);
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.char_dev("dev/ttyS0", 0o600, 4, 64);
    let mut names = Vec::new();
    for m in &p.modules {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        c.file(&format!("lib/modules/{name}"), 0o644, &read(m)?);
        names.push(name);
    }
    c.file("init", 0o755, init_script(&names).as_bytes());
    c.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes());
    c.file(
        "etc/os-release",
        0o644,
        format!(
            "NAME=\"Tessera test image\"\nID=tessera-test\nVERSION_ID={}\n",
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    c.file("etc/passwd", 0o644, b"root::0:0:root:/root:/bin/sh\n");
    c.file(
        "etc/profile",
        0o644,
        b"PS1='tessera-test# '\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n",
    );
    Ok(c.finish())
}

async fn run(cmd: &mut tokio::process::Command, what: &str) -> Result<(), StartError> {
    let out = cmd
        .output()
        .await
        .map_err(|e| StartError::Failed(format!("{what}: cannot run: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(StartError::Failed(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Build the disk in `work`; returns its path.
pub async fn build_disk(p: &Pieces, work: &Path, disk_format: &str) -> Result<PathBuf, StartError> {
    let initrd = build_initramfs(p)?;
    let initrd_path = work.join("initrd");
    tokio::fs::write(&initrd_path, &initrd)
        .await
        .map_err(crate::io_err("cannot write", &initrd_path))?;
    let kernel_path = work.join("vmlinuz");
    tokio::fs::copy(&p.kernel, &kernel_path)
        .await
        .map_err(crate::io_err("cannot read", &p.kernel))?;
    let cfg_path = work.join("syslinux.cfg");
    let cfg = "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd\n  APPEND console=tty0 console=ttyS0,115200 quiet\n";
    tokio::fs::write(&cfg_path, cfg)
        .await
        .map_err(crate::io_err("cannot write", &cfg_path))?;
    let kernel_len = tokio::fs::metadata(&kernel_path)
        .await
        .map_err(crate::io_err("cannot read", &kernel_path))?
        .len();
    // Room for the files plus FAT overhead, in whole MiB.
    let mib = (kernel_len + initrd.len() as u64) / (1 << 20) + 4;
    let disk = work.join("disk.raw");
    run(
        tokio::process::Command::new(&p.mkfs_vfat)
            .args(["-n", "TESSERA", "-C"])
            .arg(&disk)
            .arg((mib * 1024).to_string()),
        "mkfs.vfat",
    )
    .await?;
    run(
        tokio::process::Command::new(&p.syslinux)
            .arg("--install")
            .arg(&disk),
        "syslinux --install",
    )
    .await?;
    run(
        tokio::process::Command::new(&p.mcopy)
            .arg("-i")
            .arg(&disk)
            .args([&kernel_path, &initrd_path, &cfg_path])
            .arg("::/"),
        "mcopy",
    )
    .await?;
    if disk_format == "qcow2" {
        let q = work.join("disk.qcow2");
        let qemu_img = p
            .qemu_img
            .as_ref()
            .ok_or_else(|| StartError::Failed("qemu-img is not installed (install qemu-utils)".into()))?;
        run(
            tokio::process::Command::new(qemu_img)
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(&disk)
                .arg(&q),
            "qemu-img convert",
        )
        .await?;
        return Ok(q);
    }
    Ok(disk)
}

/// Credentials the command authenticates with: the `OS_*` environment, or the `openrc` that all-in-one
/// wrote in the state directory.
fn credentials(state_path: &Path) -> Result<BTreeMap<String, String>, StartError> {
    let mut env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("OS_")).collect();
    if !env.contains_key("OS_AUTH_URL") {
        let openrc = state_path.join("openrc");
        let text = std::fs::read_to_string(&openrc).map_err(|_| {
            StartError::Usage(format!(
                "no credentials: set OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME (for example by \
                 sourcing an openrc), or run where {} exists",
                openrc.display()
            ))
        })?;
        for line in text.lines() {
            if let Some((k, v)) = line
                .trim()
                .strip_prefix("export ")
                .and_then(|l| l.split_once('='))
            {
                env.insert(k.to_string(), v.trim_matches('\'').trim_matches('"').to_string());
            }
        }
    }
    for k in ["OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME"] {
        if !env.contains_key(k) {
            return Err(StartError::Usage(format!("{k} is not set")));
        }
    }
    Ok(env)
}

fn http_err(what: &str) -> impl Fn(reqwest::Error) -> StartError + '_ {
    move |e| StartError::Failed(format!("{what}: {e}"))
}

/// Upload the disk as a new image; returns its id.
pub async fn upload(state_path: &Path, o: &Options, disk: &Path) -> Result<String, StartError> {
    let env = credentials(state_path)?;
    let get = |k: &str, d: &str| env.get(k).cloned().unwrap_or_else(|| d.to_string());
    let http = reqwest::Client::new();
    let auth_url = get("OS_AUTH_URL", "");
    let auth = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": get("OS_USERNAME", ""), "password": get("OS_PASSWORD", ""),
            "domain": {"name": get("OS_USER_DOMAIN_NAME", "Default")}}}},
        "scope": {"project": {"name": get("OS_PROJECT_NAME", ""),
            "domain": {"name": get("OS_PROJECT_DOMAIN_NAME", "Default")}}}}});
    let r = http
        .post(format!("{}/auth/tokens", auth_url.trim_end_matches('/')))
        .json(&auth)
        .send()
        .await
        .map_err(http_err("authenticating"))?;
    if !r.status().is_success() {
        return Err(StartError::Failed(format!(
            "authenticating at {auth_url}: HTTP {}",
            r.status()
        )));
    }
    let token = r
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: serde_json::Value = r.json().await.map_err(http_err("reading the token"))?;
    let interface = get("OS_INTERFACE", "public");
    let region = env.get("OS_REGION_NAME");
    let endpoint = body["token"]["catalog"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["type"] == "image")
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| {
            e["interface"] == interface.as_str()
                && region.is_none_or(|r| e["region_id"].as_str() == Some(r.as_str()))
        })
        .and_then(|e| e["url"].as_str().map(|u| u.trim_end_matches('/').to_string()))
        .ok_or_else(|| StartError::Failed("the catalog has no image endpoint".into()))?;
    let r = http
        .post(format!("{endpoint}/v2/images"))
        .header("X-Auth-Token", &token)
        .json(&serde_json::json!({
            "name": o.name, "disk_format": o.disk_format, "container_format": "bare",
            "visibility": o.visibility, "min_ram": 128, "os_type": "linux", "os_distro": "tessera-test",
            "hw_rng_model": "virtio",
        }))
        .send()
        .await
        .map_err(http_err("creating the image"))?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(StartError::Failed(format!(
            "creating the image: HTTP {status}: {}",
            v["message"].as_str().unwrap_or("")
        )));
    }
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let file = tokio::fs::File::open(disk)
        .await
        .map_err(crate::io_err("cannot read", disk))?;
    let r = http
        .put(format!("{endpoint}/v2/images/{id}/file"))
        .header("X-Auth-Token", &token)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(
            file,
        )))
        .send()
        .await
        .map_err(http_err("uploading the image data"))?;
    if !r.status().is_success() {
        return Err(StartError::Failed(format!(
            "uploading the image data: HTTP {}",
            r.status()
        )));
    }
    Ok(id)
}

/// The whole command: find the pieces, build, upload (unless told not to), print the id.
pub async fn create_test_image(cfg: &tessera_config::Config, o: Options) -> Result<(), StartError> {
    if o.no_upload && o.output.is_none() {
        return Err(StartError::Usage("--no-upload needs --output".into()));
    }
    let p = find_pieces(&o)?;
    eprintln!(
        "building from kernel {} ({}), busybox {}, {} module(s)",
        p.kernel.display(),
        p.kernel_version,
        p.busybox.display(),
        p.modules.len()
    );
    let work = tempfile::tempdir().map_err(crate::io_err(
        "cannot create a temporary directory in",
        std::env::temp_dir(),
    ))?;
    let disk = build_disk(&p, work.path(), &o.disk_format).await?;
    let size = std::fs::metadata(&disk).map(|m| m.len()).unwrap_or(0);
    eprintln!("built a {} disk of {} KiB", o.disk_format, size / 1024);
    if let Some(out) = &o.output {
        std::fs::copy(&disk, out).map_err(crate::io_err("cannot write", out))?;
        eprintln!("wrote {}", out.display());
    }
    if o.no_upload {
        return Ok(());
    }
    let id = upload(Path::new(&cfg.get_str("DEFAULT", "state_path")), &o, &disk).await?;
    eprintln!("uploaded as image {:?}", o.name);
    println!("{id}");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn module_order_puts_dependencies_first() {
        let dep = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
                   kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
                   kernel/net/core/failover.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko\n\
                   kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n";
        assert_eq!(
            module_order(dep, &["virtio_pci", "virtio_net", "absent"]),
            [
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
            ]
        );
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.char_dev("dev/console", 0o600, 5, 1);
        let a = c.finish();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("TRAILER!!!"));
        // The device entry: mode 020600, rdev 5:1.
        let i = s.find("dev/console").unwrap() - 110;
        assert_eq!(&s[i + 14..i + 22], "00002180");
        assert_eq!(&s[i + 78..i + 86], "00000005");
        assert_eq!(&s[i + 86..i + 94], "00000001");
    }

    #[test]
    fn static_elf_detection() {
        let mut e = vec![0u8; 0x40 + 56 * 2];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        e[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert!(elf_is_static(&e));
        e[0x40 + 56..0x40 + 60].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(!elf_is_static(&e));
        assert!(!elf_is_static(b"#!/bin/sh"));
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "vmlinuz-5.10.0-28-amd64",
        ];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v.last(), Some(&"vmlinuz-6.1.0-10-amd64"));
    }

    #[test]
    fn missing_pieces_are_named_with_their_packages() {
        let empty = tempfile::tempdir().unwrap();
        let o = Options {
            boot_dir: empty.path().to_path_buf(),
            busybox: Some(empty.path().join("busybox")),
            ..Options::default()
        };
        let e = find_pieces(&o).unwrap_err().to_string();
        assert!(e.contains("linux-image-cloud-amd64"), "{e}");
        assert!(e.contains("busybox-static"), "{e}");
    }
}
