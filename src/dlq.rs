//! `starling dlq list|replay`: what a consumer group gave up on, and sending it round again.
//!
//! Dead letters live on `<topic>.dlq.<group>` (see `events::topics`), each with the original
//! key, payload and `occurred_at`, plus the error and the number of attempts as headers.
//! `list` reads them with a throw-away consumer group, so nothing is consumed. `replay`
//! reads what is there, then publishes each one again on its original topic (attempt count
//! reset) and commits it on the dead-letter topic under the group `dlq-replay.<group>`, so
//! a second replay does not send the same letters again (and a letter that fails again
//! during the replay waits for the next one). Every group consuming the topic sees a replayed event
//! again; that is harmless because every handler is idempotent.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use starling_runtime::events::topics::{dead_letter_topic, CONSUMERS};
use starling_runtime::events::{EventBus, KafkaBus, Message};

use crate::cli::{DlqArgs, DlqCommand};

pub async fn run(cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Replay(args) => replay(args).await,
    }
}

/// The (topic, group) pairs the arguments select, checked against the catalogue.
fn selected(args: &DlqArgs) -> anyhow::Result<Vec<(&'static str, &'static str)>> {
    let chosen: Vec<(&str, &str)> = CONSUMERS
        .iter()
        .copied()
        .filter(|(t, g)| {
            args.topic.as_deref().is_none_or(|x| x == *t)
                && args.group.as_deref().is_none_or(|x| x == *g)
        })
        .collect();
    if chosen.is_empty() {
        let known: Vec<String> = CONSUMERS
            .iter()
            .map(|(t, g)| format!("--topic {t} --group {g}"))
            .collect();
        anyhow::bail!(
            "no consumer matches --topic {} --group {}; the consumers are: {}",
            args.topic.as_deref().unwrap_or("*"),
            args.group.as_deref().unwrap_or("*"),
            known.join(", ")
        );
    }
    Ok(chosen)
}

fn letter_json(dlq: &str, partition: i32, offset: i64, m: &Message) -> String {
    serde_json::json!({
        "dlq": dlq,
        "partition": partition,
        "offset": offset,
        "key": m.key,
        "attempts": m.attempt,
        "error": m.error,
        "occurred_at_ms": m.occurred_at_ms,
        "payload_bytes": m.payload.len(),
    })
    .to_string()
}

/// The next dead letter, or `None` once none has come for `wait_secs`.
async fn next_letter(
    sub: &mut Box<dyn starling_runtime::events::Subscription>,
    wait_secs: u64,
    dlq: &str,
) -> anyhow::Result<Option<starling_runtime::events::Delivery>> {
    match tokio::time::timeout(Duration::from_secs(wait_secs), sub.next()).await {
        Err(_) => Ok(None),
        Ok(Ok(d)) => Ok(Some(d)),
        // No dead-letter topic yet: nothing was ever dead-lettered there.
        Ok(Err(e)) if e.to_string().contains("UnknownTopicOrPartition") => Ok(None),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("reading {dlq}"))),
    }
}

async fn connect(args: &DlqArgs) -> anyhow::Result<Arc<dyn EventBus>> {
    let bus = KafkaBus::connect(&args.kafka, &args.namespace)
        .await
        .context("connecting to kafka")?;
    Ok(Arc::new(bus))
}

async fn list(args: DlqArgs) -> anyhow::Result<()> {
    let bus = connect(&args).await?;
    let mut total = 0;
    for (topic, group) in selected(&args)? {
        let dlq = dead_letter_topic(topic, group);
        let reader = format!("dlq-list.{:016x}", rand::random::<u64>());
        let mut sub = bus.subscribe(&reader, std::slice::from_ref(&dlq)).await?;
        while let Some(d) = next_letter(&mut sub, args.wait_secs, &dlq).await? {
            println!("{}", letter_json(&dlq, d.partition, d.offset, &d.message));
            total += 1;
        }
    }
    eprintln!("starling: {total} dead letters");
    Ok(())
}

async fn replay(args: DlqArgs) -> anyhow::Result<()> {
    let chosen = selected(&args)?;
    if chosen.len() != 1 {
        anyhow::bail!("replay one group at a time: give --topic and --group");
    }
    let (topic, group) = chosen[0];
    let bus = connect(&args).await?;
    let dlq = dead_letter_topic(topic, group);
    let mut sub = bus
        .subscribe(&format!("dlq-replay.{group}"), std::slice::from_ref(&dlq))
        .await?;
    // First read what is there, then publish it: a letter that fails again while this runs
    // comes back to the dead-letter topic, and must not be sent round once more.
    let mut letters = Vec::new();
    while let Some(d) = next_letter(&mut sub, args.wait_secs, &dlq).await? {
        letters.push(d);
    }
    let mut replayed = 0;
    for d in letters {
        let mut again = d.message.clone();
        again.topic = topic.to_string();
        again.attempt = 0;
        again.error = None;
        bus.publish(again)
            .await
            .with_context(|| format!("publishing a dead letter of {dlq} again"))?;
        sub.commit(&d).await?;
        println!("{}", letter_json(&dlq, d.partition, d.offset, &d.message));
        replayed += 1;
    }
    eprintln!("starling: replayed {replayed} dead letters from {dlq} to {topic}");
    Ok(())
}
