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
    let tls_to_plain = format!("rediss://127.0.0.1:{}", plain.port);
    let ca = files.ca.to_str().expect("path");
    assert_one_clear_line(
        "TLS to a plaintext port",
        fanout_exit(&["--redis", &tls_to_plain, "--redis-ca", ca]),
        &["TLS"],
    );
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

    // An unreachable node is not a configuration error: the fanout says so once and
    // serves (readiness does not hang on Redis), with roomcast_fanout_redis_up at 0.
    let closed = free_port();
    let metrics = free_port();
    let log = support::log_dir().join("redis-config-unreachable.log");
    let mut fanout = Command::new(bin("fanout"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--redis-cluster", &format!("redis://:s3cret@127.0.0.1:{closed}")])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start fanout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let healthy = http_get(metrics, "/healthz").is_ok_and(|(status, _)| status == 200);
        if healthy && text.contains("cannot reach Redis") {
            break text;
        }
        assert!(Instant::now() < deadline, "no 'cannot reach Redis' line and /healthz within 10 s:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = fanout.kill();
    let _ = fanout.wait();
    let line = said.lines().find(|l| l.contains("cannot reach Redis")).unwrap_or_default();
    assert!(line.contains(&format!("redis://***@127.0.0.1:{closed}")), "the line names the node: {line}");
    assert!(!said.contains("s3cret"), "the password reached the log:\n{said}");
    assert_eq!(said.matches("cannot reach Redis").count(), 1, "said once:\n{said}");
}
