//! `[[rewards]]` tables: parsing and strict checking.

use crate::modules::{self, RewardModule};
use crate::RewardsError;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

/// The reward kinds, in documentation order.
pub const KINDS: &[&str] =
    &["accuracy", "format", "language_consistency", "countdown", "cosine_length", "overlong_penalty", "repetition", "char_fraction"];

fn one() -> f64 {
    1.0
}

/// One `[[rewards]]` table.
///
/// Common keys: `kind` (required, one of [`KINDS`]), `name` (default: the kind; names
/// must be unique within a set), `weight` (default `1.0`), `timeout_ms` (default
/// `1000`: a module that takes longer on one sample scores 0 for it and is counted), `tasks`
/// (default: every sample; else only samples whose `task` field is listed).
/// Every other key is a parameter of the module (see [`crate::modules`]); unknown
/// keys are errors that name the key and the closest valid one.
///
/// The trainer may embed `rewards: Vec<RewardSpec>` in its own config struct and call
/// [`crate::RewardSet::from_specs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardSpec {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Reward routing: the tasks (a sample's `task` field) this reward scores; empty = every
    /// sample. A sample outside the list is not scored by this reward (it adds 0 to the
    /// total and is left out of the reward's mean), as veRL routes by `data_source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// Module parameters (every key other than the common ones).
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

impl RewardSpec {
    /// A spec of the given kind with default parameters and weight 1.
    pub fn new(kind: &str) -> RewardSpec {
        RewardSpec { kind: kind.to_string(), name: None, weight: 1.0, timeout_ms: None, tasks: Vec::new(), params: Map::new() }
    }

    /// The name used in score tables: `name`, else the kind.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.kind.clone())
    }
}

const COMMON: &[&str] = &["kind", "name", "weight", "timeout_ms", "tasks"];

fn closest<'a>(key: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    let mut best: Option<(f64, &str)> = None;
    for v in valid {
        let s = strsim::jaro_winkler(key, v);
        if s > 0.75 && best.is_none_or(|(b, _)| s > b) {
            best = Some((s, v));
        }
    }
    best.map(|(_, v)| format!(" (did you mean `{v}`?)")).unwrap_or_default()
}

/// Deserialises a module's parameter struct from the table, checking keys strictly.
pub(crate) fn params<P>(index: usize, spec: &RewardSpec) -> Result<P, RewardsError>
where
    P: DeserializeOwned + Serialize + Default,
{
    let defaults = serde_json::to_value(P::default()).expect("params serialise");
    let known: Vec<String> = match &defaults {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    for key in spec.params.keys() {
        if !known.iter().any(|k| k == key) {
            let all: Vec<&str> = known.iter().map(String::as_str).chain(COMMON.iter().copied()).collect();
            return Err(RewardsError::UnknownKey {
                index,
                kind: spec.kind.clone(),
                key: key.clone(),
                hint: closest(key, all.iter().copied()),
                valid: all.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
            });
        }
    }
    serde_json::from_value(Value::Object(spec.params.clone())).map_err(|e| RewardsError::InvalidParam {
        index,
        kind: spec.kind.clone(),
        message: e.to_string(),
    })
}

/// Builds the module for one spec.
pub(crate) fn build(index: usize, spec: &RewardSpec) -> Result<Box<dyn RewardModule>, RewardsError> {
    if !spec.weight.is_finite() {
        return Err(RewardsError::InvalidParam { index, kind: spec.kind.clone(), message: "`weight` must be finite".into() });
    }
    let m: Box<dyn RewardModule> = match spec.kind.as_str() {
        "accuracy" => Box::new(modules::accuracy::Accuracy::new(params(index, spec)?)),
        "format" => Box::new(modules::format::Format::new(params(index, spec)?)),
        "language_consistency" => Box::new(modules::language::LanguageConsistency::new(params(index, spec)?)),
        "countdown" => Box::new(modules::countdown::Countdown::new(params(index, spec)?)),
        "cosine_length" => Box::new(modules::length::CosineLength::new(params(index, spec)?)),
        "overlong_penalty" => Box::new(modules::length::OverlongPenalty::new(params(index, spec)?)),
        "repetition" => Box::new(modules::repetition::Repetition::new(params(index, spec)?)),
        "char_fraction" => Box::new(modules::char_fraction::CharFraction::new(params(index, spec)?)),
        other => {
            return Err(RewardsError::UnknownKind {
                index,
                kind: other.to_string(),
                hint: closest(other, KINDS.iter().copied()),
                valid: KINDS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
            })
        }
    };
    m.validate().map_err(|message| RewardsError::InvalidParam { index, kind: spec.kind.clone(), message })?;
    Ok(m)
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    rewards: Vec<RewardSpec>,
}

/// Parses the `[[rewards]]` tables of a TOML document (other top-level keys are ignored,
/// so a training recipe can be read as is).
pub(crate) fn parse_toml(src: &str) -> Result<Vec<RewardSpec>, RewardsError> {
    let doc: Doc = toml::from_str(src).map_err(|e| RewardsError::Toml(e.to_string()))?;
    if doc.rewards.is_empty() {
        return Err(RewardsError::Invalid("no `[[rewards]]` table found".into()));
    }
    Ok(doc.rewards)
}
