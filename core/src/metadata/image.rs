//! The metadata image: the cluster as the committed metadata log says it
//! is. Every node applies the same committed batches in the same order, so
//! every node's image at a given offset is the same; brokers answer
//! Metadata from it, and the controller decides from it.
//!
//! Applying is total and deterministic: a batch that does not fit the
//! image (a partition of an unknown topic, a fence of a stale broker epoch)
//! is refused as a whole, on every node alike, and the image is unchanged.

use std::collections::BTreeMap;

use super::records::{
    decode_batch, encode_batch, BrokerRegistration, ConfigResource, MetadataRecord, PartitionRecord,
};
use crate::codec::BadRecord;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicImage {
    pub name: String,
    pub id: u128,
    pub partitions: BTreeMap<i32, PartitionRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetadataImage {
    /// The offset of the last entry applied; -1 for none.
    pub offset: i64,
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    pub topics: BTreeMap<u128, TopicImage>,
    pub topic_ids: BTreeMap<String, u128>,
    pub configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    /// Producer ids below this have been handed out.
    pub next_producer_id: i64,
}

impl MetadataImage {
    pub fn new() -> MetadataImage {
        MetadataImage {
            offset: -1,
            ..MetadataImage::default()
        }
    }

    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    pub fn partition(&self, topic_id: u128, partition: i32) -> Option<&PartitionRecord> {
        self.topics.get(&topic_id)?.partitions.get(&partition)
    }

    /// Brokers that are registered and not fenced: the ones that may lead
    /// partitions and be given new replicas.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Applies the batch committed at `offset`, all of it or nothing.
    pub fn apply(&mut self, offset: i64, batch: &[MetadataRecord]) -> Result<(), String> {
        if offset <= self.offset {
            return Err(format!(
                "entry {offset} is not after the image's offset {}",
                self.offset
            ));
        }
        let mut next = self.clone();
        for rec in batch {
            next.apply_one(offset, rec)?;
        }
        next.offset = offset;
        *self = next;
        Ok(())
    }

    /// An entry whose batch is refused still moves the offset: every node
    /// refuses it alike, and the log has moved past it.
    pub fn skip(&mut self, offset: i64) {
        self.offset = self.offset.max(offset);
    }

    fn apply_one(&mut self, offset: i64, rec: &MetadataRecord) -> Result<(), String> {
        match rec {
            MetadataRecord::RegisterBroker(b) => {
                let mut b = b.clone();
                b.epoch = offset;
                self.brokers.insert(b.id, b);
            }
            MetadataRecord::UnregisterBroker { id, epoch } => {
                self.broker_at(*id, *epoch)?;
                self.brokers.remove(id);
            }
            MetadataRecord::FenceBroker { id, epoch } => {
                self.broker_at(*id, *epoch)?.fenced = true;
            }
            MetadataRecord::UnfenceBroker { id, epoch } => {
                self.broker_at(*id, *epoch)?.fenced = false;
            }
            MetadataRecord::Topic { name, id } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(id) {
                    return Err(format!("topic {name} ({id:032x}) exists"));
                }
                self.topic_ids.insert(name.clone(), *id);
                self.topics.insert(
                    *id,
                    TopicImage {
                        name: name.clone(),
                        id: *id,
                        partitions: BTreeMap::new(),
                    },
                );
            }
            MetadataRecord::Partition(p) => {
                if p.replicas.is_empty() || p.partition < 0 {
                    return Err(format!("partition {} has no replicas", p.partition));
                }
                let t = self
                    .topics
                    .get_mut(&p.topic_id)
                    .ok_or_else(|| format!("partition of unknown topic {:032x}", p.topic_id))?;
                t.partitions.insert(p.partition, p.clone());
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                isr,
                leader,
            } => {
                let p = self
                    .topics
                    .get_mut(topic_id)
                    .and_then(|t| t.partitions.get_mut(partition))
                    .ok_or_else(|| format!("change to unknown partition {partition}"))?;
                if let Some(isr) = isr {
                    if isr.iter().any(|r| !p.replicas.contains(r)) {
                        return Err(format!("ISR {isr:?} is not within {:?}", p.replicas));
                    }
                    p.isr = isr.clone();
                }
                if let Some(l) = leader {
                    if *l != -1 && !p.isr.contains(l) {
                        return Err(format!("leader {l} is not in the ISR {:?}", p.isr));
                    }
                    if *l != p.leader {
                        p.leader = *l;
                        p.leader_epoch += 1;
                    }
                }
                p.partition_epoch += 1;
            }
            MetadataRecord::RemoveTopic { id } => {
                let t = self
                    .topics
                    .remove(id)
                    .ok_or_else(|| format!("removal of unknown topic {id:032x}"))?;
                self.topic_ids.remove(&t.name);
                self.configs.remove(&ConfigResource::Topic(t.name));
            }
            MetadataRecord::Config {
                resource,
                name,
                value,
            } => {
                let m = self.configs.entry(resource.clone()).or_default();
                match value {
                    Some(v) => {
                        m.insert(name.clone(), v.clone());
                    }
                    None => {
                        m.remove(name);
                    }
                }
                if m.is_empty() {
                    self.configs.remove(resource);
                }
            }
            MetadataRecord::ProducerIds { next, .. } => {
                if *next <= self.next_producer_id {
                    return Err(format!(
                        "producer ids may only grow: {next} after {}",
                        self.next_producer_id
                    ));
                }
                self.next_producer_id = *next;
            }
        }
        Ok(())
    }

    fn broker_at(&mut self, id: i32, epoch: i64) -> Result<&mut BrokerRegistration, String> {
        match self.brokers.get_mut(&id) {
            Some(b) if b.epoch == epoch => Ok(b),
            Some(b) => Err(format!("broker {id} is at epoch {}, not {epoch}", b.epoch)),
            None => Err(format!("broker {id} is not registered")),
        }
    }

    /// The records that rebuild this image from nothing: a snapshot's
    /// contents (KIP-630). Broker epochs are kept as they are.
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        for b in self.brokers.values() {
            out.push(MetadataRecord::RegisterBroker(b.clone()));
        }
        for t in self.topics.values() {
            out.push(MetadataRecord::Topic {
                name: t.name.clone(),
                id: t.id,
            });
            for p in t.partitions.values() {
                out.push(MetadataRecord::Partition(p.clone()));
            }
        }
        for (resource, m) in &self.configs {
            for (name, value) in m {
                out.push(MetadataRecord::Config {
                    resource: resource.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        if self.next_producer_id > 0 {
            out.push(MetadataRecord::ProducerIds {
                broker: -1,
                next: self.next_producer_id,
            });
        }
        out
    }

    /// A snapshot of the image: its offset and the records rebuilding it.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = self.offset.to_be_bytes().to_vec();
        out.extend(encode_batch(&self.to_records()));
        out
    }

    pub fn decode_snapshot(bytes: &[u8]) -> Result<MetadataImage, BadRecord> {
        if bytes.len() < 8 {
            return Err(BadRecord("a snapshot shorter than its offset".into()));
        }
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&bytes[..8]);
        let offset = i64::from_be_bytes(offset);
        let records = decode_batch(&bytes[8..])?;
        let mut image = MetadataImage::new();
        for rec in &records {
            // Registrations keep the epoch they carry, not the offset.
            let at = match rec {
                MetadataRecord::RegisterBroker(b) => b.epoch,
                _ => offset,
            };
            image
                .apply_one(at, rec)
                .map_err(|e| BadRecord(format!("snapshot does not apply: {e}")))?;
        }
        image.offset = offset;
        Ok(image)
    }
}
