//! The broker over TLS (`rediss://` to a `redis-server --tls-port` with a CA made by
//! openssl), and what `fanout` says about a Redis configuration that cannot work: one
//! clear line, at start, never a hang or a password.

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{bin, free_port, http_get, tls_files, Client, Redis, RedisSetup, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_over_tls() {
    // The server has no plaintext port: everything the stack does goes over TLS.
    let redis = Redis::start_tls("redis-tls-server");
    let stack = Stack::start_on("redis-tls", 2, RedisSetup::Single(redis));
    let room = "tls-room";
    let mut alice = Client::connect(&stack.ws_url(0), "alice").await;
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    alice.join(room, None).await;
    bob.join(room, None).await;
    for n in 0..5 {
        alice.send(room, &format!("a{n}"), &format!("a{n}")).await;
        bob.send(room, &format!("b{n}"), &format!("b{n}")).await;
    }
    alice.wait_messages(room, 10).await;
    bob.wait_messages(room, 10).await;
    assert_eq!(alice.messages(room), bob.messages(room), "one order on both gateways");
    let seqs: Vec<u64> = alice.messages(room).iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "seqs from the counter kept in Redis over TLS");
    let stored: HashSet<String> = stack.stored_ids(room).await.into_iter().collect();
    assert!(alice.messages(room).iter().all(|(_, id)| stored.contains(id)), "every message stored");

    bob.close().await;
    alice.send(room, "missed", "a-missed").await;
    alice.wait_messages(room, 11).await;
    let mut bob = Client::connect(&stack.ws_url(1), "bob").await;
    let missed = bob.join(room, Some(10)).await;
    assert_eq!(missed.iter().filter_map(|m| m["text"].as_str()).collect::<Vec<_>>(), ["missed"]);
}

/// Runs `fanout` with `redis_args` until it exits (at most 15 s); its exit code and output.
fn fanout_exit(redis_args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .arg("15")
        .arg(bin("fanout"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(redis_args)
        .stdin(Stdio::null())
        .output()
        .expect("run fanout");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn assert_one_clear_line(case: &str, (code, out): (Option<i32>, String), says: &[&str]) {
    assert!(
        code.is_some_and(|c| c != 0 && c != 124),
        "{case}: fanout must exit at once with an error: {code:?}\n{out}"
    );
    let error =
        out.lines().find(|l| l.starts_with("Error:")).unwrap_or_else(|| panic!("{case}: no error line:\n{out}"));
    for word in says {
        assert!(error.contains(word), "{case}: {error:?} does not say {word:?}");
    }
    assert!(!out.contains("s3cret"), "{case}: the password reached the output:\n{out}");
}

#[test]
fn a_configuration_that_cannot_work_gives_one_clear_line() {
    let tls = Redis::start_tls("redis-config-tls");
    let plain = Redis::start("redis-config-plain");
    let bus = free_port().to_string();
    let node = Redis::start_with(
        "redis-config-cluster-node",
        None,
        &["--cluster-enabled".into(), "yes".into(), "--cluster-port".into(), bus],
    );
    let files = tls_files();
    let tls_url = format!("rediss://:s3cret@127.0.0.1:{}", tls.port);

    let wrong_ca = ["--redis", &tls_url, "--redis-ca", files.other_ca.to_str().expect("path")];
    assert_one_clear_line("wrong CA", fanout_exit(&wrong_ca), &["rediss://***@127.0.0.1", "--redis-ca"]);
    let plaintext = format!("redis://:s3cret@127.0.0.1:{}", tls.port);
    assert_one_clear_line("plaintext to a TLS port", fanout_exit(&["--redis", &plaintext]), &["TLS", "rediss://"]);
    assert_one_clear_line(
        "a single Redis given as a cluster",
        fanout_exit(&["--redis-cluster", &plain.url()]),
        &["not a Redis Cluster node", "--redis"],
    );
    assert_one_clear_line(
        "a cluster node given as one Redis",
        fanout_exit(&["--redis", &node.url()]),
        &["is a Redis Cluster node", "--redis-cluster"],
    );
    let mixed = format!("{},rediss://127.0.0.1:{}", node.url(), tls.port);
    assert_one_clear_line(
        "redis:// and rediss:// in one cluster",
        fanout_exit(&["--redis-cluster", &mixed]),
        &["mixes"],
    );
    let (code, out) = fanout_exit(&["--redis", &plain.url(), "--redis-cluster", &node.url()]);
    assert_eq!(code, Some(2), "both --redis and --redis-cluster is a usage error:\n{out}");
    assert!(out.contains("cannot be used with"), "{out}");

    // A node that cannot be reached, or takes the connection and never answers (here a
    // TLS client on a plaintext port), is not a configuration error: the fanout says so
    // once and serves (an outage must not stop the pods), with roomcast_fanout_redis_up 0.
    let closed = free_port();
    let unreachable = format!("redis://:s3cret@127.0.0.1:{closed}");
    serves_and_warns_once("unreachable", &["--redis-cluster", &unreachable], "cannot reach Redis", &unreachable);
    let tls_to_plain = format!("rediss://:s3cret@127.0.0.1:{}", plain.port);
    let ca = files.ca.to_str().expect("path");
    let args = ["--redis", &tls_to_plain, "--redis-ca", ca];
    serves_and_warns_once("tls-to-plain", &args, "a TLS client on a plaintext port", &tls_to_plain);
}

/// Runs `fanout` with `redis_args`: it must serve /healthz, say `says` once (naming the
/// URL with its password masked) and report Redis down.
fn serves_and_warns_once(case: &str, redis_args: &[&str], says: &str, url: &str) {
    let metrics = free_port();
    let log = support::log_dir().join(format!("redis-config-{case}.log"));
    let mut fanout = Command::new(bin("fanout"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(redis_args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start fanout");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let healthy = http_get(metrics, "/healthz").is_ok_and(|(status, _)| status == 200);
        if healthy && text.contains(says) && support::metric(metrics, "roomcast_fanout_redis_up") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{case}: no {says:?} line, /healthz and redis_up 0 within 15 s:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Some seconds on, it has still said it once.
    std::thread::sleep(Duration::from_secs(3));
    let _ = fanout.kill();
    let _ = fanout.wait();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let line = said.lines().find(|l| l.contains(says)).unwrap_or_default();
    let masked = url.replace(":s3cret@", "***@");
    assert!(line.contains(&masked), "{case}: the line names the node, masked ({masked}): {line}");
    assert!(!said.contains("s3cret"), "{case}: the password reached the log:\n{said}");
    assert_eq!(said.matches(says).count(), 1, "{case}: said once:\n{said}");
}
