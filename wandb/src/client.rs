//! The HTTP calls, as the official client makes them: GraphQL `UpsertBucket` and
//! `CreateRunFiles`, `PUT` of uploaded files, and the run's `file_stream`. Every request
//! carries HTTP basic auth (user `api`, password the API key).

use crate::settings::Settings;
use crate::Error;
use serde_json::{json, Value};

const UPSERT_BUCKET: &str = "mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String, \
$groupName: String, $description: String, $displayName: String, $notes: String, $commit: String, $config: JSONString, \
$host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, $state: String, $sweep: String, \
$tags: [String!], $summaryMetrics: JSONString) {
  upsertBucket(input: {id: $id, name: $name, groupName: $groupName, modelName: $project, entityName: $entity, \
description: $description, displayName: $displayName, notes: $notes, config: $config, commit: $commit, host: $host, \
debug: $debug, jobProgram: $program, jobRepo: $repo, jobType: $jobType, state: $state, sweep: $sweep, tags: $tags, \
summaryMetrics: $summaryMetrics}) {
    bucket { id name displayName description config sweepName project { id name entity { id name } } historyLineCount }
    inserted
  }
}";

const CREATE_RUN_FILES: &str = "mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, $files: [String!]!) {
  createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, files: $files}) {
    runID
    uploadHeaders
    files { name uploadUrl }
  }
}";

const RUN_RESUME_STATUS: &str = "query RunResumeStatus($project: String, $entity: String, $name: String!) {
  model(name: $project, entityName: $entity) {
    id name entity { id name }
    bucket(name: $name, missingOk: true) {
      id name summaryMetrics displayName logLineCount historyLineCount eventsLineCount historyTail eventsTail config tags notes
      wandbConfig(keys: [\"t\"])
    }
  }
}";

/// What the server holds of a run being resumed (`RunResumeStatus`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeStatus {
    pub history_line_count: u64,
    pub log_line_count: u64,
    /// `_step` of the last history line (from `historyTail`).
    pub last_step: Option<u64>,
    /// `_runtime` of the summary.
    pub runtime: Option<f64>,
}

/// What the server says about the run after `UpsertBucket`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub entity: String,
    pub project: String,
    pub run_id: String,
    /// Lines of `wandb-history.jsonl` the server holds: the next history offset.
    pub history_line_count: Option<u64>,
    pub inserted: bool,
}

/// The optional run fields of `UpsertBucket`; unset ones go out as null, as the official
/// client sends them.
#[derive(Debug, Clone, Default)]
pub struct RunFields {
    pub display_name: Option<String>,
    pub group: Option<String>,
    pub notes: Option<String>,
    pub tags: Vec<String>,
    pub job_type: Option<String>,
    pub program: Option<String>,
    pub host: Option<String>,
    /// Already wrapped: `{"key": {"value": ...}}`.
    pub config: Option<Value>,
}

pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    auth: String,
}

impl Client {
    pub fn new(s: &Settings) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(s.request_timeout))
            .http_status_as_error(false)
            .user_agent("ponder-wandb")
            .build()
            .into();
        let auth = format!("Basic {}", base64(format!("api:{}", s.api_key.as_deref().unwrap_or("")).as_bytes()));
        Client { agent, base_url: s.base_url.clone(), auth }
    }

    fn post_json(&self, url: &str, body: &Value) -> Result<Value, Error> {
        let mut resp = self
            .agent
            .post(url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| Error::Transport(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| Error::Transport(format!("POST {url}: reading the answer: {e}")))?;
        if !(200..300).contains(&status) {
            let snippet: String = text.chars().take(300).collect();
            return Err(Error::Http { url: url.to_string(), status, body: snippet });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| Error::Protocol(format!("POST {url}: the answer is not JSON ({e})")))
    }

    fn graphql(&self, query: &str, variables: Value) -> Result<Value, Error> {
        let url = format!("{}/graphql", self.base_url);
        let v = self.post_json(&url, &json!({"query": query, "variables": variables}))?;
        if let Some(errors) = v.get("errors").filter(|e| !e.is_null()) {
            return Err(Error::Protocol(format!("GraphQL error from {url}: {errors}")));
        }
        v.get("data").cloned().ok_or_else(|| Error::Protocol(format!("GraphQL answer from {url} has no `data`: {v}")))
    }

    /// Creates the run, or resumes it when `run_id` exists already.
    pub fn upsert_bucket(&self, entity: Option<&str>, project: &str, run_id: &str, f: &RunFields) -> Result<Bucket, Error> {
        let vars = json!({
            "id": null,
            "name": run_id,
            "project": project,
            "entity": entity,
            "groupName": f.group,
            "description": null,
            "displayName": f.display_name,
            "notes": f.notes,
            "commit": null,
            "config": f.config.as_ref().map(Value::to_string),
            "host": f.host,
            "debug": null,
            "program": f.program,
            "repo": null,
            "jobType": f.job_type,
            "state": null,
            "sweep": null,
            "tags": f.tags,
            "summaryMetrics": null,
        });
        let data = self.graphql(UPSERT_BUCKET, vars)?;
        let up = &data["upsertBucket"];
        let b = &up["bucket"];
        let s = |v: &Value, what: &str| {
            v.as_str().map(str::to_string).ok_or_else(|| Error::Protocol(format!("UpsertBucket answer lacks {what}: {data}")))
        };
        Ok(Bucket {
            entity: s(&b["project"]["entity"]["name"], "bucket.project.entity.name")?,
            project: s(&b["project"]["name"], "bucket.project.name").unwrap_or_else(|_| project.to_string()),
            run_id: s(&b["name"], "bucket.name").unwrap_or_else(|_| run_id.to_string()),
            history_line_count: b["historyLineCount"].as_u64(),
            inserted: up["inserted"].as_bool().unwrap_or(false),
        })
    }

    /// What the server has of `run_id`, as the official client asks before resuming;
    /// `None` when the run does not exist yet.
    pub fn resume_status(&self, entity: Option<&str>, project: &str, run_id: &str) -> Result<Option<ResumeStatus>, Error> {
        let data = self.graphql(RUN_RESUME_STATUS, json!({"project": project, "entity": entity, "name": run_id}))?;
        let b = &data["model"]["bucket"];
        if b.is_null() {
            return Ok(None);
        }
        let parse = |v: &Value| v.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok());
        let last_step = parse(&b["historyTail"])
            .and_then(|t| t.as_array().cloned())
            .and_then(|lines| lines.iter().rev().find_map(|l| parse(l).or_else(|| Some(l.clone())).and_then(|r| r["_step"].as_u64())));
        let summary = parse(&b["summaryMetrics"]).unwrap_or(Value::Null);
        Ok(Some(ResumeStatus {
            history_line_count: b["historyLineCount"].as_u64().unwrap_or(0),
            log_line_count: b["logLineCount"].as_u64().unwrap_or(0),
            last_step: last_step.or_else(|| summary["_step"].as_u64()),
            runtime: summary["_runtime"].as_f64(),
        }))
    }

    /// One `file_stream` request; `body` is `{"files": {...}, ...}`.
    pub fn file_stream(&self, entity: &str, project: &str, run_id: &str, body: &Value) -> Result<Value, Error> {
        let url = format!("{}/files/{entity}/{project}/{run_id}/file_stream", self.base_url);
        self.post_json(&url, body)
    }

    /// Uploads run files (e.g. a table's JSON): `CreateRunFiles` for upload URLs, then one
    /// `PUT` each with the headers the server asked for.
    pub fn upload_files(&self, entity: &str, project: &str, run_id: &str, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let data = self.graphql(CREATE_RUN_FILES, json!({"entity": entity, "project": project, "run": run_id, "files": names}))?;
        let crf = &data["createRunFiles"];
        let headers: Vec<(String, String)> = crf["uploadHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str()?.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect();
        for (name, bytes) in files {
            let url = crf["files"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["name"].as_str() == Some(name))
                .and_then(|f| f["uploadUrl"].as_str())
                .ok_or_else(|| Error::Protocol(format!("CreateRunFiles gave no upload URL for {name}: {data}")))?;
            let mut req = self.agent.put(url);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            let resp = req.send(&bytes[..]).map_err(|e| Error::Transport(format!("PUT {url}: {e}")))?;
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                return Err(Error::Http { url: url.to_string(), status, body: String::new() });
            }
        }
        Ok(())
    }
}

/// Standard base64 (RFC 4648, padded), enough for one auth header.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
