//! Two registries with their own credentials, as Kiln meets them in
//! production: Kiln's own (it pushes there; a docker-credential helper
//! answers for it, as `credHelpers` names it) and an upstream one its
//! parent comes from (a `docker login` entry in `auths`), each behind its
//! own token server, each behind nginx logging every request's
//! `Authorization`. config.json also holds a Docker Hub login under its
//! alias key `https://index.docker.io/v1/`.
//!
//! `kiln build` resolves the parent with the parent registry's
//! credentials, hands them to the engine, which pulls the parent from the
//! authenticated registry (X-Registry-Auth), and pushes with its own; from
//! the access logs and the token servers' records, no credential ever
//! reaches a registry it is not for. `KILN_REGISTRY_USERNAME/PASSWORD`
//! override Kiln's own registry's credentials, and only those.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::nginx::{Logged, Nginx};
use common::token::TokenServer;
use common::{Bounded, LIMIT, PrivateRegistry, Profile, fixtures};

const PUSHER: (&str, &str) = ("pusher", "push-Secret-1");
const OVERRIDE: (&str, &str) = ("override", "override-Secret-2");
const PULLER: (&str, &str) = ("puller", "parent-Secret-3");
const HUB: (&str, &str) = ("hubuser", "hub-Secret-0");

fn basic((u, p): (&str, &str)) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}

/// A registry behind its token server and nginx.
struct Authenticated {
    tokens: TokenServer,
    _registry: PrivateRegistry,
    nginx: Nginx,
}

fn authenticated(dir: &Path, service: &str, users: &[(&str, &str)]) -> Authenticated {
    let tokens = TokenServer::start(&dir.join("tokens"), service, users, &[], 300);
    let registry = PrivateRegistry::start_with(&dir.join("registry"), &tokens.registry_auth());
    let nginx = Nginx::start(&dir.join("nginx"), registry.port, 1);
    Authenticated {
        tokens,
        _registry: registry,
        nginx,
    }
}

impl Authenticated {
    /// Every token this registry's token server issued.
    fn issued(&self) -> Vec<String> {
        self.tokens
            .requests()
            .into_iter()
            .filter_map(|r| r.token)
            .collect()
    }

    /// Logged requests that carried credentials other than `own` basic
    /// credentials or a token of its own token server.
    fn foreign(&self, own: &[(&str, &str)]) -> Vec<Logged> {
        let issued = self.issued();
        let allowed: Vec<String> = own.iter().map(|c| basic(*c)).collect();
        self.nginx
            .log()
            .into_iter()
            .filter(|l| l.authorization != "-")
            .filter(|l| match l.authorization.strip_prefix("Bearer ") {
                Some(t) => !issued.iter().any(|i| i == t),
                None => !allowed.contains(&l.authorization),
            })
            .collect()
    }

    /// Token requests that carried credentials other than `own`.
    fn foreign_at_realm(&self, own: &[(&str, &str)]) -> Vec<String> {
        let allowed: Vec<String> = own.iter().map(|c| basic(*c)).collect();
        self.tokens
            .requests()
            .into_iter()
            .filter_map(|r| r.authorization)
            .filter(|a| !allowed.contains(a))
            .collect()
    }
}

/// The credential helper Kiln's registry's `credHelpers` entry names: it
/// records each server it is asked about and knows only Kiln's registry.
fn helper(bin: &Path, log: &Path, answers_for: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let script = bin.join("docker-credential-kilntest");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\necho \"$server\" >> {log}\n\
             if [ \"$server\" = \"{answers_for}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{u}\",\"Secret\":\"{p}\"}}\\n' \"$server\"\n\
             else\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n",
            log = log.display(),
            u = PUSHER.0,
            p = PUSHER.1,
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `kiln build --json` with the helper on PATH and this config.json; its
/// exit code, summary and stderr.
fn build(p: &Profile, bin: &Path, config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = p
        .command()
        .env("PATH", path)
        .env("KILN_REGISTRY_DOCKER_CONFIG", config)
        .envs(env.iter().copied())
        .args(["build", "--json"])
        .output_within(LIMIT)
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn each_registry_gets_only_its_own_credentials_and_the_engine_pulls_with_them() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let kiln_reg = authenticated(&dir.path().join("kiln"), "kiln-push", &[PUSHER, OVERRIDE]);
    let parent_reg = authenticated(&dir.path().join("parent"), "kiln-parent", &[PULLER]);
    let parent_host = parent_reg.nginx.host();
    // The parent: the busybox fixture, copied into the authenticated
    // registry (by skopeo, with the parent registry's own credentials).
    let copied = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("--dest-creds={}:{}", PULLER.0, PULLER.1))
        .arg("docker://127.0.0.1:5000/kiln-fixtures/busybox:latest")
        .arg(format!("docker://{parent_host}/fixtures/busybox:latest"))
        .output_within(LIMIT)
        .unwrap();
    assert!(
        copied.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let before_build = parent_reg.nginx.log().len();
    let bin = dir.path().join("bin");
    let asked = dir.path().join("helper.log");
    helper(&bin, &asked, &kiln_reg.nginx.host());
    let enc =
        |(u, p): (&str, &str)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": enc(HUB)},
                parent_host.as_str(): {"auth": enc(PULLER)},
            },
            "credHelpers": { kiln_reg.nginx.host(): "kilntest" },
        })
        .to_string(),
    )
    .unwrap();
    let p = Profile::busybox("credentials", "busybox-credentials")
        .parent(&format!("{parent_host}/fixtures/busybox:latest"))
        .registry_url(&kiln_reg.nginx.url())
        .own_state()
        .create();
    let (code, out) = build(&p, &bin, &config, &[]);
    assert_eq!(code, Some(0), "{out}");
    let key = format!("{}/opam:busybox-credentials-ocaml-5.5", p.namespace);
    assert!(
        p.entry(&key)["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // The engine pulled the parent from the authenticated registry itself
    // (by digest, with a token its token server issued to the puller).
    let engine_pulls: Vec<Logged> = parent_reg.nginx.log()[before_build..]
        .iter()
        .filter(|l| l.user_agent.starts_with("docker/") && l.uri.contains("/manifests/sha256:"))
        .cloned()
        .collect();
    assert!(
        engine_pulls
            .iter()
            .any(|l| l.status == 200 && l.authorization.starts_with("Bearer ")),
        "no authenticated engine pull in {:#?}",
        parent_reg.nginx.log()
    );
    // Each registry, and each token server, saw only its own credentials.
    assert_eq!(
        parent_reg.foreign(&[PULLER]),
        vec![],
        "foreign credentials at the parent registry"
    );
    assert_eq!(parent_reg.foreign_at_realm(&[PULLER]), Vec::<String>::new());
    assert_eq!(
        kiln_reg.foreign(&[PUSHER]),
        vec![],
        "foreign credentials at Kiln's registry"
    );
    assert_eq!(kiln_reg.foreign_at_realm(&[PUSHER]), Vec::<String>::new());
    assert!(
        kiln_reg
            .tokens
            .requests()
            .iter()
            .any(|r| r.authorization == Some(basic(PUSHER))),
        "the helper's credentials were used for Kiln's registry"
    );
    // The helper was asked about Kiln's registry only.
    let helper_asked = std::fs::read_to_string(&asked).unwrap();
    assert!(
        helper_asked.lines().all(|l| l == kiln_reg.nginx.host()),
        "{helper_asked}"
    );

    // The KILN_REGISTRY_* override wins for Kiln's registry, and only there:
    // a rebuild pushes with it, and the parent is resolved again with its
    // own credentials.
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        format!("{t}RUN echo override > /override\n")
    });
    let parent_seen = parent_reg.nginx.log().len();
    let override_env = [
        ("KILN_REGISTRY_USERNAME", OVERRIDE.0),
        ("KILN_REGISTRY_PASSWORD", OVERRIDE.1),
    ];
    let (code, out) = build(&p, &bin, &config, &override_env);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        parent_reg.nginx.log().len() > parent_seen,
        "the parent was resolved again"
    );
    assert_eq!(parent_reg.foreign(&[PULLER]), vec![]);
    assert_eq!(parent_reg.foreign_at_realm(&[PULLER]), Vec::<String>::new());
    assert!(
        kiln_reg
            .tokens
            .requests()
            .iter()
            .any(|r| r.authorization == Some(basic(OVERRIDE))),
        "the override reached Kiln's registry's token server"
    );
    assert_eq!(kiln_reg.foreign(&[PUSHER, OVERRIDE]), vec![]);
    // Docker Hub's login went nowhere.
    for reg in [&kiln_reg, &parent_reg] {
        let hub: Vec<Logged> = reg
            .nginx
            .log()
            .into_iter()
            .filter(|l| l.authorization == basic(HUB))
            .collect();
        assert!(hub.is_empty(), "{hub:?}");
        assert!(
            reg.tokens
                .requests()
                .iter()
                .all(|r| r.authorization != Some(basic(HUB)))
        );
    }
}
