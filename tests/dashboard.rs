//! The officer dashboard end to end in a real browser: Debian's Chromium,
//! headless, driven by playwright-core (tests/browser/dashboard.mjs) against
//! a running server. The officer signs in, an alert raised through MQTT
//! arrives in the queue live, the officer opens it from the keyboard, sees
//! the map and the evidence, acknowledges and resolves it with a note, looks
//! at the supervisee's track, signs out; an admin opens the admin page. Then
//! the database must hold the decision and its audit trail. The browser
//! writes screenshots of the main screens to target/screenshots/; with
//! WAYPOINT_UPDATE_SCREENSHOTS=1 to docs/screenshots/, the ones the README
//! shows (so an ordinary test run leaves the tree clean).
//!
//! Needs `/usr/bin/chromium` (apt) and `npm ci --prefix tests/browser`;
//! missing either fails the test, it is never skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use common::walk::*;
use common::*;
use waypoint::api::auth::Role;
use waypoint::ingest::topic::native_topic;
use waypoint::store::Store;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The note the browser resolves the alert with (markup in it must be shown
/// as text, never rendered).
const NOTE: &str =
    "Phoned C-100: walking a friend's dog <wp-xss>not markup</wp-xss> & agreed a new route";
/// The note added before the decision.
const NOTE_ADDED: &str = "Left a voicemail for C-100.";
/// What the admin creates (names fixed in tests/browser/dashboard.mjs).
const ADMIN_DEVICE: &str = "tag-admin-1";
const ADMIN_ZONE: &str = "school-1";
const SCREENSHOTS: [&str; 6] = [
    "signin.png",
    "queue.png",
    "alert.png",
    "supervisee.png",
    "admin.png",
    "tablet-queue.png",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The browser and its driver must be installed; say how when they are not.
fn require_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    );
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is missing: run npm ci --prefix tests/browser"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(o) if o.status.success()),
        "node is missing (Node.js 20 or newer runs tests/browser/dashboard.mjs): {node:?}"
    );
}

/// The browser script, its stdout as lines.
struct Driver {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Everything it printed so far (for failure messages).
    seen: Vec<String>,
}

impl Driver {
    fn spawn(url: &str, officer: &str, admin: &str, shots: &Path) -> Self {
        let mut child = Command::new("node")
            .arg("tests/browser/dashboard.mjs")
            .current_dir(root())
            .env("WAYPOINT_URL", url)
            .env("OFFICER_TOKEN", officer)
            .env("ADMIN_TOKEN", admin)
            .env("SCREENSHOT_DIR", shots)
            .env("RESOLVE_NOTE", NOTE)
            .env("ADDED_NOTE", NOTE_ADDED)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node tests/browser/dashboard.mjs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                println!("[browser] {l}");
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; panics with everything the
    /// script printed if it ends, fails or takes longer than `limit`.
    async fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Ok(None) => {
                    let status = match self.child.wait().await {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    panic!(
                        "the browser test ended ({status}) before printing {prefix}:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(_) => {
                    self.stop().await;
                    panic!(
                        "timed out after {limit:?} waiting for {prefix} from the browser test:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Ends the script: SIGTERM first so Playwright closes Chromium with it,
    /// then a kill.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("screenshot {} missing: {e}", path.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a non-empty PNG ({} bytes)",
        path.display(),
        bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_resolves_a_live_alert_in_the_dashboard() {
    require_browser();
    let db = TestDb::new().await;
    db.store()
        .apply_scenario(&scenario("tag-web"), "test")
        .await
        .unwrap();
    let opts = ServerOpts::new(&db);
    let srv = start_server(&opts).await;
    let url = format!("http://{}", srv.http_addr);
    let officer = common::api::token(&db.pool, Role::Officer, Some("pc-1")).await;
    let admin = common::api::token(&db.pool, Role::Admin, None).await;
    let shots = if std::env::var_os("WAYPOINT_UPDATE_SCREENSHOTS").is_some() {
        root().join("docs/screenshots")
    } else {
        root().join("target/screenshots")
    };
    std::fs::create_dir_all(&shots).unwrap();
    for s in SCREENSHOTS.iter().chain(&["failure.png"]) {
        let _ = std::fs::remove_file(shots.join(s));
    }

    let mut browser = Driver::spawn(&url, &officer, &admin, &shots);
    browser.expect("READY", Duration::from_secs(60)).await;

    // Signed in with the queue open: walk the device into the zone.
    let publ = Publisher::connect().await;
    let topic = native_topic(&opts.prefix, "tag-web");
    let t0 = Utc::now() - TimeDelta::seconds(60);
    for (i, d) in [300.0, 150.0, 40.0, 35.0].iter().enumerate() {
        let m = at(
            "tag-web",
            i as u64 + 1,
            t0 + TimeDelta::seconds(10 * i as i64),
            *d,
        );
        publ.publish(&topic, m.as_str()).await;
    }
    let done = browser.expect("DONE", Duration::from_secs(120)).await;
    let status = tokio::time::timeout(Duration::from_secs(20), browser.child.wait())
        .await
        .expect("the browser test exits after DONE")
        .unwrap();
    assert!(
        status.success(),
        "browser test exited {status}:\n{}",
        browser.seen.join("\n")
    );
    let id: i64 = done
        .parse()
        .unwrap_or_else(|_| panic!("DONE carries the alert id, got {done:?}"));

    // The decision as stored.
    type Decision = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let (kind, status, by, outcome, note): Decision =
        sqlx::query_as(
            "SELECT kind, status, resolved_by, outcome, resolution_note FROM alerts WHERE alert_id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("alert {id} from the browser is not in the database: {e}"));
    assert_eq!(kind, "exclusion_zone_entry");
    assert_eq!(status, "resolved");
    assert_eq!(by.as_deref(), Some("pc-1"));
    assert_eq!(outcome.as_deref(), Some("contacted_supervisee"));
    assert_eq!(note.as_deref(), Some(NOTE), "the note is stored exactly");
    let actions: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT action, actor, note FROM alert_actions WHERE alert_id = $1 ORDER BY action_id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let pc1 = |action: &str, note: Option<&str>| {
        (
            action.to_owned(),
            "pc-1".to_owned(),
            note.map(str::to_owned),
        )
    };
    assert_eq!(
        actions,
        [
            pc1("note", Some(NOTE_ADDED)),
            pc1("acknowledge", None),
            pc1("resolve", Some(NOTE)),
        ],
        "the officer's actions, in order"
    );

    // The audit trail: the officer's reads and decision, both sign-ins.
    let audited = |action: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM audit_log WHERE alert_id = $1 AND action = $2 AND actor = 'pc-1'",
            )
            .bind(id)
            .bind(action)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(
        audited("alert.read").await >= 1,
        "alert.read by pc-1 audited"
    );
    assert_eq!(
        audited("alert.resolve").await,
        1,
        "alert.resolve by pc-1 audited"
    );
    let sign_ins: Vec<String> = sqlx::query_scalar(
        "SELECT actor FROM audit_log WHERE action = 'session.create' ORDER BY audit_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        sign_ins.len(),
        2,
        "officer and admin sign-ins: {sign_ins:?}"
    );
    assert_eq!(sign_ins[0], "pc-1");
    let officer_sessions = db
        .count(
            "SELECT count(*) FROM api_sessions s JOIN api_tokens t USING (token_id) \
             WHERE t.role = 'officer' AND s.ended_at IS NULL",
        )
        .await;
    assert_eq!(
        officer_sessions, 0,
        "signing out ended the officer's session"
    );

    // What the admin created through the admin page.
    let interval: Option<i32> =
        sqlx::query_scalar("SELECT report_interval_s FROM devices WHERE device_id = $1")
            .bind(ADMIN_DEVICE)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
    assert_eq!(interval, Some(30), "{ADMIN_DEVICE} enrolled by the admin");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM zones WHERE zone_ref = '{ADMIN_ZONE}' AND name = 'Primary school'"
        ))
        .await,
        1,
        "{ADMIN_ZONE} saved by the admin"
    );

    for s in SCREENSHOTS {
        assert_png(&shots.join(s));
    }
    srv.stop().await;
}
