//! Publishing release messages to the `<prefix>.releases` topic (MSK on AWS, tansu locally)
//! with rskafka, a pure-Rust client.
//!
//! A message goes to the partition its key hashes to (FNV-1a of `<client>/<flow>` modulo the
//! topic's partition count), so every message of one flow lands on one partition and is read in
//! order. A missing topic is created with one partition (a local broker; on AWS the topic is
//! created with the cluster, see docs/operations.md).

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

/// A connection to the brokers.
pub struct Producer {
    client: Client,
}

/// Why a message could not be published (one line, no secrets).
#[derive(Debug, thiserror::Error)]
#[error("Kafka: {0}")]
pub struct KafkaError(String);

impl Producer {
    /// Connects to a comma-separated broker list (`KAFKA_BROKERS`).
    pub async fn connect(brokers: &str) -> Result<Producer, KafkaError> {
        let list: Vec<String> = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_string)
            .collect();
        if list.is_empty() {
            return Err(KafkaError("no brokers configured (KAFKA_BROKERS)".into()));
        }
        let client = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ClientBuilder::new(list).build(),
        )
        .await
        .map_err(|_| KafkaError(format!("no answer from the brokers {brokers} in 10 s")))?
        .map_err(|e| KafkaError(format!("cannot reach the brokers {brokers}: {e}")))?;
        Ok(Producer { client })
    }

    /// Sends `value` under `key`; answers the partition and offset it was written at.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        value: Vec<u8>,
    ) -> Result<(i32, i64), KafkaError> {
        let partitions = self.partitions(topic).await?;
        let partition = partition_of(key, partitions);
        let pc = self
            .client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| KafkaError(format!("topic {topic} partition {partition}: {e}")))?;
        let record = Record {
            key: Some(key.as_bytes().to_vec()),
            value: Some(value),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        };
        let offsets = pc
            .produce(vec![record], Compression::NoCompression)
            .await
            .map_err(|e| KafkaError(format!("topic {topic}: {e}")))?;
        let offset = offsets.first().copied().unwrap_or_default();
        Ok((partition, offset))
    }

    async fn partitions(&self, topic: &str) -> Result<i32, KafkaError> {
        let topics = self
            .client
            .list_topics()
            .await
            .map_err(|e| KafkaError(format!("listing topics: {e}")))?;
        if let Some(t) = topics.iter().find(|t| t.name == topic) {
            return Ok(i32::try_from(t.partitions.len()).unwrap_or(1).max(1));
        }
        let ctl = self
            .client
            .controller_client()
            .map_err(|e| KafkaError(format!("controller: {e}")))?;
        match ctl.create_topic(topic, 1, 1, 5_000).await {
            Ok(()) => Ok(1),
            // Created meanwhile by another producer.
            Err(e) if e.to_string().contains("TopicAlreadyExists") => Ok(1),
            Err(e) => Err(KafkaError(format!("creating topic {topic}: {e}"))),
        }
    }
}

/// The partition of `key` among `partitions` (FNV-1a, stable across processes and versions).
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(h % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_on_the_same_partition() {
        // Golden values: changing the hash would reorder a flow's messages across a deploy.
        assert_eq!(partition_of("acme-bank/trade-preclear", 1), 0);
        assert_eq!(
            partition_of("acme-bank/trade-preclear", 6),
            partition_of("acme-bank/trade-preclear", 6)
        );
        let spread: std::collections::BTreeSet<i32> = (0..100)
            .map(|i| partition_of(&format!("c{i}/f"), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
