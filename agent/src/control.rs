//! The control API (HTTP/1.1 + JSON on a Unix socket, /v1/...) and the
//! metrics endpoint (TCP: /metrics, /healthz, /readyz, GET only).
//!
//! Every request is answered: malformed JSON, unknown paths and oversized
//! bodies get a 4xx with a message. Changes are audited with the peer's uid
//! and pid (SO_PEERCRED).
use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use axum::{
    Json, Router,
    extract::{
        ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State,
        connect_info::Connected, rejection::JsonRejection,
    },
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::IncomingStream,
};
use serde::Deserialize;
use tokio::{net::UnixListener, task::JoinHandle};

use rampart_common::decide::List;

use crate::{
    api::{
        self, AddRequest, ApiError, BansDelRequest, Changed, DelRequest, FloodStatus, StatRow,
        Status,
    },
    bounded::{Bounded, Limits},
    policy::Protocol,
    reload::reload,
    shared::{BULK_CHANGE, Shared, lock, release_freed_memory},
    state::CoreError,
};

/// The control socket: only root and one group can connect, and scripts
/// may run many clients at once, so the cap is generous (a stalled script
/// must not lock the operator out) yet still bounds descriptors. An import
/// may upload for a while, so no lifetime, only an idle limit.
const CONTROL_LIMITS: Limits = Limits {
    max_connections: 1024,
    per_peer: 1024,
    idle: Duration::from_secs(60),
    lifetime: None,
};

/// The metrics port may be reachable from the network: a scraper or two and
/// the kubelet's probes, each answered in milliseconds. Idle or slow
/// connections are closed quickly; together they never hold more than 256
/// descriptors, and one address no more than 8.
const METRICS_LIMITS: Limits = Limits {
    max_connections: 256,
    per_peer: 8,
    idle: Duration::from_secs(10),
    lifetime: Some(Duration::from_secs(60)),
};

/// Largest request body, except imports.
const BODY_LIMIT: usize = 1 << 20;
/// Imports carry whole lists.
const IMPORT_LIMIT: usize = 256 << 20;

#[derive(Clone, Debug)]
struct Peer {
    uid: Option<u32>,
    pid: Option<i32>,
}

impl Connected<IncomingStream<'_, Bounded<UnixListener>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Bounded<UnixListener>>) -> Self {
        let cred = stream.io().get_ref().peer_cred().ok();
        Self {
            uid: cred.map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }
}

type Shr = State<Arc<Shared>>;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

fn core_error(e: CoreError) -> Response {
    match e {
        CoreError::Refused(m) => error(StatusCode::CONFLICT, m),
        CoreError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        CoreError::Datapath(d) => error(StatusCode::INTERNAL_SERVER_ERROR, d.to_string()),
    }
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP response to send, built once per request"
)]
fn list_kind(s: &str) -> Result<List, Response> {
    match s {
        "block" => Ok(List::Block),
        "allow" => Ok(List::Allow),
        other => Err(error(
            StatusCode::NOT_FOUND,
            format!("no list '{other}' (lists: block, allow)"),
        )),
    }
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP response to send, built once per request"
)]
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    b.map(|Json(v)| v)
        .map_err(|e| error(e.status(), format!("bad request body: {}", e.body_text())))
}

/// The list a request names and its JSON body, or the 4xx to answer.
#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP response to send, built once per request"
)]
fn list_request<T>(list: &str, req: Result<Json<T>, JsonRejection>) -> Result<(List, T), Response> {
    Ok((list_kind(list)?, body(req)?))
}

/// Records a change in the audit log and returns the response.
fn audited(
    shared: &Shared,
    peer: &Peer,
    action: &str,
    args: serde_json::Value,
    resp: Response,
) -> Response {
    let result = if resp.status().is_success() {
        "ok".to_string()
    } else {
        format!("refused ({})", resp.status().as_u16())
    };
    if let Err(e) = shared
        .audit
        .record(peer.uid, peer.pid, action, &args, &result)
    {
        tracing::error!("cannot write the audit log: {e}");
    }
    resp
}

/// Binds the control socket: mode and group from the config, a stale socket
/// replaced, a live one (another agent) refused.
pub async fn start(shared: Arc<Shared>) -> anyhow::Result<JoinHandle<()>> {
    let (path, mode, group) = {
        let core = lock(&shared.core);
        (
            core.cfg.config.control.socket.clone(),
            core.cfg.socket_mode,
            core.cfg.config.control.socket_group.clone(),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            bail!("another agent is serving {}; stop it first", path.display());
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let unix = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    let refused = shared
        .metrics
        .connections_refused
        .with_label_values(&["control"]);
    let listener = Bounded::new(unix, CONTROL_LIMITS, refused);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    match group_id(&group) {
        Some(gid) => {
            std::os::unix::fs::chown(&path, Some(0), Some(gid))
                .with_context(|| format!("giving {} to group {group}", path.display()))?;
        }
        None => {
            tracing::warn!(group = %group, "socket group does not exist; only root can use the control socket")
        }
    }
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/lists/{list}", get(list_entries))
        .route("/v1/lists/{list}/add", post(list_add))
        .route("/v1/lists/{list}/del", post(list_del))
        .route(
            "/v1/lists/{list}/import",
            post(list_add).layer(DefaultBodyLimit::max(IMPORT_LIMIT)),
        )
        .route("/v1/bans", get(bans))
        .route("/v1/bans/del", post(bans_del))
        .route("/v1/stats", get(stats))
        .route("/v1/top", get(top))
        .route("/v1/explain", get(explain))
        .route("/v1/anomalies", get(anomalies))
        .route("/v1/reload", post(reload_handler))
        .route("/v1/feeds", get(feeds_list))
        .route("/v1/feeds/refresh", post(feeds_refresh))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "unknown path (the API lives under /v1/)",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared);
    tracing::info!(socket = %path.display(), mode = format!("{mode:o}"), group = %group, "control socket listening");
    Ok(tokio::spawn(async move {
        if let Err(e) =
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
        {
            tracing::error!("control socket stopped: {e}");
        }
    }))
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam with a valid name; the result is read at once.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: non-null results point to a valid group entry.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

async fn count_requests(State(shared): Shr, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unknown", |p| p.as_str())
        .to_string();
    let resp = next.run(req).await;
    shared
        .metrics
        .control_requests
        .with_label_values(&[&endpoint, resp.status().as_str()])
        .inc();
    resp
}

async fn status(State(s): Shr) -> Response {
    let core = lock(&s.core);
    let tables = core.table_fill(&core.dp.bans().unwrap_or_default());
    Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: core.started.elapsed().as_secs(),
        config_file: s.config_path.display().to_string(),
        dry_run: core.cfg.config.agent.dry_run,
        interfaces: lock(&s.ifaces).clone(),
        tables,
        reload: core.reload_status().clone(),
        state_error: lock(&s.state_error).clone(),
        flood: FloodStatus {
            syn_cookies: core.syn_cookies.describe(),
            verified_sources: core.verified_sources,
            policies: core.flood_policies(),
        },
        detector: lock(&s.detection)
            .views(&core.cfg.config.detect.settings(), crate::detection::now()),
    })
    .into_response()
}

async fn anomalies(State(s): Shr) -> Response {
    Json(lock(&s.detection).anomalies()).into_response()
}

#[derive(Deserialize)]
struct MatchQuery {
    #[serde(rename = "match")]
    matching: Option<String>,
}

async fn list_entries(
    State(s): Shr,
    Path(list): Path<String>,
    Query(q): Query<MatchQuery>,
) -> Response {
    let kind = match list_kind(&list) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let ip = match q.matching.as_deref().map(str::parse::<IpAddr>) {
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "match must be an IP address"),
        Some(Ok(ip)) => Some(ip),
        None => None,
    };
    Json(lock(&s.core).rows(kind, ip)).into_response()
}

async fn list_add(
    State(s): Shr,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(list): Path<String>,
    req: Result<Json<AddRequest>, JsonRejection>,
) -> Response {
    let (kind, req) = match list_request(&list, req) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let args = serde_json::json!({"list": list, "count": req.prefixes.len(),
        "prefixes": req.prefixes.iter().take(100).map(ToString::to_string).collect::<Vec<_>>(),
        "ttl_secs": req.ttl_secs, "reason": req.reason, "force": req.force, "share": req.share});
    let changed = req.prefixes.len();
    if req.share {
        let problem = if kind != List::Block {
            Some("share applies to the blocklist only".to_string())
        } else if !lock(&s.core)
            .cfg
            .config
            .crowdsec
            .as_ref()
            .is_some_and(|c| c.share)
        {
            Some("--share needs [crowdsec] share = true in the config, with machine_id and password_file".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            let resp = error(StatusCode::BAD_REQUEST, &p);
            return audited(&s, &peer, &format!("{list}.add"), args, resp);
        }
    }
    let r = blocking(&s, move |shared| {
        let ttl = req.ttl_secs.map(Duration::from_secs);
        let r = lock(&shared.core).add(kind, &req.prefixes, ttl, req.reason, "cli", req.force);
        if r.is_ok() && req.share {
            crate::crowdsec_push::share_blocks(shared, &req.prefixes, ttl);
        }
        drop(req.prefixes);
        if changed >= BULK_CHANGE {
            release_freed_memory();
        }
        r
    })
    .await;
    let resp = match r {
        Ok(()) => {
            s.save_soon.notify_one();
            Json(Changed { changed }).into_response()
        }
        Err(resp) => resp,
    };
    audited(&s, &peer, &format!("{list}.add"), args, resp)
}

/// Runs a change to the state on a blocking thread: kernel map writes must
/// never stall the runtime's async workers, which also serve health checks
/// and scrapes. A task that failed becomes an error response.
async fn blocking<T: Send + 'static>(
    s: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T, CoreError> + Send + 'static,
) -> Result<T, Response> {
    let shared = s.clone();
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"))?
        .map_err(core_error)
}

async fn list_del(
    State(s): Shr,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(list): Path<String>,
    req: Result<Json<DelRequest>, JsonRejection>,
) -> Response {
    let (kind, req) = match list_request(&list, req) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let args = serde_json::json!({"list": list, "prefixes": req.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>()});
    let r = blocking(&s, move |shared| {
        let n = lock(&shared.core).remove(kind, &req.prefixes)?;
        if kind == List::Block {
            crate::crowdsec_push::unshare_blocks(shared, &req.prefixes);
        }
        Ok(n)
    })
    .await;
    let resp = match r {
        Ok(n) => {
            s.save_soon.notify_one();
            Json(Changed { changed: n }).into_response()
        }
        Err(resp) => resp,
    };
    audited(&s, &peer, &format!("{list}.del"), args, resp)
}

async fn bans(State(s): Shr) -> Response {
    match lock(&s.core).bans() {
        Ok(b) => Json::<api::Bans>(b).into_response(),
        Err(e) => core_error(e),
    }
}

async fn bans_del(
    State(s): Shr,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Result<Json<BansDelRequest>, JsonRejection>,
) -> Response {
    let req = match body(req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.all != req.prefixes.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "give either prefixes or all, not both or neither",
        );
    }
    let args = serde_json::json!({"all": req.all, "prefixes": req.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>()});
    let r = blocking(&s, move |shared| {
        let mut core = lock(&shared.core);
        if req.all {
            core.unban_all()
        } else {
            core.unban(&req.prefixes)
        }
    })
    .await;
    let resp = match r {
        Ok(n) => {
            s.save_soon.notify_one();
            Json(Changed { changed: n }).into_response()
        }
        Err(resp) => resp,
    };
    audited(&s, &peer, "bans.del", args, resp)
}

async fn stats(State(s): Shr) -> Response {
    let slots = lock(&s.slots).clone();
    let core = lock(&s.core);
    let rows: Vec<StatRow> = match core.counter_rows(&slots) {
        Ok(rows) => rows
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.packets > 0)
            .collect(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    Json(rows).into_response()
}

#[derive(Deserialize)]
struct TopQuery {
    n: Option<usize>,
}

async fn top(State(s): Shr, Query(q): Query<TopQuery>) -> Response {
    Json(lock(&s.top).top(q.n.unwrap_or(10).min(1000))).into_response()
}

#[derive(Deserialize)]
struct ExplainQuery {
    ip: String,
    proto: Option<String>,
    port: Option<u16>,
}

async fn explain(
    State(s): Shr,
    q: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected ?ip=ADDRESS[&proto=tcp|udp|icmp][&port=N]",
        );
    };
    let Ok(ip) = q.ip.parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("'{}' is not an IP address", q.ip),
        );
    };
    let proto = match q.proto.as_deref().unwrap_or("tcp") {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("protocol '{other}' is not one of tcp, udp, icmp"),
            );
        }
    };
    let core = lock(&s.core);
    let mut e = crate::explain::explain(&core, ip, proto, q.port.unwrap_or(443));
    if let Some(p) = &e.policy {
        e.detector = lock(&s.detection).view(
            p,
            &core.cfg.config.detect.settings(),
            crate::detection::now(),
        );
    }
    Json(e).into_response()
}

async fn reload_handler(State(s): Shr, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    let shared = s.clone();
    let r = tokio::task::spawn_blocking(move || reload(&shared, "control socket")).await;
    let resp = match r {
        Ok(Ok(())) => Json(Changed { changed: 1 }).into_response(),
        Ok(Err(errs)) => error(StatusCode::UNPROCESSABLE_ENTITY, errs.join("\n")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "reload failed"),
    };
    audited(&s, &peer, "reload", serde_json::json!({}), resp)
}

async fn feeds_list(State(s): Shr) -> Response {
    let configured = crate::feeds::configured(&s);
    let book = s.feeds.statuses();
    // Configured feeds not tried yet are listed too.
    let feeds = configured
        .iter()
        .map(|spec| {
            book.iter()
                .find(|b| b.name == spec.name)
                .cloned()
                .unwrap_or_else(|| crate::feeds::FeedStatus::untried(spec))
        })
        .collect();
    Json(api::FeedsView {
        feeds,
        crowdsec: crate::crowdsec_push::bouncer_view(&s),
    })
    .into_response()
}

async fn feeds_refresh(
    State(s): Shr,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Result<Json<api::RefreshRequest>, JsonRejection>,
) -> Response {
    let req = match req {
        Ok(Json(r)) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let specs = crate::feeds::configured(&s);
    let chosen: Vec<_> = specs
        .iter()
        .filter(|f| req.name.as_ref().is_none_or(|n| *n == f.name))
        .cloned()
        .collect();
    let args = serde_json::json!({"name": req.name});
    if chosen.is_empty() {
        let names: Vec<&str> = specs.iter().map(|f| f.name.as_str()).collect();
        let msg = match &req.name {
            Some(n) => format!(
                "no feed named '{n}' (configured: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
            None => "no feeds are configured ([[feed]] in the config file)".into(),
        };
        return audited(
            &s,
            &peer,
            "feeds.refresh",
            args,
            error(StatusCode::NOT_FOUND, msg),
        );
    }
    let mut out = Vec::new();
    for spec in &chosen {
        out.push(crate::feeds::refresh(&s, spec).await);
    }
    // The refresh ran either way; each feed's result is in its status.
    audited(&s, &peer, "feeds.refresh", args, Json(out).into_response())
}

/// The metrics server: GET /metrics, /healthz, /readyz and nothing else.
pub async fn start_metrics(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> anyhow::Result<JoinHandle<()>> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let refused = shared
        .metrics
        .connections_refused
        .with_label_values(&["metrics"]);
    let listener = Bounded::new(tcp, METRICS_LIMITS, refused);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz and /readyz are served here\n",
            )
        })
        .layer(DefaultBodyLimit::max(1024))
        .with_state(shared);
    tracing::info!(%addr, "metrics listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    }))
}

/// Served from a snapshot at most a second old, rendered on a blocking
/// thread: a scrape flood costs one render a second and never holds the
/// core lock on an async worker.
async fn metrics(State(s): Shr) -> Response {
    let shared = s.clone();
    let text = s
        .metrics
        .scrape(move || {
            let slots = lock(&shared.slots).clone();
            let ifaces = lock(&shared.ifaces).clone();
            let crowdsec = crate::crowdsec_push::bouncer_view(&shared);
            shared
                .metrics
                .set_sources(&shared.feeds.statuses(), crowdsec.as_ref());
            let core = lock(&shared.core);
            shared.metrics.render(&core, &slots, &ifaces)
        })
        .await;
    (
        [("content-type", "text/plain; version=0.0.4")],
        text.as_str().to_owned(),
    )
        .into_response()
}

/// Alive: housekeeping (which takes the core lock and reads the maps) has
/// run lately. A wedged agent fails this, and its pod is restarted.
async fn healthz(State(s): Shr) -> Response {
    match s.health.stalled(crate::clock::mono_ns()) {
        None => "ok\n".into_response(),
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("housekeeping last ran {}s ago\n", d.as_secs()),
        )
            .into_response(),
    }
}

/// Ready: attached on every configured interface, and the maps answer (as
/// housekeeping last found them: no state lock is taken here).
async fn readyz(State(s): Shr) -> Response {
    let ifaces = lock(&s.ifaces).clone();
    let maps_ok = s.health.maps_ok();
    let missing: Vec<String> = ifaces
        .iter()
        .filter(|i| !i.attached && i.mode != "skipped")
        .map(|i| i.name.clone())
        .collect();
    if !maps_ok {
        return (StatusCode::SERVICE_UNAVAILABLE, "maps do not answer\n").into_response();
    }
    if !ifaces.iter().any(|i| i.attached) && missing.is_empty() {
        let skipped: Vec<&str> = ifaces.iter().filter_map(|i| i.error.as_deref()).collect();
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(": {}", skipped.join("; "))
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no interface to protect{why}\n"),
        )
            .into_response();
    }
    if !missing.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not attached: {}\n", missing.join(", ")),
        )
            .into_response();
    }
    "ready\n".into_response()
}
