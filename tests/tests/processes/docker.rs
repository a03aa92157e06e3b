//! `docker/`: the image, the compose file and the load balancer's configuration,
//! checked against the workspace and the built binaries (no Docker needed).

use daypass_tests::server::{daypass_binary, worker_binary};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The image the compose file builds and runs its Daypass services from.
const DAYPASS_IMAGE: &str = "daypass:local";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The compose file

/// One service of `docker/compose.yaml`, its `<<` merges applied.
struct Service {
    name: String,
    def: Yaml,
}

impl Service {
    fn image(&self) -> Option<&str> {
        self.def.get("image").and_then(Yaml::as_str)
    }

    fn command(&self) -> Vec<String> {
        match self.def.get("command") {
            Some(Yaml::Sequence(words)) => words
                .iter()
                .map(|w| w.as_str().expect("command words are strings").to_owned())
                .collect(),
            Some(Yaml::String(line)) => line.split_whitespace().map(str::to_owned).collect(),
            None => Vec::new(),
            Some(other) => panic!("{}: command {other:?}", self.name),
        }
    }

    /// The program the service runs: the first word of its command.
    fn program(&self) -> Option<String> {
        self.command().first().cloned()
    }

    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        match self.def.get("environment") {
            Some(Yaml::Mapping(map)) => {
                for (k, v) in map {
                    let key = k.as_str().expect("variable names are strings").to_owned();
                    let value = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Number(n) => n.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        other => panic!("{}: {key} = {other:?}", self.name),
                    };
                    env.insert(key, value);
                }
            }
            Some(Yaml::Sequence(list)) => {
                for item in list {
                    let item = item.as_str().expect("KEY=value strings");
                    let (k, v) = item.split_once('=').unwrap_or((item, ""));
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
            None => {}
            Some(other) => panic!("{}: environment {other:?}", self.name),
        }
        env
    }

    fn env_var(&self, key: &str) -> String {
        self.env()
            .remove(key)
            .unwrap_or_else(|| panic!("service {} does not set {key}", self.name))
    }

    /// `depends_on` as service → condition (the short list form has none).
    fn depends_on(&self) -> BTreeMap<String, Option<String>> {
        match self.def.get("depends_on") {
            Some(Yaml::Mapping(map)) => map
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_owned(),
                        v.get("condition").and_then(Yaml::as_str).map(str::to_owned),
                    )
                })
                .collect(),
            Some(Yaml::Sequence(list)) => list
                .iter()
                .map(|k| (k.as_str().unwrap().to_owned(), None))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    fn healthcheck_disabled(&self) -> bool {
        self.def
            .get("healthcheck")
            .and_then(|h| h.get("disable"))
            .and_then(Yaml::as_bool)
            == Some(true)
    }

    fn has_own_healthcheck(&self) -> bool {
        self.def
            .get("healthcheck")
            .is_some_and(|h| h.get("test").is_some())
    }
}

fn compose() -> Vec<Service> {
    let mut doc: Yaml =
        serde_norway::from_str(&read("docker/compose.yaml")).expect("compose.yaml is YAML");
    doc.apply_merge().expect("compose.yaml's << merges apply");
    let Some(Yaml::Mapping(services)) = doc.get("services") else {
        panic!("compose.yaml has no services mapping");
    };
    services
        .iter()
        .map(|(name, def)| Service {
            name: name.as_str().unwrap().to_owned(),
            def: def.clone(),
        })
        .collect()
}

/// The services running the Daypass image.
fn daypass_services(services: &[Service]) -> Vec<&Service> {
    services
        .iter()
        .filter(|s| s.image() == Some(DAYPASS_IMAGE))
        .collect()
}

fn api_services(services: &[Service]) -> Vec<&Service> {
    daypass_services(services)
        .into_iter()
        .filter(|s| s.command() == ["daypass", "serve"])
        .collect()
}

fn worker_services(services: &[Service]) -> Vec<&Service> {
    daypass_services(services)
        .into_iter()
        .filter(|s| s.program().as_deref() == Some("daypass-worker"))
        .collect()
}

fn service<'a>(services: &'a [Service], name: &str) -> &'a Service {
    services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

/// The built binary a program name of the image stands for.
fn binary(program: &str) -> PathBuf {
    match program {
        "daypass" => daypass_binary(),
        "daypass-worker" => worker_binary(),
        other => panic!("the image has no program {other:?}"),
    }
}

/// The environment variables a binary reads: clap prints `[env: NAME=value]` (or
/// `[env: NAME]` for hidden values) for each.
fn known_env(program: &str) -> BTreeSet<String> {
    let out = Command::new(binary(program))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{program} --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
    let vars: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    assert!(
        vars.contains("DAYPASS_DATABASE_URL"),
        "no [env: …] found in {program} --help:\n{help}"
    );
    vars
}

/// `host:port` → port.
fn port_of(address: &str) -> u16 {
    let (_, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{address:?} has no port"));
    port.parse()
        .unwrap_or_else(|_| panic!("{address:?}: bad port"))
}

/// `scheme://user:pass@host:port/…` → host.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.split(':').next().unwrap()
}

#[test]
fn compose_services_set_only_variables_their_binary_reads() {
    let services = compose();
    let daypass = daypass_services(&services);
    assert!(
        daypass.len() >= 5,
        "expected migrate, two APIs and two workers on {DAYPASS_IMAGE}, found {}",
        daypass.len()
    );
    for s in daypass {
        let program = s
            .program()
            .unwrap_or_else(|| panic!("service {} has no command", s.name));
        let known = known_env(&program);
        for key in s.env().keys() {
            // RUST_LOG is the one variable of RUNNING.md that clap does not read.
            assert!(
                key == "RUST_LOG" || known.contains(key),
                "service {} sets {key}, which {program} does not read (it reads {known:?})",
                s.name
            );
        }
    }
}

#[test]
fn compose_commands_are_ones_the_binaries_accept() {
    // The check below means something only if a wrong subcommand fails it.
    let bogus = Command::new(daypass_binary())
        .args(["no-such-subcommand", "--help"])
        .output()
        .unwrap();
    assert!(!bogus.status.success(), "daypass accepts any subcommand?");

    let services = compose();
    for s in daypass_services(&services) {
        let command = s.command();
        let (program, args) = command
            .split_first()
            .unwrap_or_else(|| panic!("service {} has no command", s.name));
        let out = Command::new(binary(program))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "service {}: `{} --help` fails: {}",
            s.name,
            command.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn two_apis_and_two_workers_share_one_database_and_queue() {
    let services = compose();
    let apis = api_services(&services);
    let workers = worker_services(&services);
    assert_eq!(apis.len(), 2, "API replicas (daypass serve)");
    assert_eq!(workers.len(), 2, "daypass-worker services");

    let migrate: Vec<_> = daypass_services(&services)
        .into_iter()
        .filter(|s| s.command() == ["daypass", "migrate"])
        .collect();
    assert_eq!(migrate.len(), 1, "one `daypass migrate` service");
    let migrate = migrate[0];

    let database = migrate.env_var("DAYPASS_DATABASE_URL");
    assert!(database.starts_with("postgres://"), "{database}");
    let queue = apis[0].env_var("DAYPASS_QUEUE_URL");
    assert!(
        queue.starts_with("redis://"),
        "the queue is on Redis: {queue}"
    );
    for url in [&database, &queue] {
        service(&services, url_host(url));
    }

    for s in apis.iter().chain(&workers) {
        assert_eq!(s.env_var("DAYPASS_DATABASE_URL"), database, "{}", s.name);
        assert_eq!(s.env_var("DAYPASS_QUEUE_URL"), queue, "{}", s.name);
        let smtp = s.env_var("DAYPASS_SMTP_URL");
        let mail = service(&services, url_host(&smtp));
        assert!(
            mail.image().is_some_and(|i| i.contains("mailpit")),
            "{}: mail goes to {smtp}, not the mail catcher",
            s.name
        );
        assert_eq!(
            s.depends_on().get(&migrate.name),
            Some(&Some("service_completed_successfully".to_owned())),
            "{} starts after the migrations",
            s.name
        );
    }
    for s in &apis {
        assert_eq!(s.env_var("DAYPASS_WORKERS"), "external", "{}", s.name);
    }
}

#[test]
fn depends_on_conditions_can_be_met() {
    let services = compose();
    let image_healthcheck = dockerfile()
        .final_stage()
        .iter()
        .any(|i| i.keyword == "HEALTHCHECK");
    for s in &services {
        for (dependency, condition) in s.depends_on() {
            let target = service(&services, &dependency);
            match condition.as_deref() {
                Some("service_healthy") => assert!(
                    target.has_own_healthcheck()
                        || (target.image() == Some(DAYPASS_IMAGE)
                            && image_healthcheck
                            && !target.healthcheck_disabled()),
                    "{} waits for {dependency} to be healthy, which has no health check",
                    s.name
                ),
                Some("service_completed_successfully") => assert_eq!(
                    target.def.get("restart").and_then(Yaml::as_str),
                    Some("no"),
                    "{dependency} is a one-shot: it must not restart"
                ),
                Some("service_started") => {}
                other => panic!("{} → {dependency}: condition {other:?}", s.name),
            }
        }
    }
    // The image's check asks the API port; a worker serves /healthz only on its own
    // listener (DAYPASS_METRICS_LISTEN), so its check must ask that port.
    for s in worker_services(&services) {
        let listen = s.env_var("DAYPASS_METRICS_LISTEN");
        let port = listen
            .rsplit_once(':')
            .map(|(_, p)| p.to_owned())
            .unwrap_or_else(|| panic!("{}: DAYPASS_METRICS_LISTEN {listen:?} has no port", s.name));
        assert!(
            !s.healthcheck_disabled() && s.has_own_healthcheck(),
            "{} needs its own health check on its metrics listener",
            s.name
        );
        let test = format!("{:?}", s.def["healthcheck"]["test"]);
        assert!(
            test.contains(&format!(":{port}/healthz")),
            "{}'s health check must ask /healthz on its listener's port {port}: {test}",
            s.name
        );
    }
}

// ---------------------------------------------------------------------------
// The load balancer

/// nginx.conf's `upstream` servers, `listen` ports and the directives of the
/// `location /graphql/ws` block.
struct Nginx {
    upstream: Vec<String>,
    listen: Vec<u16>,
    ws_location: Vec<String>,
    proxy_pass: Vec<String>,
}

fn nginx() -> Nginx {
    let text = read("docker/nginx.conf");
    let mut nginx = Nginx {
        upstream: Vec::new(),
        listen: Vec::new(),
        ws_location: Vec::new(),
        proxy_pass: Vec::new(),
    };
    let mut upstream_name = None;
    // The blocks we are in, innermost last.
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        if let Some(head) = line.strip_suffix('{') {
            let head = head.trim().to_owned();
            if let Some(name) = head.strip_prefix("upstream ") {
                upstream_name = Some(name.trim().to_owned());
            }
            blocks.push(head);
            continue;
        }
        if line == "}" {
            blocks.pop();
            continue;
        }
        let Some(directive) = line.strip_suffix(';') else {
            continue;
        };
        let words: Vec<&str> = directive.split_whitespace().collect();
        let in_block = |prefix: &str| blocks.last().is_some_and(|b| b.starts_with(prefix));
        match words.as_slice() {
            ["server", address, ..] if in_block("upstream") => {
                nginx.upstream.push((*address).to_owned())
            }
            ["listen", port, ..] if in_block("server") => {
                nginx.listen.push(port.parse().expect("listen PORT"))
            }
            ["proxy_pass", target] => nginx.proxy_pass.push((*target).to_owned()),
            _ => {}
        }
        if in_block("location /graphql/ws") {
            nginx.ws_location.push(words.join(" "));
        }
    }
    let upstream_name = upstream_name.expect("nginx.conf has an upstream block");
    for target in &nginx.proxy_pass {
        assert_eq!(
            target,
            &format!("http://{upstream_name}"),
            "every location proxies to the upstream"
        );
    }
    nginx
}

#[test]
fn load_balancer_forwards_to_both_apis_on_their_port() {
    let services = compose();
    let nginx = nginx();
    let apis = api_services(&services);
    assert!(!nginx.proxy_pass.is_empty(), "nginx.conf proxies nothing");

    let upstream: BTreeMap<&str, u16> = nginx
        .upstream
        .iter()
        .map(|a| {
            (
                a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h),
                port_of(a),
            )
        })
        .collect();
    let api_names: BTreeSet<&str> = apis.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        upstream.keys().copied().collect::<BTreeSet<_>>(),
        api_names,
        "nginx's upstream servers are the API services"
    );
    for s in &apis {
        let listen = s.env_var("DAYPASS_LISTEN");
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{}: {listen} is unreachable from other containers",
            s.name
        );
        assert_eq!(
            port_of(&listen),
            upstream[s.name.as_str()],
            "{} listens where nginx forwards",
            s.name
        );
    }

    // Subscriptions: the WebSocket upgrade is passed through.
    for needed in [
        "proxy_http_version 1.1",
        "proxy_set_header Upgrade $http_upgrade",
    ] {
        assert!(
            nginx.ws_location.iter().any(|d| d == needed),
            "location /graphql/ws lacks `{needed};`"
        );
    }
    assert!(
        nginx
            .ws_location
            .iter()
            .any(|d| d.starts_with("proxy_set_header Connection ")),
        "location /graphql/ws does not pass Connection: upgrade"
    );

    // The balancer's service mounts this file and publishes the port it listens on.
    let lb: Vec<&Service> = services
        .iter()
        .filter(|s| {
            s.def
                .get("volumes")
                .and_then(Yaml::as_sequence)
                .is_some_and(|v| {
                    v.iter()
                        .any(|m| m.as_str().is_some_and(|m| m.starts_with("./nginx.conf:")))
                })
        })
        .collect();
    assert_eq!(lb.len(), 1, "one service mounts ./nginx.conf");
    let lb = lb[0];
    let published: Vec<u16> = lb
        .def
        .get("ports")
        .and_then(Yaml::as_sequence)
        .expect("the load balancer publishes a port")
        .iter()
        .map(|p| port_of(p.as_str().expect("\"HOST:CONTAINER\" ports")))
        .collect();
    assert!(
        published.iter().any(|p| nginx.listen.contains(p)),
        "the load balancer publishes {published:?} but nginx listens on {:?}",
        nginx.listen
    );
    for api in &api_names {
        assert!(
            lb.depends_on().contains_key(*api),
            "the load balancer starts after {api}"
        );
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile

struct Instruction {
    keyword: String,
    args: String,
}

struct Dockerfile {
    instructions: Vec<Instruction>,
}

impl Dockerfile {
    /// The instructions after the last `FROM`.
    fn final_stage(&self) -> &[Instruction] {
        let last_from = self
            .instructions
            .iter()
            .rposition(|i| i.keyword == "FROM")
            .expect("a FROM");
        &self.instructions[last_from + 1..]
    }

    fn stage_named(&self, name: &str) -> &[Instruction] {
        let start = self
            .instructions
            .iter()
            .position(|i| {
                i.keyword == "FROM" && i.args.to_lowercase().ends_with(&format!(" as {name}"))
            })
            .unwrap_or_else(|| panic!("no stage {name}"));
        let end = self.instructions[start + 1..]
            .iter()
            .position(|i| i.keyword == "FROM")
            .map_or(self.instructions.len(), |e| start + 1 + e);
        &self.instructions[start..end]
    }
}

/// Instructions with their `\` continuations joined; comments and the parser
/// directive dropped.
fn dockerfile() -> Dockerfile {
    let text = read("docker/Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(char::is_whitespace).expect("ARGS");
        instructions.push(Instruction {
            keyword: keyword.to_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        });
        current.clear();
    }
    Dockerfile { instructions }
}

/// The words of the `cargo build` command in the builder stage's `RUN`s.
fn cargo_build_words(stage: &[Instruction]) -> Vec<String> {
    let builds: Vec<&str> = stage
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(|i| i.args.split("&&"))
        .map(str::trim)
        .filter(|c| c.starts_with("cargo build") || c.contains(" cargo build "))
        .collect();
    assert_eq!(
        builds.len(),
        1,
        "one cargo build in the builder: {builds:?}"
    );
    let words: Vec<String> = builds[0].split_whitespace().map(str::to_owned).collect();
    let start = words.iter().position(|w| w == "cargo").unwrap();
    words[start..].to_vec()
}

/// `--flag value` and `--flag=value` occurrences.
fn option_values(words: &[String], names: &[&str]) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for (i, w) in words.iter().enumerate() {
        for name in names {
            if w == name {
                values.insert(words.get(i + 1).expect("a value").clone());
            } else if let Some(v) = w.strip_prefix(&format!("{name}=")) {
                values.insert(v.to_owned());
            }
        }
    }
    values
}

/// `cargo metadata` of the workspace with every dependency, resolved `--locked`:
/// it fails, as the image's `cargo build --locked` would, when Cargo.lock is stale.
fn cargo_metadata() -> &'static Json {
    static METADATA: OnceLock<Json> = OnceLock::new();
    METADATA.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(repo_root())
            .args(["metadata", "--format-version", "1", "--locked"]);
        let out = cmd.output().expect("run cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata --locked fails (Cargo.lock out of date?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

/// Workspace package → its binary targets.
fn workspace_binaries() -> BTreeMap<String, BTreeSet<String>> {
    let metadata = cargo_metadata();
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap()))
        .map(|p| {
            let bins = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), bins)
        })
        .collect()
}

fn parse_version(v: &str) -> Vec<u64> {
    v.split('.')
        .map(|n| n.parse().unwrap_or_else(|_| panic!("version {v:?}")))
        .collect()
}

#[test]
fn dockerfile_builds_the_two_binaries_and_copies_exactly_them() {
    let dockerfile = dockerfile();
    let builder = dockerfile.stage_named("builder");
    let words = cargo_build_words(builder);
    for flag in ["--release", "--locked"] {
        assert!(words.iter().any(|w| w == flag), "cargo build lacks {flag}");
    }
    let packages = option_values(&words, &["-p", "--package"]);
    let bins = option_values(&words, &["--bin"]);

    // The packages and binaries exist in the workspace, each binary in a package
    // that is built: the same pairs the tests build (`daypass_binary`,
    // `worker_binary`).
    let workspace = workspace_binaries();
    for package in &packages {
        assert!(
            workspace.contains_key(package),
            "cargo build -p {package}: not a workspace package ({:?})",
            workspace.keys()
        );
    }
    for bin in &bins {
        assert!(
            packages.iter().any(|p| workspace[p].contains(bin)),
            "--bin {bin} is in none of the packages built ({packages:?})"
        );
    }
    let expected: BTreeSet<String> = ["daypass", "daypass-worker"].map(String::from).into();
    assert_eq!(bins, expected, "the image builds both binaries");
    assert_eq!(workspace["daypass"], ["daypass".to_owned()].into());
    assert!(workspace["daypass-worker"].contains("daypass-worker"));

    // SQLX_OFFLINE is set for the build.
    assert!(
        builder
            .iter()
            .any(|i| i.keyword == "ENV" && i.args.replace(' ', "=") == "SQLX_OFFLINE=true"),
        "the builder sets ENV SQLX_OFFLINE=true"
    );

    // The builder's Rust is new enough for every crate of the lock file.
    let from = &builder[0].args;
    let tag = from
        .split_whitespace()
        .next()
        .and_then(|image| image.strip_prefix("rust:"))
        .expect("the builder is FROM rust:VERSION");
    let rust = parse_version(tag.split('-').next().unwrap());
    let metadata = cargo_metadata();
    let mut needed = (parse_version("1.85"), "edition 2024".to_owned());
    for p in metadata["packages"].as_array().unwrap() {
        if let Some(v) = p["rust_version"].as_str() {
            let v = parse_version(v);
            if v > needed.0 {
                needed = (v, p["name"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(
        rust >= needed.0,
        "FROM rust:{tag} is older than {:?}, which {} needs",
        needed.0,
        needed.1
    );

    // What leaves the builder: the built binaries, from the directory the build
    // writes them to, and nothing else.
    let copied_out: BTreeSet<String> = builder
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(|i| i.args.split_whitespace())
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(copied_out, bins, "the builder copies out what it builds");
    let copied_in: Vec<(String, String)> = dockerfile
        .final_stage()
        .iter()
        .filter(|i| i.keyword == "COPY" && i.args.starts_with("--from=builder "))
        .map(|i| {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            assert_eq!(words.len(), 3, "COPY --from=builder SRC DEST: {}", i.args);
            let name = words[1].rsplit('/').next().unwrap().to_owned();
            (name, words[2].to_owned())
        })
        .collect();
    let copied_names: BTreeSet<String> = copied_in.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        copied_names, bins,
        "the image holds exactly the binaries built"
    );
    for (name, dest) in &copied_in {
        assert!(
            dest == &format!("/usr/local/bin/{name}") || dest == "/usr/local/bin/",
            "{name} is copied to {dest}, not onto PATH as compose's commands expect"
        );
    }

    // Every program the compose file runs on the image is in it.
    for s in daypass_services(&compose()) {
        let program = s.program().unwrap();
        assert!(
            copied_names.contains(&program),
            "service {} runs {program}, which the image lacks",
            s.name
        );
    }
}

#[test]
fn image_runs_as_non_root_and_listens_where_it_says() {
    let dockerfile = dockerfile();
    let stage = dockerfile.final_stage();

    let user = stage
        .iter()
        .rfind(|i| i.keyword == "USER")
        .map(|i| i.args.split(':').next().unwrap().to_owned())
        .expect("the image switches to a USER");
    assert!(user != "root" && user != "0", "USER {user}");
    assert!(
        stage.iter().any(|i| i.keyword == "RUN"
            && (i.args.contains("useradd") || i.args.contains("adduser"))
            && i.args.split_whitespace().any(|w| w == user)),
        "USER {user} is never created"
    );

    let listen = stage
        .iter()
        .filter(|i| i.keyword == "ENV")
        .find_map(|i| {
            i.args
                .strip_prefix("DAYPASS_LISTEN=")
                .or_else(|| i.args.strip_prefix("DAYPASS_LISTEN "))
                .map(str::to_owned)
        })
        .expect("ENV DAYPASS_LISTEN");
    assert!(listen.starts_with("0.0.0.0:"), "DAYPASS_LISTEN={listen}");
    let port = port_of(&listen);
    let exposed: Vec<u16> = stage
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE PORT"))
        .collect();
    assert_eq!(exposed, [port], "EXPOSE matches DAYPASS_LISTEN");

    let check = stage
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    assert!(
        check.args.contains(&format!(":{port}/healthz")),
        "HEALTHCHECK asks /healthz on port {port}: {}",
        check.args
    );
    let tool = check
        .args
        .split_once("CMD ")
        .map(|(_, c)| {
            c.split_whitespace()
                .next()
                .unwrap()
                .trim_matches(['[', '"', ','])
        })
        .expect("HEALTHCHECK … CMD");
    assert!(
        stage.iter().any(|i| i.keyword == "RUN"
            && i.args.contains("apt-get install")
            && i.args.split_whitespace().any(|w| w == tool)),
        "the health check runs {tool}, which the image does not install"
    );
}

#[test]
fn dockerignore_keeps_what_the_build_needs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    let ignored = |path: &str| {
        patterns.iter().any(|p| {
            let p = p.strip_prefix("**/").unwrap_or(p);
            if let Some(ext) = p.strip_prefix("*.") {
                path.ends_with(&format!(".{ext}"))
            } else {
                path == p
                    || path.starts_with(&format!("{p}/"))
                    || path.contains(&format!("/{p}/"))
                    || path.ends_with(&format!("/{p}"))
            }
        })
    };
    assert!(ignored("target"), ".dockerignore must exclude target/");
    assert!(ignored(".git"), ".dockerignore must exclude .git/");

    let root = repo_root();
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    for p in cargo_metadata()["packages"].as_array().unwrap() {
        let manifest = Path::new(p["manifest_path"].as_str().unwrap());
        if let Ok(relative) = manifest.strip_prefix(&root) {
            needed.push(relative.to_string_lossy().into_owned());
            for t in p["targets"].as_array().unwrap() {
                let src = Path::new(t["src_path"].as_str().unwrap());
                needed.push(src.strip_prefix(&root).unwrap().to_string_lossy().into());
            }
        }
    }
    assert!(needed.len() > 6, "workspace members found: {needed:?}");
    // The binary embeds the admin console's files (api/src/console.rs).
    for file in ["index.html", "app.js", "vendor/chart.umd.min.js"] {
        needed.push(format!("console/{file}"));
    }
    assert!(ignored("console/node_modules/chart.js/package.json"));
    for path in needed {
        assert!(!ignored(&path), "{path} is excluded from the build context");
    }
}
