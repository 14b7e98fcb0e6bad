//! SGLang's native routes: `POST /generate` from `input_ids` with `return_logprob`, the
//! sampled tokens read from `meta_info.output_token_logprobs` (`[logprob, token_id, text]`
//! entries, as slime reads them), and `POST /update_weights_from_disk` for new weights.

use crate::{wire_seed, Finish, Generated, Request, Sampling};
use serde_json::{json, Value};

pub fn generate_body(req: &Request, s: &Sampling) -> Value {
    json!({
        "input_ids": req.prompt,
        "return_logprob": true,
        "stream": false,
        "sampling_params": {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": if s.top_k > 0 { s.top_k } else { -1 },
            "min_p": s.min_p,
            "max_new_tokens": s.max_new_tokens,
            "min_new_tokens": s.min_new_tokens,
            "stop_token_ids": s.stop_token_ids,
            "stop": s.stop,
            // Keep the stop string in the output: the learner trains on every sampled token.
            "no_stop_trim": true,
            "skip_special_tokens": false,
            "sampling_seed": wire_seed(req.seed),
        },
    })
}

/// One `/generate` answer as a sample.
pub fn parse_generate(v: &Value, s: &Sampling) -> Result<Generated, String> {
    let meta = v.get("meta_info").ok_or("no meta_info")?;
    let entries = meta
        .get("output_token_logprobs")
        .and_then(|e| e.as_array())
        .ok_or("no meta_info.output_token_logprobs (was return_logprob dropped?)")?;
    let mut token_ids = Vec::with_capacity(entries.len());
    let mut logprobs = Vec::with_capacity(entries.len());
    for (k, e) in entries.iter().enumerate() {
        let lp = e.get(0).and_then(|x| x.as_f64()).ok_or(format!("output_token_logprobs[{k}] has no log-prob"))?;
        let id = e.get(1).and_then(|x| x.as_i64()).ok_or(format!("output_token_logprobs[{k}] has no token id"))?;
        token_ids.push(id);
        logprobs.push(lp as f32);
    }
    let reason = meta.get("finish_reason").ok_or("no meta_info.finish_reason")?;
    let kind = reason.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let finish = match kind {
        "length" => Finish::Length,
        "stop" => match reason.get("matched") {
            Some(Value::String(_)) => Finish::StopString,
            _ if token_ids.last().is_some_and(|t| s.stop_token_ids.contains(t)) => Finish::StopToken,
            Some(Value::Number(_)) => {
                return Err(format!("finished on stop token {} but the last sampled token is {:?}", reason["matched"], token_ids.last()))
            }
            _ => Finish::StopString,
        },
        "abort" => {
            return Err(format!("the request was aborted: {}", reason.get("message").and_then(|m| m.as_str()).unwrap_or("no reason given")))
        }
        other => return Err(format!("unknown finish_reason {other:?}")),
    };
    let weight_version = meta.get("weight_version").and_then(|w| w.as_str()).map(str::to_string);
    Ok(Generated { token_ids, logprobs, finish, server: 0, weight_version })
}

pub fn reload_body(path: &str, version: &str) -> Value {
    json!({
        "model_path": path,
        "weight_version": version,
        "flush_cache": true,
        "abort_all_requests": false,
    })
}

/// `Err(message)` unless the server says `success: true`.
pub fn parse_reload(v: &Value) -> Result<(), String> {
    match v.get("success").and_then(|s| s.as_bool()) {
        Some(true) => Ok(()),
        _ => Err(v.get("message").and_then(|m| m.as_str()).unwrap_or("no message").to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling() -> Sampling {
        Sampling {
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            max_new_tokens: 8,
            min_new_tokens: 0,
            stop_token_ids: vec![2],
            stop: vec!["</answer>".into()],
        }
    }

    #[test]
    fn request_names_sglangs_fields() {
        let b = generate_body(&Request { prompt: vec![5, 6], seed: u64::MAX, key: 0 }, &sampling());
        assert_eq!(b["input_ids"], json!([5, 6]));
        assert_eq!(b["return_logprob"], json!(true));
        let sp = &b["sampling_params"];
        assert_eq!(sp["top_k"], json!(-1), "SGLang's 'off' is -1");
        assert_eq!(sp["sampling_seed"], json!(i64::MAX), "seeds are masked to 63 bits");
        assert_eq!(sp["stop_token_ids"], json!([2]));
        assert_eq!(sp["no_stop_trim"], json!(true));
    }

    #[test]
    fn reads_an_answer_as_sglang_writes_it() {
        // The shape of a non-streamed /generate answer with return_logprob (SGLang 0.5).
        let a = json!({
            "text": "ab", "output_ids": [7, 2],
            "meta_info": {
                "id": "x", "prompt_tokens": 2, "completion_tokens": 2, "weight_version": "step-3",
                "finish_reason": {"type": "stop", "matched": 2},
                "output_token_logprobs": [[-0.5, 7, null], [-1.25, 2, null]]
            }
        });
        let g = parse_generate(&a, &sampling()).unwrap();
        assert_eq!(g.token_ids, vec![7, 2]);
        assert_eq!(g.logprobs, vec![-0.5, -1.25]);
        assert_eq!(g.finish, Finish::StopToken);
        assert_eq!(g.weight_version.as_deref(), Some("step-3"));
        let mut l = a.clone();
        l["meta_info"]["finish_reason"] = json!({"type": "length", "length": 2});
        assert_eq!(parse_generate(&l, &sampling()).unwrap().finish, Finish::Length);
        l["meta_info"]["finish_reason"] = json!({"type": "stop", "matched": "</answer>"});
        assert_eq!(parse_generate(&l, &sampling()).unwrap().finish, Finish::StopString);
        l["meta_info"]["finish_reason"] = json!({"type": "abort", "message": "paused"});
        assert!(parse_generate(&l, &sampling()).unwrap_err().contains("paused"));
        let mut no_lp = a.clone();
        no_lp["meta_info"].as_object_mut().unwrap().remove("output_token_logprobs");
        assert!(parse_generate(&no_lp, &sampling()).unwrap_err().contains("return_logprob"));
    }

    #[test]
    fn reload_answer() {
        assert!(parse_reload(&json!({"success": true, "message": "ok"})).is_ok());
        assert_eq!(parse_reload(&json!({"success": false, "message": "no config.json"})).unwrap_err(), "no config.json");
    }
}
