//! Attaching to interfaces and keeping the attachment across agent restarts.
//!
//! Each attachment is a bpf_link pinned at `<pin dir>/links/<ifname>@<ifindex>`.
//! The pin keeps the program filtering while no agent runs. A starting agent
//! loads its program and swaps it into the pinned link atomically
//! (`bpf_link_update`): there is no moment without a program.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};

pub use crate::api::IfaceStatus;
use crate::{config::AttachMode, host};

fn link_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Where the link of the program on interface `name` is pinned.
pub fn link_pin(pin_dir: &Path, name: &str, ifindex: u32) -> PathBuf {
    link_dir(pin_dir).join(format!("{name}@{ifindex}"))
}

/// Attaches (or re-adopts) the program on one interface.
pub fn attach(
    prog: &mut Xdp,
    pin_dir: &Path,
    name: &str,
    want: AttachMode,
) -> Result<IfaceStatus, String> {
    let ifindex = host::ifindex(name).ok_or_else(|| format!("interface {name} does not exist"))?;
    fs::create_dir_all(link_dir(pin_dir))
        .map_err(|e| format!("creating link pin directory: {e}"))?;
    remove_stale_pins(pin_dir, name, ifindex);
    let pin = link_pin(pin_dir, name, ifindex);
    let program_id = prog.info().ok().map(|i| i.id());

    if pin.exists() {
        match adopt(prog, &pin) {
            Ok(()) => {
                return Ok(IfaceStatus {
                    name: name.into(),
                    ifindex: Some(ifindex),
                    mode: mode_of(pin_dir, name, ifindex),
                    attached: true,
                    program_id,
                    error: None,
                });
            }
            Err(e) => {
                // A link whose device went away cannot be updated: start over.
                tracing::warn!(interface = name, error = %e, "pinned link unusable; attaching anew");
                let _ = fs::remove_file(&pin);
            }
        }
    }

    let (id, mode) = match want {
        AttachMode::Native => (attach_mode(prog, name, XdpMode::Driver)?, "native"),
        AttachMode::Generic => (attach_mode(prog, name, XdpMode::Skb)?, "generic"),
        AttachMode::Auto => match attach_mode(prog, name, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(native) => {
                let id = attach_mode(prog, name, XdpMode::Skb)
                    .map_err(|e| format!("native: {native}; generic: {e}"))?;
                tracing::warn!(interface = name, reason = %native, "native XDP unavailable; attached in generic mode");
                (id, "generic")
            }
        },
    };
    let link = prog
        .take_link(id)
        .map_err(|e| format!("taking link: {e}"))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: LinkError| format!("XDP link is not a bpf_link (kernel too old?): {e}"))?;
    let pinned = fd
        .pin(&pin)
        .map_err(|e| format!("pinning link at {}: {e}", pin.display()))?;
    let marker = mode_file(pin_dir, name, ifindex);
    if let Some(dir) = marker.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::write(marker, mode);
    // The pin now owns the attachment; keep adopting it through the pin.
    let fd: FdLink = pinned.into();
    let xdp_link: XdpLink = fd.try_into().map_err(|e: LinkError| e.to_string())?;
    prog.attach_to_link(xdp_link)
        .map_err(|e| format!("holding link: {e}"))?;
    Ok(IfaceStatus {
        name: name.into(),
        ifindex: Some(ifindex),
        mode: mode.into(),
        attached: true,
        program_id,
        error: None,
    })
}

fn attach_mode(prog: &mut Xdp, name: &str, mode: XdpMode) -> Result<XdpLinkId, String> {
    prog.attach(name, mode).map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    })
}

/// Swaps our program into a pinned link.
fn adopt(prog: &mut Xdp, pin: &Path) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| e.to_string())?;
    let fd: FdLink = pinned.into();
    let link: XdpLink = fd.try_into().map_err(|e: LinkError| e.to_string())?;
    prog.attach_to_link(link).map_err(|e| e.to_string())?;
    Ok(())
}

/// bpffs holds only BPF objects, so the attach mode is recorded under /run,
/// which, like the pins, does not outlive a reboot.
fn mode_file(_pin_dir: &Path, name: &str, ifindex: u32) -> PathBuf {
    PathBuf::from(format!("/run/rampart/attach-{name}@{ifindex}"))
}

fn mode_of(pin_dir: &Path, name: &str, ifindex: u32) -> String {
    fs::read_to_string(mode_file(pin_dir, name, ifindex)).unwrap_or_else(|_| "unknown".into())
}

/// Pins for this interface name under another ifindex belong to a device
/// that was deleted (its link is dead): remove them.
fn remove_stale_pins(pin_dir: &Path, name: &str, ifindex: u32) {
    let Ok(dir) = fs::read_dir(link_dir(pin_dir)) else {
        return;
    };
    for e in dir.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if let Some((n, idx)) = f.rsplit_once('@') {
            if n == name && idx != ifindex.to_string() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Detaches from every interface: removes the link pins (the links die with
/// their last reference).
pub fn detach_all(pin_dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(dir) = fs::read_dir(link_dir(pin_dir)) {
        for e in dir.flatten() {
            if fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Whether the link pinned for `name` is still attached to a live device.
pub fn pinned_link_alive(pin_dir: &Path, name: &str) -> bool {
    host::ifindex(name).is_some_and(|i| link_pin(pin_dir, name, i).exists())
}
