//! The admin HTTP server: metrics, health and readiness, status, backend drain/disable/enable,
//! reload, and the dashboard page, served by axum on the control runtime.
//!
//! axum (on hyper) rather than hand-written HTTP: request parsing, keep-alive, and method and
//! path routing are exactly what a well-kept server gets right and a hand-rolled one gets
//! wrong under odd clients, and none of it is on Ballast's hot path.
//!
//! Reads (`GET`) are open to whoever reaches the address (loopback by default); every `POST`
//! needs `Authorization: Bearer <token>` when `admin.token_file` is set: 401 without it, 403
//! with a wrong one. Before any of that, `admin_guard` refuses (403) what a web page
//! elsewhere could send: an unknown `Host`, a foreign `Origin`, a `POST` a form could make.
//! Errors are JSON: `{"error": "...", "errors": [...]}`.
//!
//! File descriptors: the listening socket and each accepted connection belong to the server
//! task on the control runtime and close with it; `admin_conn` caps how many there
//! are and how long each may stay idle.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ballast_dataplane::route::AdminState;
use serde_json::json;

use crate::admin_conn::Limits;
use crate::config::{Admin, LoadError};
use crate::membership::Added;
use crate::server::{
    Authorization, BackendActionError, Control, Membership, ReloadError, ReloadReport,
};
use crate::status::Status;
use crate::upgrade::{UpgradeError, UpgradeReport};

const DASHBOARD: &str = include_str!("dashboard.html");

/// Binds `admin.listen` without listening yet (SO_REUSEADDR, as std does), so that a taken
/// address fails the start before any listener listens.
pub fn bind(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Listens on a socket from [`bind`].
pub fn listen(socket: socket2::Socket) -> std::io::Result<std::net::TcpListener> {
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serves on `runtime` from a listening socket from [`listen`]. Returns the bound address,
/// port 0 resolved, and the accept loop's handle: aborting it closes the listening socket
/// (this process's descriptor of it) and lets the connections already accepted finish.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    control: Arc<Control>,
    admin: &Admin,
    listener: std::net::TcpListener,
) -> std::io::Result<(SocketAddr, tokio::task::AbortHandle)> {
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let limits = Limits {
        max_connections: admin.max_connections,
        header_timeout: admin.header_timeout,
        idle_timeout: admin.idle_timeout,
    };
    let task = runtime.spawn(crate::admin_conn::serve(listener, router(control), limits));
    Ok((local, task.abort_handle()))
}

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/upgrade", post(upgrade))
        .route(
            "/api/v1/pools/{pool}/backends/{backend}/{action}",
            post(backend_action),
        )
        .route(
            "/api/v1/pools/{pool}/backends/{backend}/weight",
            post(backend_weight),
        )
        .route("/api/v1/pools/{pool}/backends", post(add_backend))
        .route(
            "/api/v1/pools/{pool}/backends/{backend}",
            delete(remove_backend),
        )
        .route("/api/v1/pools/{pool}/membership", get(membership))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(control.clone(), guard))
        .with_state(control)
}

/// Refuses, before any handler runs, what a web page on another site could send.
async fn guard(State(control): State<Arc<Control>>, request: Request, next: Next) -> Response {
    let allowed_hosts = control.allowed_hosts();
    let verdict = crate::admin_guard::check(
        request.method(),
        request.uri().path(),
        request.headers(),
        request.uri().authority().map(|a| a.as_str()),
        &allowed_hosts,
    );
    match verdict {
        Ok(()) => next.run(request).await,
        Err(refusal) => ApiError::new(refusal.status(), refusal.to_string()).into_response(),
    }
}

/// A JSON error response.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    errors: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.errors.is_empty() {
            json!({ "error": self.message })
        } else {
            json!({ "error": self.message, "errors": self.errors })
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ballast\""),
            );
        }
        response
    }
}

fn authorize(control: &Control, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match control.authorize(presented) {
        Authorization::Allowed => Ok(()),
        Authorization::Missing => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this call needs `Authorization: Bearer <token>` (the token in admin.token_file)",
        )),
        Authorization::Wrong => Err(ApiError::new(StatusCode::FORBIDDEN, "wrong token")),
    }
}

async fn dashboard() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD))
}

async fn metrics(State(control): State<Arc<Control>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        control.metrics(),
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(control): State<Arc<Control>>) -> (StatusCode, Json<serde_json::Value>) {
    if control.ready() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": "draining" })),
        )
    }
}

async fn status(State(control): State<Arc<Control>>) -> Json<Status> {
    Json(control.status())
}

async fn reload(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
) -> Result<Json<ReloadReport>, ApiError> {
    authorize(&control, &headers)?;
    // Reading the file and binding sockets block: keep them off the runtime's one thread.
    let result = tokio::task::spawn_blocking(move || control.reload())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reload failed: {e}"),
            )
        })?;
    result.map(Json).map_err(|error| {
        let (status, message) = match &error {
            ReloadError::Load(LoadError::Invalid(_)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid configuration refused; the running one is unchanged",
            ),
            ReloadError::Load(_)
            | ReloadError::Token(_)
            | ReloadError::Listener(_)
            | ReloadError::Discovery(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "configuration refused; the running one is unchanged",
            ),
            ReloadError::NoConfigFile => (StatusCode::CONFLICT, "nothing to reload"),
            ReloadError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            ReloadError::Upgrading => (StatusCode::CONFLICT, "a binary upgrade is under way"),
        };
        ApiError {
            status,
            message: message.to_string(),
            errors: error.lines(),
        }
    })
}

/// `POST /api/v1/upgrade`, optionally with `{"binary": "/path"}`: answers once the new
/// process serves (200, with its pid) or was refused (the reasons; this process serves on).
/// Naming a binary needs `admin.token_file`: without a token anyone who reaches the admin
/// address could make Ballast run a program of their choosing.
async fn upgrade(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<UpgradeReport>, ApiError> {
    authorize(&control, &headers)?;
    let request: UpgradeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        UpgradeRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"binary\": \"/path\"}} or no body: {e}"),
            )
        })?
    };
    if request.binary.is_some() && !control.has_token() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "naming a binary needs admin.token_file; without one, only the running binary's path is started",
        ));
    }
    // Starting the child and waiting for it block: keep them off the runtime's one thread.
    let result = tokio::task::spawn_blocking(move || control.upgrade(request.binary))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("upgrade failed: {e}"),
            )
        })?;
    result.map(Json).map_err(|error| {
        let status = match &error {
            UpgradeError::InProgress => StatusCode::CONFLICT,
            UpgradeError::NoConfigFile => StatusCode::CONFLICT,
            UpgradeError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: "upgrade refused; this process serves on".to_string(),
            errors: error.lines(),
        }
    })
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeRequest {
    binary: Option<std::path::PathBuf>,
}

async fn backend_action(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&control, &headers)?;
    let Path((pool, backend, action)) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let admin = match action.as_str() {
        "drain" => AdminState::Draining,
        "disable" => AdminState::Disabled,
        "enable" => AdminState::Enabled,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}; expected drain, disable or enable"),
            ))
        }
    };
    let address = backend_address(&backend)?;
    let state = control
        .set_backend_admin(&pool, address, admin)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(Json(
        json!({ "pool": pool, "backend": address, "state": state }),
    ))
}

fn backend_address(text: &str) -> Result<SocketAddr, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a backend address; expected IP:port, e.g. 10.0.0.1:5432"),
        )
    })
}

fn action_error(error: BackendActionError) -> ApiError {
    let status = match &error {
        e if e.is_not_found() => StatusCode::NOT_FOUND,
        BackendActionError::AlreadyInPool { .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, error.to_string())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("expected {expected}: {e}")))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightRequest {
    /// `null` puts the file's (or the name's) weight back.
    weight: Option<u32>,
}

/// `POST /api/v1/pools/{pool}/backends/{backend}/weight` with `{"weight": 5}` (or `null`).
async fn backend_weight(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&control, &headers)?;
    let Path((pool, backend)) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let address = backend_address(&backend)?;
    let request: WeightRequest = json_body(&body, "{\"weight\": 1..256 or null}")?;
    let weight = tokio::task::spawn_blocking(move || {
        control.set_backend_weight(&pool, address, request.weight)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(action_error)?;
    Ok(Json(
        json!({ "backend": address, "weight": weight, "runtime": request.weight.is_some() }),
    ))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    max_connections: Option<u64>,
}

fn one() -> u32 {
    1
}

/// `POST /api/v1/pools/{pool}/backends` with `{"address": "10.0.0.9:80", "weight": 2}`.
async fn add_backend(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&control, &headers)?;
    let Path(pool) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let request: AddRequest = json_body(
        &body,
        "{\"address\": \"IP:port\", \"weight\": 1, \"backup\": false, \"max_connections\": null}",
    )?;
    let address = backend_address(&request.address)?;
    let added = Added {
        weight: request.weight,
        backup: request.backup,
        max_connections: request.max_connections,
    };
    tokio::task::spawn_blocking(move || control.add_backend(&pool, address, added))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(action_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "backend": address, "added": true })),
    ))
}

/// `DELETE /api/v1/pools/{pool}/backends/{backend}`: out of the pool; its sessions finish.
async fn remove_backend(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&control, &headers)?;
    let Path((pool, backend)) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let address = backend_address(&backend)?;
    tokio::task::spawn_blocking(move || control.remove_backend(&pool, address))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(action_error)?;
    Ok(Json(json!({ "backend": address, "removed": true })))
}

/// `GET /api/v1/pools/{pool}/membership`.
async fn membership(
    State(control): State<Arc<Control>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Membership>, ApiError> {
    let Path(pool) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    control.membership(&pool).map(Json).map_err(action_error)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}
