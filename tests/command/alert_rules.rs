//! Prometheus alert rules (`tools/prometheus/stripestore_rules.yml`): `promtool check rules`
//! is clean, the rule unit tests (`tools/prometheus/*test*.yml`, in which every alert fires
//! and a healthy pool does not) pass `promtool test rules`, every alert has a test, and every
//! metric the rules use is one the endpoint exposes.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let promtool = common::find_tool("promtool").unwrap();
    let out = Command::new(promtool)
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .unwrap();
    let text = format!(
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// Words of `text` that look like metric or alert names starting with `prefix`.
fn names(text: &str, prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(prefix))
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    if !common::tools_or_skip("promtool_checks_and_tests_the_alert_rules", &["promtool"]) {
        return;
    }
    let rules = std::fs::read_to_string(prometheus_dir().join("stripestore_rules.yml")).unwrap();
    let checked = promtool(&["check", "rules", "stripestore_rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    assert!(!checked.contains("WARNING"), "{checked}");

    let mut tests: Vec<String> = std::fs::read_dir(prometheus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.contains("test") && name.ends_with(".yml"))
        .collect();
    tests.sort();
    assert!(
        tests.iter().any(|t| t == "stripestore_rules_test.yml"),
        "{tests:?}"
    );
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let tested = promtool(&args);
    assert_eq!(tested.matches("SUCCESS").count(), tests.len(), "{tested}");

    // Every alert is named in a test, and expected to fire there (promtool compares the
    // alerts that fire with the expected ones exactly, so a healthy series that fired would
    // fail the test above).
    let alerts: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect();
    for wanted in [
        "StripestorePoolDegraded",
        "StripestoreRedundancyExhausted",
        "StripestoreUnrepairableData",
        "StripestoreDeviceFaulted",
        "StripestoreDeviceErrorsRising",
        "StripestoreScrubOverdue",
        "StripestoreRebuildStalled",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "no alert {wanted}");
    }
    let tests_text: String = tests
        .iter()
        .map(|t| std::fs::read_to_string(prometheus_dir().join(t)).unwrap())
        .collect();
    for alert in &alerts {
        let fires = tests_text.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {alert}\n")) && case.contains("exp_labels")
        });
        assert!(fires, "{alert} never fires in a test");
    }

    // The metrics are the endpoint's (names quoted in the exposition source).
    let exposition = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../src/endpoint/exposition.rs"),
    )
    .unwrap();
    let metrics = names(&rules, "stripestore_");
    assert!(metrics.len() >= 10, "{metrics:?}");
    for metric in metrics
        .iter()
        .filter(|m| !m.starts_with("stripestore_rules"))
    {
        assert!(
            exposition.contains(&format!("\"{metric}\"")),
            "{metric} is not exposed"
        );
    }
}
