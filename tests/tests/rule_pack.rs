//! The shipped extraction pack through the `cordon rules` commands a detection engineer runs:
//! it passes its own fixtures, with a firing and a quiet case for every rule; a broken copy is
//! refused with file:line:column and a "did you mean"; a wrong expectation fails its case.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use cordon_tests::cordon_bin;

fn pack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/packs/extraction")
}

fn cordon(args: &[&str]) -> Output {
    Command::new(cordon_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cordon {args:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in the file"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn shipped_pack_passes_its_fixtures_with_a_firing_and_a_quiet_case_per_rule() {
    let pack = pack_dir();
    let out = cordon(&["rules", "test", &pack.to_string_lossy()]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("FAIL "), "{report}");
    assert!(!report.contains("NONE "), "every rule has tests: {report}");
    // "PASS rule.id: case name (N alert(s))"
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for line in report.lines().filter_map(|l| l.strip_prefix("PASS ")) {
        let (rule, rest) = line.split_once(": ").expect("PASS line has a rule id");
        let alerts: u64 = rest
            .rsplit_once(" (")
            .and_then(|(_, n)| n.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no alert count in `{line}`"));
        let entry = cases.entry(rule.to_owned()).or_default();
        if alerts > 0 {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    let validate = cordon(&["rules", "validate", &pack.to_string_lossy()]);
    assert!(validate.status.success(), "{}", text(&validate));
    let summary = String::from_utf8_lossy(&validate.stdout).into_owned();
    let rules: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rule count in `{summary}`"));
    assert!(rules >= 9, "the pack covers the nine behaviours: {summary}");
    assert_eq!(cases.len(), rules, "every rule ran cases: {cases:?}");
    for (rule, (firing, quiet)) in &cases {
        assert!(*firing >= 1, "{rule} has no case that fires: {report}");
        assert!(*quiet >= 1, "{rule} has no quiet case: {report}");
    }
}

#[test]
fn broken_copy_of_the_pack_is_refused_with_positions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("extraction");
    copy_dir(&pack_dir(), &copy);
    let file = copy.join("cot-harvest.yaml");
    let original = fs::read_to_string(&file).expect("cot-harvest.yaml is in the pack");
    let broken = original
        .replacen("count_if(", "count_iff(", 1)
        .replacen("window:", "windw:", 1);
    fs::write(&file, &broken).expect("write the broken rule");
    let (agg_line, agg_col) = position(&broken, "count_iff(");
    let (key_line, key_col) = position(&broken, "windw:");

    for command in ["validate", "test"] {
        let out = cordon(&["rules", command, &copy.to_string_lossy()]);
        let report = text(&out);
        assert_eq!(out.status.code(), Some(1), "rules {command}: {report}");
        let at = |line: usize, col: usize| format!("cot-harvest.yaml:{line}:{col}: ");
        assert!(
            report.contains(&at(agg_line, agg_col)) && report.contains("did you mean `count_if`"),
            "rules {command} names the misspelt aggregate: {report}"
        );
        assert!(
            report.contains(&at(key_line, key_col)) && report.contains("did you mean `window`"),
            "rules {command} names the misspelt key: {report}"
        );
        assert!(
            report.contains("rule extraction.cot-harvest"),
            "the rule id is named: {report}"
        );
    }
}

#[test]
fn a_wrong_expectation_fails_its_case_with_the_features() {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("extraction");
    copy_dir(&pack_dir(), &copy);
    let file = copy.join("cot-harvest.yaml");
    let original = fs::read_to_string(&file).expect("cot-harvest.yaml is in the pack");
    // Every firing case now expects one alert more than it gets.
    let (changed, n) = original.lines().fold((String::new(), 0), |(mut s, n), l| {
        let bumped = l.replace("alerts: 1", "alerts: 2");
        let n = n + usize::from(bumped != l);
        s.push_str(&bumped);
        s.push('\n');
        (s, n)
    });
    assert!(n >= 1, "cot-harvest.yaml has a case expecting one alert");
    fs::write(&file, changed).expect("write");
    let out = cordon(&["rules", "test", &copy.to_string_lossy()]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("FAIL extraction.cot-harvest: "), "{report}");
    assert!(
        report.contains("expected 2 new alert(s), got 1"),
        "{report}"
    );
    assert!(
        report.contains("alert 1: account_id `"),
        "the alert's features are shown: {report}"
    );
    assert!(
        report.contains(&format!("{n} rule test case(s) failed")),
        "{report}"
    );
}

#[test]
fn rules_schema_is_json_schema_naming_every_key() {
    let out = cordon(&["rules", "schema"]);
    assert!(out.status.success(), "{}", text(&out));
    let schema: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let props = schema["properties"].as_object().expect("properties");
    for key in ["id", "entity", "where", "features", "condition", "tests"] {
        assert!(props.contains_key(key), "{key}");
    }
    // Every top-level key the shipped rules use is in the schema.
    for entry in fs::read_dir(pack_dir()).expect("pack") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("rule file");
        for line in text.lines() {
            if let Some((key, _)) = line.split_once(':')
                && !key.starts_with([' ', '#', '-'])
                && !key.is_empty()
            {
                assert!(
                    props.contains_key(key),
                    "{}: `{key}` is not in the schema",
                    path.display()
                );
            }
        }
    }
}
