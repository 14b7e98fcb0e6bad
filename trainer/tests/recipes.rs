//! Every recipe shipped in `recipes/` passes the checks `ponder train` runs before anything
//! starts (unknown keys, values, rewards, stage references), so a recipe cannot rot
//! unnoticed while the code under it changes. Nothing is loaded or downloaded.

use std::path::Path;

#[test]
fn every_shipped_recipe_loads_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut names = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let origin = p.display().to_string();
        let table: toml::Table = std::fs::read_to_string(&p).unwrap().parse().unwrap_or_else(|e| panic!("{origin}: {e}"));
        if table.contains_key("stages") {
            let pipeline: trainer::pipeline::Pipeline =
                trainer::config::from_table(table, &origin).unwrap_or_else(|e| panic!("{origin}: {e:#}"));
            // Every stage's settings are checked first; a recipe that needs another one's
            // output (the distillation teacher) then names the command that makes it.
            if let Err(e) = trainer::pipeline::validate(&pipeline) {
                let m = format!("{e:#}");
                assert!(m.contains("run that first") || m.contains("./ponder train recipes/"), "{origin}: {m}");
            }
        } else {
            let (recipe, _) = trainer::config::Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{origin}: {e:#}"));
            // A single run's data paths resolve against the recipe's folder, and the files exist;
            // a Hub dataset split is well formed (it is fetched only when a run starts).
            for f in recipe.data.train.list().into_iter().chain(recipe.data.eval.iter().flat_map(|e| e.list())) {
                let text = f.to_string_lossy();
                match text.strip_prefix("hf://") {
                    Some(spec) => {
                        let spec = spec.split('[').next().unwrap();
                        ponder_hub::DatasetSpec::parse(spec).unwrap_or_else(|e| panic!("{origin}: {e}"));
                    }
                    None => assert!(f.exists(), "{origin}: data file {} is missing", f.display()),
                }
            }
        }
        names.push(p.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    for want in [
        "tiny-r1-zero.toml",
        "tiny-r1.toml",
        "tiny-r1-distill.toml",
        "qwen2.5-0.5b-gsm8k.toml",
        "qwen2.5-3b-countdown.toml",
        "qwen2.5-math-1.5b-r1-zero.toml",
        "qwen2.5-1.5b-r1.toml",
        "qwen2.5-r1-distill.toml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not found in {names:?}");
    }
}
