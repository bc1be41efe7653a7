//! deploy/: the Kubernetes manifests against the Kubernetes schemas
//! (`kubernetes-validate --strict`, scripts/services/k8s-validate.sh), the shape
//! the fleet needs from them (no `replicas` under KEDA, bounded DinD storage,
//! registry credentials), and every third-party image of Compose and k8s pinned.
//! `docker-compose config` and promtool run in tests/it/prometheus.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn validator() -> PathBuf {
    let p = std::env::var("FLEET_K8S_VALIDATE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}/.cache/agent-fleet/kubernetes-validate-1.37.0/bin/kubernetes-validate",
                std::env::var("HOME").unwrap()
            )
        });
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "{} is missing: run `eval \"$(bash scripts/services/k8s-validate.sh)\"`",
        p.display()
    );
    p
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Every document of the YAML files, as JSON (the validator's Python has PyYAML).
fn documents(files: &[PathBuf]) -> Vec<Value> {
    let python = validator().with_file_name("python");
    let out = Command::new(python)
        .arg("-c")
        .arg("import sys, json, yaml\nprint(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))")
        .args(files)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[test]
fn the_k8s_manifests_pass_the_kubernetes_schemas() {
    let files = k8s_files();
    let out = Command::new(validator())
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // Core kinds are checked; only custom resources (KEDA, the Prometheus
    // Operator, kustomize) have no schema in the tool.
    for kind in [
        "deployment/fleet-worker",
        "configmap/fleet-worker",
        "service/fleet-worker",
        "poddisruptionbudget/fleet-worker",
        "secret/fleet-registry-credentials",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated:\n{text}"
        );
    }
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            [
                "keda.sh/",
                "monitoring.coreos.com/",
                "kustomize.config.k8s.io/"
            ]
            .iter()
            .any(|g| line.contains(g)),
            "{line}"
        );
    }
}

#[test]
fn the_worker_deployment_leaves_replicas_to_keda_and_bounds_dind() {
    let docs = documents(&k8s_files());
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "replicas would undo KEDA's scaling"
    );
    let scaled = docs.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deploy["metadata"]["name"]
    );
    let pod = &deploy["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    let vol = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert!(
        vol("dind-storage")["emptyDir"]["sizeLimit"].is_string(),
        "DinD storage unbounded"
    );
    assert_eq!(
        vol("registry-credentials")["secret"]["secretName"],
        "fleet-registry-credentials"
    );
    let worker = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "worker")
        .unwrap();
    let env = worker["env"].as_array().unwrap();
    let config_dir = env
        .iter()
        .find(|e| e["name"] == "DOCKER_CONFIG")
        .expect("DOCKER_CONFIG")["value"]
        .clone();
    assert!(
        worker["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "registry-credentials" && m["mountPath"] == config_dir),
        "the credentials are not mounted where DOCKER_CONFIG points"
    );
    let secret = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "fleet-registry-credentials")
        .unwrap();
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
}

/// `repo[:tag]` of an image reference → the tag, if any.
fn tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next().unwrap();
    last.split_once(':').map(|(_, t)| t)
}

#[test]
fn every_third_party_image_is_pinned() {
    let out = Command::new("docker-compose")
        .args(["-f", "deploy/docker-compose.yml", "config"])
        .current_dir(repo())
        .output()
        .expect("docker-compose");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose = String::from_utf8_lossy(&out.stdout).to_string();
    let mut images: Vec<String> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .map(|s| s.trim_matches(['"', '\'']).to_string())
        .collect();
    for d in documents(&k8s_files()) {
        let pod = &d["spec"]["template"]["spec"];
        for list in ["containers", "initContainers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                images.push(c["image"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(images.len() >= 7, "{images:?}");
    for image in &images {
        // The fleet's own worker image is built from this repository.
        if image.contains("agent-fleet/") {
            continue;
        }
        let t = tag(image).unwrap_or_else(|| panic!("{image}: no tag"));
        assert!(
            t != "latest" && t.chars().any(|c| c.is_ascii_digit()),
            "{image}: not pinned"
        );
        assert!(
            !image.contains("minio"),
            "{image}: MinIO images are gone from Docker Hub"
        );
    }
    let rabbit = images
        .iter()
        .find(|i| i.starts_with("rabbitmq:"))
        .expect("rabbitmq");
    assert!(
        tag(rabbit).unwrap().starts_with("4."),
        "{rabbit}: RabbitMQ 4.x"
    );
}
