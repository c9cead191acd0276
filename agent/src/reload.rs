//! Changes that come from outside the state's own API: a config reload
//! (from SIGHUP, the config file or the control socket) and the interfaces
//! to attach to. Used by the daemon and the control API alike.
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
};

use crate::{
    api::IfaceStatus,
    attach, config, host,
    shared::{Shared, lock},
    state::{Core, CoreError},
};

/// A hash of the config file's text, to tell a real change from a touch.
pub fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The interfaces to protect: configured, or (auto) those with a default
/// route, remembered through a route flap. The flag says which.
fn wanted_interfaces(core: &Core, shared: &Shared) -> (Vec<String>, bool) {
    let c = &core.cfg.config.agent.interfaces;
    if c.is_empty() {
        let read = host::default_route_interfaces();
        (
            lock(&shared.routes).choose(read, crate::clock::mono_ns()),
            true,
        )
    } else {
        (c.clone(), false)
    }
}

/// Attaches to every wanted interface not attached yet (or whose device was
/// re-created); one failing interface does not stop the others.
pub fn sync_interfaces(shared: &Shared) {
    let mut core = lock(&shared.core);
    let (wanted, auto) = wanted_interfaces(&core, shared);
    let mode = core.cfg.config.agent.attach_mode;
    let mut ifaces = lock(&shared.ifaces);
    let mut slots = Vec::new();
    let mut next: Vec<IfaceStatus> = Vec::new();
    for (i, name) in wanted.iter().enumerate() {
        let slot = i as u32 + 1;
        slots.push((slot, name.clone()));
        let current = host::ifindex(name);
        let prev = ifaces.iter().find(|s| &s.name == name).cloned();
        let fine = prev
            .as_ref()
            .is_some_and(|p| p.attached && p.ifindex == current && current.is_some())
            && attach::pinned_link_alive(&shared.pin_dir, name);
        if fine {
            next.extend(prev);
            continue;
        }
        let not_ethernet = current.and_then(|_| host::unprotectable(name));
        let status = match (current, not_ethernet) {
            (None, _) => IfaceStatus::down(name, format!("interface {name} does not exist")),
            (Some(_), Some(why)) => {
                if prev.as_ref().and_then(|p| p.error.as_ref()) != Some(&why) {
                    tracing::error!(interface = %name, "{why}");
                }
                // Auto mode passes over a tunnel that carries a default
                // route; one named in the config is an error until fixed.
                if auto {
                    IfaceStatus::skipped(name, why)
                } else {
                    IfaceStatus::down(name, why)
                }
            }
            (Some(ifindex), None) => {
                let res = core
                    .dp
                    .program_mut()
                    .map_err(|e| e.to_string())
                    .and_then(|prog| attach::attach(prog, &shared.pin_dir, name, mode));
                match res {
                    Ok(s) => {
                        match core.assign_iface_slot(ifindex, slot) {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(interface = %name, ifindex, "no counter slot for this interface: its packets are counted as interface \"other\"")
                            }
                            Err(e) => {
                                tracing::warn!(interface = %name, ifindex, "could not give the interface its counter slot: {e}")
                            }
                        }
                        tracing::info!(interface = %name, mode = %s.mode, ifindex, "attached");
                        s
                    }
                    Err(e) => {
                        tracing::error!(interface = %name, error = %e, "could not attach");
                        IfaceStatus::down(name, e)
                    }
                }
            }
        };
        if prev.as_ref().is_some_and(|p| p.attached) && current.is_none() {
            tracing::warn!(interface = %name, "interface disappeared; will re-attach when it returns");
        }
        next.push(status);
    }
    // Interfaces no longer wanted: detach them.
    for old in ifaces.iter() {
        if !wanted.contains(&old.name) && old.attached {
            if let Some(ifindex) = old.ifindex {
                let _ = std::fs::remove_file(attach::link_pin(&shared.pin_dir, &old.name, ifindex));
                tracing::info!(interface = %old.name, "detached (no longer configured)");
            }
        }
    }
    *ifaces = next;
    *lock(&shared.slots) = slots;
}

/// Re-reads the config file and applies it if valid. Invalid: nothing changes.
pub fn reload(shared: &Shared, trigger: &str) -> Result<(), Vec<String>> {
    let result = config::load(&shared.config_path)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        .and_then(|v| {
            let hash = hash_of(&v.source);
            let mut core = lock(&shared.core);
            core.apply(v, false)
                .map_err(|e: CoreError| vec![e.to_string()])?;
            *lock(&shared.config_hash) = hash;
            Ok(())
        });
    lock(&shared.core).record_reload(&result);
    match &result {
        Ok(()) => {
            shared.metrics.record_reload(true);
            tracing::info!(trigger, "configuration reloaded");
            sync_interfaces(shared);
        }
        Err(errs) => {
            shared.metrics.record_reload(false);
            for e in errs {
                tracing::error!(trigger, "reload refused, running config unchanged: {e}");
            }
        }
    }
    result
}
