//! A short loadgen run against `roomcast`, in both protocols: it asserts no loss, no
//! duplicates and no errors, never speed (benchmarks are in bench/ and BENCHMARKS.md).

mod support;

use std::process::Command;

use support::{bin, start_roomcast};

#[test]
fn loadgen_smoke_run_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, port, _) = start_roomcast("loadgen-smoke-roomcast", dir.path(), &[]);
    for mode in ["ws", "socketio"] {
        let json = dir.path().join(format!("{mode}.json"));
        let status = Command::new(bin("loadgen"))
            .args(["--target", &format!("http://127.0.0.1:{port}"), "--mode", mode])
            .args([
                "--connections",
                "40",
                "--rooms",
                "4",
                "--rate",
                "100",
                "--duration",
                "2",
                "--ramp-up",
                "0.5",
                "--quiet",
            ])
            .arg("--json")
            .arg(&json)
            .status()
            .expect("run loadgen");
        assert!(status.success(), "loadgen --mode {mode} reported loss, duplicates or errors");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
        assert_eq!(report["lost"], 0, "{mode}: {report}");
        assert_eq!(report["duplicates"], 0, "{mode}: {report}");
        assert_eq!(report["connect_errors"], 0, "{mode}: {report}");
        assert!(report["unique_deliveries"].as_u64().is_some_and(|n| n > 0), "{mode}: something was delivered");
        assert_eq!(report["unique_deliveries"], report["expected_deliveries"], "{mode}");
    }
    // Remote targets are refused without --allow-remote.
    let refused = Command::new(bin("loadgen"))
        .args(["--target", "http://192.0.2.1:80", "--connections", "1"])
        .status()
        .expect("run");
    assert_eq!(refused.code(), Some(2));
}
