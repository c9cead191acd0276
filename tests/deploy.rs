//! Deployment artifacts: the manifests rendered from the chart validate
//! against the Kubernetes schemas and yamllint, the DaemonSet is
//! least-privilege and wired as documented, its config is one the agent
//! accepts, the systemd unit verifies, and the image's build stage produces
//! the binary its runtime stage copies.
use std::{path::Path, process::Command};

use rampart_tests::lab::rampart_bin;
use serde_yaml::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().expect("command runs");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn rendered() -> Vec<Value> {
    rendered_from("deploy/kubernetes")
}

fn rendered_from(dir: &str) -> Vec<Value> {
    let (ok, out) = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join(dir)));
    assert!(ok, "kubectl kustomize: {out}");
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| Value::deserialize(d).expect("yaml"))
        .collect()
}

use serde::Deserialize;

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k} rendered"))
}

#[test]
fn manifests_validate_against_kubernetes_schemas_and_yamllint() {
    let (ok, out) = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join("deploy/kubernetes")));
    assert!(ok, "{out}");
    let file = std::env::temp_dir().join("rampart-rendered.yaml");
    std::fs::write(&file, out).expect("write rendering");
    let (ok, out) = run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.32"])
        .arg(&file));
    assert!(ok, "kubernetes-validate: {out}");
    assert_eq!(out.matches("passed").count(), 4, "{out}");
    let (ok, example) = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join("deploy/kubernetes/examples/crowdsec-cluster")));
    assert!(ok, "{example}");
    std::fs::write(&file, example).expect("write rendering");
    let (ok, out) = run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.32"])
        .arg(&file));
    assert!(ok, "kubernetes-validate (crowdsec-cluster example): {out}");
    let (ok, out) = run(Command::new("python3")
        .args(["-m", "yamllint", "-c"])
        .arg(repo().join(".yamllint"))
        .args([
            "deploy/kubernetes",
            "deploy/prometheus",
            "deploy/helm/rampart/values.yaml",
            "deploy/helm/rampart/Chart.yaml",
        ])
        .current_dir(repo()));
    assert!(ok, "yamllint: {out}");
}

#[test]
fn the_daemonset_is_least_privilege_and_wired_as_documented() {
    let docs = rendered();
    let ds = kind(&docs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert!(
        spec.get("initContainers").is_none(),
        "no init container by default"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let containers = spec["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_yaml::from_str::<Value>("[ALL]").unwrap()
    );
    assert_eq!(
        sc["capabilities"]["add"],
        serde_yaml::from_str::<Value>("[BPF, NET_ADMIN, PERFMON]").unwrap()
    );
    // Metrics on the node's own address (its InternalIP), not every address.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args.iter().position(|a| *a == "--metrics-listen");
    assert_eq!(
        at.and_then(|i| args.get(i + 1)).copied(),
        Some("$(RAMPART_NODE_IP):9717"),
        "{args:?}"
    );
    assert_eq!(c["env"][0]["name"], "RAMPART_NODE_IP");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    let mounts = c["volumeMounts"].as_sequence().expect("mounts");
    assert!(
        mounts.iter().all(|m| m.get("subPath").is_none()),
        "subPath would stop config updates"
    );
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} mount"))
    };
    assert_eq!(mount("bpffs")["mountPath"], "/sys/fs/bpf");
    assert_eq!(mount("state")["mountPath"], "/var/lib/rampart");
    assert_eq!(mount("config")["mountPath"], "/etc/rampart");
    let vols = spec["volumes"].as_sequence().expect("volumes");
    let vol = |name: &str| {
        vols.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} volume"))
    };
    assert_eq!(vol("bpffs")["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(vol("state")["hostPath"]["path"], "/var/lib/rampart");
    assert_eq!(vol("config")["configMap"]["name"], "rampart-config");
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["checksum/config"].as_str().map(str::len), Some(64));
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9717");
}

/// The agent's verdict on the config a rendering carries.
fn check_configmap(docs: &[Value], name: &str) -> (bool, String) {
    let toml = kind(docs, "ConfigMap")["data"]["rampart.toml"]
        .as_str()
        .expect("rampart.toml")
        .to_string();
    let file = std::env::temp_dir().join(format!("rampart-{name}.toml"));
    std::fs::write(&file, toml).expect("write config");
    run(Command::new(rampart_bin())
        .args(["agent", "--check-config"])
        .arg(&file))
}

#[test]
fn the_crowdsec_cluster_example_shares_bans_with_the_secret_mounted_read_only() {
    let docs = rendered_from("deploy/kubernetes/examples/crowdsec-cluster");
    let (ok, out) = check_configmap(&docs, "crowdsec-cluster");
    assert!(ok, "{out}");
    let toml = kind(&docs, "ConfigMap")["data"]["rampart.toml"]
        .as_str()
        .unwrap_or("");
    assert!(toml.contains("share = true"), "{toml}");
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let secret = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "crowdsec")
        .expect("a crowdsec volume");
    assert_eq!(secret["secret"]["secretName"], "rampart-crowdsec");
    assert_eq!(secret["secret"]["defaultMode"].as_u64(), Some(0o400));
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "crowdsec")
        .expect("the secret mounted");
    assert_eq!(mount["readOnly"], true);
    assert!(toml.contains(mount["mountPath"].as_str().unwrap_or("?")));
    // The default rendering has none of it.
    assert!(
        !kind(&rendered(), "ConfigMap")["data"]["rampart.toml"]
            .as_str()
            .unwrap_or("")
            .contains("[crowdsec]")
    );
}

#[test]
fn the_configmap_is_a_config_the_agent_accepts() {
    let (ok, out) = check_configmap(&rendered(), "configmap");
    assert!(ok, "{out}");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/rampart.service")).expect("unit");
    for key in [
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectKernelTunables=yes",
        "LimitNOFILE=",
        "MemoryMax=",
        "RestrictAddressFamilies=",
        "StateDirectory=rampart",
        "RuntimeDirectory=rampart",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // Verify a copy that points at the binary built here.
    let dir = std::env::temp_dir().join("rampart-unit");
    std::fs::create_dir_all(&dir).expect("dir");
    let copy = dir.join("rampart.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/rampart",
            &rampart_bin().display().to_string(),
        ),
    )
    .expect("write");
    let (ok, out) = run(Command::new("systemd-analyze").args(["verify"]).arg(&copy));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
}

#[test]
fn the_image_build_stage_produces_what_the_runtime_stage_copies() {
    let file =
        std::fs::read_to_string(repo().join("deploy/image/Containerfile")).expect("Containerfile");
    // What precedes the first FROM is comments.
    let stages: Vec<&str> = file.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let build = stages[0];
    assert!(build.contains("AS build"));
    assert!(
        !file
            .lines()
            .any(|l| l.contains("| sh") || l.contains("|sh")),
        "nothing piped from the network into a shell"
    );
    assert!(build.contains("RUN cargo xtask setup") && build.contains("RUN cargo xtask build"));
    let runtime = stages[1];
    let copy = runtime
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .expect("the runtime stage copies from the build stage");
    let src = copy.split_whitespace().nth(2).expect("source path");
    let rel = src
        .strip_prefix("/src/")
        .expect("copied from the build context");
    // `cargo xtask test` ran `cargo xtask build` before these tests.
    let bin = repo().join(rel);
    let (ok, out) = run(Command::new(&bin).arg("--version"));
    assert!(
        ok && out.contains(env!("CARGO_PKG_VERSION")),
        "{}: {out}",
        bin.display()
    );
    assert!(runtime.contains(r#"ENTRYPOINT ["/usr/local/bin/rampart"]"#));
    assert!(runtime.contains(r#"CMD ["agent", "--config", "/etc/rampart/rampart.toml"]"#));
    let (ok, out) = run(Command::new(&bin).args(["agent", "--help"]));
    assert!(ok && out.contains("--config"), "{out}");
}
