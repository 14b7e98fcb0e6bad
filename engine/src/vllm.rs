//! vLLM's token-in / token-out route `POST /inference/v1/generate` (`token_ids`,
//! `sampling_params`; answers `choices[0].token_ids` and `logprobs.content[].logprob`), and
//! new weights through `POST /collective_rpc` calling the workers' `reload_weights` with a
//! folder, between `/pause` and `/resume` (these routes need `VLLM_SERVER_DEV_MODE=1`).
//! vLLM's answers carry no weight version: ponder relies on the synchronous cycle.

use crate::{wire_seed, Finish, Generated, Request, Sampling};
use serde_json::{json, Value};

pub fn generate_body(req: &Request, s: &Sampling) -> Value {
    json!({
        "token_ids": req.prompt,
        "sampling_params": {
            "n": 1,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": if s.top_k > 0 { s.top_k } else { -1 },
            "min_p": s.min_p,
            "max_tokens": s.max_new_tokens,
            "min_tokens": s.min_new_tokens,
            "stop_token_ids": s.stop_token_ids,
            "stop": s.stop,
            "include_stop_str_in_output": true,
            "skip_special_tokens": false,
            // The sampled token's log-prob (0 = no alternatives). Start the server with
            // --logprobs-mode processed_logprobs so they are after temperature, as ponder's.
            "logprobs": 0,
            "seed": wire_seed(req.seed),
        },
    })
}

pub fn parse_generate(v: &Value, s: &Sampling) -> Result<Generated, String> {
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or("no choices[0]")?;
    let token_ids: Vec<i64> = choice
        .get("token_ids")
        .and_then(|t| t.as_array())
        .ok_or("no choices[0].token_ids")?
        .iter()
        .map(|t| t.as_i64().ok_or("a token id is not an integer"))
        .collect::<Result<_, _>>()?;
    let content = choice
        .get("logprobs")
        .and_then(|l| l.get("content"))
        .and_then(|c| c.as_array())
        .ok_or("no choices[0].logprobs.content (was sampling_params.logprobs dropped?)")?;
    let logprobs: Vec<f32> = content
        .iter()
        .enumerate()
        .map(|(k, e)| e.get("logprob").and_then(|x| x.as_f64()).map(|x| x as f32).ok_or(format!("logprobs.content[{k}] has no logprob")))
        .collect::<Result<_, _>>()?;
    if logprobs.len() != token_ids.len() {
        return Err(format!("{} token ids but {} log-probs", token_ids.len(), logprobs.len()));
    }
    let finish = match choice.get("finish_reason").and_then(|f| f.as_str()) {
        Some("length") => Finish::Length,
        Some("stop") if token_ids.last().is_some_and(|t| s.stop_token_ids.contains(t)) => Finish::StopToken,
        Some("stop") => Finish::StopString,
        Some("abort") => return Err("the request was aborted".into()),
        other => return Err(format!("unknown finish_reason {other:?}")),
    };
    Ok(Generated { token_ids, logprobs, finish, server: 0, weight_version: None })
}

pub fn reload_body(path: &str) -> Value {
    json!({ "method": "reload_weights", "kwargs": { "weights_path": path } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_answer_as_vllm_writes_it() {
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            max_new_tokens: 4,
            min_new_tokens: 0,
            stop_token_ids: vec![0],
            stop: vec![],
        };
        let b = generate_body(&Request { prompt: vec![1], seed: 3, key: 0 }, &s);
        assert_eq!(b["token_ids"], json!([1]));
        assert_eq!(b["sampling_params"]["max_tokens"], json!(4));
        assert_eq!(b["sampling_params"]["logprobs"], json!(0));
        let a = json!({"request_id": "r", "choices": [{"index": 0, "finish_reason": "stop", "token_ids": [9, 0],
            "logprobs": {"content": [{"token": "token_id:9", "logprob": -0.25, "bytes": null, "top_logprobs": []},
                                      {"token": "token_id:0", "logprob": -2.0, "bytes": null, "top_logprobs": []}]}}]});
        let g = parse_generate(&a, &s).unwrap();
        assert_eq!((g.token_ids, g.logprobs, g.finish), (vec![9, 0], vec![-0.25, -2.0], Finish::StopToken));
        let mut l = a.clone();
        l["choices"][0]["finish_reason"] = json!("length");
        assert_eq!(parse_generate(&l, &s).unwrap().finish, Finish::Length);
        l["choices"][0]["token_ids"] = json!([9]);
        assert!(parse_generate(&l, &s).unwrap_err().contains("1 token ids but 2"));
    }
}
