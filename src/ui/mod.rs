//! `nasop ui`: a web page for watching searches, served on loopback from the binary itself.
//!
//! Two sources, one set of pages: a local runs directory (`local`) or a cluster through the
//! user's own kubeconfig (`cluster`). Pages are HTML with SVG charts drawn on the server
//! (`pages`, `svg`, from the data shaping in `shape`); a little script (assets/app.js)
//! refreshes `<main>` when the server says something changed (server-sent events), tails
//! logs and adds keyboard navigation. Everything the page loads comes from this binary.

pub mod bench;
pub mod cluster;
pub mod html;
pub mod local;
pub mod model;
pub mod pages;
pub mod shape;
pub mod svg;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use model::Key;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What `nasop ui` was asked to show, and where.
#[derive(Debug, Clone, clap::Args)]
pub struct UiArgs {
    /// A runs directory (what `nasop run` writes; default nasop-runs) or one run in it.
    #[arg(conflicts_with_all = ["cluster"])]
    pub dir: Option<PathBuf>,
    /// Show the cluster of the kubeconfig's current context (or --context) instead, with
    /// the user's own rights.
    #[arg(long)]
    pub cluster: bool,
    /// The kubeconfig context (default: the current one).
    #[arg(long, requires = "cluster")]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short, long, requires = "cluster", conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace the user may list.
    #[arg(short = 'A', long, requires = "cluster")]
    pub all_namespaces: bool,
    /// Where to listen; port 0 picks a free one (printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Why a page cannot be shown: an HTTP status and what to tell the user.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    pub title: String,
    pub detail: String,
}

/// Where the pages' data comes from.
#[derive(Clone)]
pub enum Source {
    Local(Arc<local::Local>),
    Cluster(Arc<cluster::Cluster>),
}

impl Source {
    pub fn label(&self) -> String {
        match self {
            Source::Local(l) => l.label(),
            Source::Cluster(c) => c.label(),
        }
    }

    pub async fn list(&self) -> Result<Vec<model::Summary>, Problem> {
        match self {
            Source::Local(l) => l.list(),
            Source::Cluster(c) => c.list().await,
        }
    }

    pub async fn detail(&self, key: &Key) -> Result<Arc<model::Detail>, Problem> {
        match self {
            Source::Local(l) => l.detail(key),
            Source::Cluster(c) => c.detail(key).await,
        }
    }

    pub async fn events(&self, key: &Key) -> Vec<model::Event> {
        match self {
            Source::Local(_) => Vec::new(),
            Source::Cluster(c) => c.events(key).await,
        }
    }

    pub async fn log(&self, key: &Key, index: u32) -> Result<String, Problem> {
        match self {
            Source::Local(l) => l.log(key, index),
            Source::Cluster(c) => c.log(key, index).await,
        }
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match self {
            Source::Local(l) => l.changes(),
            Source::Cluster(c) => c.changes(),
        }
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The pages and their assets.
pub fn router(source: Source) -> Router {
    Router::new()
        .route("/", get(list_page))
        .route("/e/{namespace}/{name}", get(experiment_page))
        .route("/e/{namespace}/{name}/", get(experiment_page))
        .route("/e/{namespace}/{name}/{index}", get(trial_page))
        .route("/e/{namespace}/{name}/{index}/log", get(trial_log))
        .route("/events", get(events))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .with_state(source)
        // A 10,000-trial page is some 500 KB of SVG; gzip makes it a fraction of that for a
        // page forwarded over SSH. (The default predicate leaves server-sent events alone.)
        .layer(tower_http::compression::CompressionLayer::new())
}

/// A page: the whole document, or only `<main>`'s content when the script asks for a
/// refresh. The server's time is in `Server-Timing`.
fn page(
    headers: &HeaderMap,
    source: &Source,
    title: &str,
    crumbs: &[(String, String)],
    started: Instant,
    body: Result<String, Problem>,
) -> Response {
    let (status, main) = match body {
        Ok(main) => (StatusCode::OK, main),
        Err(p) => (
            StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            html::problem(&p.title, &p.detail),
        ),
    };
    let partial = headers.contains_key("x-nasop-partial");
    let text = if partial {
        main
    } else {
        html::frame(title, &source.label(), crumbs, &main)
    };
    let timing = format!("render;dur={:.2}", started.elapsed().as_secs_f64() * 1000.0);
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::HeaderName::from_static("server-timing"),
                HeaderValue::from_str(&timing).unwrap_or(HeaderValue::from_static("render")),
            ),
        ],
        text,
    )
        .into_response()
}

async fn list_page(
    State(source): State<Source>,
    headers: HeaderMap,
    Query(q): Query<pages::ListQuery>,
) -> Response {
    let started = Instant::now();
    let body = source.list().await.map(|all| pages::list(&all, &q, now()));
    page(&headers, &source, "Experiments", &[], started, body)
}

async fn experiment_page(
    State(source): State<Source>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<pages::TableQuery>,
) -> Response {
    let started = Instant::now();
    let key = Key { namespace, name };
    let body = match source.detail(&key).await {
        Ok(d) => {
            let events = source.events(&key).await;
            Ok(pages::experiment(&d, &events, &q, now()))
        }
        Err(p) => Err(p),
    };
    let crumbs = [(
        format!("/e/{}/{}", html::url(&key.namespace), html::url(&key.name)),
        format!("{}/{}", key.namespace, key.name),
    )];
    page(&headers, &source, &key.name, &crumbs, started, body)
}

async fn trial_page(
    State(source): State<Source>,
    headers: HeaderMap,
    Path((namespace, name, index)): Path<(String, String, u32)>,
) -> Response {
    let started = Instant::now();
    let key = Key { namespace, name };
    let body = source
        .detail(&key)
        .await
        .and_then(|d| match d.trial(index) {
            Some(t) => Ok(pages::trial(&d, t, now())),
            None => Err(Problem {
                status: 404,
                title: format!("No trial {index} in {}", key.name),
                detail: "It may not have been created yet.".into(),
            }),
        });
    let exp_href = format!("/e/{}/{}", html::url(&key.namespace), html::url(&key.name));
    let crumbs = [
        (exp_href.clone(), format!("{}/{}", key.namespace, key.name)),
        (format!("{exp_href}/{index}"), format!("trial {index}")),
    ];
    page(
        &headers,
        &source,
        &format!("{} trial {index}", key.name),
        &crumbs,
        started,
        body,
    )
}

async fn trial_log(
    State(source): State<Source>,
    Path((namespace, name, index)): Path<(String, String, u32)>,
) -> Response {
    let key = Key { namespace, name };
    let (status, text) = match source.log(&key, index).await {
        Ok(t) => (StatusCode::OK, t),
        Err(p) => (
            StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("{}: {}", p.title, p.detail),
        ),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// Server-sent events: `change` whenever the source changed. The page refreshes on it.
async fn events(
    State(source): State<Source>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut rx = source.changes();
    // A change between the page's render and this connection (or a reconnect) would be
    // missed: every new connection refreshes the page once.
    rx.mark_changed();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let version = *rx.borrow_and_update();
        Some((
            Ok(SseEvent::default()
                .event("change")
                .data(version.to_string())),
            rx,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

/// `nasop ui`: serves until interrupted.
pub async fn run(args: UiArgs) -> anyhow::Result<()> {
    let source = if args.cluster {
        Source::Cluster(
            cluster::Cluster::connect(cluster::Scope {
                context: args.context.clone(),
                namespace: args.namespace.clone(),
                all_namespaces: args.all_namespaces,
            })
            .await?,
        )
    } else {
        let l = local::Local::new(args.dir.clone().unwrap_or_else(|| "nasop-runs".into()))?;
        l.spawn_watch();
        Source::Local(l)
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "nasop ui: http://{addr}/ ({}); Ctrl-C stops it",
        source.label()
    );
    // Not a graceful shutdown: an open page's event stream never ends, and would hold it.
    tokio::select! {
        served = axum::serve(listener, router(source)) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
