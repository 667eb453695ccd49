//! One load run: ramp up, publish for the duration, read until every expected delivery
//! has arrived (or the server has gone silent), then account.
//!
//! A delivery that arrives after the drain window is *late*, never lost: lost is what
//! never arrived. Each client task counts on its own and adds to the shared live counters
//! in batches, so that the instrument does not contend with itself at 100k+ deliveries/s.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;

use crate::client::{Client, Incoming, Mode};
use crate::stats::{self, Percentiles, Receiver};
use crate::Args;

/// Counters every client task shares.
struct Live {
    connected: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    /// Clients that have not yet finished publishing.
    publishing: AtomicUsize,
    /// Per room: sends made, and sends answered (acked or refused).
    room_sent: Vec<AtomicU64>,
    room_answered: Vec<AtomicU64>,
    room_acked: Vec<AtomicU64>,
}

impl Live {
    fn new(connections: usize, rooms: usize) -> Live {
        let counters = || (0..rooms).map(|_| AtomicU64::new(0)).collect();
        Live {
            connected: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            publishing: AtomicUsize::new(connections),
            room_sent: counters(),
            room_answered: counters(),
            room_acked: counters(),
        }
    }

    /// Whether a member of `room` that received `unique` deliveries (and sent `own`) has
    /// everything it will ever be owed: publishing is over everywhere, every send in the
    /// room is answered (on /ws), and each of them has arrived.
    fn complete(&self, mode: Mode, room: usize, unique: u64, own: u64) -> bool {
        if self.publishing.load(Ordering::Acquire) > 0 {
            return false;
        }
        let sent = self.room_sent[room].load(Ordering::Acquire);
        match mode {
            Mode::Ws | Mode::Webtransport => {
                self.room_answered[room].load(Ordering::Acquire) >= sent
                    && unique >= self.room_acked[room].load(Ordering::Acquire)
            }
            Mode::Socketio => unique >= sent.saturating_sub(own),
        }
    }
}

/// Marks a client's publishing as over exactly once, whichever way its task ends.
struct Publishing<'a>(Option<&'a AtomicUsize>);

impl Publishing<'_> {
    fn done(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// How often a draining client checks whether it is complete.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Live counters are updated every this many deliveries.
const LIVE_BATCH: u64 = 256;

struct ClientResult {
    room: usize,
    connected: bool,
    connect_micros: u64,
    sent: u64,
    acked: u64,
    errors: Vec<String>,
    receiver: Receiver,
    latency: Histogram<u64>,
    /// Deliveries not yet added to the live counter.
    unflushed: u64,
}

impl ClientResult {
    /// Takes one frame from the server; false when the connection is over.
    /// `now` and `on_time_until` are microseconds since the epoch (one clock read a frame).
    fn take(
        &mut self,
        frame: Option<anyhow::Result<Incoming>>,
        live: &Live,
        senders: usize,
        now: u64,
        on_time_until: u64,
    ) -> bool {
        match frame {
            Some(Ok(Incoming::Load { sender, n, sent_micros })) => {
                if self.receiver.record(sender, n, senders, now > on_time_until) {
                    self.latency.saturating_record(now.saturating_sub(sent_micros).max(1));
                    self.unflushed += 1;
                    if self.unflushed == LIVE_BATCH {
                        live.delivered.fetch_add(std::mem::take(&mut self.unflushed), Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(Incoming::Ack)) => {
                self.acked += 1;
                live.room_acked[self.room].fetch_add(1, Ordering::AcqRel);
                live.room_answered[self.room].fetch_add(1, Ordering::AcqRel);
            }
            Some(Ok(Incoming::Error(err))) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                live.room_answered[self.room].fetch_add(1, Ordering::AcqRel);
                self.errors.push(format!("server: {err}"));
            }
            Some(Ok(Incoming::Other)) => {}
            Some(Err(err)) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                self.errors.push(format!("connection: {err:#}"));
                return false;
            }
            None => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                self.errors.push("connection closed by the server".into());
                return false;
            }
        }
        true
    }
}

#[derive(Serialize)]
pub struct Report {
    pub mode: Mode,
    pub targets: Vec<String>,
    pub connections: usize,
    pub rooms: usize,
    pub rate: f64,
    pub message_size: usize,
    pub duration_s: f64,
    pub connected: u64,
    pub connect_errors: u64,
    /// WebTransport connects tried again (see `client::WT_RETRIES`), not errors.
    pub connect_retries: u64,
    pub connect_time: Percentiles,
    pub churn_connects: u64,
    pub sent: u64,
    pub acked: u64,
    pub send_errors: u64,
    pub expected_deliveries: u64,
    pub unique_deliveries: u64,
    /// Unique deliveries that arrived after the drain window (included in unique).
    pub late: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub deliveries_per_s: f64,
    pub latency: Percentiles,
    pub first_errors: Vec<String>,
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Room of client `i`: round-robin, or Zipf-like when `skew > 0`.
pub fn room_of(i: usize, clients: usize, rooms: usize, skew: f64) -> usize {
    if skew <= 0.0 {
        return i % rooms;
    }
    let weights: Vec<f64> = (1..=rooms).map(|k| 1.0 / (k as f64).powf(skew)).collect();
    let total: f64 = weights.iter().sum();
    let position = (i as f64 + 0.5) / clients as f64 * total;
    let mut acc = 0.0;
    for (room, w) in weights.iter().enumerate() {
        acc += w;
        if position < acc {
            return room;
        }
    }
    rooms - 1
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let live = Arc::new(Live::new(args.connections, args.rooms));
    let (go_tx, go) = watch::channel(None::<Instant>);
    let run_id = now_micros() % 1_000_000;
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let room = room_of(i, args.connections, args.rooms, args.room_skew);
        let target = args.target[i % args.target.len()].clone();
        let delay = Duration::from_secs_f64(args.ramp_up * i as f64 / args.connections as f64);
        let (args, live, go) = (args.clone(), live.clone(), go.clone());
        let user = format!("lg{run_id}-{i}");
        tasks.push(tokio::spawn(async move { client_task(i as u32, room, user, target, delay, args, live, go).await }));
    }
    let bar = progress(&args);
    // Wait for the ramp (bounded), then start everyone at once.
    let ramp_deadline = Instant::now() + Duration::from_secs_f64(args.ramp_up + 20.0);
    while live.connected.load(Ordering::Relaxed) + live.errors.load(Ordering::Relaxed) < args.connections as u64
        && Instant::now() < ramp_deadline
    {
        bar.set_message(format!("connecting {}/{}", live.connected.load(Ordering::Relaxed), args.connections));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    go_tx.send_replace(Some(started));
    let churn = tokio::spawn(churn_task(args.clone(), run_id));
    while tasks.iter().any(|t| !t.is_finished()) {
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        bar.set_message(format!(
            "{:.0}s  sent {}  delivered {} ({:.0}/s)  errors {}",
            elapsed,
            live.sent.load(Ordering::Relaxed),
            live.delivered.load(Ordering::Relaxed),
            live.delivered.load(Ordering::Relaxed) as f64 / elapsed,
            live.errors.load(Ordering::Relaxed)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    let churn_connects = churn.await.unwrap_or(0);
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.map_err(|err| anyhow::anyhow!("a client task failed: {err}"))?);
    }
    Ok(account(&args, results, churn_connects))
}

#[allow(clippy::too_many_arguments)]
async fn client_task(
    id: u32,
    room: usize,
    user: String,
    target: url::Url,
    delay: Duration,
    args: Args,
    live: Arc<Live>,
    mut go: watch::Receiver<Option<Instant>>,
) -> ClientResult {
    let mut result = ClientResult {
        room,
        connected: false,
        connect_micros: 0,
        sent: 0,
        acked: 0,
        errors: Vec::new(),
        receiver: Receiver::default(),
        latency: stats::histogram(),
        unflushed: 0,
    };
    let mut publishing = Publishing(Some(&live.publishing));
    tokio::time::sleep(delay).await;
    let room_name = format!("lg-room-{room}");
    let began = Instant::now();
    let connected = async {
        let mut client = Client::connect(&target, args.mode, &user).await?;
        client.join(&room_name).await?;
        anyhow::Ok(client)
    };
    let mut client = match tokio::time::timeout(Duration::from_secs(15), connected).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => {
            live.errors.fetch_add(1, Ordering::Relaxed);
            result.errors.push(format!("connect: {err:#}"));
            return result;
        }
        Err(_) => {
            live.errors.fetch_add(1, Ordering::Relaxed);
            result.errors.push("connect: timed out after 15 s".into());
            return result;
        }
    };
    result.connected = true;
    result.connect_micros = began.elapsed().as_micros() as u64;
    live.connected.fetch_add(1, Ordering::Relaxed);
    // Until every client is connected, read and drop what arrives: reading answers the
    // server's pings (a client silent for too long is closed), as any live client would.
    let started = loop {
        if let Some(started) = *go.borrow_and_update() {
            break started;
        }
        tokio::select! {
            changed = go.changed() => if changed.is_err() {
                return result;
            },
            // A client that sees the start late may already get others' messages: kept.
            frame = client.next() => if !result.take(frame, &live, args.connections, now_micros(), u64::MAX) {
                return result;
            },
        }
    };
    let publish_until = started + Duration::from_secs_f64(args.duration);
    let micros_at = |at: Instant| now_micros() + at.saturating_duration_since(Instant::now()).as_micros() as u64;
    let on_time_until = micros_at(publish_until + Duration::from_secs_f64(args.drain));
    let give_up_at = publish_until + Duration::from_secs_f64(args.max_wait);
    let silence = Duration::from_secs_f64(args.silence);
    let period = Duration::from_secs_f64(args.connections as f64 / args.rate.max(0.001));
    let offset = period.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(started + offset), period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer, moved along: the end of publishing, then the drain's polls.
    let wake = tokio::time::sleep_until(tokio::time::Instant::from_std(publish_until));
    tokio::pin!(wake);
    let mut sending = !args.idle;
    let (mut draining, mut last_frame) = (false, now_micros());
    let mut n = 0u32;
    loop {
        tokio::select! {
            biased;
            frame = client.next() => {
                last_frame = now_micros();
                if !result.take(frame, &live, args.connections, last_frame, on_time_until) {
                    break;
                }
                if draining && live.complete(args.mode, room, result.receiver.unique, result.sent) {
                    break;
                }
            }
            _ = ticks.tick(), if sending => {
                let text = stats::encode(id, n, now_micros(), args.message_size);
                live.room_sent[room].fetch_add(1, Ordering::AcqRel);
                if let Err(err) = client.send(&room_name, &text, &format!("{id}-{n}")).await {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    result.errors.push(format!("send: {err:#}"));
                    break;
                }
                n += 1;
                result.sent += 1;
                live.sent.fetch_add(1, Ordering::Relaxed);
            }
            () = &mut wake => {
                if !draining {
                    (sending, draining) = (false, true);
                    publishing.done();
                }
                let now = Instant::now();
                let quiet = Duration::from_micros(now_micros().saturating_sub(last_frame));
                if live.complete(args.mode, room, result.receiver.unique, result.sent)
                    || now >= give_up_at
                    || quiet.min(now.duration_since(publish_until)) >= silence
                {
                    break;
                }
                wake.as_mut().reset(tokio::time::Instant::from_std(now + DRAIN_POLL));
            }
        }
    }
    publishing.done();
    live.delivered.fetch_add(result.unflushed, Ordering::Relaxed);
    client.close().await;
    result
}

/// Opens and closes extra connections at `--churn` per second for the duration.
async fn churn_task(args: Args, run_id: u64) -> u64 {
    if args.churn <= 0.0 {
        return 0;
    }
    let until = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.churn));
    let mut opened = 0u64;
    while Instant::now() < until {
        ticks.tick().await;
        let target = args.target[opened as usize % args.target.len()].clone();
        let (mode, user) = (args.mode, format!("lg{run_id}-churn{opened}"));
        opened += 1;
        tokio::spawn(async move {
            if let Ok(Ok(client)) =
                tokio::time::timeout(Duration::from_secs(5), Client::connect(&target, mode, &user)).await
            {
                client.close().await;
            }
        });
    }
    opened
}

fn progress(args: &Args) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} loadgen {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn account(args: &Args, results: Vec<ClientResult>, churn_connects: u64) -> Report {
    let mut members = vec![0u64; args.rooms];
    for r in results.iter().filter(|r| r.connected) {
        members[r.room] += 1;
    }
    let mut connect = stats::histogram();
    let mut latency = stats::histogram();
    let (mut sent, mut acked, mut expected, mut unique, mut late) = (0, 0, 0, 0, 0);
    let (mut duplicates, mut reordered) = (0, 0);
    let mut errors = Vec::new();
    for r in &results {
        errors.extend(r.errors.iter().take(3).cloned());
        if !r.connected {
            continue;
        }
        let _ = connect.record(r.connect_micros.max(1));
        let _ = latency.add(&r.latency);
        sent += r.sent;
        acked += r.acked;
        // Messages that must arrive: acked ones on /ws (the sender gets its own copy),
        // sent ones on Socket.IO (which has no ack in the original events, and skips the sender).
        expected += match args.mode {
            Mode::Ws | Mode::Webtransport => r.acked * members[r.room],
            Mode::Socketio => r.sent * members[r.room].saturating_sub(1),
        };
        unique += r.receiver.unique;
        late += r.receiver.late;
        duplicates += r.receiver.duplicates;
        reordered += r.receiver.reordered;
    }
    let (lost, _extra) = stats::loss(expected, unique);
    let connected = results.iter().filter(|r| r.connected).count() as u64;
    Report {
        mode: args.mode,
        targets: args.target.iter().map(|t| t.to_string()).collect(),
        connections: args.connections,
        rooms: args.rooms,
        rate: args.rate,
        message_size: args.message_size,
        duration_s: args.duration,
        connected,
        connect_errors: args.connections as u64 - connected,
        connect_retries: crate::client::WT_RETRIES.load(std::sync::atomic::Ordering::Relaxed),
        connect_time: stats::percentiles(&connect),
        churn_connects,
        sent,
        acked,
        send_errors: results.iter().filter(|r| r.connected).map(|r| r.errors.len() as u64).sum::<u64>(),
        expected_deliveries: expected,
        unique_deliveries: unique,
        late,
        lost,
        duplicates,
        reordered,
        deliveries_per_s: unique as f64 / args.duration,
        latency: stats::percentiles(&latency),
        first_errors: errors.into_iter().take(10).collect(),
    }
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "loadgen {:?} -> {}\n\
             connections  {} connected, {} failed ({} retried); connect p50 {:.1} ms, p99 {:.1} ms; churn {}\n\
             messages     {} sent, {} acked, {} errors\n\
             deliveries   {} expected, {} received ({} late), {} lost, {} duplicates, {} reordered\n\
             throughput   {:.0} deliveries/s\n\
             latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            self.mode,
            self.targets.join(", "),
            self.connected,
            self.connect_errors,
            self.connect_retries,
            self.connect_time.p50_ms,
            self.connect_time.p99_ms,
            self.churn_connects,
            self.sent,
            self.acked,
            self.send_errors,
            self.expected_deliveries,
            self.unique_deliveries,
            self.late,
            self.lost,
            self.duplicates,
            self.reordered,
            self.deliveries_per_s,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|err| format!("{{\"error\":\"cannot encode report: {err}\"}}"))
    }

    /// Why this run should fail a pipeline; empty when it passed.
    pub fn failures(&self, max_p99: Option<f64>) -> Vec<String> {
        let mut failures = Vec::new();
        if self.lost > 0 {
            failures.push(format!("{} deliveries lost", self.lost));
        }
        if self.duplicates + self.reordered > 0 {
            failures.push(format!("{} duplicates and {} out of order", self.duplicates, self.reordered));
        }
        if self.connect_errors > 0 || self.send_errors > 0 {
            failures.push(format!(
                "{} connect errors and {} other errors: {:?}",
                self.connect_errors, self.send_errors, self.first_errors
            ));
        }
        if let Some(limit) = max_p99 {
            if self.latency.p99_ms > limit {
                failures.push(format!("p99 {:.2} ms is above --max-p99 {limit} ms", self.latency.p99_ms));
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::room_of;

    #[test]
    fn rooms_are_dealt_evenly_or_skewed() {
        let even: Vec<usize> = (0..6).map(|i| room_of(i, 6, 3, 0.0)).collect();
        assert_eq!(even, vec![0, 1, 2, 0, 1, 2]);
        let mut sizes = [0; 4];
        for i in 0..100 {
            sizes[room_of(i, 100, 4, 1.0)] += 1;
        }
        assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2] && sizes[2] >= sizes[3], "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 100);
    }
}
