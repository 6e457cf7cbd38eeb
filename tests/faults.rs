//! Faults with real processes: a test-owned Mosquitto (deploy/mosquitto.conf)
//! restarted while the database is unreachable.

mod common;

use std::time::Duration;

use common::broker::start_broker;
use common::*;
use waypoint::ingest::topic::native_topic;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_during_a_database_outage_loses_nothing() {
    let mut broker = start_broker(&[("waypoint-server", "s"), ("dev-1", "p")]);
    let db = TestDb::new().await;
    db.enroll("dev-1").await;
    let proxy = DbProxy::start("127.0.0.1:5432").await;
    let mut opts = ServerOpts::new(&db);
    opts.prefix = String::new();
    opts.broker = format!("mqtt://waypoint-server:s@127.0.0.1:{}", broker.port);
    opts.database_url = proxy.url_for(&db);
    // One small shard queue and one-message batches, so the stalled shard
    // holds one message and its queue the other 19: the broker's redelivery
    // after the restart finds the queue still full of the old connection's.
    opts.extra = [
        "--receive-maximum",
        "20",
        "--shards",
        "1",
        "--batch-max-fixes",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let srv = start_server(&opts).await;

    proxy.cut();
    let publ = Publisher::connect_to(broker.port, Some(("dev-1", "p"))).await;
    let topic = native_topic("", "dev-1");
    for seq in 0..60 {
        publ.publish(&topic, json_msg("dev-1", 1, seq, 1)).await;
    }
    publ.wait_broker_acks(60).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(srv.metrics.messages_acked.get(), 0);

    broker.restart();
    wait_for("server reconnected", Duration::from_secs(20), || async {
        srv.metrics.mqtt_connects.get() >= 2 && srv.metrics.mqtt_connected.get() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 0);

    proxy.restore();
    wait_for(
        "all 60 messages stored",
        Duration::from_secs(60),
        || async { db.count("SELECT count(*) FROM messages").await == 60 },
    )
    .await;
    assert_eq!(db.count("SELECT count(*) FROM fixes").await, 60);
    assert!(
        srv.metrics.deferred.get() > 0,
        "the redelivery should have found the shard queue full"
    );
    // Deferred messages come back through a resync reconnect and are acked,
    // in order, each exactly once; then nothing is left unacknowledged.
    wait_for("everything acked", Duration::from_secs(30), || async {
        srv.metrics.messages_acked.get() >= 60
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(srv.metrics.messages_acked.get(), 60, "acked more than once");
    let (_, m) = http_get(srv.http_addr, "/metrics").await;
    assert!(m.contains(r#"waypoint_queue_depth{stage="acks"} 0"#), "{m}");
    assert!(m.contains("waypoint_oldest_unacked_seconds 0.0"), "{m}");
    assert_eq!(db.count("SELECT count(*) FROM messages").await, 60);
    srv.stop().await;
}
