//! What every [`EventBus`] must do, as one suite run against [`super::MemoryBus`] (unit
//! tests) and [`super::KafkaBus`] (against a real Kafka-protocol broker), plus the consumer
//! loop's retry and dead-letter behaviour on top of it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::consumer::{self, ConsumerConfig, HandleError, Handler};
use super::topics::dead_letter_topic;
use super::{now_ms, EventBus, Message, Subscription};

const WAIT: Duration = Duration::from_secs(60);

async fn next(sub: &mut Box<dyn Subscription>) -> super::Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within the wait")
        .expect("receive")
}

/// `prefix` makes topic and group names unique to this run.
pub async fn run_all<B: EventBus + Clone>(bus: &B, prefix: &str) {
    round_trip_in_order_per_key(bus, prefix).await;
    every_group_gets_every_message(bus, prefix).await;
    poison_goes_to_dead_letters_and_later_messages_flow(bus, prefix).await;
    transient_failure_is_retried_then_handled(bus, prefix).await;
    a_failing_message_holds_back_only_its_key(bus, prefix).await;
    a_group_shares_the_work_and_a_leaver_hands_it_over(bus, prefix).await;
    members_joining_and_leaving_under_load_lose_repeat_and_reorder_nothing(bus, prefix).await;
}

pub async fn round_trip_in_order_per_key<B: EventBus>(bus: &B, p: &str) {
    let topic = format!("{p}.order");
    bus.create_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(&format!("{p}-g1"), std::slice::from_ref(&topic))
        .await
        .unwrap();
    let t0 = now_ms() - 5;
    for i in 0..5u8 {
        let mut m = Message::new(&topic, "alice", vec![i, 0, 255], t0 + i as i64);
        m.attempt = u32::from(i % 2);
        bus.publish(m).await.unwrap();
    }
    for i in 0..5u8 {
        let d = next(&mut sub).await;
        assert_eq!(d.message.topic, topic);
        assert_eq!(d.message.key, "alice");
        assert_eq!(d.message.payload, vec![i, 0, 255], "in order for one key");
        assert_eq!(d.message.occurred_at_ms, t0 + i as i64);
        assert_eq!(d.message.attempt, u32::from(i % 2));
        sub.commit(&d).await.unwrap();
    }
}

pub async fn every_group_gets_every_message<B: EventBus>(bus: &B, p: &str) {
    let topic = format!("{p}.groups");
    bus.create_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    let mut a = bus
        .subscribe(&format!("{p}-ga"), std::slice::from_ref(&topic))
        .await
        .unwrap();
    let mut b = bus
        .subscribe(&format!("{p}-gb"), std::slice::from_ref(&topic))
        .await
        .unwrap();
    bus.publish(Message::new(&topic, "k", b"x".to_vec(), now_ms()))
        .await
        .unwrap();
    assert_eq!(next(&mut a).await.message.payload, b"x");
    assert_eq!(next(&mut b).await.message.payload, b"x");
}

struct Picky {
    seen: AtomicU32,
    flaky_left: AtomicU32,
}

#[async_trait]
impl Handler for Picky {
    async fn handle(&self, m: &Message) -> Result<(), HandleError> {
        match m.payload.as_slice() {
            b"poison" => Err(HandleError::Poison("cannot decode".into())),
            b"flaky" if self.flaky_left.load(Ordering::SeqCst) > 0 => {
                self.flaky_left.fetch_sub(1, Ordering::SeqCst);
                Err(HandleError::Transient("dependency down".into()))
            }
            _ => {
                self.seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

async fn run_consumer<B: EventBus + Clone>(
    bus: &B,
    topic: &str,
    group: &str,
    handler: Arc<Picky>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    bus.create_topics(&[topic.to_string(), dead_letter_topic(topic, group)])
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut config = ConsumerConfig::new(topic, group);
    config.backoff = Duration::from_millis(20);
    config.attempts = 3;
    let bus: Arc<dyn EventBus> = Arc::new(bus.clone());
    let health = crate::health::Component::new("consumer");
    let task = tokio::spawn(async move {
        consumer::run(bus, config, handler, stopped, health)
            .await
            .unwrap();
    });
    (stop, task)
}

pub async fn poison_goes_to_dead_letters_and_later_messages_flow<B: EventBus + Clone>(
    bus: &B,
    p: &str,
) {
    let topic = format!("{p}.poison");
    let group = format!("{p}-consumer");
    let handler = Arc::new(Picky {
        seen: AtomicU32::new(0),
        flaky_left: AtomicU32::new(0),
    });
    let (stop, task) = run_consumer(bus, &topic, &group, handler.clone()).await;
    let mut dead = bus
        .subscribe(
            &format!("{p}-dlq-reader"),
            &[dead_letter_topic(&topic, &group)],
        )
        .await
        .unwrap();
    bus.publish(Message::new(&topic, "k", b"poison".to_vec(), now_ms()))
        .await
        .unwrap();
    for _ in 0..3 {
        bus.publish(Message::new(&topic, "k", b"fine".to_vec(), now_ms()))
            .await
            .unwrap();
    }
    let d = next(&mut dead).await;
    assert_eq!(d.message.payload, b"poison");
    let ok = tokio::time::timeout(WAIT, async {
        while handler.seen.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "messages after the poison one are handled");
    stop.send_replace(true);
    task.await.unwrap();
}

pub async fn transient_failure_is_retried_then_handled<B: EventBus + Clone>(bus: &B, p: &str) {
    let topic = format!("{p}.flaky");
    let group = format!("{p}-consumer");
    // Fails 4 times, more than the 3 attempts: but nothing else succeeded meanwhile (as
    // when a dependency is down), so it is retried rather than dead-lettered.
    let handler = Arc::new(Picky {
        seen: AtomicU32::new(0),
        flaky_left: AtomicU32::new(4),
    });
    let (stop, task) = run_consumer(bus, &topic, &group, handler.clone()).await;
    bus.publish(Message::new(&topic, "k", b"flaky".to_vec(), now_ms()))
        .await
        .unwrap();
    let ok = tokio::time::timeout(WAIT, async {
        while handler.seen.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "handled after its failures");
    assert_eq!(handler.flaky_left.load(Ordering::SeqCst), 0);
    stop.send_replace(true);
    task.await.unwrap();
}

/// Records the payloads it handled, in order; `fail<N>` fails its first N attempts,
/// `stubborn` always fails.
#[derive(Default)]
struct Recorder {
    handled: std::sync::Mutex<Vec<String>>,
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, m: &Message) -> Result<(), HandleError> {
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let fails = match text.split_once(':') {
            Some((_, rest)) if rest.starts_with("fail") => rest[4..].parse().unwrap_or(0),
            Some((_, "stubborn")) => u32::MAX,
            _ => 0,
        };
        {
            let mut failures = self.failures.lock().unwrap();
            let n = failures.entry(text.clone()).or_default();
            if *n < fails {
                *n += 1;
                return Err(HandleError::Transient(format!("{text} is not ready")));
            }
        }
        self.handled.lock().unwrap().push(text);
        Ok(())
    }
}

/// Key `a`'s first message fails twice: `a`'s later messages wait behind it (no overtaking),
/// while key `b` flows meanwhile. A message of key `c` that always fails goes to the
/// dead-letter topic with its error and attempt count, since others succeed meanwhile, and
/// the message of `c` behind it is then handled.
pub async fn a_failing_message_holds_back_only_its_key<B: EventBus + Clone>(bus: &B, p: &str) {
    let topic = format!("{p}.keys");
    let group = format!("{p}-keyed");
    let handler = Arc::new(Recorder::default());
    bus.create_topics(&[topic.clone(), dead_letter_topic(&topic, &group)])
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut config = ConsumerConfig::new(&topic, &group);
    config.backoff = Duration::from_millis(250);
    config.max_backoff = Duration::from_millis(250);
    config.attempts = 3;
    let dyn_bus: Arc<dyn EventBus> = Arc::new(bus.clone());
    let h = handler.clone();
    let task = tokio::spawn(async move {
        consumer::run(
            dyn_bus,
            config,
            h,
            stopped,
            crate::health::Component::new("c"),
        )
        .await
        .unwrap();
    });
    let mut dead = bus
        .subscribe(
            &format!("{p}-keyed-dlq"),
            &[dead_letter_topic(&topic, &group)],
        )
        .await
        .unwrap();
    let name = topic.as_str();
    let publish = |batch: &'static [(&'static str, &'static str)]| async move {
        for (key, payload) in batch {
            bus.publish(Message::new(
                name,
                key,
                payload.as_bytes().to_vec(),
                now_ms(),
            ))
            .await
            .unwrap();
        }
    };
    publish(&[("a", "a1:fail2"), ("c", "c1:stubborn")]).await;
    // The rest once c1 has failed: b's messages then succeed while c1 is being retried
    // (whichever partition a reader happens to fetch first), which is what sends c1 to the
    // dead letters after its 3 attempts rather than after retrying longer.
    let c1_failed = tokio::time::timeout(WAIT, async {
        while handler
            .failures
            .lock()
            .unwrap()
            .get("c1:stubborn")
            .is_none_or(|n| *n == 0)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(c1_failed.is_ok(), "c1 was tried");
    publish(&[
        ("a", "a2"),
        ("b", "b1"),
        ("a", "a3"),
        ("b", "b2"),
        ("c", "c2"),
    ])
    .await;
    let letter = next(&mut dead).await.message;
    assert_eq!(letter.payload, b"c1:stubborn");
    assert_eq!(letter.key, "c");
    assert_eq!(letter.attempt, 3);
    assert!(
        letter.error.as_deref().unwrap_or("").contains("not ready"),
        "{:?}",
        letter.error
    );
    let done = tokio::time::timeout(WAIT, async {
        while handler.handled.lock().unwrap().len() < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "{:?}", handler.handled.lock().unwrap());
    let handled = handler.handled.lock().unwrap().clone();
    let pos = |x: &str| handled.iter().position(|h| h == x).unwrap();
    assert!(
        pos("a1:fail2") < pos("a2") && pos("a2") < pos("a3"),
        "{handled:?}"
    );
    assert!(
        pos("b1") < pos("a1:fail2"),
        "b did not wait for a: {handled:?}"
    );
    assert!(
        pos("b2") < pos("a1:fail2"),
        "b did not wait for a: {handled:?}"
    );
    assert!(handled.contains(&"c2".to_string()));
    assert!(!handled.contains(&"c1:stubborn".to_string()));
    stop.send_replace(true);
    task.await.unwrap();
}

/// Runs one member of `group` on `topic` until the returned sender says stop.
fn spawn_member<B: EventBus + Clone>(
    bus: &B,
    topic: &str,
    group: &str,
    handler: Arc<dyn Handler>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let bus: Arc<dyn EventBus> = Arc::new(bus.clone());
    let config = ConsumerConfig::new(topic, group);
    let task = tokio::spawn(async move {
        consumer::run(
            bus,
            config,
            handler,
            stopped,
            crate::health::Component::new("c"),
        )
        .await
        .unwrap();
    });
    (stop, task)
}

/// Counts what each member of a group handled.
#[derive(Default)]
struct Tally {
    handled: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for Tally {
    async fn handle(&self, m: &Message) -> Result<(), HandleError> {
        self.handled
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&m.payload).into_owned());
        Ok(())
    }
}

/// Two members of one group: every message is handled once by one of them. When one stops,
/// the other handles everything published after, and nothing twice.
pub async fn a_group_shares_the_work_and_a_leaver_hands_it_over<B: EventBus + Clone>(
    bus: &B,
    p: &str,
) {
    let topic = format!("{p}.shared");
    let group = format!("{p}-sharing");
    bus.create_topics(&[topic.clone(), dead_letter_topic(&topic, &group)])
        .await
        .unwrap();
    let start = |tally: Arc<Tally>| spawn_member(bus, &topic, &group, tally);
    let (a, b) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let (stop_a, task_a) = start(a.clone());
    let (stop_b, task_b) = start(b.clone());
    let name = topic.as_str();
    let publish = |from: usize, to: usize| async move {
        for i in from..to {
            bus.publish(Message::new(
                name,
                &format!("key{i}"),
                format!("m{i}").into_bytes(),
                now_ms(),
            ))
            .await
            .unwrap();
        }
    };
    let all = |a: &Tally, b: &Tally| {
        let mut seen = a.handled.lock().unwrap().clone();
        seen.extend(b.handled.lock().unwrap().iter().cloned());
        seen
    };
    let wait_for = |n: usize| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            tokio::time::timeout(WAIT, async {
                while all(&a, &b).len() < n {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    publish(0, 40).await;
    assert!(wait_for(40).await, "{:?}", all(&a, &b));
    stop_a.send_replace(true);
    task_a.await.unwrap();
    let a_count = a.handled.lock().unwrap().len();
    publish(40, 80).await;
    assert!(wait_for(80).await, "{:?}", all(&a, &b));
    assert_eq!(
        a.handled.lock().unwrap().len(),
        a_count,
        "a stopped member handles nothing"
    );
    let mut seen = all(&a, &b);
    seen.sort();
    let total = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), total, "nothing handled twice");
    assert_eq!(seen.len(), 80);
    stop_b.send_replace(true);
    task_b.await.unwrap();
}

/// What every member of a group handled, in one log, in the order it was handled.
struct Log {
    member: &'static str,
    log: Arc<std::sync::Mutex<Vec<(&'static str, String)>>>,
}

#[async_trait]
impl Handler for Log {
    async fn handle(&self, m: &Message) -> Result<(), HandleError> {
        let payload = String::from_utf8_lossy(&m.payload).into_owned();
        self.log.lock().unwrap().push((self.member, payload));
        Ok(())
    }
}

/// Messages (300, over 30 keys) keep coming while a group grows from one member to three,
/// loses its first member and gains a fourth: every message is handled exactly once, a
/// member that left handles nothing more, and each key's messages are handled in the order
/// published.
pub async fn members_joining_and_leaving_under_load_lose_repeat_and_reorder_nothing<
    B: EventBus + Clone,
>(
    bus: &B,
    p: &str,
) {
    const MESSAGES: usize = 300;
    const KEYS: usize = 30;
    let topic = format!("{p}.churn");
    let group = format!("{p}-churning");
    bus.create_topics(&[topic.clone(), dead_letter_topic(&topic, &group)])
        .await
        .unwrap();
    let log: Arc<std::sync::Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let start = |member: &'static str| {
        let handler = Arc::new(Log {
            member,
            log: log.clone(),
        });
        spawn_member(bus, &topic, &group, handler)
    };
    let handled = || log.lock().unwrap().len();
    let reach = |n: usize| async move {
        tokio::time::timeout(WAIT, async {
            while handled() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok()
    };
    let publisher = {
        let bus = bus.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                let key = format!("key{}", i % KEYS);
                let payload = format!("{key}:{i}").into_bytes();
                bus.publish(Message::new(&topic, &key, payload, now_ms()))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (stop_a, task_a) = start("a");
    assert!(reach(40).await, "a alone handles the first messages");
    let (stop_b, task_b) = start("b");
    let (stop_c, task_c) = start("c");
    assert!(reach(120).await, "a, b and c share the work");
    stop_a.send_replace(true);
    task_a.await.unwrap();
    let a_stopped_at = handled();
    let (stop_d, task_d) = start("d");
    publisher.await.unwrap();
    assert!(reach(MESSAGES).await, "{} of {MESSAGES} handled", handled());
    for (stop, task) in [(stop_b, task_b), (stop_c, task_c), (stop_d, task_d)] {
        stop.send_replace(true);
        task.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let mut payloads: Vec<&String> = log.iter().map(|(_, m)| m).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), MESSAGES, "every message once");
    assert_eq!(log.len(), MESSAGES, "nothing handled twice");
    assert!(
        log[a_stopped_at..].iter().all(|(member, _)| *member != "a"),
        "a member that left handled more"
    );
    // Which members get which keys depends on the partitions each holds when: at least
    // the first one and one that joined share the work.
    let members: std::collections::BTreeSet<&str> = log.iter().map(|(m, _)| *m).collect();
    assert!(
        members.contains("a") && members.len() >= 2,
        "the work was shared: {members:?}"
    );
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (_, m) in &log {
        let (key, seq) = m.split_once(':').expect("key:seq");
        let seq: usize = seq.parse().expect("a sequence number");
        if let Some(before) = last.insert(key, seq) {
            assert!(before < seq, "{key}: {seq} handled after {before}");
        }
    }
}
