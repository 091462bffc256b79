//! Zabbix: the agent's keys from `tools/zabbix/userparameter_stripestore.conf`, evaluated by
//! the real agent (`zabbix_agentd -t`), list every member and report a healthy pool ONLINE,
//! then DEGRADED once a member file is gone, for a member path and for a served pool's URL;
//! the template `tools/zabbix/template_stripestore.yaml` parses, is consistent (master item,
//! keys, macros, UUIDs), and every JSONPath it uses resolves in real status JSON.

use crate::common;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const USERPARAMETERS: &str = "tools/zabbix/userparameter_stripestore.conf";
const TEMPLATE: &str = "tools/zabbix/template_stripestore.yaml";
/// The binary path the shipped UserParameter file names (documented in it).
const SHIPPED_BINARY: &str = "/usr/local/bin/stripestore";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An agent configuration in `dir` that includes the shipped UserParameter file with the
/// binary path set to the one cargo built (as the file's comment tells an operator to do).
fn agent_config(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(repo_file(USERPARAMETERS)).unwrap();
    let lines: Vec<&str> = shipped
        .lines()
        .filter(|l| l.starts_with("UserParameter="))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert!(line.contains(SHIPPED_BINARY), "{line}");
    }
    let userparameters = dir.join("userparameter_stripestore.conf");
    std::fs::write(
        &userparameters,
        shipped.replace(SHIPPED_BINARY, env!("CARGO_BIN_EXE_stripestore")),
    )
    .unwrap();
    let config = dir.join("zabbix_agentd.conf");
    // No UnsafeUserParameters: the keys must work with the agent's default restrictions.
    std::fs::write(
        &config,
        format!(
            "LogType=console\nAllowRoot=1\nTimeout=30\nInclude={}\n",
            p(&userparameters)
        ),
    )
    .unwrap();
    config
}

/// `zabbix_agentd -c CONFIG -t KEY`: the value inside the agent's `KEY [t|VALUE]`, or the
/// agent's refusal as an `Err`.
fn agent(config: &Path, key: &str) -> Result<String, String> {
    let agentd = common::find_tool("zabbix_agentd").unwrap();
    let out = Command::new(agentd)
        .args(["-c", p(config), "-t", key])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let rest = stdout
        .trim_end()
        .strip_prefix(key)
        .unwrap_or_else(|| {
            panic!(
                "agent output for {key}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .trim_start();
    let (kind, value) = rest
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.split_once('|'))
        .unwrap_or_else(|| panic!("agent output for {key}: {stdout}"));
    match kind {
        "t" | "s" => Ok(value.to_string()),
        _ => Err(value.to_string()),
    }
}

fn agent_json(config: &Path, key: &str) -> Value {
    let value = agent(config, key).unwrap_or_else(|e| panic!("{key}: not supported: {e}"));
    serde_json::from_str(&value).unwrap_or_else(|e| panic!("{key}: {e}: {value}"))
}

/// An rs:2+1 pool on three files and a spare, through the command line.
fn file_pool(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let devs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("d{i}"))).collect();
    let spare = dir.join("s0");
    let out = common::stripestore_command("error")
        .args(["create", "--layout", "rs:2+1", "--device-size", "16M"])
        .args(["--spare", p(&spare)])
        .args(&devs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (devs, spare)
}

/// Every device of the pool appears once in the discovery, with its path, position and role.
fn assert_discovery(discovery: &Value, devs: &[PathBuf], spare: &Path) {
    let rows = discovery.as_array().unwrap();
    assert_eq!(rows.len(), devs.len() + 1, "{discovery}");
    for (index, dev) in devs.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r["{#DEVICE}"] == p(dev))
            .unwrap_or_else(|| panic!("{} not discovered: {discovery}", dev.display()));
        assert_eq!(row["{#INDEX}"], index.to_string());
        assert_eq!(row["{#ROLE}"], "data");
        assert_eq!(row["{#SECTION}"], "devices");
        assert_eq!(row["{#UUID}"].as_str().unwrap().len(), 36);
    }
    let row = rows.iter().find(|r| r["{#DEVICE}"] == p(spare)).unwrap();
    assert_eq!(row["{#ROLE}"], "spare");
    assert_eq!(row["{#INDEX}"], "spare");
    assert_eq!(row["{#SECTION}"], "spares");
}

fn device_states(status: &Value) -> Vec<(String, String)> {
    status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn agent_lists_members_and_reports_online_then_degraded() {
    if !common::tools_or_skip(
        "agent_lists_members_and_reports_online_then_degraded",
        &["zabbix_agentd"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path());
    let (devs, spare) = file_pool(dir.path());
    let before: Vec<Vec<u8>> = devs.iter().map(|d| std::fs::read(d).unwrap()).collect();
    let member = p(&devs[0]);

    let discovery = agent_json(&config, &format!("stripestore.discovery[{member}]"));
    assert_discovery(&discovery, &devs, &spare);
    let status = agent_json(&config, &format!("stripestore.status[{member}]"));
    assert_eq!(status["health"], "ONLINE", "{status}");
    assert_eq!(status["remaining_tolerance"], 1);
    assert_eq!(status["zabbix"]["error"], Value::Null);
    for (path, state) in device_states(&status) {
        assert_eq!(state, "ONLINE", "{path}");
    }
    check_template_paths(&status, &discovery);
    // Looking wrote nothing.
    for (dev, bytes) in devs.iter().zip(&before) {
        assert!(
            std::fs::read(dev).unwrap() == *bytes,
            "{} changed",
            dev.display()
        );
    }

    // A parameter with a character the agent refuses by default never reaches a shell.
    let refused = agent(&config, &format!("stripestore.status[{member};true]"));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ZBX_NOTSUPPORTED")),
        "{refused:?}"
    );

    std::fs::remove_file(&devs[1]).unwrap();
    let status = agent_json(&config, &format!("stripestore.status[{member}]"));
    assert_eq!(status["health"], "DEGRADED", "{status}");
    assert_eq!(status["remaining_tolerance"], 0);
    let states = device_states(&status);
    assert_eq!(states.len(), 3, "{states:?}");
    for (path, state) in states {
        let expected = if path == p(&devs[1]) {
            "FAULTED"
        } else {
            "ONLINE"
        };
        assert_eq!(state, expected, "{path}");
    }
    let discovery = agent_json(&config, &format!("stripestore.discovery[{member}]"));
    assert_discovery(&discovery, &devs, &spare);
    check_template_paths(&status, &discovery);

    // A pool that cannot be looked at is reported, as JSON, rather than failing the item.
    let gone = dir.path().join("nothing-here");
    let status = agent_json(&config, &format!("stripestore.status[{}]", p(&gone)));
    assert_eq!(status["health"], "UNAVAILABLE", "{status}");
    assert!(status["zabbix"]["error"].is_string(), "{status}");
}

/// The same keys with a served pool's URL in place of the member path.
#[test]
fn agent_watches_a_served_pool_through_its_url() {
    if !common::tools_or_skip(
        "agent_watches_a_served_pool_through_its_url",
        &["zabbix_agentd"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path());
    let (devs, spare) = file_pool(dir.path());
    let socket = dir.path().join("nbd.sock");
    let mut serve = common::stripestore_command("error")
        .arg("serve")
        .args(&devs)
        .args(["--socket", p(&socket), "--metrics", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let address = {
        use std::io::BufRead;
        let stderr = std::io::BufReader::new(serve.stderr.take().unwrap());
        let mut address = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("metrics at http://") {
                address = rest.strip_suffix("/metrics").map(str::to_string);
                break;
            }
        }
        address
    };
    let Some(address) = address else {
        serve.kill().unwrap();
        panic!("serve did not print its metrics address");
    };
    let url = format!("http://{address}");
    let discovery = agent_json(&config, &format!("stripestore.discovery[{url}]"));
    let status = agent_json(&config, &format!("stripestore.status[{url}]"));
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_discovery(&discovery, &devs, &spare);
    assert_eq!(status["health"], "ONLINE", "{status}");
    check_template_paths(&status, &discovery);
    // Nobody serves there any more: UNAVAILABLE, with the reason.
    let status = agent_json(&config, &format!("stripestore.status[{url}]"));
    assert_eq!(status["health"], "UNAVAILABLE", "{status}");
}

fn template() -> Value {
    let text = std::fs::read_to_string(repo_file(TEMPLATE)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// Every JSONPath of the template resolves to a value in `status`: the pool items' as they
/// are, the item prototypes' once each discovered device's macros are put in.
fn check_template_paths(status: &Value, discovery: &Value) {
    let template = &template()["zabbix_export"]["templates"][0];
    let mut resolved = 0;
    for item in template["items"].as_array().unwrap() {
        for path in jsonpaths(item) {
            let value = jsonpath(status, &path)
                .unwrap_or_else(|e| panic!("{}: {path}: {e}\n{status}", item["key"]));
            assert!(!value.is_null(), "{}: {path} is null", item["key"]);
            resolved += 1;
        }
    }
    let rule = &template["discovery_rules"][0];
    for row in discovery.as_array().unwrap() {
        for item in rule["item_prototypes"].as_array().unwrap() {
            for path in jsonpaths(item) {
                let mut concrete = path.clone();
                for (name, value) in row.as_object().unwrap() {
                    concrete = concrete.replace(name, value.as_str().unwrap());
                }
                let value = jsonpath(status, &concrete)
                    .unwrap_or_else(|e| panic!("{}: {concrete}: {e}\n{status}", item["key"]));
                assert!(value.is_string() || value.is_u64(), "{concrete}: {value}");
                resolved += 1;
            }
        }
    }
    assert!(resolved > 10, "only {resolved} paths");
}

fn jsonpaths(item: &Value) -> Vec<String> {
    item["preprocessing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|step| step["type"] == "JSONPATH")
        .map(|step| step["parameters"][0].as_str().unwrap().to_string())
        .collect()
}

/// The part of Zabbix's JSONPath the template uses: `$`, `.name`, `[?(@.name == "text")]`
/// (a filter, giving a list) and `.first()`.
fn jsonpath(document: &Value, path: &str) -> Result<Value, String> {
    let mut rest = path.strip_prefix('$').ok_or("no $")?;
    let mut current = vec![document.clone()];
    let mut listed = false;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(".first()") {
            current.truncate(1);
            listed = false;
            rest = after;
        } else if let Some(after) = rest.strip_prefix("[?(@.") {
            let (filter, after) = after.split_once(")]").ok_or("unclosed filter")?;
            let (field, value) = filter.split_once(" == ").ok_or("filter without ==")?;
            let value: Value = serde_json::from_str(value).map_err(|e| e.to_string())?;
            current = current
                .iter()
                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                .filter(|v| v[field] == value)
                .collect();
            listed = true;
            rest = after;
        } else if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            current = current
                .iter()
                .filter_map(|v| v.get(name).cloned())
                .collect();
            rest = &after[end..];
        } else {
            return Err(format!("cannot parse {rest}"));
        }
    }
    match (listed, current.as_slice()) {
        (true, _) => Ok(Value::Array(current)),
        (false, [one]) => Ok(one.clone()),
        (false, _) => Err(format!("{} values", current.len())),
    }
}

/// The template is a Zabbix 6.0 export whose parts agree: every dependent item hangs on the
/// status item, every trigger names items of this template, every macro used is defined,
/// UUIDs are unique.
#[test]
fn template_is_consistent() {
    let export = &template()["zabbix_export"];
    assert_eq!(export["version"], "6.0");
    let template = &export["templates"][0];
    let name = template["template"].as_str().unwrap();
    let master = "stripestore.status[{$STRIPESTORE.POOL}]";
    let items = template["items"].as_array().unwrap();
    let rule = &template["discovery_rules"][0];
    assert_eq!(rule["key"], "stripestore.discovery[{$STRIPESTORE.POOL}]");
    let prototypes = rule["item_prototypes"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|i| i["key"] == master && i["value_type"] == "TEXT"));
    let mut keys = Vec::new();
    for item in items.iter().chain(prototypes) {
        let key = item["key"].as_str().unwrap().to_string();
        if key != master {
            assert_eq!(item["type"], "DEPENDENT", "{key}");
            assert_eq!(item["master_item"]["key"], master, "{key}");
            assert_eq!(jsonpaths(item).len(), 1, "{key}");
        }
        keys.push(key);
    }
    for wanted in [
        "stripestore.pool.health",
        "stripestore.pool.tolerance_left",
        "stripestore.scrub.age",
        "stripestore.rebuild.progress",
        "stripestore.scrub.unrepairable",
        "stripestore.device.state[{#UUID}]",
        "stripestore.device.read_errors[{#UUID}]",
        "stripestore.device.write_errors[{#UUID}]",
        "stripestore.device.checksum_errors[{#UUID}]",
        "stripestore.device.repaired[{#UUID}]",
    ] {
        assert!(keys.iter().any(|k| k == wanted), "no item {wanted}");
    }
    // Triggers: on items, on prototypes, and across items.
    let mut triggers: Vec<&Value> = Vec::new();
    for item in items.iter().chain(prototypes) {
        for list in ["triggers", "trigger_prototypes"] {
            triggers.extend(item[list].as_array().into_iter().flatten());
        }
    }
    triggers.extend(export["triggers"].as_array().into_iter().flatten());
    triggers.extend(rule["trigger_prototypes"].as_array().into_iter().flatten());
    assert!(triggers.len() >= 10, "{} triggers", triggers.len());
    let macros: Vec<&str> = template["macros"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["macro"].as_str().unwrap())
        .collect();
    let severities = ["INFO", "WARNING", "AVERAGE", "HIGH", "DISASTER"];
    for trigger in &triggers {
        let expression = trigger["expression"].as_str().unwrap();
        assert!(severities.contains(&trigger["priority"].as_str().unwrap()));
        let mut rest = expression;
        let mut referenced = 0;
        while let Some(start) = rest.find(&format!("(/{name}/")) {
            let after = &rest[start + name.len() + 3..];
            let end = after.find([',', ')']).unwrap();
            let key = &after[..end];
            // A key with parameters ends at its `]`.
            let key = if key.contains('[') && !key.ends_with(']') {
                &after[..after.find(']').unwrap() + 1]
            } else {
                key
            };
            assert!(keys.iter().any(|k| k == key), "{expression}: no item {key}");
            referenced += 1;
            rest = &after[key.len()..];
        }
        assert!(referenced > 0, "{expression}");
    }
    // Every user macro used anywhere is defined.
    let text = std::fs::read_to_string(repo_file(TEMPLATE)).unwrap();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{$") {
        let end = rest[start..].find('}').unwrap() + start + 1;
        let used = &rest[start..end];
        assert!(macros.contains(&used), "{used} is not defined");
        rest = &rest[end..];
    }
    assert!(macros.contains(&"{$STRIPESTORE.SCRUB.MAXAGE}"));
    // UUIDs: 32 hex digits, unique.
    let mut uuids = Vec::new();
    for line in text.lines() {
        if let Some(uuid) = line.trim_start_matches([' ', '-']).strip_prefix("uuid: ") {
            assert!(
                uuid.len() == 32 && uuid.chars().all(|c| c.is_ascii_hexdigit()),
                "{uuid}"
            );
            uuids.push(uuid.to_string());
        }
    }
    let count = uuids.len();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), count, "duplicate UUIDs");
}
