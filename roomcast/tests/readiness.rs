//! Readiness is each process's own state. A MongoDB or Redis outage is shared by every
//! pod: it must not make them unready (the load balancer would drop them all at once),
//! but show in the `*_up` gauges and answer sends with errors, while connected clients
//! stay connected and carry on once it returns.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http_get, metric, wait_port, Client, Stack};

const ROOM: &str = "outage";

#[derive(Clone, Copy, Debug)]
enum Outage {
    Store,
    Redis,
}

/// Sends once and returns the answer (an ack or an error) for that client_id.
async fn answer(client: &mut Client, client_id: &str) -> Value {
    client.send(ROOM, "hello", client_id).await;
    client.wait_for(|f| f["client_id"] == client_id && (f["type"] == "ack" || f["type"] == "error")).await
}

/// Sends until one is acked, within `limit`.
async fn acked_within(client: &mut Client, tag: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    for n in 0.. {
        let got = answer(client, &format!("{tag}-{n}")).await;
        if got["type"] == "ack" || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unreachable!()
}

fn ready(port: u16) -> bool {
    http_get(port, "/readyz").is_ok_and(|(status, _)| status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_or_redis_outage_leaves_every_tier_ready_and_clients_connected() {
    let mut stack = Stack::start("readiness", 1);
    let ports = [
        ("gateway", stack.gateway_ports[0]),
        ("gateway admin", stack.metrics_ports["gateway-0"]),
        ("fanout", stack.metrics_ports["fanout-0"]),
        ("persister", stack.metrics_ports["persister"]),
    ];
    let mut ada = Client::connect(&stack.ws_url(0), "ada").await;
    ada.join(ROOM, None).await;
    assert_eq!(acked_within(&mut ada, "before", Duration::from_secs(10)).await["type"], "ack");

    for outage in [Outage::Store, Outage::Redis] {
        let (gauge_port, gauge) = match outage {
            Outage::Store => (stack.metrics_ports["gateway-0"], "roomcast_gateway_store_up"),
            Outage::Redis => (stack.metrics_ports["fanout-0"], "roomcast_fanout_redis_up"),
        };
        tokio::task::block_in_place(|| match outage {
            Outage::Store => drop(stack.mongo.proc.terminate(Duration::from_secs(10))),
            Outage::Redis => stack.redis().proc.kill(),
        });
        // The outage shows where an SRE looks: the gauge drops to 0.
        let seen = Instant::now();
        while metric(gauge_port, gauge) != 0.0 {
            assert!(seen.elapsed() < Duration::from_secs(10), "{outage:?}: {gauge} stays 1");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Sends are answered with an error, not left hanging, and nothing is acked.
        let refused = answer(&mut ada, &format!("{outage:?}-during")).await;
        assert_eq!(refused["type"], "error", "{outage:?}: {refused}");
        assert!(["unavailable", "timeout"].contains(&refused["code"].as_str().unwrap_or("")), "{outage:?}: {refused}");
        // Every tier stays ready throughout.
        for _ in 0..10 {
            for (what, port) in ports {
                assert!(ready(port), "{outage:?}: {what} turned unready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::task::block_in_place(|| match outage {
            Outage::Store => {
                stack.mongo.proc.start();
                wait_port(stack.mongo.port, "secantusd-py", Duration::from_secs(60));
            }
            Outage::Redis => {
                stack.redis().proc.start();
                wait_port(stack.redis().port, "redis-server", Duration::from_secs(10));
            }
        });
        // The same connection carries on (a closed one would fail the send or the wait).
        let after = acked_within(&mut ada, &format!("{outage:?}-after"), Duration::from_secs(30)).await;
        assert_eq!(after["type"], "ack", "{outage:?}: no send acked after the outage: {after}");
    }
}
