//! A loopback mock inference server (SGLang or vLLM routes) that samples with ponder's own
//! generation on the weights of the last folder it was told to load: shared by the engine
//! tests and the data-parallel tests.

use ponder_engine::testing::{MockEngine, MockGen, MockOut};
use ponder_engine::{EngineKind, Finish};
use rollout::folder::Policy;
use rollout::generate::{FinishReason, SamplingParams};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind};

/// A mock server of `kind` whose sampler is ponder's generation on the weights of the last
/// folder it was told to load.
pub fn model_server(kind: EngineKind) -> MockEngine {
    let loaded: Arc<Mutex<Option<Policy>>> = Arc::new(Mutex::new(None));
    let (gen_model, reload_model) = (loaded.clone(), loaded);
    let generator = Arc::new(move |g: &MockGen| -> Result<MockOut, String> {
        let guard = gen_model.lock().unwrap();
        let policy = guard.as_ref().ok_or("no weights loaded yet")?;
        let p = SamplingParams { temperature: g.temperature, max_new_tokens: g.max_new_tokens, ..Default::default() };
        let c = rollout::generate::generate(&policy.model, None, &[g.prompt.clone()], &[g.seed], &g.stop_token_ids, &p)
            .map_err(|e| e.to_string())?
            .remove(0);
        let finish = match c.finish_reason {
            FinishReason::Eos => Finish::StopToken,
            FinishReason::Stop => Finish::StopString,
            FinishReason::Length => Finish::Length,
        };
        Ok(MockOut { token_ids: c.token_ids, logprobs: c.logprobs, finish })
    });
    let on_reload = Arc::new(move |folder: &str| -> Result<(), String> {
        let p = Policy::load(Path::new(folder), Kind::Float, Device::Cpu).map_err(|e| e.to_string())?;
        *reload_model.lock().unwrap() = Some(p);
        Ok(())
    });
    MockEngine::with_generator(kind, generator, Some(on_reload))
}
