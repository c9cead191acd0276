//! `rampart agent`: the daemon that owns the data plane on a host.
//!
//! Start-up: check privileges and bpffs, load the program with its maps
//! pinned (re-adopting pins of the same layout version), restore runtime
//! state, apply the config, attach (swapping into pinned links atomically).
//! Then serve the control socket and metrics, and keep watch: SIGHUP and
//! config-file changes reload, a sweeper expires entries and saves state,
//! interfaces that come back are re-attached. On SIGTERM the agent exits and
//! the pinned program keeps filtering; `rampart detach` removes it.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use rampart_common::abi::{Event, LAYOUT_VERSION, event_kind};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    audit::Audit,
    clock,
    config::{self, LogFormat, Validated},
    datapath::{Datapath, MAP_NAMES},
    host,
    instance::InstanceLock,
    metrics::Metrics,
    persist,
    reload::{hash_of, reload, sync_interfaces},
    shared::{Shared, lock},
    state::Core,
    top::Top,
};

pub struct AgentOptions {
    pub config: PathBuf,
    /// `--config` was given: the file must exist.
    pub config_given: bool,
    pub log_format: Option<LogFormat>,
    /// Recreate the maps (to apply new capacities); runtime state comes back
    /// from the state file.
    pub replace_maps: bool,
    /// Overrides `[metrics] listen`.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The pin directory of this layout version.
pub fn pin_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(format!("v{LAYOUT_VERSION}"))
}

pub fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let (cfg, embedded) = config::load_at_start(&opts.config, opts.config_given)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    init_logging(opts.log_format.unwrap_or(cfg.config.agent.log_format));
    if embedded {
        tracing::warn!(
            path = %opts.config.display(),
            "no config file: running on the embedded default (a reload needs the file)"
        );
    }
    let missing = host::missing_capabilities();
    if !missing.is_empty() {
        bail!(
            "missing capabilities: {} (run as root, or grant them: systemd AmbientCapabilities=, or the pod's securityContext.capabilities.add)",
            missing.join(", ")
        );
    }
    raise_memlock();
    raise_nofile();
    let bpffs = cfg.config.agent.bpffs.clone();
    let root = bpffs.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    if !host::is_bpffs(root) && !host::is_bpffs(&bpffs) {
        bail!(
            "bpffs is not mounted at {}: mount it with `mount -t bpf bpf {}` (in Kubernetes, mount the host's /sys/fs/bpf into the pod)",
            root.display(),
            root.display()
        );
    }
    // Before anything touches a pin: a second agent on these pins would
    // change the running one's maps before finding its socket taken.
    let _one_agent = InstanceLock::take(&bpffs)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(opts, cfg))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// The soft descriptor limit up to the hard one: listeners cap their own
/// connections, and the rest (maps, links, feeds) should never meet 1024.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}

async fn serve(opts: AgentOptions, cfg: Validated) -> anyhow::Result<()> {
    let pin_dir = pin_dir(&cfg.config.agent.bpffs);
    migrate_layouts(&cfg.config.agent.bpffs, &pin_dir);
    if opts.replace_maps {
        for name in MAP_NAMES {
            let _ = std::fs::remove_file(pin_dir.join(name));
        }
    }
    std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let readopted = pin_dir.join(rampart_common::abi::map_name::CONFIG).exists();
    let mut dp =
        Datapath::load(cfg.config.capacity, Some(&pin_dir)).context("loading the XDP program")?;
    let events = dp.take_events();
    let state_dir = cfg.config.agent.state_dir.clone();
    let sample_every = u64::from(cfg.config.events.sample_every);
    let mut core =
        Core::new(dp, cfg).map_err(|e| anyhow::anyhow!("applying the configuration: {e}"))?;
    if let Err(e) = persist::make_private(&state_dir) {
        tracing::warn!(dir = %state_dir.display(), "cannot make the state directory private: {e}");
    }
    let (state, state_problem) = persist::load(&state_dir);
    if let Some(p) = &state_problem {
        tracing::error!("{p}");
    }
    for note in core
        .restore(&state)
        .map_err(|e| anyhow::anyhow!("restoring state: {e}"))?
    {
        tracing::warn!("{note}");
    }
    let feeds = crate::feeds::Feeds::new(&state_dir);
    let specs: Vec<_> = core
        .cfg
        .config
        .feeds
        .iter()
        .map(|f| f.get_ref().clone())
        .collect();
    feeds.restore_cached(&mut core, &specs);
    if state_problem.is_none() {
        let n = core.forget_unclaimed()?;
        if n > 0 {
            tracing::info!(
                entries = n,
                "removed pinned list entries that neither config nor state claims"
            );
        }
    }
    core.record_start_config();
    tracing::info!(
        config = %opts.config.display(),
        pins = %pin_dir.display(),
        readopted,
        "data plane loaded"
    );
    let config_hash = hash_of(&core.cfg.source);
    let share = crate::shared::Sharing::default();
    {
        let max = core
            .cfg
            .config
            .crowdsec
            .as_ref()
            .map_or(50_000, |c| c.queue_max);
        let (queue, problem) = crate::share_queue::ShareQueue::load(
            &state_dir.join(crate::crowdsec_push::QUEUE_FILE),
            max,
        );
        if let Some(p) = problem {
            tracing::error!("{p}");
        }
        if !queue.is_empty() {
            tracing::info!(
                queued = queue.len(),
                "decisions from before the restart wait for the local API"
            );
        }
        *lock(&share.queue) = queue;
    }
    let (detection, problem) = crate::detection::Detection::load(&state_dir);
    if let Some(p) = problem {
        tracing::error!("{p}");
    }
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        ifaces: Mutex::new(Vec::new()),
        slots: Mutex::new(Vec::new()),
        top: Mutex::new(Top::new(sample_every)),
        metrics: Metrics::new(),
        audit: Audit::new(&state_dir),
        config_path: opts.config.clone(),
        pin_dir,
        state_dir,
        state_error: Mutex::new(state_problem),
        config_hash: Mutex::new(config_hash),
        feeds,
        crowdsec: crate::crowdsec::Bouncer::default(),
        share,
        saving: Mutex::new(()),
        save_soon: tokio::sync::Notify::new(),
        health: crate::shared::Health::new(clock::mono_ns()),
        routes: Mutex::default(),
        detection: Mutex::new(detection),
    });
    shared.metrics.record_reload(true);
    sync_interfaces(&shared);
    save_state(&shared);

    let control = crate::control::start(shared.clone()).await?;
    let metrics_addr = opts
        .metrics_listen
        .unwrap_or(lock(&shared.core).cfg.metrics_addr);
    let metrics = crate::control::start_metrics(shared.clone(), metrics_addr).await?;
    tokio::spawn(watch_config(shared.clone()));
    tokio::spawn(housekeeping(shared.clone()));
    tokio::spawn(saver(shared.clone()));
    tokio::spawn(crate::feeds::run(shared.clone()));
    tokio::spawn(crate::crowdsec::run(shared.clone()));
    tokio::spawn(crate::crowdsec_push::run(shared.clone()));
    tokio::spawn(crate::detection_task::run(shared.clone()));
    if let Some(rb) = events {
        tokio::spawn(read_events(shared.clone(), rb));
    }
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tracing::info!("rampart agent running");
    loop {
        tokio::select! {
            _ = hup.recv() => { let _ = reload(&shared, "SIGHUP"); }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    control.abort();
    metrics.abort();
    save_state(&shared);
    crate::detection_task::save(&shared);
    let _ = std::fs::remove_file(&lock(&shared.core).cfg.config.control.socket);
    tracing::info!("stopping; the pinned program keeps filtering (`rampart detach` removes it)");
    Ok(())
}

/// Moves attachments from pins of another layout version to this one: the
/// new program is swapped into the old links (no gap), runtime state comes
/// from the state file, and the old pins are removed.
fn migrate_layouts(bpffs: &Path, current: &Path) {
    let Ok(dir) = std::fs::read_dir(bpffs) else {
        return;
    };
    for e in dir.flatten() {
        let p = e.path();
        if p == current || !is_layout_dir(&e.file_name().to_string_lossy()) {
            continue;
        }
        let links = p.join("links");
        let new_links = current.join("links");
        let _ = std::fs::create_dir_all(&new_links);
        if let Ok(ls) = std::fs::read_dir(&links) {
            for l in ls.flatten() {
                let to = new_links.join(l.file_name());
                if !to.exists() {
                    // bpffs supports rename: the link keeps its identity.
                    let _ = std::fs::rename(l.path(), to);
                }
            }
        }
        tracing::info!(old = %p.display(), "migrating from an earlier pin layout");
        let _ = remove_tree(&p);
    }
}

/// Whether a directory under the bpffs root is one of this project's pin
/// layouts (`v` and a version number): nothing else there is ours to move.
fn is_layout_dir(name: &str) -> bool {
    name.strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn remove_tree(p: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(p)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    std::fs::remove_dir(p)
}

/// Reloads when the config file's content changes. Polling the content
/// (through symlinks) catches Kubernetes ConfigMap updates, which swap a
/// symlink in the directory rather than writing the file.
async fn watch_config(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_seen = *lock(&shared.config_hash);
    loop {
        tick.tick().await;
        let Ok(text) = std::fs::read_to_string(&shared.config_path) else {
            continue;
        };
        let h = hash_of(&text);
        if h != last_seen {
            last_seen = h;
            if h != *lock(&shared.config_hash) {
                let _ = reload(&shared, "file change");
            }
        }
    }
}

/// Registry entries serialized per hold of the core lock while saving.
const SAVE_PIECE: usize = 4096;

/// Persists runtime state; on failure, reports it and retries on the next
/// tick. The registry is written in pieces, each under a short hold of the
/// core lock, so a large state never stalls requests or scrapes. Changes
/// made meanwhile set `dirty` again and are in the next save.
pub fn save_state(shared: &Shared) {
    let _one_at_a_time = lock(&shared.saving);
    lock(&shared.core).dirty = false;
    let mut cursor = None;
    let mut first = true;
    let result = persist::save_streamed(
        &shared.state_dir,
        |buf| {
            let core = lock(&shared.core);
            cursor = core
                .write_runtime(cursor, SAVE_PIECE, buf, &mut first)
                .map_err(std::io::Error::other)?;
            Ok(cursor.is_some())
        },
        || {
            lock(&shared.core)
                .saved_bans()
                .map_err(std::io::Error::other)
        },
    )
    .map_err(|e| e.to_string());
    if result.is_err() {
        lock(&shared.core).dirty = true;
    }
    // Lock order: `core` is never taken while `state_error` is held.
    let mut err = lock(&shared.state_error);
    match result {
        Ok(()) => {
            if err.take().is_some() {
                tracing::info!("state file written again");
            }
        }
        Err(e) => {
            shared.metrics.state_write_errors.inc();
            let msg = format!(
                "cannot write state to {}: {e} (will retry; filtering is unaffected)",
                shared.state_dir.display()
            );
            if err.as_deref() != Some(msg.as_str()) {
                tracing::error!("{msg}");
            }
            *err = Some(msg);
        }
    }
}

/// Once a second: expire entries, save state when it changed (or a write
/// failed), re-attach interfaces that came back.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let dirty = {
            let mut core = lock(&shared.core);
            if let Err(e) = core.sweep() {
                tracing::warn!("sweep failed: {e}");
            }
            shared
                .health
                .beat(clock::mono_ns(), core.dp.stats().is_ok());
            core.dirty
        };
        if dirty {
            shared.save_soon.notify_one();
        }
        if n.is_multiple_of(2) {
            sync_interfaces(&shared);
        }
        // Slow counts for metrics, refreshed here rather than per scrape.
        if n % 10 == 1 {
            lock(&shared.core).refresh_slow_counts();
        }
        // The verified-source hint gathers bits of sources long gone.
        if n % 600 == 300 {
            let mut core = lock(&shared.core);
            if let Err(e) = core.dp.rebuild_verified_hint(crate::clock::mono_ns()) {
                tracing::warn!("rebuilding the verified-source hint failed: {e}");
            }
        }
    }
}

/// Writes the state file when a change asks for it, and retries a failed
/// write every second. Off the async workers: a large state takes seconds.
async fn saver(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.save_soon.notified() => {}
        }
        let due = lock(&shared.core).dirty || lock(&shared.state_error).is_some();
        if due {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || save_state(&s)).await;
        }
    }
}

/// Reads drop samples and ban events from the ring buffer.
async fn read_events(shared: Arc<Shared>, rb: aya::maps::RingBuf<aya::maps::MapData>) {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so
    // the fd stays open for as long as it is registered.
    let Ok(mut fd) = (unsafe { AsyncFd::register(rb) }) else {
        tracing::error!("cannot watch the event ring buffer");
        return;
    };
    let mut window = clock::mono_ns();
    let mut logged = 0u32;
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            if item.len() < std::mem::size_of::<Event>() {
                continue;
            }
            // SAFETY: the record is an Event written by the program (size checked).
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            let src = if ev.family == 4 {
                IpAddr::from(ev.src.v4_word().to_ne_bytes())
            } else {
                IpAddr::from(ev.src.to_bytes())
            };
            match ev.kind {
                event_kind::DROP_SAMPLE => lock(&shared.top).record(src, ev.reason),
                event_kind::BAN => {
                    lock(&shared.core).dirty = true;
                    let prefix = crate::prefix::Prefix::new_masked(src, ev.prefix_len);
                    crate::crowdsec_push::offer_ban(&shared, prefix, ev.ban_expires_ns, ev.policy);
                    let now = clock::mono_ns();
                    if now - window > 1_000_000_000 {
                        window = now;
                        logged = 0;
                    }
                    logged += 1;
                    // At most 10 ban lines a second; the rest are counted.
                    if logged <= 10 {
                        let secs = ev.ban_expires_ns.saturating_sub(now) / 1_000_000_000;
                        tracing::warn!(source = %src, prefix_len = ev.prefix_len, offences = ev.offences, seconds = secs, "banned");
                    } else {
                        shared.metrics.bans_logged_suppressed.inc();
                    }
                }
                _ => {}
            }
        }
        guard.clear_ready();
    }
}
