//! The release artefacts of `cargo xtask dist` (which `cargo xtask test` runs first and names
//! in TRACER_DIST): the .deb and the .rpm install into fresh roots that hold nothing but
//! busybox, and the tracer runs there (no glibc: the binary is static); the installed unit
//! passes `systemd-analyze verify`; the DaemonSet passes an offline schema check; the
//! Containerfile copies what dist builds.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use integration_tests::TempDir;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The dist directory: TRACER_DIST, else target/dist.
fn dist() -> PathBuf {
    let dir = std::env::var_os("TRACER_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/dist"));
    assert!(
        dir.join("tracer").exists(),
        "no release artefacts in {}: run `cargo xtask dist` (cargo xtask test does)",
        dir.display()
    );
    dir
}

fn artefact(suffix: &str) -> PathBuf {
    std::fs::read_dir(dist())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dist().display()))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A root holding only busybox (static) and its applets: no libc, no loader.
fn busybox_root(tmp: &TempDir) -> PathBuf {
    let root = tmp.path("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    let (ok, msg) =
        run(Command::new("chroot")
            .arg(&root)
            .args(["/bin/busybox", "--install", "-s", "/bin"]));
    assert!(ok, "{msg}");
    for libc in [
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
        "lib/ld-musl-x86_64.so.1",
    ] {
        assert!(!root.join(libc).exists(), "{libc} in the fresh root");
    }
    root
}

/// The tracer in `root` answers --version and --help, and reads the embedded ranges.
fn tracer_runs_in(root: &Path) {
    let (ok, out) = run(Command::new("chroot")
        .arg(root)
        .args(["/usr/bin/tracer", "--version"]));
    assert!(
        ok && out.trim() == format!("tracer {}", env!("CARGO_PKG_VERSION")),
        "{out}"
    );
    let (ok, out) = run(Command::new("chroot")
        .arg(root)
        .args(["/usr/bin/tracer", "--help"]));
    assert!(
        ok && out.contains("diagnose") && out.contains("agent"),
        "{out}"
    );
    let (ok, out) = run(Command::new("chroot").arg(root).args([
        "/usr/bin/tracer",
        "ranges",
        "--format",
        "json",
    ]));
    assert!(ok && out.contains("\"source\": \"embedded\""), "{out}");
}

/// The files a package must install.
const EXPECTED: [&str; 14] = [
    "usr/bin/tracer",
    "usr/lib/systemd/system/cf521-tracer.service",
    "usr/share/man/man1/tracer.1.gz",
    "usr/share/man/man1/tracer-diagnose.1.gz",
    "usr/share/bash-completion/completions/tracer",
    "usr/share/zsh/vendor-completions/_tracer",
    "usr/share/fish/vendor_completions.d/tracer.fish",
    "usr/share/doc/cf521-tracer/README.md",
    "usr/share/cf521-tracer/alerts.yml",
    "usr/share/cf521-tracer/schema/log-record.schema.json",
    "usr/share/cf521-tracer/schema/report.schema.json",
    "usr/share/cf521-tracer/kubernetes/pod-monitor.yaml",
    "usr/share/cf521-tracer/kubernetes/prometheus-rule.yaml",
    "usr/share/cf521-tracer/kubernetes/grafana-dashboard.yaml",
];

#[test]
fn the_static_binary_runs_without_glibc() {
    let tmp = TempDir::new("pkg-static");
    let root = busybox_root(&tmp);
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy(dist().join("tracer"), root.join("usr/bin/tracer")).unwrap();
    tracer_runs_in(&root);
    // And the same binary still does its work on this host: a real eBPF capture.
    let (ok, out) = run(Command::new(dist().join("tracer")).args([
        "diagnose",
        "--iface",
        "lo",
        "--port",
        "9",
        "--duration",
        "0.5",
        "--format",
        "json",
    ]));
    assert!(ok && out.contains("\"verdict\""), "{out}");
}

#[test]
fn the_deb_installs_into_a_fresh_root_and_its_unit_verifies() {
    let tmp = TempDir::new("pkg-deb");
    let root = busybox_root(&tmp);
    dpkg_database(&root);
    let deb = artefact("_amd64.deb");
    let (ok, msg) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("-i")
        .arg(&deb));
    assert!(ok, "dpkg -i: {msg}");
    for f in EXPECTED {
        assert!(root.join(f).exists(), "{f} not installed: {msg}");
    }
    tracer_runs_in(&root);
    let (_, man) = run(Command::new("zcat").arg(root.join("usr/share/man/man1/tracer-agent.1.gz")));
    assert!(man.contains("metrics"), "{man}");

    // systemd-analyze verify in that root, with systemd's own units beside ours (as on any
    // systemd host) and the package's man pages for Documentation=man:....
    let units = root.join("usr/lib/systemd/system");
    for e in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let e = e.unwrap();
        let to = units.join(e.file_name());
        if !to.exists() {
            let _ = Command::new("cp").arg("-a").arg(e.path()).arg(&to).status();
        }
    }
    let verify = |unit: &str| {
        run(Command::new("systemd-analyze")
            .arg(format!("--root={}", root.display()))
            .arg("verify")
            .arg(format!("/usr/lib/systemd/system/{unit}"))
            .env("MANPATH", root.join("usr/share/man")))
    };
    let (ok, msg) = verify("cf521-tracer.service");
    assert!(
        ok && !msg.contains("cf521-tracer"),
        "systemd-analyze verify: {msg}"
    );
    // The check is real: the same unit pointing at a missing binary fails it.
    let unit = std::fs::read_to_string(units.join("cf521-tracer.service")).unwrap();
    std::fs::write(
        units.join("broken-tracer.service"),
        unit.replace(
            "ExecStart=/usr/bin/tracer ",
            "ExecStart=/usr/bin/tracer-missing ",
        ),
    )
    .unwrap();
    let (ok, msg) = verify("broken-tracer.service");
    assert!(!ok && msg.contains("tracer-missing"), "{msg}");

    // And it removes cleanly.
    let (ok, msg) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-r", "cf521-tracer"]));
    assert!(ok, "dpkg -r: {msg}");
    assert!(!root.join("usr/bin/tracer").exists());
}

#[test]
fn the_rpm_installs_the_same_files() {
    let tmp = TempDir::new("pkg-rpm");
    let root = busybox_root(&tmp);
    let rpm = artefact(".x86_64.rpm");
    let (ok, msg) = run(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
    assert!(ok, "{msg}");
    let (ok, msg) = run(Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["-i", "--nodeps"])
        .arg(&rpm));
    assert!(ok, "rpm -i: {msg}");
    for f in EXPECTED {
        assert!(root.join(f).exists(), "{f} not installed: {msg}");
    }
    assert!(root.join("usr/share/zsh/site-functions/_tracer").exists());
    tracer_runs_in(&root);
    // The .deb and the .rpm hold the same files.
    let (_, rpm_list) = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    let (_, deb_list) = run(Command::new("dpkg-deb")
        .arg("-c")
        .arg(artefact("_amd64.deb")));
    let rpm_files: BTreeSet<String> = rpm_list
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(|l| l.trim_start_matches('/').to_string())
        .collect();
    let deb_files: BTreeSet<String> = deb_list
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_string())
        .collect();
    assert_eq!(rpm_files, deb_files);
}

/// A root with busybox, dpkg's or rpm's database, a systemd-looking /run and a `systemctl`
/// that logs each call: the maintainer scripts' effect, read from the log.
fn root_with_logging_systemctl(tmp: &TempDir, rpm: bool) -> PathBuf {
    let root = busybox_root(tmp);
    std::fs::create_dir_all(root.join("run/systemd/system")).unwrap();
    // The scripts send systemctl's output to /dev/null, as on any host.
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let (ok, msg) = run(Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    assert!(ok, "mknod: {msg}");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(
        root.join("usr/bin/systemctl"),
        "#!/bin/sh\necho \"$*\" >> /systemctl.log\n",
    )
    .unwrap();
    run(Command::new("chmod")
        .arg("755")
        .arg(root.join("usr/bin/systemctl")));
    if rpm {
        let (ok, msg) = run(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
        assert!(ok, "{msg}");
    } else {
        dpkg_database(&root);
    }
    root
}

/// An empty dpkg database in `root`.
fn dpkg_database(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
}

/// The `systemctl` calls logged since the last look.
fn systemctl_calls(root: &Path) -> Vec<String> {
    let log = root.join("systemctl.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    text.lines().map(String::from).collect()
}

const OPTIONS_FILE: &str = "etc/default/cf521-tracer";

/// Install, upgrade (the same version again), remove: the unit reloaded on install, a
/// running agent restarted on upgrade, stopped on removal; the options file is the admin's.
fn lifecycle(root: &Path, install: &[&str], upgrade: &[&str], remove: &[&str]) {
    let tool = |args: &[&str]| {
        let (ok, msg) = run(Command::new(args[0]).args(&args[1..]));
        assert!(ok, "{args:?}: {msg}");
    };
    tool(install);
    let calls = systemctl_calls(root);
    assert_eq!(calls, ["daemon-reload"], "install starts nothing");
    let options = std::fs::read_to_string(root.join(OPTIONS_FILE)).unwrap();
    assert!(options.contains("TRACER_OPTS=\"\""), "{options}");
    std::fs::write(root.join(OPTIONS_FILE), "TRACER_OPTS=\"--port 443\"\n").unwrap();

    tool(upgrade);
    let calls = systemctl_calls(root);
    assert!(
        calls
            .iter()
            .any(|c| c == "try-restart cf521-tracer.service"),
        "upgrade restarts a running agent: {calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("stop")), "{calls:?}");
    assert_eq!(
        std::fs::read_to_string(root.join(OPTIONS_FILE)).unwrap(),
        "TRACER_OPTS=\"--port 443\"\n",
        "the admin's options survive the upgrade"
    );

    tool(remove);
    let calls = systemctl_calls(root);
    assert!(
        calls.iter().any(|c| c == "stop cf521-tracer.service"),
        "removal stops the agent: {calls:?}"
    );
    assert!(!root.join("usr/bin/tracer").exists());
}

#[test]
fn the_deb_restarts_on_upgrade_stops_on_removal_and_keeps_the_options() {
    let tmp = TempDir::new("pkg-deb-life");
    let root = root_with_logging_systemctl(&tmp, false);
    let deb = artefact("_amd64.deb");
    let r = format!("--root={}", root.display());
    let d = deb.to_str().unwrap();
    lifecycle(
        &root,
        &["dpkg", &r, "-i", d],
        &["dpkg", &r, "-i", d],
        &["dpkg", &r, "-r", "cf521-tracer"],
    );
    // The options file stays until purge, which also takes the state and logs.
    assert!(root.join(OPTIONS_FILE).exists());
    std::fs::create_dir_all(root.join("var/lib/cf521-tracer")).unwrap();
    let (ok, msg) = run(Command::new("dpkg")
        .arg(&r)
        .args(["--purge", "cf521-tracer"]));
    assert!(ok, "{msg}");
    assert!(!root.join(OPTIONS_FILE).exists());
    assert!(!root.join("var/lib/cf521-tracer").exists());
    // The package carries its changelog and both licence texts.
    let (_, list) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "changelog.gz",
        "copyright",
        "CHANGELOG.md",
        "LICENSE-APACHE",
        "LICENSE-MIT",
    ] {
        assert!(
            list.contains(&format!("/usr/share/doc/cf521-tracer/{f}")),
            "{f}: {list}"
        );
    }
}

#[test]
fn the_rpm_restarts_on_upgrade_stops_on_removal_and_keeps_the_options() {
    let tmp = TempDir::new("pkg-rpm-life");
    let root = root_with_logging_systemctl(&tmp, true);
    let rpm = artefact(".x86_64.rpm");
    let r = root.to_str().unwrap();
    let p = rpm.to_str().unwrap();
    lifecycle(
        &root,
        &["rpm", "--root", r, "-i", "--nodeps", p],
        &["rpm", "--root", r, "-U", "--replacepkgs", "--nodeps", p],
        &["rpm", "--root", r, "-e", "--nodeps", "cf521-tracer"],
    );
    let (_, log) = run(Command::new("rpm").arg("-qp").arg("--changelog").arg(&rpm));
    assert!(log.contains("CHANGELOG.md"), "{log}");
}

/// Each document of `file`, as JSON.
fn yaml_documents(file: &Path) -> Vec<Value> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(file).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
        .collect()
}

#[test]
fn the_daemonset_passes_an_offline_schema_check() {
    let docs = yaml_documents(&repo("deploy/kubernetes/cf521-tracer.yaml"));
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/data/daemonset-apps-v1.subset.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(ds)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Not vacuous: a misspelt field and a CAP_-prefixed capability fail it.
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["hostNetwrok"] = true.into();
    assert!(!validator.is_valid(&bad));
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"][0] =
        "CAP_BPF".into();
    assert!(!validator.is_valid(&bad));

    // What the schema cannot say.
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
        "the selector selects the pods"
    );
    assert_eq!(
        spec["hostNetwork"], true,
        "the node's network, not the pod's"
    );
    let c = &spec["containers"][0];
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    // The same capabilities as the unit grants (deploy/tracer.service), whatever they are.
    let unit: Vec<String> = integration_tests::confine::Confinement::unit()
        .caps
        .iter()
        .map(|c| c.to_ascii_uppercase())
        .collect();
    assert_eq!(caps["add"], serde_json::json!(unit), "the unit's set");
    assert_eq!(c["securityContext"]["privileged"], false);
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for needed in ["/sys/kernel/tracing", "/sys/kernel/btf"] {
        assert!(mounts.contains(&needed), "{needed} not mounted");
    }
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == m["name"]),
            "mount {} has no volume",
            m["name"]
        );
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let port = annotations["prometheus.io/port"].as_str().unwrap();
    assert_eq!(
        c["ports"][0]["containerPort"].as_u64().unwrap().to_string(),
        port
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "agent");
    let addr = args[args.iter().position(|a| *a == "--metrics-addr").unwrap() + 1];
    assert!(addr.ends_with(&format!(":{port}")), "{addr}");
    // The agent accepts those arguments (clap rejects an unknown or malformed one before
    // anything runs; --help after them stops it there).
    let tracer = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/debug/tracer"));
    let mut with_help = args.clone();
    with_help.push("--help");
    let (ok, msg) = run(Command::new(&tracer).args(&with_help));
    assert!(ok, "{msg}");
    let mut bad_args = args.clone();
    bad_args.push("--no-such-flag");
    bad_args.push("--help");
    assert!(
        !run(Command::new(&tracer).args(&bad_args)).0,
        "the probe can fail"
    );
}

/// Every built-in object of `deploy/kubernetes/` (the Namespace, the PriorityClass, the
/// DaemonSet, the dashboard's ConfigMap) against the Kubernetes API's own object models: those
/// of the official client (Debian's python3-kubernetes), generated from Kubernetes' OpenAPI
/// specification. Every field must be its model's with a value of its type; nothing vendored.
#[test]
fn the_manifests_match_the_kubernetes_api_models() {
    let checker = repo("tests/data/kubernetes-models-check.py");
    let check = |files: &[PathBuf]| {
        // Debian's interpreter: the client is installed for it, not for one on PATH.
        let out = Command::new("/usr/bin/python3")
            .arg(&checker)
            .args(files)
            .output()
            .expect("/usr/bin/python3 (cargo xtask setup installs python3-kubernetes)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    let (code, text) = check(&files);
    assert_eq!(code, Some(0), "{text}");
    for kind in ["Namespace", "PriorityClass", "DaemonSet", "ConfigMap"] {
        assert!(
            text.contains(&format!("{kind}: valid")),
            "{kind} not checked: {text}"
        );
    }
    // Not vacuous: a misspelt field and a port written as a string fail it.
    let dir = TempDir::new("k8s-models");
    let bad = dir.path("bad.yaml");
    let manifest = std::fs::read_to_string(repo("deploy/kubernetes/cf521-tracer.yaml")).unwrap();
    std::fs::write(&bad, manifest.replace("hostNetwork:", "hostNetwrok:")).unwrap();
    let (code, text) = check(std::slice::from_ref(&bad));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("hostNetwrok: not a field of V1PodSpec"),
        "{text}"
    );
    let port = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("containerPort: "))
        .expect("a containerPort");
    std::fs::write(
        &bad,
        manifest.replace(
            &format!("containerPort: {port}"),
            &format!("containerPort: \"{port}\""),
        ),
    )
    .unwrap();
    let (code, text) = check(std::slice::from_ref(&bad));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("containerPort: int expected"), "{text}");
}

/// The Prometheus Operator objects, offline: the PodMonitor and the PrometheusRule against
/// their subset schemas (exact field names, no others), the PodMonitor selecting the
/// DaemonSet's pods by its port name, the namespace's Pod Security level the DaemonSet needs,
/// and a priority class the manifest itself defines.
#[test]
fn the_operator_objects_pass_offline_schema_checks() {
    let check = |file: &str, schema: &str| -> (Value, jsonschema::Validator) {
        let doc = yaml_documents(&repo(file)).remove(0);
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(repo(schema)).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:#?}");
        (doc, validator)
    };
    let (pm, pm_schema) = check(
        "deploy/kubernetes/pod-monitor.yaml",
        "tests/data/podmonitor-monitoring-v1.subset.schema.json",
    );
    let (pr, pr_schema) = check(
        "deploy/kubernetes/prometheus-rule.yaml",
        "tests/data/prometheusrule-monitoring-v1.subset.schema.json",
    );
    // Not vacuous: a misspelt field and a rule with neither alert nor record fail.
    let mut bad = pm.clone();
    bad["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s".into();
    assert!(!pm_schema.is_valid(&bad));
    let mut bad = pr.clone();
    bad["spec"]["groups"][0]["rules"][0]
        .as_object_mut()
        .unwrap()
        .remove("record");
    assert!(!pr_schema.is_valid(&bad));
    // Every alert of deploy/alerts.yml is in the object.
    let alerts = std::fs::read_to_string(repo("deploy/alerts.yml")).unwrap();
    let in_object = pr["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("alert").is_some())
        .count();
    assert_eq!(in_object, alerts.matches("- alert: ").count());

    let docs = yaml_documents(&repo("deploy/kubernetes/cf521-tracer.yaml"));
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "the PodMonitor selects the pods"
        );
    }
    let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    assert!(
        pod["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the PodMonitor scrapes a port the pod names"
    );
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let ns = docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "hostNetwork, hostPID and added capabilities need the privileged level"
    );
    let class = pod["spec"]["priorityClassName"].as_str().unwrap();
    let defined = docs
        .iter()
        .find(|d| d["kind"] == "PriorityClass" && d["metadata"]["name"] == class)
        .unwrap_or_else(|| panic!("priority class {class} is not defined by the manifest"));
    assert!(
        defined["value"].as_i64().unwrap() <= 1_000_000_000,
        "user classes stop at 1e9"
    );
    // The state directory is one the tracer accepts: not an emptyDir (0777).
    let state = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert!(state.get("emptyDir").is_none(), "{state}");
    assert_eq!(state["hostPath"]["type"], "DirectoryOrCreate");
}

#[test]
fn the_containerfile_copies_what_dist_builds() {
    let text = std::fs::read_to_string(repo("deploy/Containerfile")).unwrap();
    let mut copies = 0;
    for line in text.lines().filter(|l| l.starts_with("COPY ")) {
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        for src in &parts[..parts.len() - 1] {
            let path = match src.strip_prefix("target/dist/") {
                Some(rest) => dist().join(rest),
                None => repo(src),
            };
            assert!(path.exists(), "COPY {src}: missing");
            copies += 1;
        }
    }
    assert!(copies >= 1);
    assert!(text.contains("COPY target/dist/tracer /usr/bin/tracer"));
    assert!(text.contains("ENTRYPOINT [\"/usr/bin/tracer\"]"));
    assert!(text.contains("CMD [\"agent\""));
}

/// The groups and calls a unit's `SystemCallFilter=` allows, expanded by systemd itself.
fn allowed_system_calls(unit: &str) -> BTreeSet<String> {
    let filter: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!filter.is_empty(), "the unit has no SystemCallFilter=");
    let mut allowed = BTreeSet::new();
    let mut groups: Vec<String> = filter.iter().map(|s| s.to_string()).collect();
    while let Some(item) = groups.pop() {
        if !item.starts_with('@') {
            allowed.insert(item);
            continue;
        }
        let (ok, out) = run(Command::new("systemd-analyze").args(["syscall-filter", &item]));
        assert!(ok, "systemd-analyze syscall-filter {item}: {out}");
        for line in out.lines().skip(1) {
            let name = line.trim();
            if name.is_empty() || name.starts_with('#') {
                continue;
            }
            if name.starts_with('@') {
                groups.push(name.to_string());
            } else {
                allowed.insert(name.to_string());
            }
        }
    }
    allowed
}

/// Every system call the agent makes while it starts, attaches, serves a scrape and stops is
/// one the unit's `SystemCallFilter=` allows (read from deploy/tracer.service and expanded by
/// `systemd-analyze`): the filter is proven harmless, not assumed. The calls that may fail
/// under the unit's other settings (setns under RestrictNamespaces=, mount of tracefs) are
/// not made on this path: containers are read through /proc.
#[test]
fn the_units_system_call_filter_allows_every_call_the_agent_makes() {
    let unit = std::fs::read_to_string(repo("deploy/tracer.service")).unwrap();
    let allowed = allowed_system_calls(&unit);
    assert!(
        allowed.contains("bpf") && allowed.contains("read"),
        "{allowed:?}"
    );
    let lab = integration_tests::Lab::new();
    let tmp = TempDir::new("strace-agent");
    let trace = tmp.path("strace.out");
    let mut agent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.origin.name))
        .args(["strace", "-f", "-qq", "-o"])
        .arg(&trace)
        .arg(integration_tests::tracer_bin())
        .args([
            "agent",
            "--iface",
            integration_tests::ORIGIN_IF,
            "--port",
            "443",
            "--window",
            "1",
            "--metrics-addr",
            "127.0.0.1:19521",
            "--ready-file",
        ])
        .arg(tmp.path("ready"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace");
    assert!(
        integration_tests::eventually(std::time::Duration::from_secs(60), || tmp
            .path("ready")
            .exists()),
        "the agent under strace did not get ready"
    );
    lab.origin
        .sh("for i in 1 2 3; do wget -q -O /dev/null http://127.0.0.1:19521/metrics && break; sleep 1; done || true");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The ready file holds the agent's own pid (strace is its parent).
    let pid: i32 = std::fs::read_to_string(tmp.path("ready"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the agent this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = agent.wait();
    let text = std::fs::read_to_string(&trace).unwrap();
    let used: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|call| call.split('(').next())
        .filter(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        })
        .map(String::from)
        .collect();
    assert!(used.contains("bpf"), "no bpf call traced: {used:?}");
    // The calls before exec belong to nsenter and strace's child, not the agent.
    let outside: Vec<&String> = used
        .iter()
        .filter(|c| !allowed.contains(*c) && !["execve", "setns"].contains(&c.as_str()))
        .collect();
    assert!(
        outside.is_empty(),
        "calls outside the unit's SystemCallFilter=: {outside:?}"
    );
}
