//! The client against a loopback mock W&B server that records every request. Shapes are
//! checked against `../shared/reference/wandb-protocol.md` (what wandb 0.31 sends).

use ponder_wandb::testing::{Behavior, MockServer};
use ponder_wandb::{samples_table, sync, Mode, Row, Run, RunOptions, Settings, State, WandbConfig};
use serde_json::{json, Value};
use sha2::Digest;
use std::path::Path;
use std::time::Duration;

const KEY: &str = "0123456789abcdef0123456789abcdef01234567";
/// base64("api:" + KEY), computed with Python's base64 module.
const AUTH: &str = "Basic YXBpOjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc=";

fn settings(url: &str, mode: Mode) -> Settings {
    let cfg = WandbConfig {
        project: Some("p".into()),
        entity: Some("e".into()),
        group: Some("g".into()),
        tags: vec!["grpo".into(), "tiny".into()],
        notes: Some("a note".into()),
        mode: Some(mode),
        ..Default::default()
    };
    let url = url.to_string();
    let env = move |k: &str| match k {
        "WANDB_API_KEY" => Some(KEY.to_string()),
        "WANDB_BASE_URL" => Some(url.clone()),
        _ => None,
    };
    let mut s = Settings::resolve(Some(&cfg), "tiny-run", &env).unwrap();
    s.flush_interval = Duration::from_millis(30);
    s.request_timeout = Duration::from_millis(800);
    s.finish_timeout = Duration::from_secs(10);
    s.max_backoff = Duration::from_millis(100);
    s
}

fn row(pairs: &[(&str, f64)]) -> Row {
    pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
}

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        state_path: Some(dir.join("wandb.json")),
        config: Some(json!({"lr": 1e-5, "grpo": {"beta": 0.04}})),
        run_id: None,
        verbose: false,
        program: Some("ponder".into()),
    }
}

fn steps(history: &[Value]) -> Vec<u64> {
    history.iter().map(|r| r["_step"].as_u64().expect("every row has an integer _step")).collect()
}

fn file_streams(server: &MockServer) -> Vec<Value> {
    server.requests().iter().filter(|r| r.path.ends_with("/file_stream")).map(|r| r.json()).collect()
}

#[test]
fn a_live_run_speaks_the_official_wire_format() {
    let server = MockServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = Run::start(settings(&server.url, Mode::Online), opts(dir.path())).unwrap().unwrap();
    let id = run.run_id().to_string();
    run.log(1, &row(&[("reward", 0.25), ("kl", 0.0)]));
    let (columns, data) = samples_table(&[
        json!({"prompt": "1+1=", "completion": "2", "reward": 1.0, "rewards": {"accuracy": 1.0}}),
        json!({"prompt": "2+2=", "completion": "5", "reward": 0.0, "rewards": {"accuracy": 0.0}}),
    ]);
    assert_eq!(columns, ["prompt", "completion", "reward", "rewards/accuracy"]);
    run.log_table(2, "samples", columns, data);
    run.log(2, &row(&[("reward", 0.5), ("kl", 0.01)]));
    run.log(2, &row(&[("eval/reward", 0.4)])); // same step: one history row
    run.log(3, &row(&[("reward", 0.75), ("kl", 0.02)]));
    run.console("step 3/3: reward 0.750");
    let report = run.finish(0);
    assert!(report.complete, "{report:?}");
    assert_eq!(report.rows_uploaded, 3);
    assert_eq!(report.url.as_deref(), Some(format!("{}/e/p/runs/{id}", server.url).as_str()));

    let reqs = server.requests();
    // Basic auth api:KEY on every API request (uploads go to the URL the server gave).
    assert!(reqs.iter().filter(|r| r.method == "POST").all(|r| r.header("authorization") == Some(AUTH)));
    // 1. UpsertBucket first, with every variable the official client sends.
    assert_eq!(reqs[0].path, "/graphql");
    assert_eq!(reqs[0].operation().as_deref(), Some("UpsertBucket"));
    let q = reqs[0].json();
    let query = q["query"].as_str().unwrap();
    assert!(query.contains("modelName: $project") && query.contains("entityName: $entity") && query.contains("historyLineCount"));
    let v = &q["variables"];
    assert_eq!(v["name"], json!(id));
    assert_eq!((v["project"].as_str(), v["entity"].as_str()), (Some("p"), Some("e")));
    assert_eq!((v["displayName"].as_str(), v["groupName"].as_str(), v["notes"].as_str()), (Some("tiny-run"), Some("g"), Some("a note")));
    assert_eq!(v["tags"], json!(["grpo", "tiny"]));
    for unset in ["description", "commit", "sweep", "state", "summaryMetrics"] {
        assert!(v.get(unset).is_some_and(Value::is_null), "{unset} is sent as null");
    }
    let config: Value = serde_json::from_str(v["config"].as_str().expect("config is a JSON string")).unwrap();
    assert_eq!(config, json!({"lr": {"value": 1e-5}, "grpo": {"value": {"beta": 0.04}}}));

    // 2. History: one row per step, running offsets, _step/_timestamp/_runtime.
    let streams = file_streams(&server);
    let mut expect_offset = 0;
    for s in &streams {
        if let Some(h) = s["files"].get("wandb-history.jsonl") {
            assert_eq!(h["offset"].as_u64(), Some(expect_offset), "offsets run on: {s}");
            expect_offset += h["content"].as_array().unwrap().len() as u64;
        }
        if let Some(sm) = s["files"].get("wandb-summary.json") {
            assert_eq!(sm["offset"], json!(0));
        }
    }
    let history = server.history(&id);
    assert_eq!(steps(&history), [1, 2, 3]);
    for r in &history {
        assert!(r["_timestamp"].as_f64().unwrap() > 1.7e9 && r["_runtime"].as_f64().unwrap() >= 0.0, "{r}");
    }
    assert_eq!((history[1]["reward"].as_f64(), history[1]["eval/reward"].as_f64()), (Some(0.5), Some(0.4)));
    assert!(history[0]["_runtime"].as_f64() <= history[2]["_runtime"].as_f64());

    // The table: a file uploaded through CreateRunFiles + PUT, referenced by the row.
    let t = &history[1]["samples"];
    assert_eq!(t["_type"], json!("table-file"));
    assert_eq!((t["ncols"].as_u64(), t["nrows"].as_u64()), (Some(4), Some(2)));
    assert_eq!(t["log_mode"], json!("IMMUTABLE"));
    let path = t["path"].as_str().unwrap();
    assert!(path.starts_with("media/table/samples_2_") && path.ends_with(".table.json"), "{path}");
    let crf = reqs.iter().find(|r| r.operation().as_deref() == Some("CreateRunFiles")).expect("CreateRunFiles sent");
    assert_eq!(crf.json()["variables"]["files"], json!([path]));
    let uploads = server.uploads();
    let body = uploads.get(&format!("/upload/{id}/{path}")).expect("table PUT");
    assert_eq!(t["sha256"].as_str().unwrap(), sha2::Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert_eq!(t["size"].as_u64(), Some(body.len() as u64));
    let table: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(table["data"][1], json!(["2+2=", "5", 0.0, 0.0]));

    // Summary: latest values, _step, and _wandb.runtime.
    let summary = server.summary(&id).unwrap();
    assert_eq!((summary["reward"].as_f64(), summary["_step"].as_u64()), (Some(0.75), Some(3)));
    assert!(summary["_wandb"]["runtime"].is_i64());
    // 4. The last request completes the run with the exit code and names the uploads.
    let last = streams.last().unwrap();
    assert_eq!((last["complete"].as_bool(), last["exitcode"].as_i64()), (Some(true), Some(0)));
    assert_eq!(last["uploaded"], json!([path]));
    assert_eq!(server.exit_code(&id), Some(0));
    // Console lines go to output.log as the official client writes stdout: "ISO-time text".
    let out = server.output(&id);
    assert_eq!(out.len(), 1);
    let (stamp, text) = out[0].split_once(' ').unwrap();
    assert_eq!(text, "step 3/3: reward 0.750");
    assert!(stamp.len() == 26 && stamp.as_bytes()[10] == b'T' && stamp[20..].chars().all(|c| c.is_ascii_digit()), "{stamp}");
    let st = State::load(&dir.path().join("wandb.json")).unwrap().unwrap();
    assert_eq!((st.run_id, st.last_step, st.history_lines, st.complete, st.exit_code), (id, Some(3), 3, true, Some(0)));
}

/// A live run on `server` that has logged steps 1..=5 (reward = step).
fn run_five_steps(server: &MockServer, dir: &Path) -> (Run, String) {
    let run = Run::start(settings(&server.url, Mode::Online), opts(dir)).unwrap().unwrap();
    let id = run.run_id().to_string();
    for s in 1..=5 {
        run.log(s, &row(&[("reward", s as f64)]));
    }
    (run, id)
}

#[test]
fn resume_keeps_the_run_id_and_never_repeats_a_step() {
    let server = MockServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (run, id) = run_five_steps(&server, dir.path());
    drop(run); // as if the trainer failed: finished with exit code 1
    assert_eq!(server.exit_code(&id), Some(1));
    let before = file_streams(&server).len();
    // Resumed from a checkpoint at step 3: steps 4 and 5 come again, then new ones.
    let run = Run::start(settings(&server.url, Mode::Online), opts(dir.path())).unwrap().unwrap();
    assert_eq!(run.run_id(), id);
    for s in 4..=8 {
        run.log(s, &row(&[("reward", s as f64)]));
    }
    let report = run.finish(0);
    assert_eq!((report.rows_uploaded, report.rows_skipped), (3, 2));
    let upserts: Vec<_> = server.requests().into_iter().filter(|r| r.operation().as_deref() == Some("UpsertBucket")).collect();
    assert_eq!(upserts.len(), 2);
    assert!(upserts.iter().all(|u| u.json()["variables"]["name"] == json!(id)));
    let resumed = &file_streams(&server)[before..];
    let first = resumed.iter().find_map(|s| s["files"].get("wandb-history.jsonl").cloned()).unwrap();
    assert_eq!(first["offset"], json!(5), "the resumed stream continues at the server's historyLineCount");
    assert_eq!(steps(&server.history(&id)), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(server.exit_code(&id), Some(0));
}

/// Logging must return while the server has answered nothing at all.
#[test]
fn a_stalled_server_never_holds_up_logging() {
    let server = MockServer::start();
    server.set_behavior(Behavior::Slow(Duration::from_secs(5)));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&server.url, Mode::Online);
    s.finish_timeout = Duration::from_millis(300);
    let run = Run::start(s, opts(dir.path())).unwrap().unwrap();
    for step in 1..=2000 {
        run.log(step, &row(&[("reward", 1.0)]));
    }
    assert_eq!(server.answered(), 0, "all 2000 rows were queued before the first answer");
    let report = run.finish(0);
    assert!(!report.complete && report.error.is_some(), "{report:?}");
}

fn write_metrics(dir: &Path, rows: &[(u64, f64)]) {
    let text: String = rows.iter().map(|(s, r)| format!("{}\n", json!({"step": s, "reward": r, "timestamp": 1.8e9 + *s as f64}))).collect();
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

/// Server down, HTTP 500s, dropped connections, lost answers: training-side calls return,
/// the run is reported incomplete, and `sync` later uploads each row exactly once.
#[test]
fn failures_lose_nothing_and_sync_recovers_every_row_once() {
    for behavior in [None, Some(Behavior::Error500), Some(Behavior::Drop), Some(Behavior::Lost)] {
        let server = MockServer::start();
        let url = match &behavior {
            None => MockServer::dead_url(),
            Some(b) => {
                server.set_behavior(b.clone());
                server.url.clone()
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(&url, Mode::Online);
        s.finish_timeout = Duration::from_millis(500);
        let run = Run::start(s, opts(dir.path())).unwrap().unwrap();
        let id = run.run_id().to_string();
        let rows: Vec<(u64, f64)> = (0..=20).map(|s| (s, s as f64 / 20.0)).collect();
        for (step, r) in &rows {
            run.log(*step, &row(&[("reward", *r)]));
        }
        let report = run.finish(0);
        assert!(!report.complete, "{behavior:?}: {report:?}");
        write_metrics(dir.path(), &rows);
        // The server comes back (or the user points at a working one).
        server.set_behavior(Behavior::Normal);
        let r = sync(settings(&server.url, Mode::Online), dir.path(), None).unwrap();
        assert!(r.upload.complete);
        assert_eq!(r.upload.run_id, id, "{behavior:?}: sync continues the same run");
        assert_eq!(steps(&server.history(&id)), (0..=20).collect::<Vec<_>>(), "{behavior:?}");
        assert_eq!(server.history(&id)[7]["_timestamp"].as_f64(), Some(1.8e9 + 7.0));
        assert_eq!(server.exit_code(&id), Some(0));
    }
}

#[test]
fn transient_failures_are_retried_without_duplicates() {
    for b in [Behavior::Error500, Behavior::Lost, Behavior::Drop] {
        let server = MockServer::start();
        let dir = tempfile::tempdir().unwrap();
        let run = Run::start(settings(&server.url, Mode::Online), opts(dir.path())).unwrap().unwrap();
        let id = run.run_id().to_string();
        for step in 1..=10 {
            run.log(step, &row(&[("reward", 1.0)]));
        }
        std::thread::sleep(Duration::from_millis(200));
        server.fail_next(3, b.clone());
        for step in 11..=30 {
            run.log(step, &row(&[("reward", 1.0)]));
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = run.finish(0);
        assert!(report.complete, "{b:?}: {report:?}");
        assert!(server.requests().iter().any(|r| r.answered == b), "{b:?} was exercised");
        assert_eq!(steps(&server.history(&id)), (1..=30).collect::<Vec<_>>(), "{b:?}");
    }
}

#[test]
fn a_full_queue_stops_the_stream_and_sync_finishes_it() {
    let server = MockServer::start();
    server.set_behavior(Behavior::Slow(Duration::from_millis(400)));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&server.url, Mode::Online);
    s.queue_capacity = 4;
    s.request_timeout = Duration::from_secs(5);
    s.finish_timeout = Duration::from_secs(10);
    let run = Run::start(s, opts(dir.path())).unwrap().unwrap();
    let id = run.run_id().to_string();
    let rows: Vec<(u64, f64)> = (1..=100).map(|s| (s, 0.5)).collect();
    for (step, r) in &rows {
        run.log(*step, &row(&[("reward", *r)]));
    }
    let report = run.finish(0);
    let dropped = report.dropped_from_step.expect("a 4-row queue overflows");
    let live = steps(&server.history(&id));
    assert!(live.iter().all(|s| *s < dropped), "nothing after the gap went live: {live:?}");
    server.set_behavior(Behavior::Normal);
    write_metrics(dir.path(), &rows);
    sync(settings(&server.url, Mode::Online), dir.path(), None).unwrap();
    assert_eq!(steps(&server.history(&id)), (1..=100).collect::<Vec<_>>());
}

#[test]
fn offline_runs_sync_each_row_exactly_once() {
    let server = MockServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = Run::start(settings(&server.url, Mode::Offline), opts(dir.path())).unwrap().unwrap();
    let id = run.run_id().to_string();
    run.log(1, &row(&[("reward", 1.0)]));
    run.finish(0);
    assert!(server.requests().is_empty(), "offline sends nothing");
    // metrics.jsonl as the trainer writes it: a train and an eval row share step 2, and a
    // kill left the last line cut off.
    let text = [
        json!({"step": 0, "eval/reward": 0.1, "timestamp": 1.8e9}),
        json!({"step": 1, "reward": 0.2, "timestamp": 1.8e9 + 1.0}),
        json!({"step": 2, "reward": 0.3, "timestamp": 1.8e9 + 2.0}),
        json!({"step": 2, "eval/reward": 0.35, "timestamp": 1.8e9 + 2.5}),
    ]
    .iter()
    .map(|v| format!("{v}\n"))
    .collect::<String>()
        + "{\"step\": 3, \"rew";
    std::fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
    std::fs::create_dir_all(dir.path().join("samples")).unwrap();
    std::fs::write(dir.path().join("samples/step-000002.jsonl"), format!("{}\n", json!({"prompt": "p", "completion": "c", "reward": 1.0})))
        .unwrap();
    let r = sync(settings(&server.url, Mode::Online), dir.path(), Some(json!({"lr": 0.1}))).unwrap();
    assert_eq!((r.upload.run_id.as_str(), r.upload.rows_uploaded, r.bad_lines.as_slice()), (id.as_str(), 3, &[5][..]));
    let h = server.history(&id);
    assert_eq!(steps(&h), [0, 1, 2]);
    assert_eq!((h[2]["reward"].as_f64(), h[2]["eval/reward"].as_f64()), (Some(0.3), Some(0.35)));
    assert_eq!(h[2]["samples"]["_type"], json!("table-file"));
    assert_eq!(h[2]["_runtime"].as_f64(), Some(2.5), "runtime from the rows' own timestamps (the step's last row)");
    assert_eq!(server.exit_code(&id), Some(0), "the exit code the offline run recorded");
    // Again: nothing new to send.
    let n = server.requests().len();
    let again = sync(settings(&server.url, Mode::Online), dir.path(), None).unwrap();
    assert_eq!((again.upload.rows_uploaded, server.requests().len()), (0, n));
    // The run goes on (resumed offline); only the new rows go up.
    let mut more = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    more = more.rsplit_once('\n').unwrap().0.to_string()
        + "\n"
        + &json!({"step": 3, "reward": 0.9, "timestamp": 1.8e9 + 3.0}).to_string()
        + "\n";
    std::fs::write(dir.path().join("metrics.jsonl"), more).unwrap();
    let third = sync(settings(&server.url, Mode::Online), dir.path(), None).unwrap();
    assert_eq!(third.upload.rows_uploaded, 1);
    assert_eq!(steps(&server.history(&id)), [0, 1, 2, 3]);
}

#[test]
fn disabled_means_no_run_and_a_bad_state_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Run::start(settings("http://127.0.0.1:9", Mode::Disabled), opts(dir.path())).unwrap().is_none());
    std::fs::write(dir.path().join("wandb.json"), "{not json").unwrap();
    let err = Run::start(settings("http://127.0.0.1:9", Mode::Online), opts(dir.path())).err().unwrap().to_string();
    assert!(err.contains("wandb.json") && err.contains("delete it"), "{err}");
}

/// With the state file gone (a new machine, a copied checkpoint), the run id from the
/// checkpoint and the server's `RunResumeStatus` still keep steps unique.
#[test]
fn resume_trusts_the_server_when_the_state_file_is_gone() {
    let server = MockServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (run, id) = run_five_steps(&server, dir.path());
    assert!(run.finish(0).complete);
    std::fs::remove_file(dir.path().join("wandb.json")).unwrap();
    let o = RunOptions { run_id: Some(id.clone()), ..opts(dir.path()) };
    let run = Run::start(settings(&server.url, Mode::Online), o).unwrap().unwrap();
    for s in 3..=7 {
        run.log(s, &row(&[("reward", s as f64)]));
    }
    let report = run.finish(0);
    assert_eq!((report.rows_uploaded, report.rows_skipped), (2, 3));
    assert!(server.requests().iter().any(|r| r.operation().as_deref() == Some("RunResumeStatus")));
    assert_eq!(steps(&server.history(&id)), [1, 2, 3, 4, 5, 6, 7]);
    let h = server.history(&id);
    assert!(h[5]["_runtime"].as_f64() >= h[4]["_runtime"].as_f64(), "runtime goes on from the server's summary");
}

/// A rejected API key is named as such (not as a generic failure), and nothing is lost.
#[test]
fn a_rejected_key_says_so() {
    let server = MockServer::start();
    server.set_behavior(Behavior::Status(401));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&server.url, Mode::Online);
    s.finish_timeout = Duration::from_millis(300);
    let run = Run::start(s, opts(dir.path())).unwrap().unwrap();
    run.log(1, &row(&[("reward", 1.0)]));
    let report = run.finish(0);
    let err = report.error.unwrap();
    assert!(!report.complete && err.contains("rejected the API key") && err.contains("401") && err.contains("WANDB_API_KEY"), "{err}");
}
