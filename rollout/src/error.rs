use std::path::PathBuf;

/// Everything that can go wrong on the policy side. Messages say what, where and how to fix.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{path}: file not found. {hint}")]
    MissingFile { path: PathBuf, hint: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: unsupported architecture {found:?}; ponder supports {supported}")]
    UnsupportedArchitecture { path: PathBuf, found: String, supported: String },
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?}). The checkpoint does not match config.json; check the model folder is complete")]
    MissingTensor { path: PathBuf, name: String, expected: Vec<i64> },
    #[error("{path}: tensor `{name}` has shape {found:?} but config.json implies {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{path}: cannot read safetensors: {msg}. The file may be truncated; re-copy or re-save it")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{0}")]
    Device(String),
    #[error("unknown dtype {0:?}; use one of f32, bf16, f16 (or float32, bfloat16, float16)")]
    Dtype(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("generation: {0}")]
    Generation(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = RolloutError> = std::result::Result<T, E>;

impl RolloutError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            RolloutError::MissingFile { path, hint: String::new() }
        } else {
            RolloutError::Io { path, source }
        }
    }
}

thread_local! {
    /// Depth of `catch_quietly` calls on this thread.
    static QUIET: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// `catch_unwind` for guarded work whose panics the caller reports itself (through
/// [`panic_message`], as a clear error): while `f` runs, a panic on this thread prints
/// nothing, instead of the default hook's "thread panicked at" line with libtorch's C++
/// stack ahead of the real message. Panics anywhere else print as before.
pub fn catch_quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) == 0 {
                previous(info)
            }
        }));
    });
    QUIET.with(|q| q.set(q.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    r
}

/// The text of a caught panic. libtorch errors arrive as `unwrap()` panics carrying the
/// debug form of the error, with the C++ stack appended: keep the message only.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let raw = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
    let raw = raw.unwrap_or_else(|| "a panic without a message".into());
    let msg = raw.split_once("Torch(\"").map_or(raw.as_str(), |(_, m)| m);
    let msg = msg.split("\\nframe #").next().unwrap_or(msg).split("\nframe #").next().unwrap_or(msg);
    // "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: ..." -> the last part.
    let msg = msg.rsplit_once("] err == 0. ").map_or(msg, |(_, m)| m);
    format!("libtorch: {}", msg.strip_suffix("\")").unwrap_or(msg).trim_end().replace("\\n", " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn quiet_catch_silences_its_own_panics_only() {
        // A hook that counts what reaches it on this thread, installed before the quiet one
        // wraps it, as the default hook is in a real run.
        std::panic::set_hook(Box::new(|_| SEEN.with(|s| s.set(s.get() + 1))));
        let r = catch_quietly(|| -> u32 { panic!("{}", "Torch(\"out of memory\")") });
        assert_eq!(panic_message(&*r.unwrap_err()), "libtorch: out of memory");
        assert_eq!(SEEN.with(|s| s.get()), 0, "a quietly caught panic reached the hook");
        assert_eq!(catch_quietly(|| 7).unwrap(), 7);
        // Outside it, panics print as before.
        let _ = std::panic::catch_unwind(|| panic!("loud"));
        assert_eq!(SEEN.with(|s| s.get()), 1);
        // Back to the default hook, so other tests' failures print their messages.
        let _ = std::panic::take_hook();
    }
}
