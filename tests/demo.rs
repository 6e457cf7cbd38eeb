//! `waypoint demo` and `waypoint serve --embedded`, run as a user runs
//! them: the binary, nothing installed but itself (no PostgreSQL, no
//! Mosquitto), a temporary data directory.

use std::process::Command;

use serde_json::Value;

fn waypoint() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_waypoint"));
    // The user's environment must not steer these runs (the embedded mode
    // never reads WAYPOINT_DATABASE_URL anyway; the log level is for us).
    c.env_remove("WAYPOINT_DATABASE_URL")
        .env("WAYPOINT_LOG", "warn");
    c
}

/// The demo runs its fleet to the end and every kind of alert the engine
/// raises appears, each fix sent is stored, and the summary says so.
#[test]
fn the_demo_shows_every_alert_kind_and_stores_every_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = waypoint()
        .args(["demo", "--duration", "35", "--exit", "--json"])
        .args(["--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("the waypoint binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let s: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(s["kinds_missing"], Value::Array(vec![]), "{s:#}");
    for kind in waypoint::demo::demo_kinds() {
        assert!(
            s["alerts_by_kind"][kind].as_i64().unwrap_or(0) >= 1,
            "no {kind}: {s:#}"
        );
    }
    let sent = s["fixes_sent"].as_i64().unwrap();
    assert!(sent > 5_000, "{s:#}");
    assert_eq!(s["fixes_stored"].as_i64().unwrap(), sent, "{s:#}");
    assert_eq!(s["puback_missing"], 0, "{s:#}");
    assert_eq!(s["stopped_early"], false, "{s:#}");
    // The data stays where it was asked to be, in SQLite.
    assert!(dir.path().join("data/waypoint.db").is_file());
}

/// Unusable ports and directories are clear errors, not panics.
#[test]
fn embedded_mode_refuses_unusable_ports_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = waypoint()
        .args([
            "serve",
            "--embedded",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not-a-dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = waypoint()
        .args(["serve", "--embedded", "--http-addr", "127.0.0.1:0"])
        .args(["--mqtt-port", &port, "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&port) && err.contains("in use"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // --data-dir alone must not quietly pick SQLite for a server.
    let out = waypoint()
        .args(["serve", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--embedded"), "{err}");
}

/// The CLI works on the embedded database with `--data-dir`, as a pilot
/// needs it to (tokens to sign in with, devices, alerts).
#[test]
fn the_cli_works_on_the_embedded_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        let out = waypoint()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {text}\n{err}");
        text
    };
    let token = run(&["tokens", "create", "--role", "admin"]);
    assert!(token.trim().starts_with("wpt_"), "{token}");
    run(&["devices", "add", "tag-1"]);
    assert!(run(&["devices", "list"]).contains("tag-1\tactive"));
    run(&["devices", "revoke", "tag-1"]);
    assert!(run(&["devices", "list"]).contains("tag-1\trevoked"));
    assert_eq!(run(&["alerts", "list"]), "");
    assert!(data.join("waypoint.db").is_file());
}
