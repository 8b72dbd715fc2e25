//! What every [`Store`] must do, as one suite run against [`super::MemoryStore`] (unit
//! tests) and [`super::RedisStore`] (against a real Redis in the end-to-end tests).

use std::time::{Duration, Instant};

use super::{id_member, stream_id_order, Lex, Store, StoreError, Write};

/// Runs every check; `prefix` keeps the keys of one run apart from others.
pub async fn run_all<S: Store>(store: &S, prefix: &str) {
    bytes_and_mget(store, prefix).await;
    lex_sets(store, prefix).await;
    keep_last_caps_to_the_newest(store, prefix).await;
    scored_sets(store, prefix).await;
    hashes(store, prefix).await;
    wrong_type_is_an_error(store, prefix).await;
    streams_keep_commit_order(store, prefix).await;
    blocked_xread_wakes_on_add(store, prefix).await;
    leases_are_exclusive(store, prefix).await;
    a_claim_is_first_come_and_lapses(store, prefix).await;
    published_messages_reach_subscribers(store, prefix).await;
    an_atomic_step_stays_in_one_slot(store, prefix).await;
    apply_spreads_over_slots_and_keeps_each_keys_order(store, prefix).await;
    store.ping().await.unwrap();
}

pub async fn bytes_and_mget<S: Store>(s: &S, p: &str) {
    let (a, b, missing) = (format!("{p}a"), format!("{p}b"), format!("{p}missing"));
    s.apply(vec![
        Write::Set {
            key: a.clone(),
            value: b"one".to_vec(),
        },
        Write::Set {
            key: b.clone(),
            value: vec![0, 255, 7],
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.get(&a).await.unwrap(), Some(b"one".to_vec()));
    assert_eq!(s.get(&missing).await.unwrap(), None);
    let got = s
        .mget(&[b.clone(), missing.clone(), a.clone()])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Some(vec![0, 255, 7]), None, Some(b"one".to_vec())]
    );
    assert!(s.mget(&[]).await.unwrap().is_empty());
    s.apply(vec![Write::Del { key: a.clone() }]).await.unwrap();
    assert_eq!(s.get(&a).await.unwrap(), None);
}

pub async fn lex_sets<S: Store>(s: &S, p: &str) {
    let k = format!("{p}lex");
    let ids = [5u64, 1 << 61, 17, 3, 1 << 40];
    for id in ids {
        assert!(s.zadd(&k, &id_member(id)).await.unwrap(), "new member");
    }
    assert!(
        !s.zadd(&k, &id_member(17)).await.unwrap(),
        "adding twice is idempotent"
    );
    assert_eq!(s.zcard(&k).await.unwrap(), 5);
    assert!(s.zcontains(&k, &id_member(3)).await.unwrap());
    assert!(!s.zcontains(&k, &id_member(4)).await.unwrap());

    // Newest first, paged by cursor.
    let page1 = s.zrange_lex(&k, Lex::Before(None), 2).await.unwrap();
    assert_eq!(page1, vec![id_member(1 << 61), id_member(1 << 40)]);
    let page2 = s
        .zrange_lex(&k, Lex::Before(Some(&page1[1])), 2)
        .await
        .unwrap();
    assert_eq!(page2, vec![id_member(17), id_member(5)]);
    let page3 = s
        .zrange_lex(&k, Lex::Before(Some(&page2[1])), 2)
        .await
        .unwrap();
    assert_eq!(page3, vec![id_member(3)]);
    // Oldest first.
    let asc = s
        .zrange_lex(&k, Lex::After(Some(&id_member(5))), 10)
        .await
        .unwrap();
    assert_eq!(
        asc,
        vec![id_member(17), id_member(1 << 40), id_member(1 << 61)]
    );
    assert_eq!(
        s.zrange_lex(&k, Lex::After(None), 1).await.unwrap(),
        vec![id_member(3)]
    );
    // Plain names sort too (the follower lists).
    let names = format!("{p}names");
    for n in ["carol", "alice", "bob"] {
        s.zadd(&names, n).await.unwrap();
    }
    assert_eq!(
        s.zrange_lex(&names, Lex::After(Some("alice")), 10)
            .await
            .unwrap(),
        vec!["bob", "carol"]
    );

    assert!(s.zrem(&k, &id_member(17)).await.unwrap());
    assert!(!s.zrem(&k, &id_member(17)).await.unwrap());
    assert_eq!(s.zcard(&k).await.unwrap(), 4);
    assert_eq!(s.zcard(&format!("{p}nothing")).await.unwrap(), 0);
    assert!(s
        .zrange_lex(&format!("{p}nothing"), Lex::Before(None), 5)
        .await
        .unwrap()
        .is_empty());
}

pub async fn keep_last_caps_to_the_newest<S: Store>(s: &S, p: &str) {
    let k = format!("{p}capped");
    let mut writes = Vec::new();
    for id in 1..=30u64 {
        writes.push(Write::ZAdd {
            key: k.clone(),
            member: id_member(id),
        });
        writes.push(Write::ZKeepLast {
            key: k.clone(),
            keep: 10,
        });
    }
    s.apply(writes).await.unwrap();
    assert_eq!(s.zcard(&k).await.unwrap(), 10);
    let newest = s.zrange_lex(&k, Lex::Before(None), 100).await.unwrap();
    assert_eq!(newest.first(), Some(&id_member(30)));
    assert_eq!(newest.last(), Some(&id_member(21)));
    s.apply(vec![
        Write::ZRem {
            key: k.clone(),
            member: id_member(30),
        },
        Write::ZKeepLast {
            key: format!("{p}never-created"),
            keep: 3,
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.zcard(&k).await.unwrap(), 9);
}

pub async fn scored_sets<S: Store>(s: &S, p: &str) {
    let k = format!("{p}scores");
    s.apply(vec![
        Write::ZIncr {
            key: k.clone(),
            member: "a".into(),
            delta: 1.5,
        },
        Write::ZIncr {
            key: k.clone(),
            member: "b".into(),
            delta: 4.0,
        },
        Write::ZIncr {
            key: k.clone(),
            member: "c".into(),
            delta: 2.0,
        },
        Write::ZIncr {
            key: k.clone(),
            member: "a".into(),
            delta: 1.5,
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        s.ztop(&k, 2).await.unwrap(),
        vec![("b".to_string(), 4.0), ("a".to_string(), 3.0)]
    );
    s.apply(vec![Write::ZKeepTop {
        key: k.clone(),
        keep: 2,
    }])
    .await
    .unwrap();
    assert_eq!(s.zcard(&k).await.unwrap(), 2);
    assert!(
        !s.zcontains(&k, "c").await.unwrap(),
        "the lowest score is dropped"
    );
    assert!(s.ztop(&k, 0).await.unwrap().is_empty());
}

pub async fn hashes<S: Store>(s: &S, p: &str) {
    let k = format!("{p}hash");
    s.apply(vec![
        Write::HSet {
            key: k.clone(),
            field: "x".into(),
            value: b"1".to_vec(),
        },
        Write::HSet {
            key: k.clone(),
            field: "y".into(),
            value: b"2".to_vec(),
        },
        Write::HSet {
            key: k.clone(),
            field: "x".into(),
            value: b"3".to_vec(),
        },
    ])
    .await
    .unwrap();
    let mut all = s.hgetall(&k).await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("x".to_string(), b"3".to_vec()),
            ("y".to_string(), b"2".to_vec())
        ]
    );
    assert!(s.hgetall(&format!("{p}nohash")).await.unwrap().is_empty());
    s.apply(vec![
        Write::HDel {
            key: k.clone(),
            field: "x".into(),
        },
        Write::HDel {
            key: k.clone(),
            field: "absent".into(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        s.hgetall(&k).await.unwrap(),
        vec![("y".to_string(), b"2".to_vec())]
    );
}

pub async fn wrong_type_is_an_error<S: Store>(s: &S, p: &str) {
    let k = format!("{p}typed");
    s.apply(vec![Write::Set {
        key: k.clone(),
        value: b"v".to_vec(),
    }])
    .await
    .unwrap();
    let e = s
        .zadd(&k, "m")
        .await
        .expect_err("a string is not a sorted set");
    assert!(matches!(e, StoreError::WrongType(_)), "{e}");
    // MGET treats other types as absent, as Redis does.
    let lex = format!("{p}typed-lex");
    s.zadd(&lex, "m").await.unwrap();
    assert_eq!(s.mget(&[lex]).await.unwrap(), vec![None]);
}

/// An atomic batch with a stream entry (the outbox step): entries come back in the order
/// they were added, after a given id, and are gone once deleted.
pub async fn streams_keep_commit_order<S: Store>(s: &S, p: &str) {
    // One hash tag: an atomic step stays in one slot (see `an_atomic_step_stays_in_one_slot`).
    let (stream, data) = (format!("{p}stream:{{t}}"), format!("{p}stream_data:{{t}}"));
    for i in 0..5u8 {
        s.apply_atomic(vec![
            Write::Set {
                key: data.clone(),
                value: vec![i],
            },
            Write::XAdd {
                key: stream.clone(),
                fields: vec![("n".into(), vec![i]), ("topic".into(), b"t".to_vec())],
            },
        ])
        .await
        .unwrap();
    }
    assert_eq!(s.get(&data).await.unwrap(), Some(vec![4]));
    assert_eq!(s.xlen(&stream).await.unwrap(), 5);
    let all = s.xread(&stream, "0", 100, Duration::ZERO).await.unwrap();
    let ns: Vec<u8> = all.iter().map(|e| e.field("n").unwrap()[0]).collect();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    assert_eq!(all[0].field("topic"), Some(&b"t"[..]));
    assert!(all
        .windows(2)
        .all(|w| stream_id_order(&w[0].id) < stream_id_order(&w[1].id)));
    let after = s
        .xread(&stream, &all[1].id, 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(after, all[2..4].to_vec(), "count and start are honoured");
    s.apply(vec![
        Write::XDel {
            key: stream.clone(),
            id: all[0].id.clone(),
        },
        Write::XDel {
            key: stream.clone(),
            id: all[2].id.clone(),
        },
    ])
    .await
    .unwrap();
    let left = s.xread(&stream, "0", 100, Duration::ZERO).await.unwrap();
    let ns: Vec<u8> = left.iter().map(|e| e.field("n").unwrap()[0]).collect();
    assert_eq!(ns, vec![1, 3, 4]);
    assert_eq!(s.xlen(&stream).await.unwrap(), 3);
    // Nothing after the last: an empty answer once the block time is up.
    let t = Instant::now();
    let none = s
        .xread(&stream, &all[4].id, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(90),
        "{:?}",
        t.elapsed()
    );
}

/// A reader blocked on an empty stream returns as soon as an entry is added, well before
/// its block time is up.
pub async fn blocked_xread_wakes_on_add<S: Store>(s: &S, p: &str) {
    let stream = format!("{p}wake");
    let t = Instant::now();
    let (got, ()) = tokio::join!(s.xread(&stream, "0", 10, Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.apply_atomic(vec![Write::XAdd {
            key: stream.clone(),
            fields: vec![("x".into(), b"1".to_vec())],
        }])
        .await
        .unwrap();
    });
    assert_eq!(got.unwrap().len(), 1);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// Every subscriber of a channel gets what is published on it, in order; other channels'
/// messages do not reach it.
pub async fn published_messages_reach_subscribers<S: Store>(s: &S, p: &str) {
    use futures::StreamExt as _;
    let channel = format!("{p}news");
    let mut a = s.subscribe(&channel).await.unwrap();
    let mut b = s.subscribe(&channel).await.unwrap();
    let mut other = s.subscribe(&format!("{p}other-news")).await.unwrap();
    for i in 0..3u8 {
        s.publish(&channel, &[i]).await.unwrap();
    }
    for sub in [&mut a, &mut b] {
        for i in 0..3u8 {
            let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("a published message arrives")
                .expect("the subscription holds");
            assert_eq!(got, vec![i]);
        }
    }
    s.publish(&format!("{p}other-news"), b"x").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), other.next())
        .await
        .expect("the other channel's message arrives");
    assert_eq!(got, Some(b"x".to_vec()));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), a.next())
            .await
            .is_err(),
        "nothing from another channel"
    );
}

/// One holder at a time; the holder renews; a lapsed or released lease can be taken.
pub async fn leases_are_exclusive<S: Store>(s: &S, p: &str) {
    let key = format!("{p}lease");
    let ttl = Duration::from_millis(300);
    let other = format!("{p}lease-free");
    assert!(s.lease(&key, "a", ttl).await.unwrap());
    assert_eq!(
        s.lease_holders(&[key.clone(), other.clone()])
            .await
            .unwrap(),
        vec![Some("a".to_string()), None],
        "holders are visible"
    );
    assert!(!s.lease(&key, "b", ttl).await.unwrap(), "held by a");
    assert!(s.lease(&key, "a", ttl).await.unwrap(), "a renews");
    s.release(&key, "b").await.unwrap();
    assert!(
        !s.lease(&key, "b", ttl).await.unwrap(),
        "b cannot release a's lease"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.lease_holders(std::slice::from_ref(&key)).await.unwrap(),
        vec![None],
        "a lapsed lease has no holder"
    );
    assert!(s.lease(&key, "b", ttl).await.unwrap(), "a's lease lapsed");
    s.release(&key, "b").await.unwrap();
    assert!(s.lease(&key, "a", ttl).await.unwrap(), "released");
    s.release(&key, "a").await.unwrap();
}

/// The first claim of a key wins and later ones see its value, until it lapses.
pub async fn a_claim_is_first_come_and_lapses<S: Store>(s: &S, p: &str) {
    let key = format!("{p}claim");
    let ttl = Some(Duration::from_millis(300));
    assert_eq!(s.claim(&key, b"first", ttl).await.unwrap(), None);
    assert_eq!(
        s.claim(&key, b"second", ttl).await.unwrap(),
        Some(b"first".to_vec())
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.claim(&key, b"third", ttl).await.unwrap(), None, "lapsed");
    assert_eq!(
        s.claim(&key, b"fourth", ttl).await.unwrap(),
        Some(b"third".to_vec())
    );
    let forever = format!("{p}claim-forever");
    assert_eq!(s.claim(&forever, b"mine", None).await.unwrap(), None);
    assert_eq!(
        s.get(&forever).await.unwrap(),
        Some(b"mine".to_vec()),
        "a claimed key reads like any other"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.claim(&forever, b"yours", None).await.unwrap(),
        Some(b"mine".to_vec()),
        "a claim without a ttl stays"
    );
}

/// An atomic step whose keys are in several slots is refused whole, on every store (a Redis
/// Cluster could not apply it); with one hash tag it is applied.
pub async fn an_atomic_step_stays_in_one_slot<S: Store>(s: &S, p: &str) {
    let (a, b) = (format!("{p}slot_a"), format!("{p}slot_b"));
    let e = s
        .apply_atomic(vec![
            Write::Set {
                key: a.clone(),
                value: b"1".to_vec(),
            },
            Write::Set {
                key: b.clone(),
                value: b"1".to_vec(),
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::CrossSlot(_)), "{e}");
    assert!(e.to_string().contains(&a), "{e}");
    assert_eq!(s.mget(&[a, b]).await.unwrap(), vec![None, None]);
    let (a, b) = (format!("{p}slot_a:{{x}}"), format!("{p}slot_b:{{x}}"));
    s.apply_atomic(vec![
        Write::Set {
            key: a.clone(),
            value: b"1".to_vec(),
        },
        Write::ZAdd {
            key: b.clone(),
            member: "m".into(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.get(&a).await.unwrap(), Some(b"1".to_vec()));
    assert!(s.zcontains(&b, "m").await.unwrap());
}

/// A pipelined batch over many keys (a fan-out) reaches every key, and writes to one key
/// apply in the order given, even when the batch is split (per slot, on a cluster).
pub async fn apply_spreads_over_slots_and_keeps_each_keys_order<S: Store>(s: &S, p: &str) {
    let keys: Vec<String> = (0..200).map(|i| format!("{p}spread:{i}")).collect();
    let mut writes = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        for n in 0..5 {
            writes.push(Write::ZAdd {
                key: key.clone(),
                member: id_member(n),
            });
        }
        writes.push(Write::ZKeepLast {
            key: key.clone(),
            keep: 2,
        });
        writes.push(Write::Set {
            key: format!("{key}:v"),
            value: vec![i as u8, 1],
        });
        writes.push(Write::Set {
            key: format!("{key}:v"),
            value: vec![i as u8, 2],
        });
    }
    s.apply(writes).await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            s.zrange_lex(key, Lex::After(None), 10).await.unwrap(),
            vec![id_member(3), id_member(4)],
            "{key}"
        );
        assert_eq!(
            s.get(&format!("{key}:v")).await.unwrap(),
            Some(vec![i as u8, 2])
        );
    }
}
