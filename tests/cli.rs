//! The `waypoint` binary as an operator uses it: device administration, and
//! `serve` stopping cleanly on SIGTERM after committing and acking.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use waypoint::ingest::topic::native_topic;

fn waypoint(args: &[&str], db_url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(args)
        .env("WAYPOINT_DATABASE_URL", db_url)
        .output()
        .expect("run waypoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_enrolled_listed_and_revoked_from_the_cli() {
    let db = TestDb::new().await;
    let out = waypoint(
        &["devices", "add", "tag-7", "--owntracks", "alice/pixel"],
        &db.url,
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("enrolled device tag-7"), "{text}");
    assert!(
        text.contains("mosquitto_passwd -b /etc/mosquitto/passwd"),
        "{text}"
    );

    let out = waypoint(&["devices", "add", "tag-7"], &db.url);
    assert!(!out.status.success(), "second enrollment must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));

    let out = waypoint(&["devices", "add", "bad/id"], &db.url);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid device id"));

    let out = waypoint(&["devices", "list"], &db.url);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "tag-7\tactive owntracks=alice/pixel"
    );
    let out = waypoint(&["devices", "revoke", "tag-7"], &db.url);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("mosquitto_passwd -D"));
    let out = waypoint(&["devices", "list"], &db.url);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tag-7\trevoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_and_exits_zero_on_sigterm_without_logging_positions() {
    let db = TestDb::new().await;
    db.enroll("dev-s").await;
    require_broker();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let prefix = format!("{}/", unique("cli"));
    let client_id = unique("cli-srv-");
    let mut child = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .arg("serve")
        .env("WAYPOINT_DATABASE_URL", &db.url)
        .env("WAYPOINT_MQTT_URL", "mqtt://127.0.0.1:1883")
        .env("WAYPOINT_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("WAYPOINT_TOPIC_PREFIX", &prefix)
        .env("WAYPOINT_MQTT_CLIENT_ID", &client_id)
        .env("WAYPOINT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn waypoint serve");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("serve ready", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/readyz").await.0 == 200
    })
    .await;

    let publ = Publisher::connect().await;
    let topic = native_topic(&prefix, "dev-s");
    for seq in 0..300 {
        publ.publish(&topic, json_msg("dev-s", 1, seq, 1)).await;
    }
    publ.wait_broker_acks(300).await;
    // SIGTERM while messages are still flowing in: whatever was committed is
    // acked, the rest stays with the broker for the next start.
    wait_for("ingest under way", Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM messages").await > 0
    })
    .await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut logs = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (status, logs)
    });
    let (status, logs) = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("serve exits within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status:?}\n{logs}");
    assert!(logs.contains("shutdown requested"), "{logs}");
    // json_msg puts fixes at latitude 51.5xxx: no log line may carry it.
    assert!(
        !logs.contains("51.5"),
        "a position reached the logs:\n{logs}"
    );

    // The next start with the same session picks up the rest: every message
    // exactly once.
    let mut opts = ServerOpts::new(&db);
    opts.prefix = prefix.clone();
    opts.client_id = client_id;
    let srv = start_server(&opts).await;
    wait_for(
        "all 300 stored after restart",
        Duration::from_secs(30),
        || async { db.count("SELECT count(*) FROM messages").await == 300 },
    )
    .await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 300);
    srv.stop().await;
}
