//! Model ids against a loopback mock of the Hub: the Python cache layout, cache hits without
//! the server, offline mode, revisions, gated and missing models, resumed downloads, sharded
//! weights, and local folders winning over ids. Nothing here touches the network or the real
//! ~/.cache: every test has its own cache folder and passes the settings explicitly.

use ponder_hub::testing::{git_etag, lfs_etag, MockHub};
use ponder_hub::{resolve_model, Hub, HubConfig, HubError, ModelId};
use std::path::{Path, PathBuf};

fn config(hub_url: &str, cache: &Path) -> HubConfig {
    HubConfig { endpoint: hub_url.to_string(), cache_dir: cache.to_path_buf(), token: None, offline: false, progress: true }
}

fn fetch(cfg: &HubConfig, id: &str) -> Result<PathBuf, HubError> {
    Hub::new(cfg.clone()).model(&ModelId::parse(id).expect("a model id"))
}

/// Weights large enough to span several reads, with no repeating pattern.
fn weights(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 7919 + seed as usize * 131) % 251) as u8).collect()
}

const CONFIG: &[u8] = b"{\"model_type\": \"qwen2\"}";
const TOKENIZER: &[u8] = b"{\"version\": \"1.0\"}";

/// A model as the Hub holds it, with files ponder must not fetch.
fn publish(hub: &MockHub, repo: &str, revision: &str, weights: &[u8]) -> String {
    hub.commit(
        repo,
        revision,
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("tokenizer_config.json", b"{}"),
            ("generation_config.json", b"{\"eos_token_id\": 2}"),
            ("model.safetensors", weights),
            ("README.md", b"# a model card"),
            ("pytorch_model.bin", b"pickled weights"),
        ],
    )
}

fn resolve_requests(hub: &MockHub) -> Vec<String> {
    hub.requests().into_iter().filter(|r| r.path.contains("/resolve/") || r.path.starts_with("/cdn/")).map(|r| r.path).collect()
}

#[test]
fn downloads_into_the_python_cache_layout() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(300_000, 1);
    let commit = publish(&hub, "org/tiny", "main", &w);
    let dir = fetch(&config(&hub.url, tmp.path()), "org/tiny").unwrap();

    let repo = tmp.path().join("models--org--tiny");
    assert_eq!(dir, repo.join("snapshots").join(&commit));
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), commit, "refs/main holds the commit, no newline");
    // Each snapshot file is a relative symlink to blobs/<etag>: sha256 for LFS files, the
    // git hash (ETag) for the others.
    for (file, etag, bytes) in [
        ("config.json", git_etag(CONFIG), CONFIG.to_vec()),
        ("tokenizer.json", git_etag(TOKENIZER), TOKENIZER.to_vec()),
        ("model.safetensors", lfs_etag(&w), w.clone()),
    ] {
        let link = std::fs::read_link(dir.join(file)).unwrap_or_else(|e| panic!("{file} is not a symlink: {e}"));
        assert_eq!(link, Path::new("../../blobs").join(&etag), "{file}");
        assert_eq!(std::fs::read(repo.join("blobs").join(&etag)).unwrap(), bytes, "{file}");
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), bytes, "{file}");
    }
    assert!(dir.join("tokenizer_config.json").is_file() && dir.join("generation_config.json").is_file());
    // Only what ponder reads; no partial files left.
    assert!(!dir.join("README.md").exists() && !dir.join("pytorch_model.bin").exists());
    assert!(resolve_requests(&hub).iter().all(|p| !p.contains("README") && !p.contains("pytorch_model")), "{:?}", resolve_requests(&hub));
    let leftovers: Vec<_> =
        std::fs::read_dir(repo.join("blobs")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The lock files sit where Python's filelock puts them.
    assert!(tmp.path().join(".locks/models--org--tiny").join(format!("{}.lock", lfs_etag(&w))).exists());
}

#[test]
fn a_second_resolve_is_a_cache_hit_even_with_the_server_gone() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    publish(&hub, "org/tiny", "main", &weights(50_000, 2));
    let cfg = config(&hub.url, tmp.path());
    let first = fetch(&cfg, "org/tiny").unwrap();
    let downloads = resolve_requests(&hub).len();

    // Online: the revision is asked again, no file is.
    assert_eq!(fetch(&cfg, "org/tiny").unwrap(), first);
    assert_eq!(resolve_requests(&hub).len(), downloads);

    // Unreachable: the snapshot refs/main points at serves, as Python falls back to its cache.
    hub.stop();
    assert_eq!(fetch(&cfg, "org/tiny").unwrap(), first);
}

#[test]
fn offline_mode_reads_the_cache_only() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    publish(&hub, "org/tiny", "main", &weights(50_000, 3));
    let online = fetch(&config(&hub.url, tmp.path()), "org/tiny").unwrap();
    let before = hub.requests().len();

    let offline = HubConfig { offline: true, ..config(&hub.url, tmp.path()) };
    assert_eq!(fetch(&offline, "org/tiny").unwrap(), online, "a hit through refs/main");
    assert_eq!(hub.requests().len(), before, "offline sends nothing");

    let err = fetch(&offline, "org/other").unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("org/other") && err.contains(&tmp.path().display().to_string()), "{err}");
    let err = fetch(&offline, "org/tiny@v2").unwrap_err().to_string();
    assert!(err.contains("refs/v2"), "{err}");
    assert_eq!(hub.requests().len(), before);

    // A snapshot missing a file ponder needs is a miss too, naming the file.
    std::fs::remove_file(online.join("tokenizer.json")).unwrap();
    let err = fetch(&offline, "org/tiny").unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn revisions_pin_commits_and_tags() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (weights(20_000, 4), weights(20_000, 5));
    let c1 = publish(&hub, "org/tiny", "v1", &old);
    let c2 = publish(&hub, "org/tiny", "main", &new);
    let cfg = config(&hub.url, tmp.path());
    let repo = tmp.path().join("models--org--tiny");

    let main = fetch(&cfg, "org/tiny").unwrap();
    assert_eq!(main, repo.join("snapshots").join(&c2));
    assert_eq!(std::fs::read(main.join("model.safetensors")).unwrap(), new);

    let pinned = fetch(&cfg, &format!("org/tiny@{c1}")).unwrap();
    assert_eq!(pinned, repo.join("snapshots").join(&c1));
    assert_eq!(std::fs::read(pinned.join("model.safetensors")).unwrap(), old);
    assert!(!repo.join("refs").join(&c1).exists(), "a commit hash needs no ref");

    let tag = fetch(&cfg, "org/tiny@v1").unwrap();
    assert_eq!(tag, pinned);
    assert_eq!(std::fs::read_to_string(repo.join("refs/v1")).unwrap(), c1);
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), c2);
    // The revision went to the API percent-encoded, the files by commit.
    assert!(hub.requests().iter().any(|r| r.path == "/api/models/org/tiny/revision/v1"));
    assert!(resolve_requests(&hub).iter().filter(|p| p.contains("/resolve/")).all(|p| p.contains(&c1) || p.contains(&c2)));
}

#[test]
fn gated_models_say_how_to_get_access() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(10_000, 6);
    publish(&hub, "meta/gated", "main", &w);
    hub.gate("meta/gated", "hf_good");

    let err = fetch(&config(&hub.url, tmp.path()), "meta/gated").unwrap_err();
    assert!(matches!(err, HubError::Access { status: 401, gated: true, token_sent: false, .. }), "{err:?}");
    let msg = err.to_string();
    for part in ["meta/gated", "HTTP 401", "HF_TOKEN", "licence", &format!("{}/meta/gated", hub.url)] {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }

    let wrong = HubConfig { token: Some("hf_bad".into()), ..config(&hub.url, tmp.path()) };
    let msg = fetch(&wrong, "meta/gated").unwrap_err().to_string();
    assert!(msg.contains("HTTP 403") && msg.contains("A token was sent"), "{msg}");

    let good = HubConfig { token: Some("hf_good".into()), ..config(&hub.url, tmp.path()) };
    let dir = fetch(&good, "meta/gated").unwrap();
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), w);
    assert!(hub.requests().iter().any(|r| r.header("authorization") == Some("Bearer hf_good")));
}

#[test]
fn missing_models_revisions_and_files_are_named() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(&hub.url, tmp.path());
    publish(&hub, "org/tiny", "main", &weights(1000, 7));

    let msg = fetch(&cfg, "org/nope").unwrap_err().to_string();
    assert!(msg.contains("org/nope") && msg.contains("no such model") && msg.contains("HF_TOKEN"), "{msg}");

    let err = fetch(&cfg, "org/tiny@v9").unwrap_err();
    assert!(matches!(err, HubError::RevisionNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no revision `v9`"), "{err}");

    // Listed by the index, absent from the repository: a 404 for that file.
    let index = br#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    hub.commit(
        "org/broken",
        "main",
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", b"x"),
        ],
    );
    let err = fetch(&cfg, "org/broken").unwrap_err();
    assert!(matches!(err, HubError::FileNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("model-00002-of-00002.safetensors") && msg.contains("not found") && msg.contains("lists it as a shard"), "{msg}");

    // Weights ponder cannot read, and no fast tokenizer.
    hub.commit("org/pickled", "main", &[("config.json", CONFIG), ("tokenizer.json", TOKENIZER), ("pytorch_model.bin", b"x")]);
    let msg = fetch(&cfg, "org/pickled").unwrap_err().to_string();
    assert!(msg.contains("no safetensors weights") && msg.contains("pytorch_model.bin"), "{msg}");
    hub.commit("org/slow", "main", &[("config.json", CONFIG), ("model.safetensors", b"x")]);
    assert!(matches!(fetch(&cfg, "org/slow"), Err(HubError::NoTokenizer { .. })));

    // No server at all, nothing cached.
    hub.stop();
    let msg = fetch(&cfg, "org/never").unwrap_err().to_string();
    assert!(msg.contains("cannot reach") && msg.contains(&hub.url) && msg.contains("HF_ENDPOINT"), "{msg}");
}

#[test]
fn a_broken_download_continues_with_a_range_request() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(2_000_000, 8);
    publish(&hub, "org/tiny", "main", &w);
    hub.cut_once("model.safetensors", 700_000);

    let dir = fetch(&config(&hub.url, tmp.path()), "org/tiny").unwrap();
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), w);
    let cdn: Vec<_> = hub.requests().into_iter().filter(|r| r.path.starts_with("/cdn/")).collect();
    assert_eq!(cdn.len(), 2, "{cdn:?}");
    assert_eq!(cdn[0].header("range"), None);
    let range = cdn[1].header("range").expect("the second GET asks for the rest");
    let from: u64 = range.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).unwrap().parse().unwrap();
    assert!(from > 0 && from <= 700_000, "{range}");
}

#[test]
fn a_partial_file_from_an_earlier_run_is_continued() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(500_000, 9);
    publish(&hub, "org/tiny", "main", &w);
    let blobs = tmp.path().join("models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.incomplete", lfs_etag(&w))), &w[..123_456]).unwrap();

    let dir = fetch(&config(&hub.url, tmp.path()), "org/tiny").unwrap();
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), w);
    let cdn: Vec<_> = hub.requests().into_iter().filter(|r| r.path.starts_with("/cdn/")).collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].header("range"), Some("bytes=123456-"));
    assert!(!blobs.join(format!("{}.incomplete", lfs_etag(&w))).exists());

    // A damaged partial file fails the sha256 check, is removed, and the next run starts over.
    let w2 = weights(100_000, 10);
    publish(&hub, "org/other", "main", &w2);
    let blobs2 = tmp.path().join("models--org--other/blobs");
    std::fs::create_dir_all(&blobs2).unwrap();
    std::fs::write(blobs2.join(format!("{}.incomplete", lfs_etag(&w2))), vec![0u8; 1000]).unwrap();
    let err = fetch(&config(&hub.url, tmp.path()), "org/other").unwrap_err();
    assert!(matches!(err, HubError::Corrupt { .. }) && err.to_string().contains("sha256"), "{err:?}");
    let dir = fetch(&config(&hub.url, tmp.path()), "org/other").unwrap();
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), w2);
}

#[test]
fn sharded_weights_come_through_the_index() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (weights(40_000, 11), weights(30_000, 12));
    let index = br#"{"metadata": {"total_size": 70000}, "weight_map": {"x.weight": "model-00001-of-00002.safetensors", "y.weight": "model-00002-of-00002.safetensors", "z.weight": "model-00001-of-00002.safetensors"}}"#;
    hub.commit(
        "org/big",
        "main",
        &[
            ("config.json", CONFIG),
            ("tokenizer.json", TOKENIZER),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", &a),
            ("model-00002-of-00002.safetensors", &b),
        ],
    );
    let cfg = config(&hub.url, tmp.path());
    let dir = fetch(&cfg, "org/big").unwrap();
    assert_eq!(std::fs::read(dir.join("model.safetensors.index.json")).unwrap(), index);
    assert_eq!(std::fs::read(dir.join("model-00001-of-00002.safetensors")).unwrap(), a);
    assert_eq!(std::fs::read(dir.join("model-00002-of-00002.safetensors")).unwrap(), b);
    assert_eq!(std::fs::read_link(dir.join("model-00002-of-00002.safetensors")).unwrap(), Path::new("../../blobs").join(lfs_etag(&b)));
    // Offline, the index tells which shards must be there.
    let offline = HubConfig { offline: true, ..cfg };
    assert_eq!(fetch(&offline, "org/big").unwrap(), dir);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let msg = fetch(&offline, "org/big").unwrap_err().to_string();
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

#[test]
fn an_existing_local_folder_is_used_as_it_is() {
    // A folder spelled like a model id, relative to the working directory (the crate's
    // folder under `cargo test`): the folder wins, and no request is made.
    let hub = MockHub::start();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub.url, cache.path());
    let parent = tempfile::Builder::new().prefix("local-model-test-").tempdir_in(".").unwrap();
    let name = parent.path().file_name().unwrap().to_str().unwrap().to_string();
    let spec = PathBuf::from(format!("{name}/model"));
    std::fs::create_dir(&spec).unwrap();
    assert!(ModelId::parse(spec.to_str().unwrap()).is_some(), "the folder is spelled like an id");
    assert_eq!(resolve_model(&spec, &cfg).unwrap(), spec);
    // Absolute paths and other local spellings never reach the Hub either.
    let abs = cache.path().join("missing-model");
    assert_eq!(resolve_model(&abs, &cfg).unwrap(), abs);
    assert_eq!(resolve_model(Path::new("runs/x/stages/base/model"), &cfg).unwrap(), PathBuf::from("runs/x/stages/base/model"));
    assert!(hub.requests().is_empty());
    // Once the folder is gone, the same spelling is a model id.
    std::fs::remove_dir(&spec).unwrap();
    assert!(matches!(resolve_model(&spec, &cfg), Err(HubError::RepoNotFound { .. })));
}

fn dataset(cfg: &HubConfig, spec: &str) -> Result<Vec<(String, PathBuf)>, HubError> {
    ponder_hub::resolve_dataset(spec, cfg)
}

/// openai/gsm8k as the Hub lays it out at main (configs `main` and `socratic`), Parquet as LFS.
fn publish_gsm8k(hub: &MockHub) -> String {
    hub.commit(
        "datasets/openai/gsm8k",
        "main",
        &[
            ("README.md", b"---\nconfigs: ...\n---"),
            ("main/train-00000-of-00002.parquet", &weights(3000, 1)),
            ("main/train-00001-of-00002.parquet", &weights(2000, 2)),
            ("main/test-00000-of-00001.parquet", &weights(1000, 3)),
            ("socratic/train-00000-of-00001.parquet", &weights(900, 4)),
        ],
    )
}

#[test]
fn dataset_split_files_land_in_the_python_cache_layout() {
    let hub = MockHub::start();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub.url, cache.path());
    let commit = publish_gsm8k(&hub);
    let files = dataset(&cfg, "datasets/openai/gsm8k/main/train").unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["main/train-00000-of-00002.parquet", "main/train-00001-of-00002.parquet"], "both shards, in order");
    let repo = cache.path().join("datasets--openai--gsm8k");
    assert_eq!(files[0].1, repo.join("snapshots").join(&commit).join("main/train-00000-of-00002.parquet"));
    assert_eq!(std::fs::read(&files[1].1).unwrap(), weights(2000, 2));
    // Python's layout: the blob is named by its sha256 (LFS), the pointer a relative link to it.
    let link = std::fs::read_link(&files[0].1).unwrap();
    assert_eq!(link, PathBuf::from("../../../blobs").join(lfs_etag(&weights(3000, 1))));
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), commit);
    // Only the split asked for was downloaded: nothing of test / socratic.
    let got: Vec<String> =
        hub.requests().iter().filter(|r| r.method == "GET" && r.path.contains("/resolve/")).map(|r| r.path.clone()).collect();
    assert!(got.iter().all(|p| p.contains("/main/train-")), "{got:?}");
    assert!(hub.requests()[0].path.starts_with("/api/datasets/openai/gsm8k/revision/main"), "{:?}", hub.requests()[0].path);

    // A second read is served from the cache, even with the Hub gone, and offline.
    hub.stop();
    let again = dataset(&cfg, "datasets/openai/gsm8k/main/train").unwrap();
    assert_eq!(again, files);
    let offline = HubConfig { offline: true, ..cfg.clone() };
    assert_eq!(dataset(&offline, "datasets/openai/gsm8k/main/train").unwrap(), files);
    let err = dataset(&offline, "datasets/openai/gsm8k/main/test").unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("--repo-type dataset"), "{err}");
}

#[test]
fn a_missing_split_names_the_splits_there_are_and_the_conversion_branch_stands_in() {
    let hub = MockHub::start();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub.url, cache.path());
    publish_gsm8k(&hub);
    let err = dataset(&cfg, "datasets/openai/gsm8k/main/trian").unwrap_err().to_string();
    assert!(err.contains("split `trian`") && err.contains("main/test, main/train, socratic/train"), "{err}");
    assert!(err.contains("hf://datasets/openai/gsm8k/CONFIG/SPLIT"), "{err}");

    // A dataset kept as a loading script: only the Hub's Parquet conversion has files.
    hub.commit("datasets/org/scripted", "main", &[("scripted.py", b"class Builder: ..."), ("README.md", b"card")]);
    let conv = hub.commit("datasets/org/scripted", "refs/convert/parquet", &[("default/test/0000.parquet", &weights(500, 9))]);
    let files = dataset(&cfg, "datasets/org/scripted/test").unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, "default/test/0000.parquet");
    assert_eq!(std::fs::read(&files[0].1).unwrap(), weights(500, 9));
    // Recorded as Python records it: refs/refs/convert/parquet.
    let refs = cache.path().join("datasets--org--scripted/refs/refs/convert/parquet");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), conv);
    let err = dataset(&cfg, "datasets/org/scripted/validation").unwrap_err().to_string();
    assert!(err.contains("refs/convert/parquet") && err.contains("default/test"), "{err}");

    // No data files anywhere, no conversion: the message says what to do.
    hub.commit("datasets/org/empty", "main", &[("loader.py", b"...")]);
    let err = dataset(&cfg, "datasets/org/empty/train").unwrap_err().to_string();
    assert!(err.contains("no Parquet or JSONL files at all") && err.contains("to_json"), "{err}");

    // A single file by its path, a missing dataset, a malformed spec.
    let one = dataset(&cfg, "datasets/openai/gsm8k/main/test-00000-of-00001.parquet").unwrap();
    assert_eq!(std::fs::read(&one[0].1).unwrap(), weights(1000, 3));
    let err = dataset(&cfg, "datasets/org/nope/train").unwrap_err().to_string();
    assert!(err.contains("datasets/org/nope") && err.contains("no such dataset"), "{err}");
    let err = dataset(&cfg, "openai/gsm8k/main/train").unwrap_err().to_string();
    assert!(err.contains("only datasets"), "{err}");
}

#[test]
fn a_gated_dataset_asks_for_a_token_at_the_dataset_page() {
    let hub = MockHub::start();
    let cache = tempfile::tempdir().unwrap();
    hub.commit("datasets/org/gated", "main", &[("data/train-00000-of-00001.parquet", &weights(700, 5))]);
    hub.gate("datasets/org/gated", "hf_good");
    let err = dataset(&config(&hub.url, cache.path()), "datasets/org/gated/train").unwrap_err().to_string();
    assert!(err.contains("gated") && err.contains(&format!("{}/datasets/org/gated", hub.url)) && err.contains("HF_TOKEN"), "{err}");
    let cfg = HubConfig { token: Some("hf_good".into()), ..config(&hub.url, cache.path()) };
    let files = dataset(&cfg, "datasets/org/gated/train").unwrap();
    assert_eq!(files[0].0, "data/train-00000-of-00001.parquet");
}
