//! A stand-in for GitHub's REST API: the endpoints Kiln calls (contents,
//! git refs, pulls, issues; `/user` and `/installation/repositories` for
//! the credential check; a GitHub App's installation tokens), over real
//! HTTP, recording every request and the credential it came with.
//! Credentials are checked as GitHub does: a personal token or an issued
//! installation token, and for `/app/installations/{id}/access_tokens` a
//! JWT (RS256) verified with the App's public key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Gh {
    /// (repo, branch, path) → (content, sha)
    pub files: HashMap<(String, String, String), (String, String)>,
    /// (repo, branch) → commit sha
    pub refs: HashMap<(String, String), String>,
    pub pulls: Vec<Value>,
    pub issues: Vec<Value>,
    pub log: Vec<String>,
    pub seq: u64,
    /// The release profile's lockfile: each request is logged with whether
    /// 5.5.1 was published when it came (` published=true|false`).
    pub lockfile: std::path::PathBuf,
    /// The personal token GitHub accepts (empty: none).
    pub pat: String,
    /// The GitHub App whose JWTs are verified and whose installation
    /// tokens are issued.
    pub app: Option<App>,
    /// Installation tokens issued, in order.
    pub issued: Vec<String>,
    /// `METHOD PATH` → the credential it came with: `pat`,
    /// `installation`, `jwt` or `none`.
    pub auth_log: Vec<(String, String)>,
}

/// A GitHub App as GitHub knows it: its id, its one installation and the
/// public half of its key (PEM), which verifies the JWTs Kiln signs.
pub struct App {
    pub id: u64,
    pub installation: u64,
    pub public_pem: Vec<u8>,
}

impl Gh {
    fn record(&mut self, m: &Method, u: &Uri) {
        let published = std::fs::read_to_string(&self.lockfile)
            .is_ok_and(|t| t.contains("\"ocaml\": \"5.5.1\""));
        self.log.push(format!("{m} {u} published={published}"));
    }
}

pub type Shared = Arc<Mutex<Gh>>;

pub fn gh_error(code: StatusCode, msg: &str) -> Response {
    (
        code,
        Json(json!({"message": msg, "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn get_contents(
    State(g): State<Shared>,
    Path((o, r, path)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    let branch = q.get("ref").cloned().unwrap_or_else(|| "main".into());
    match g.files.get(&(format!("{o}/{r}"), branch, path.clone())) {
        Some((content, sha)) => Json(json!({"type": "file", "path": path, "sha": sha, "encoding": "base64", "content": b64(content)})).into_response(),
        None => gh_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn put_contents(
    State(g): State<Shared>,
    Path((o, r, path)): Path<(String, String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    let repo = format!("{o}/{r}");
    let branch = b["branch"].as_str().unwrap_or("main").to_string();
    let content = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b["content"].as_str().unwrap_or(""))
            .unwrap(),
    )
    .unwrap();
    let key = (repo.clone(), branch.clone(), path.clone());
    if let Some((_, sha)) = g.files.get(&key)
        && b["sha"].as_str() != Some(sha.as_str())
    {
        return gh_error(StatusCode::CONFLICT, "sha does not match");
    }
    g.seq += 1;
    let sha = format!("blob{}", g.seq);
    g.files.insert(key, (content, sha.clone()));
    let commit = format!("commit{}", g.seq);
    g.refs.insert((repo, branch), commit);
    Json(json!({"content": {"sha": sha, "path": path}, "commit": {"sha": format!("commit{}", g.seq)}})).into_response()
}

async fn get_ref(
    State(g): State<Shared>,
    Path((o, r, branch)): Path<(String, String, String)>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    match g.refs.get(&(format!("{o}/{r}"), branch.clone())) {
        Some(sha) => Json(json!({"ref": format!("refs/heads/{branch}"), "object": {"sha": sha, "type": "commit"}})).into_response(),
        None => gh_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn post_ref(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    let repo = format!("{o}/{r}");
    let branch = b["ref"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("refs/heads/")
        .to_string();
    if g.refs.contains_key(&(repo.clone(), branch.clone())) {
        return gh_error(StatusCode::UNPROCESSABLE_ENTITY, "Reference already exists");
    }
    // The new branch starts with the base's files.
    let base: Vec<_> = g
        .files
        .iter()
        .filter(|((rp, br, _), _)| *rp == repo && br == "main")
        .map(|((_, _, p), v)| (p.clone(), v.clone()))
        .collect();
    for (p, v) in base {
        g.files.insert((repo.clone(), branch.clone(), p), v);
    }
    g.refs.insert(
        (repo, branch.clone()),
        b["sha"].as_str().unwrap_or("").to_string(),
    );
    (
        StatusCode::CREATED,
        Json(json!({"ref": format!("refs/heads/{branch}")})),
    )
        .into_response()
}

async fn get_pulls(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    let repo = format!("{o}/{r}");
    let head = q.get("head").cloned().unwrap_or_default();
    let list: Vec<Value> = g
        .pulls
        .iter()
        .filter(|p| {
            p["repo"] == repo.as_str()
                && (head.is_empty() || format!("{o}:{}", p["head"].as_str().unwrap_or("")) == head)
        })
        .cloned()
        .collect();
    Json(json!(list)).into_response()
}

async fn post_pull(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    g.seq += 1;
    let n = g.seq;
    let pr = json!({"repo": format!("{o}/{r}"), "number": n, "html_url": format!("https://github.com/{o}/{r}/pull/{n}"),
        "head": b["head"], "base": b["base"], "title": b["title"], "body": b["body"], "state": "open"});
    g.pulls.push(pr.clone());
    (StatusCode::CREATED, Json(pr)).into_response()
}

async fn get_issues(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    let repo = format!("{o}/{r}");
    let list: Vec<Value> = g
        .issues
        .iter()
        .filter(|i| i["repo"] == repo.as_str())
        .cloned()
        .collect();
    Json(json!(list)).into_response()
}

async fn post_issue(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.record(&m, &u);
    g.seq += 1;
    let i = json!({"repo": format!("{o}/{r}"), "number": g.seq, "title": b["title"], "body": b["body"], "state": "open"});
    g.issues.push(i.clone());
    (StatusCode::CREATED, Json(i)).into_response()
}

pub fn app(g: Shared) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/user", get(get_user))
        .route("/installation/repositories", get(installation_repositories))
        .route("/app/installations/{id}/access_tokens", post(access_tokens))
        .route(
            "/repos/{o}/{r}/contents/{*path}",
            get(get_contents).put(put_contents),
        )
        .route("/repos/{o}/{r}/git/ref/heads/{*branch}", get(get_ref))
        .route("/repos/{o}/{r}/git/refs", post(post_ref))
        .route("/repos/{o}/{r}/pulls", get(get_pulls).post(post_pull))
        .route("/repos/{o}/{r}/issues", get(get_issues).post(post_issue))
        .layer(axum::middleware::from_fn_with_state(
            g.clone(),
            authenticate,
        ))
        .with_state(g)
}

/// The bearer (or `token`) credential of a request.
fn credential(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, t) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| t.trim().to_string())
}

/// The JWT's claims when the App's public key verifies it (RS256, not
/// expired, issued by the App); why not otherwise.
fn verify_jwt(app: &App, jwt: &str) -> Result<Value, String> {
    let key =
        jsonwebtoken::DecodingKey::from_rsa_pem(&app.public_pem).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // `iss` is the App id as a number, which jsonwebtoken reads as absent:
    // checked below.
    v.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Value>(jwt, &key, &v).map_err(|e| e.to_string())?;
    let iss = &data.claims["iss"];
    if iss.as_u64() != Some(app.id) && iss.as_str() != Some(&app.id.to_string()) {
        return Err(format!("iss {iss} is not app {}", app.id));
    }
    Ok(data.claims)
}

/// Every request's credential, checked and recorded; 401 "Bad
/// credentials" for one GitHub would refuse.
async fn authenticate(State(g): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let what = format!("{} {path}", req.method());
    let presented = credential(req.headers());
    let kind = {
        let g = g.lock().unwrap();
        if path.starts_with("/app/") {
            match (&g.app, &presented) {
                (Some(app), Some(jwt)) => match verify_jwt(app, jwt) {
                    Ok(_) => "jwt",
                    Err(e) => {
                        return gh_error(
                            StatusCode::UNAUTHORIZED,
                            &format!("A JSON web token could not be decoded: {e}"),
                        );
                    }
                },
                _ => return gh_error(StatusCode::UNAUTHORIZED, "A JSON web token is required"),
            }
        } else {
            match &presented {
                None => "none",
                Some(t) if !g.pat.is_empty() && *t == g.pat => "pat",
                Some(t) if g.issued.contains(t) => "installation",
                Some(_) => return gh_error(StatusCode::UNAUTHORIZED, "Bad credentials"),
            }
        }
    };
    let needs = path == "/user" || path == "/installation/repositories";
    if needs && kind == "none" {
        return gh_error(StatusCode::UNAUTHORIZED, "Requires authentication");
    }
    if path == "/installation/repositories" && kind != "installation" {
        return gh_error(StatusCode::FORBIDDEN, "an installation token is required");
    }
    g.lock().unwrap().auth_log.push((what, kind.to_string()));
    next.run(req).await
}

async fn get_user() -> Response {
    Json(json!({"login": "kiln-bot", "id": 1})).into_response()
}

async fn installation_repositories() -> Response {
    Json(json!({"total_count": 0, "repositories": []})).into_response()
}

/// A new installation token, valid for an hour, for the App's installation.
async fn access_tokens(State(g): State<Shared>, Path(id): Path<u64>) -> Response {
    let mut g = g.lock().unwrap();
    if g.app.as_ref().map(|a| a.installation) != Some(id) {
        return gh_error(StatusCode::NOT_FOUND, "Not Found");
    }
    g.seq += 1;
    let token = format!("ghs_installation{}x{}", g.seq, std::process::id());
    g.issued.push(token.clone());
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    (
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "permissions": {"contents": "write", "pull_requests": "write"}})),
    )
        .into_response()
}
