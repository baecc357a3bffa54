//! The Kafka connector's calls that the repartition stage's frames rest on, against tansu,
//! without the engine: a topic's partition count, a send to a chosen partition, and a poll
//! bounded by bytes.

use std::{collections::BTreeMap, time::Duration};

use cordon_connectors::{ClientSettings, ConnectorError, KafkaSink, KafkaSource, SourceRecord};
use cordon_tests::{Broker, unique_name, unique_topic};

const TIMEOUT: Duration = Duration::from_secs(10);

fn settings(broker: &Broker) -> ClientSettings {
    ClientSettings {
        brokers: broker.bootstrap(),
        properties: BTreeMap::from([("broker.address.family".to_owned(), "v4".to_owned())]),
    }
}

#[test]
fn a_sink_counts_a_topics_partitions_and_sends_to_the_one_it_is_told() {
    let broker = Broker::start();
    let topic = unique_topic("connector-sink");
    broker.create_topic(&topic, 3);
    let sink = KafkaSink::new(&settings(&broker)).expect("a producer");
    assert_eq!(sink.partition_count(&topic, TIMEOUT).expect("a count"), 3);
    let missing = unique_topic("connector-missing");
    match sink.partition_count(&missing, TIMEOUT) {
        Err(ConnectorError::MissingTopic { topic, .. }) => assert_eq!(topic, missing),
        other => panic!("a missing topic: {other:?}"),
    }
    for (partition, payload) in [(2, "two"), (0, "zero"), (2, "two again")] {
        let header: [(&str, &[u8]); 1] = [("h", b"v")];
        sink.send_to(&topic, partition, payload.as_bytes(), &header)
            .expect("queued");
    }
    sink.flush(TIMEOUT).expect("delivered");
    let mut seen: Vec<(i32, String, Option<String>, Option<String>)> = broker
        .read_topic(&topic)
        .iter()
        .map(|r| {
            let payload = r.payload.as_deref().unwrap_or_default();
            let key = r
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            (
                r.partition,
                String::from_utf8_lossy(payload).into_owned(),
                key,
                r.header("h"),
            )
        })
        .collect();
    seen.sort();
    let v = Some("v".to_owned());
    assert_eq!(
        seen,
        [
            (0, "zero".to_owned(), None, v.clone()),
            (2, "two".to_owned(), None, v.clone()),
            (2, "two again".to_owned(), None, v),
        ]
    );
}

#[test]
fn a_poll_stops_once_its_messages_reach_the_byte_budget() {
    let broker = Broker::start();
    let topic = unique_topic("connector-poll");
    broker.create_topic(&topic, 1);
    let payload = vec![b'x'; 1_000];
    let records: Vec<(String, &[u8])> = (0..10)
        .map(|i| (format!("k{i}"), payload.as_slice()))
        .collect();
    broker.produce(&topic, 0, &records);
    let source = KafkaSource::new(&settings(&broker), &unique_name("connector-poll"), &topic)
        .expect("a consumer");
    source.subscribe().expect("subscribed");
    // 2,500 bytes: the third message crosses it, and the poll stops there. A rebalance (the
    // group's first assignment) ends a poll early and empty; a few tries outlast it.
    let mut batch: Vec<SourceRecord> = Vec::new();
    for _ in 0..20 {
        source.poll_batch(100, 2_500, Duration::from_secs(1), &mut batch);
        if !batch.is_empty() {
            break;
        }
    }
    let offsets: Vec<i64> = batch.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2]);
    // No budget: the rest, up to the count.
    let mut rest: Vec<SourceRecord> = Vec::new();
    source.poll_batch(5, usize::MAX, Duration::from_secs(20), &mut rest);
    let offsets: Vec<i64> = rest.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [3, 4, 5, 6, 7]);
}
