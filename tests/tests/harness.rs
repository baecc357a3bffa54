//! Checks of the harness itself against tansu, without the engine: when an end-to-end test
//! fails, these tell whether the broker side of the harness works.

use std::time::Duration;

use cordon_tests::{Broker, unique_name, unique_topic, wait_for};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer as _},
};

#[test]
fn produce_read_back_and_probe_committed_offsets() {
    let broker = Broker::start();
    let topic = unique_topic("harness");
    broker.create_topic(&topic, 2);
    assert_eq!(broker.partitions(&topic), vec![0, 1]);
    assert!(
        broker.read_topic(&topic).is_empty(),
        "a new topic reads empty"
    );

    let p0 = broker.produce(&topic, 0, &[("a", "one"), ("b", "two"), ("c", "three")]);
    let p1 = broker.produce(&topic, 1, &[("d", b"four".as_slice())]);
    assert_eq!(p0, vec![0, 1, 2]);
    assert_eq!(p1, vec![0]);
    let records = broker.read_topic(&topic);
    let seen: Vec<(i32, i64, String, String)> = records
        .iter()
        .map(|r| {
            (
                r.partition,
                r.offset,
                r.key_str(),
                String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, 0, "a".into(), "one".into()),
            (0, 1, "b".into(), "two".into()),
            (0, 2, "c".into(), "three".into()),
            (1, 0, "d".into(), "four".into()),
        ]
    );

    // Regression: tansu 0.6 answers ListOffsets(latest) with the newest batch's base offset
    // plus one; the probe's watermarks must still be the true ends.
    assert_eq!(
        broker.produce(&topic, 0, &[("e", "five"), ("f", "six")]),
        vec![3, 4]
    );
    assert_eq!(broker.read_topic(&topic).len(), 6);

    // A group that never committed has no offsets; after a commit the probe sees it.
    let group = unique_name("harness-group");
    let probe = broker.offsets(&group, &topic);
    let committed = probe.committed().expect("committed offsets");
    assert!(
        committed.values().all(Option::is_none),
        "a fresh group has committed offsets: {committed:?}"
    );
    assert_eq!(
        probe.high_watermarks().expect("watermarks"),
        [(0, 5), (1, 1)].into_iter().collect()
    );
    assert!(probe.caught_up().is_err());

    let committer: BaseConsumer = broker
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(5))
        .expect("tpl");
    offsets
        .add_partition_offset(&topic, 1, Offset::Offset(1))
        .expect("tpl");
    committer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit offsets");
    let state = wait_for(
        Duration::from_secs(10),
        "the probe to see the commit",
        || probe.caught_up(),
    );
    assert!(state.contains("committed"), "{state}");
}
