//! A Mosquitto owned by one test: deploy/mosquitto.conf with only paths and
//! listener ports rewritten into a temporary directory, so a test can rely on
//! the production limits and may stop or restart it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Broker {
    child: Child,
    pub port: u16,
    conf: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two distinct free ports: both listeners are held open while asking, so
/// the OS cannot hand out the same port twice.
fn two_free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts Mosquitto with deploy/mosquitto.conf, rewriting only file paths and
/// listener ports into a temporary directory.
pub fn start_broker(users: &[(&str, &str)]) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/mosquitto.conf"
    ))
    .expect("deploy/mosquitto.conf");
    let acl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/waypoint.acl"))
        .expect("deploy/waypoint.acl");
    std::fs::write(d.join("waypoint.acl"), acl).unwrap();
    run(Command::new("openssl").current_dir(d).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.crt",
    ]));
    let passwd = d.join("passwd");
    for (i, (u, p)) in users.iter().enumerate() {
        let mut c = Command::new("mosquitto_passwd");
        if i == 0 {
            c.arg("-c");
        }
        run(c.arg("-b").arg(&passwd).arg(u).arg(p));
    }
    let (port, tls_port) = two_free_ports();
    let p = |name: &str| d.join(name).display().to_string();
    let conf = conf
        .replace("listener 1883 127.0.0.1", &format!("listener {port} 127.0.0.1"))
        .replace("listener 8883", &format!("listener {tls_port} 127.0.0.1"))
        .replace("/var/lib/mosquitto/", &format!("{}/", d.display()))
        .replace("/etc/mosquitto/certs/server.crt", &p("server.crt"))
        .replace("/etc/mosquitto/certs/server.key", &p("server.key"))
        .replace("/etc/mosquitto/certs/ca.crt", &p("server.crt"))
        .replace("/etc/mosquitto/passwd", &p("passwd"))
        .replace("/etc/mosquitto/waypoint.acl", &p("waypoint.acl"))
        // The test runs as root; keep it from dropping to a user that cannot
        // read the temporary directory.
        + "\nuser root\n";
    let conf_path = d.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = spawn(&conf_path, port);
    Broker {
        child,
        port,
        conf: conf_path,
        _dir: dir,
    }
}

fn spawn(conf: &Path, port: u16) -> Child {
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto must be installed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start with deploy/mosquitto.conf"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Broker {
    /// Stops the broker the way an operator would (SIGTERM: it saves its
    /// persistence file) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Stops the broker (SIGTERM).
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port after [`Broker::stop`].
    pub fn start(&mut self) {
        self.child = spawn(&self.conf, self.port);
    }
}
