//! Metadata, DescribeCluster, and the admin requests that change topics and
//! their configs: CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! Every change is written to the topic metadata file before it takes
//! effect, so an answered request survives a crash.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;

use super::configs::{self, source, Kind};
use super::meta::{self, TopicMeta};
use super::{error, str_bytes, topic_name, uuid, Broker, Ctx, LEADER_EPOCH, MAX_PARTITIONS};
use crate::io::disk::Disk;

/// DescribeConfigs / AlterConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// An error for one item of an admin request.
type Failure = (i16, String);

impl<D: Disk + Clone> Broker<D> {
    fn broker_entry(&self) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(self.config.node_id))
            .with_host(str_bytes(&self.config.advertised_host))
            .with_port(self.config.advertised_port)
            .with_rack(self.config.rack.as_deref().map(str_bytes))
    }

    pub(crate) fn metadata(&mut self, ctx: &Ctx, req: &MetadataRequest) -> MetadataResponse {
        let me = BrokerId(self.config.node_id);
        // "All topics" is null from v1 on, and an empty list at v0.
        let all = req.topics.is_none()
            || (ctx.version == 0 && req.topics.as_ref().is_some_and(Vec::is_empty));
        let mut topics = Vec::new();
        if all {
            let names: Vec<String> = self.topics.keys().cloned().collect();
            for n in names {
                topics.push(self.topic_metadata(&n, me));
            }
        } else {
            // Auto-creation is asked for from v4 on; before, it was implied.
            let allow = self.config.auto_create_topics
                && (ctx.version < 4 || req.allow_auto_topic_creation);
            for t in req.topics.iter().flatten() {
                match &t.name {
                    Some(name) => {
                        let name = name.0.to_string();
                        if !self.topics.contains_key(&name) && allow {
                            if let Err((code, _)) = self.auto_create(&name) {
                                topics.push(
                                    MetadataResponseTopic::default()
                                        .with_name(Some(topic_name(&name)))
                                        .with_error_code(code),
                                );
                                continue;
                            }
                        }
                        topics.push(self.topic_metadata(&name, me));
                    }
                    None => match self.by_id.get(&t.topic_id.as_u128()).cloned() {
                        Some(name) => topics.push(self.topic_metadata(&name, me)),
                        None => topics.push(
                            MetadataResponseTopic::default()
                                .with_topic_id(t.topic_id)
                                .with_error_code(error::UNKNOWN_TOPIC_ID),
                        ),
                    },
                }
            }
        }
        MetadataResponse::default()
            .with_brokers(vec![self.broker_entry()])
            .with_cluster_id(Some(str_bytes(&self.config.cluster_id)))
            .with_controller_id(me)
            .with_topics(topics)
    }

    fn topic_metadata(&self, name: &str, me: BrokerId) -> MetadataResponseTopic {
        let Some(t) = self.topics.get(name) else {
            let code = if meta::validate_topic_name(name).is_err() {
                error::INVALID_TOPIC_EXCEPTION
            } else {
                error::UNKNOWN_TOPIC_OR_PARTITION
            };
            return MetadataResponseTopic::default()
                .with_name(Some(topic_name(name)))
                .with_error_code(code);
        };
        let partitions = t
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let offline = p.log().is_err();
                MetadataResponsePartition::default()
                    .with_partition_index(i as i32)
                    .with_error_code(if offline {
                        error::KAFKA_STORAGE_ERROR
                    } else {
                        error::NONE
                    })
                    .with_leader_id(if offline { BrokerId(-1) } else { me })
                    .with_leader_epoch(LEADER_EPOCH)
                    .with_replica_nodes(vec![me])
                    .with_isr_nodes(if offline { vec![] } else { vec![me] })
                    .with_offline_replicas(if offline { vec![me] } else { vec![] })
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(topic_name(name)))
            .with_topic_id(uuid(t.id))
            .with_is_internal(name.starts_with("__"))
            .with_partitions(partitions)
    }

    fn auto_create(&mut self, name: &str) -> Result<(), Failure> {
        self.check_new_topic(name, &BTreeSet::new())?;
        let partitions = self.config.num_partitions.max(1);
        let rf = self.config.default_replication_factor;
        self.check_replication_factor(rf)?;
        self.create_topic(name, partitions, BTreeMap::new())
    }

    fn check_new_topic(&self, name: &str, also_creating: &BTreeSet<String>) -> Result<(), Failure> {
        meta::validate_topic_name(name).map_err(|e| (error::INVALID_TOPIC_EXCEPTION, e))?;
        if super::is_internal(name) {
            return Err((
                error::INVALID_TOPIC_EXCEPTION,
                format!("Topic '{name}' is reserved for the broker's internal use; it is created with the first group."),
            ));
        }
        if self.topics.contains_key(name) || self.meta.topics.contains_key(name) {
            return Err((
                error::TOPIC_ALREADY_EXISTS,
                format!("Topic '{name}' already exists."),
            ));
        }
        let key = meta::collision_key(name);
        if let Some(other) = self
            .topics
            .keys()
            .chain(also_creating.iter())
            .find(|o| o.as_str() != name && meta::collision_key(o) == key)
        {
            return Err((
                error::INVALID_TOPIC_EXCEPTION,
                format!("Topic '{name}' collides with existing topic: {other}"),
            ));
        }
        Ok(())
    }

    fn check_replication_factor(&self, rf: i16) -> Result<(), Failure> {
        if let Some(r) = self.cluster_replication_check(rf) {
            return r;
        }
        if rf == 1 {
            Ok(())
        } else if rf <= 0 {
            Err((
                error::INVALID_REPLICATION_FACTOR,
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ))
        } else {
            Err((
                error::INVALID_REPLICATION_FACTOR,
                format!(
                    "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only 1 broker(s) are registered."
                ),
            ))
        }
    }

    fn check_partition_budget(&self, adding: i64) -> Result<(), Failure> {
        let have: usize = self.topics.values().map(|t| t.partitions.len()).sum();
        if adding < 0 || have as i64 + adding > MAX_PARTITIONS as i64 {
            return Err((
                error::INVALID_PARTITIONS,
                format!(
                    "this broker holds {have} partitions and refuses to hold more than {MAX_PARTITIONS}"
                ),
            ));
        }
        Ok(())
    }

    /// Records a new topic durably, then opens its partitions.
    pub(crate) fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<(), Failure> {
        let mut next = self.meta.clone();
        let id = next.fresh_id(name);
        let t = TopicMeta {
            name: name.to_string(),
            id,
            partitions,
            deleting: false,
            configs,
        };
        next.topics.insert(name.to_string(), t.clone());
        next.store(&self.disk, &self.config.data_dir).map_err(|e| {
            (
                error::KAFKA_STORAGE_ERROR,
                format!("cannot record topic {name}: {e}"),
            )
        })?;
        self.meta = next;
        let topic = self.create_partitions_durably(&t, 0);
        self.by_id.insert(id, name.to_string());
        self.topics.insert(name.to_string(), topic);
        Ok(())
    }

    fn creatable_configs(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Vec<CreatableTopicConfigs> {
        configs::resolve_all(overrides, &self.config.settings)
            .into_iter()
            .map(|(d, r)| {
                CreatableTopicConfigs::default()
                    .with_name(str_bytes(d.name))
                    .with_value(Some(str_bytes(&r.value)))
                    .with_read_only(false)
                    .with_config_source(r.source)
                    .with_is_sensitive(false)
            })
            .collect()
    }

    pub(crate) fn create_topics(
        &mut self,
        ctx: &Ctx,
        req: &CreateTopicsRequest,
    ) -> CreateTopicsResponse {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &req.topics {
            *counts.entry(t.name.0.to_string()).or_default() += 1;
        }
        let batch_names: BTreeSet<String> = counts.keys().cloned().collect();
        let mut resp = CreateTopicsResponse::default();
        for t in &req.topics {
            let name = t.name.0.to_string();
            let mut r = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            let outcome = if counts[&name] > 1 {
                Err((
                    error::INVALID_REQUEST,
                    format!(
                        "Create topics request from client contains duplicate topic name {name}"
                    ),
                ))
            } else {
                self.create_one(t, &batch_names, req.validate_only)
            };
            match outcome {
                Ok((id, partitions, overrides)) => {
                    r.topic_id = uuid(id);
                    r.num_partitions = partitions;
                    r.replication_factor = 1;
                    if ctx.version >= 5 {
                        r.configs = Some(self.creatable_configs(&overrides));
                    }
                }
                Err((code, msg)) => {
                    r.error_code = code;
                    r.error_message = Some(str_bytes(&msg));
                }
            }
            resp.topics.push(r);
        }
        resp
    }

    fn create_one(
        &mut self,
        t: &create_topics_request::CreatableTopic,
        batch: &BTreeSet<String>,
        validate_only: bool,
    ) -> Result<(u128, i32, BTreeMap<String, String>), Failure> {
        let name = t.name.0.to_string();
        let others: BTreeSet<String> = batch.iter().filter(|n| **n != name).cloned().collect();
        self.check_new_topic(&name, &others)?;
        let partitions = if !t.assignments.is_empty() {
            if t.num_partitions != -1 || t.replication_factor != -1 {
                return Err((
                    error::INVALID_REQUEST,
                    "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
                ));
            }
            self.check_assignments(
                t.assignments
                    .iter()
                    .map(|a| (a.partition_index, &a.broker_ids)),
                0,
            )?;
            t.assignments.len() as i32
        } else {
            let rf = if t.replication_factor == -1 {
                self.config.default_replication_factor
            } else {
                t.replication_factor
            };
            self.check_replication_factor(rf)?;
            match t.num_partitions {
                -1 => self.config.num_partitions.max(1),
                n if n >= 1 => n,
                _ => {
                    return Err((
                        error::INVALID_PARTITIONS,
                        "Number of partitions was set to an invalid non-positive value.".into(),
                    ))
                }
            }
        };
        self.check_partition_budget(partitions as i64)?;
        let mut overrides = BTreeMap::new();
        for c in &t.configs {
            let Some(v) = &c.value else {
                return Err((
                    error::INVALID_CONFIG,
                    format!("Null value not supported for topic configs: {}", &*c.name),
                ));
            };
            overrides.insert(c.name.to_string(), v.to_string());
        }
        configs::validate_all(&overrides).map_err(|e| (error::INVALID_CONFIG, e))?;
        if validate_only {
            return Ok((0, partitions, overrides));
        }
        let rf = if t.replication_factor == -1 {
            self.config.default_replication_factor
        } else {
            t.replication_factor
        };
        if self
            .defer_create(&name, partitions, rf, t, &overrides)
            .is_some()
        {
            return Ok((0, partitions, overrides));
        }
        self.create_topic(&name, partitions, overrides.clone())?;
        Ok((self.topics[&name].id, partitions, overrides))
    }

    /// Manual replica assignments: partitions numbered from `first` with no
    /// gaps, each on exactly this broker.
    fn check_assignments<'a>(
        &self,
        assignments: impl Iterator<Item = (i32, &'a Vec<BrokerId>)>,
        first: i32,
    ) -> Result<(), Failure> {
        for (i, (index, brokers)) in assignments.enumerate() {
            if index != first + i as i32 {
                return Err((
                    error::INVALID_REPLICA_ASSIGNMENT,
                    "Partitions should be a consecutive 0-based integer sequence".into(),
                ));
            }
            if let Some(r) = self.cluster_assignment_check(index, brokers) {
                r?;
                continue;
            }
            if brokers.as_slice() != [BrokerId(self.config.node_id)] {
                return Err((
                    error::INVALID_REPLICA_ASSIGNMENT,
                    format!(
                        "replica assignment {:?} for partition {index} must be exactly this broker ({})",
                        brokers.iter().map(|b| b.0).collect::<Vec<_>>(),
                        self.config.node_id
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn delete_topics(
        &mut self,
        ctx: &Ctx,
        req: &DeleteTopicsRequest,
    ) -> DeleteTopicsResponse {
        // Up to v5 topics are named in `topic_names`; from v6, by name or id.
        let wanted: Vec<(Option<String>, u128)> = if ctx.version >= 6 {
            req.topics
                .iter()
                .map(|t| {
                    (
                        t.name.as_ref().map(|n| n.0.to_string()),
                        t.topic_id.as_u128(),
                    )
                })
                .collect()
        } else {
            req.topic_names
                .iter()
                .map(|n| (Some(n.0.to_string()), 0))
                .collect()
        };
        let mut resp = DeleteTopicsResponse::default();
        for (name, id) in wanted {
            let mut r = DeletableTopicResult::default()
                .with_name(name.as_deref().map(topic_name))
                .with_topic_id(uuid(id));
            let resolved = match (&name, id) {
                (Some(n), _) => self.topics.get(n).map(|t| (n.clone(), t.id)).ok_or((
                    error::UNKNOWN_TOPIC_OR_PARTITION,
                    "This server does not host this topic-partition.".to_string(),
                )),
                (None, id) => self.by_id.get(&id).map(|n| (n.clone(), id)).ok_or((
                    error::UNKNOWN_TOPIC_ID,
                    "This server does not host this topic ID.".to_string(),
                )),
            };
            let outcome = resolved.and_then(|(n, id)| {
                r.name = Some(topic_name(&n));
                r.topic_id = uuid(id);
                self.delete_topic(&n)
            });
            if let Err((code, msg)) = outcome {
                r.error_code = code;
                if ctx.version >= 5 {
                    r.error_message = Some(str_bytes(&msg));
                }
            }
            resp.responses.push(r);
        }
        resp
    }

    fn delete_topic(&mut self, name: &str) -> Result<(), Failure> {
        if super::is_internal(name) {
            return Err((
                error::INVALID_TOPIC_EXCEPTION,
                format!("Topic '{name}' is internal: deleting it would lose every group's committed offsets."),
            ));
        }
        if self.defer_delete(name).is_some() {
            return Ok(());
        }
        let mut next = self.meta.clone();
        if let Some(t) = next.topics.get_mut(name) {
            t.deleting = true;
        }
        next.store(&self.disk, &self.config.data_dir).map_err(|e| {
            (
                error::KAFKA_STORAGE_ERROR,
                format!("cannot record deletion of {name}: {e}"),
            )
        })?;
        self.meta = next;
        if let Some(t) = self.topics.remove(name) {
            self.by_id.remove(&t.id);
            // Dropping the logs closes their files before they are removed.
            drop(t);
        }
        // Kafka forgets committed offsets of a deleted topic: a new topic
        // of the same name starts with none.
        let mut fx = crate::group::Effects::default();
        self.groups.topic_deleted(name, &mut fx);
        let others = self.apply_group_effects(fx);
        self.group_completions.extend(others);
        // Clients no longer see the topic; if removing its files fails, the
        // next start finishes the job.
        self.finish_deletion(name)
            .map_err(|e| (error::KAFKA_STORAGE_ERROR, e))
    }

    pub(crate) fn create_partitions(
        &mut self,
        req: &CreatePartitionsRequest,
    ) -> CreatePartitionsResponse {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &req.topics {
            *counts.entry(t.name.0.to_string()).or_default() += 1;
        }
        let mut resp = CreatePartitionsResponse::default();
        for t in &req.topics {
            let name = t.name.0.to_string();
            let outcome = if counts[&name] > 1 {
                Err((
                    error::INVALID_REQUEST,
                    format!("Duplicate topic in request: {name}"),
                ))
            } else {
                self.grow_topic(t, req.validate_only)
            };
            let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            if let Err((code, msg)) = outcome {
                r.error_code = code;
                r.error_message = Some(str_bytes(&msg));
            }
            resp.results.push(r);
        }
        resp
    }

    fn grow_topic(
        &mut self,
        t: &create_partitions_request::CreatePartitionsTopic,
        validate_only: bool,
    ) -> Result<(), Failure> {
        let name = t.name.0.to_string();
        let Some(topic) = self.topics.get(&name) else {
            return Err((
                error::UNKNOWN_TOPIC_OR_PARTITION,
                format!("The topic '{name}' does not exist."),
            ));
        };
        if super::is_internal(&name) {
            return Err((
                error::INVALID_PARTITIONS,
                format!("Topic '{name}' is internal: its partition count places every group and cannot change."),
            ));
        }
        let have = topic.partitions.len() as i32;
        if t.count < have {
            return Err((
                error::INVALID_PARTITIONS,
                format!(
                    "Topic currently has {have} partitions, which is higher than the requested {}.",
                    t.count
                ),
            ));
        }
        if t.count == have {
            return Err((
                error::INVALID_PARTITIONS,
                format!("Topic already has {have} partitions."),
            ));
        }
        if let Some(assignments) = t.assignments.as_ref().filter(|a| !a.is_empty()) {
            if assignments.len() as i32 != t.count - have {
                return Err((
                    error::INVALID_REPLICA_ASSIGNMENT,
                    format!(
                        "Increasing the number of partitions by {} but {} assignments provided.",
                        t.count - have,
                        assignments.len()
                    ),
                ));
            }
            self.check_assignments(
                assignments
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (have + i as i32, &a.broker_ids)),
                have,
            )?;
        }
        self.check_partition_budget(i64::from(t.count - have))?;
        if validate_only {
            return Ok(());
        }
        if self.defer_grow(t).is_some() {
            return Ok(());
        }
        let mut next = self.meta.clone();
        let tm = next
            .topics
            .get_mut(&name)
            .expect("live topics are in the metadata");
        tm.partitions = t.count;
        let tm = tm.clone();
        next.store(&self.disk, &self.config.data_dir).map_err(|e| {
            (
                error::KAFKA_STORAGE_ERROR,
                format!("cannot record new partitions of {name}: {e}"),
            )
        })?;
        self.meta = next;
        let added = self.create_partitions_durably(&tm, have).partitions;
        self.topics
            .get_mut(&name)
            .expect("checked above")
            .partitions
            .extend(added);
        Ok(())
    }

    pub(crate) fn describe_cluster(
        &self,
        _req: &DescribeClusterRequest,
    ) -> DescribeClusterResponse {
        DescribeClusterResponse::default()
            .with_cluster_id(str_bytes(&self.config.cluster_id))
            .with_controller_id(BrokerId(self.config.node_id))
            .with_endpoint_type(1)
            .with_cluster_authorized_operations(i32::MIN)
            .with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(self.config.node_id))
                .with_host(str_bytes(&self.config.advertised_host))
                .with_port(self.config.advertised_port)
                .with_rack(self.config.rack.as_deref().map(str_bytes))])
    }

    pub(crate) fn describe_configs(
        &self,
        ctx: &Ctx,
        req: &DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut resp = DescribeConfigsResponse::default();
        for res in &req.resources {
            let name = res.resource_name.to_string();
            let keys: Option<BTreeSet<String>> = res
                .configuration_keys
                .as_ref()
                // Null asks for every config; so does an empty list, which
                // would otherwise be a request for nothing.
                .filter(|ks| !ks.is_empty())
                .map(|ks| ks.iter().map(|k| k.to_string()).collect());
            let wanted = |k: &str| keys.as_ref().is_none_or(|ks| ks.contains(k));
            let mut r = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            match res.resource_type {
                RESOURCE_TOPIC => match self.meta.topics.get(&name).filter(|t| !t.deleting) {
                    None => {
                        r.error_code = error::UNKNOWN_TOPIC_OR_PARTITION;
                        r.error_message = Some(str_bytes(&format!("Topic {name} does not exist")));
                    }
                    Some(t) => {
                        for (d, v) in configs::resolve_all(&t.configs, &self.config.settings) {
                            if !wanted(d.name) {
                                continue;
                            }
                            let mut c = DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(d.name))
                                .with_value(Some(str_bytes(&v.value)))
                                .with_read_only(false)
                                .with_config_source(v.source)
                                .with_is_sensitive(false);
                            if req.include_synonyms {
                                c.synonyms = v
                                    .synonyms
                                    .iter()
                                    .map(|(n, val, s)| {
                                        DescribeConfigsSynonym::default()
                                            .with_name(str_bytes(n))
                                            .with_value(Some(str_bytes(val)))
                                            .with_source(*s)
                                    })
                                    .collect();
                            }
                            if ctx.version >= 3 {
                                c.config_type = d.kind as i8;
                                if req.include_documentation {
                                    c.documentation = Some(str_bytes(d.doc));
                                }
                            }
                            r.configs.push(c);
                        }
                    }
                },
                RESOURCE_BROKER => {
                    if name.is_empty() || name == self.config.node_id.to_string() {
                        for (k, v) in self.broker_configs() {
                            if !wanted(&k) {
                                continue;
                            }
                            let mut c = DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(&k))
                                .with_value(Some(str_bytes(&v.0)))
                                .with_read_only(true)
                                .with_config_source(v.1)
                                .with_is_sensitive(false);
                            if req.include_synonyms {
                                c.synonyms = vec![DescribeConfigsSynonym::default()
                                    .with_name(str_bytes(&k))
                                    .with_value(Some(str_bytes(&v.0)))
                                    .with_source(v.1)];
                            }
                            if ctx.version >= 3 {
                                c.config_type = v.2 as i8;
                            }
                            r.configs.push(c);
                        }
                    } else {
                        r.error_code = error::INVALID_REQUEST;
                        r.error_message = Some(str_bytes(&format!(
                            "Unexpected broker id, expected {} or empty string, but received {name}",
                            self.config.node_id
                        )));
                    }
                }
                other => {
                    r.error_code = error::INVALID_REQUEST;
                    r.error_message =
                        Some(str_bytes(&format!("Unsupported resource type {other}")));
                }
            }
            resp.results.push(r);
        }
        resp
    }

    /// The broker's own configs: what the operator set, and the defaults
    /// that topic configs fall back to.
    fn broker_configs(&self) -> BTreeMap<String, (String, i8, Kind)> {
        let mut out = BTreeMap::new();
        for d in configs::TOPIC_CONFIGS {
            if let Some(syn) = d.broker_synonym {
                out.insert(
                    syn.to_string(),
                    (d.default.to_string(), source::DEFAULT_CONFIG, d.kind),
                );
            }
        }
        let fixed = [
            ("node.id", self.config.node_id.to_string(), Kind::Int),
            ("broker.id", self.config.node_id.to_string(), Kind::Int),
            (
                "num.partitions",
                self.config.num_partitions.to_string(),
                Kind::Int,
            ),
            (
                "default.replication.factor",
                self.config.default_replication_factor.to_string(),
                Kind::Int,
            ),
            (
                "auto.create.topics.enable",
                self.config.auto_create_topics.to_string(),
                Kind::Boolean,
            ),
            ("log.dirs", self.config.data_dir.clone(), Kind::Str),
        ];
        for (k, v, kind) in fixed {
            out.insert(k.to_string(), (v, source::DEFAULT_CONFIG, kind));
        }
        for (k, v) in &self.config.settings {
            let kind = out.get(k).map_or(Kind::Str, |e| e.2);
            out.insert(k.clone(), (v.clone(), source::STATIC_BROKER_CONFIG, kind));
        }
        out
    }

    pub(crate) fn alter_configs(&mut self, req: &AlterConfigsRequest) -> AlterConfigsResponse {
        let mut resp = AlterConfigsResponse::default();
        for res in &req.resources {
            let outcome = (|| {
                let name = self.alterable(res.resource_type, &res.resource_name)?;
                let mut overrides = BTreeMap::new();
                for c in &res.configs {
                    let Some(v) = &c.value else {
                        return Err((
                            error::INVALID_REQUEST,
                            format!("Null value not supported for : {}", &*c.name),
                        ));
                    };
                    overrides.insert(c.name.to_string(), v.to_string());
                }
                // AlterConfigs replaces the whole set of overrides.
                self.apply_overrides(&name, overrides, req.validate_only)
            })();
            let mut r = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            if let Err((code, msg)) = outcome {
                r.error_code = code;
                r.error_message = Some(str_bytes(&msg));
            }
            resp.responses.push(r);
        }
        resp
    }

    pub(crate) fn incremental_alter_configs(
        &mut self,
        req: &IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut resp = IncrementalAlterConfigsResponse::default();
        for res in &req.resources {
            let outcome = (|| {
                let name = self.alterable(res.resource_type, &res.resource_name)?;
                let mut overrides = self.meta.topics[&name].configs.clone();
                let mut seen = BTreeSet::new();
                for c in &res.configs {
                    let key = c.name.to_string();
                    if !seen.insert(key.clone()) {
                        return Err((
                            error::INVALID_REQUEST,
                            format!("Error due to duplicate config keys : {key}"),
                        ));
                    }
                    let def = configs::find(&key).ok_or((
                        error::INVALID_CONFIG,
                        format!("Unknown topic config name: {key}"),
                    ))?;
                    let value = c.value.as_ref().map(|v| v.to_string());
                    match c.config_operation {
                        OP_SET => {
                            let v = value.ok_or((
                                error::INVALID_REQUEST,
                                format!("Null value not supported for : {key}"),
                            ))?;
                            overrides.insert(key, v);
                        }
                        OP_DELETE => {
                            overrides.remove(&key);
                        }
                        OP_APPEND | OP_SUBTRACT => {
                            if def.kind != Kind::List {
                                return Err((
                                    error::INVALID_CONFIG,
                                    format!(
                                        "Config value append is not allowed for config key: {key}"
                                    ),
                                ));
                            }
                            let current =
                                configs::resolve(def, &overrides, &self.config.settings).value;
                            let mut items: Vec<String> = configs::list_items(&current)
                                .into_iter()
                                .map(String::from)
                                .collect();
                            let given = value.unwrap_or_default();
                            for item in configs::list_items(&given) {
                                if c.config_operation == OP_APPEND {
                                    if !items.iter().any(|i| i == item) {
                                        items.push(item.to_string());
                                    }
                                } else {
                                    items.retain(|i| i != item);
                                }
                            }
                            overrides.insert(key, items.join(","));
                        }
                        op => {
                            return Err((
                                error::INVALID_REQUEST,
                                format!("Unknown config operation {op} for {key}"),
                            ))
                        }
                    }
                }
                self.apply_overrides(&name, overrides, req.validate_only)
            })();
            let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            if let Err((code, msg)) = outcome {
                r.error_code = code;
                r.error_message = Some(str_bytes(&msg));
            }
            resp.responses.push(r);
        }
        resp
    }

    /// The topic an alter request may change.
    fn alterable(&self, resource_type: i8, name: &str) -> Result<String, Failure> {
        match resource_type {
            RESOURCE_TOPIC => {
                if self.topics.contains_key(name) {
                    Ok(name.to_string())
                } else {
                    Err((
                        error::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("Topic {name} does not exist"),
                    ))
                }
            }
            RESOURCE_BROKER => Err((
                error::INVALID_REQUEST,
                "broker configs are static on Odradek: set them in the server's configuration and restart".into(),
            )),
            other => Err((error::INVALID_REQUEST, format!("Unsupported resource type {other}"))),
        }
    }

    fn apply_overrides(
        &mut self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), Failure> {
        configs::validate_all(&overrides).map_err(|e| (error::INVALID_CONFIG, e))?;
        if validate_only {
            return Ok(());
        }
        if self.defer_configs(name, &overrides).is_some() {
            return Ok(());
        }
        let mut next = self.meta.clone();
        next.topics
            .get_mut(name)
            .expect("alterable topics are in the metadata")
            .configs = overrides.clone();
        next.store(&self.disk, &self.config.data_dir).map_err(|e| {
            (
                error::KAFKA_STORAGE_ERROR,
                format!("cannot record configs of {name}: {e}"),
            )
        })?;
        self.meta = next;
        let settings = configs::topic_settings(&overrides, &self.config.settings);
        let topic = self.topics.get_mut(name).expect("checked by alterable");
        for p in &mut topic.partitions {
            if let Some(log) = &mut p.log {
                log.set_config(settings.log.clone());
            }
        }
        topic.settings = settings;
        Ok(())
    }
}
