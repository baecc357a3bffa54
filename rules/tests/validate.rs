//! Rule-set validation: every error at once, each at its file:line:column, with hints.

use cordon_rules::{load_paths, load_sources};

fn errors(text: &str) -> Vec<String> {
    match load_sources(&[("r.yaml".into(), text.into())]) {
        Ok(set) => panic!("expected errors, loaded {} rules", set.len()),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn has(errs: &[String], want: &str) {
    assert!(
        errs.iter().any(|e| e.contains(want)),
        "no error containing {want:?} in:\n{}",
        errs.join("\n")
    );
}

const GOOD: &str = "id: a.good
version: 1
title: good
severity: low
entity: account_id
window: 1h
every: 5m
features:
  n: count()
condition: n > 10
";

#[test]
fn a_valid_rule_loads() {
    let set = load_sources(&[("r.yaml".into(), GOOD.into())]).expect("valid");
    assert_eq!(set.len(), 1);
    let r = &set.rules[0].rule;
    assert_eq!((r.id.as_str(), r.version, r.panes()), ("a.good", 1, 12));
    assert_eq!(r.suppress, r.window, "suppress defaults to the window");
    assert_eq!(
        r.evidence,
        vec!["n".to_string()],
        "evidence defaults to all features"
    );
}

#[test]
fn structural_errors_are_all_reported_with_positions() {
    let text = "id: t.bad
version: one
title: bad
severity: hgh
entity: account_id
windw: 1h
every: 7m
features:
  n: count()
  s: summ(output_tokens)
  q: quantile(latency_ms, 1.5)
  c: count(x)
condition: n > 1
evidence: [n, nn]
---
id: t.evidence
version: 1
title: evidence
severity: low
entity: account_id
window: 1h
every: 5m
features:
  n: count()
condition: n > 1
evidence: [n, nn]
";
    let errs = errors(text);
    has(
        &errs,
        "r.yaml:2:10: rule t.bad: `version` must be a positive integer",
    );
    has(&errs, "r.yaml:4:11: rule t.bad: unknown severity `hgh`");
    has(&errs, "(did you mean `high`?)");
    has(
        &errs,
        "r.yaml:6:1: rule t.bad: unknown key `windw` (did you mean `window`?)",
    );
    has(&errs, "missing required key `window`");
    has(
        &errs,
        "r.yaml:10:6: rule t.bad: feature `s`: unknown aggregate `summ` (did you mean `sum`?)",
    );
    has(
        &errs,
        "r.yaml:11:27: rule t.bad: feature `q`: the quantile must be a number from 0 to 1",
    );
    has(
        &errs,
        "r.yaml:12:6: rule t.bad: feature `c`: `count` takes 0 argument(s), found 1",
    );
    has(
        &errs,
        "r.yaml:26:15: rule t.evidence: `evidence` names `nn`, which is not a feature of this rule (did you mean `n`?)",
    );
    assert!(
        !errs.iter().any(|e| e.contains("t.bad: `evidence`")),
        "no evidence errors while features are broken: {errs:#?}"
    );
    assert!(errs.len() >= 8, "{errs:#?}");
}

#[test]
fn expression_errors_point_into_the_expression() {
    let text = "id: t.expr
version: 1
title: expr
severity: low
entity: acount_id
where: status <
window: 1h
every: 5m
features:
  n: count()
  s: sum(user_agent)
  f: count_if(ip_prefx(ip, 24) = 'x')
condition: n > 1 AND m < 2
";
    let errs = errors(text);
    has(
        &errs,
        "r.yaml:5:9: rule t.expr: unknown event field `acount_id`",
    );
    has(&errs, "(did you mean `account_id`?)");
    has(&errs, "r.yaml:6:8: rule t.expr: `status <`");
    has(
        &errs,
        "r.yaml:11:10: rule t.expr: the argument of sum in `s` must be a number, but `user_agent` is Utf8",
    );
    has(
        &errs,
        "r.yaml:12:15: rule t.expr: unknown function `ip_prefx`",
    );
    has(&errs, "(did you mean `ip_prefix`?)");
    has(
        &errs,
        "r.yaml:13:22: rule t.expr: unknown feature `m` in `n > 1 AND m < 2`",
    );
}

#[test]
fn conditions_and_filters_must_be_boolean_and_pure() {
    let text = "id: t.types
version: 1
title: types
severity: low
entity: account_id
where: output_tokens + 1
window: 1h
every: 5m
features:
  n: count()
condition: count() > 3
---
id: t.now
version: 1
title: now
severity: low
entity: account_id
where: ts > now()
window: 1h
every: 5m
features:
  n: count()
condition: n > 1
---
id: t.bits
version: 1
title: bits
severity: low
entity: ip_prefix(ip, 40)
window: 1h
every: 5m
features:
  n: count()
condition: n > 1
";
    let errs = errors(text);
    has(&errs, "r.yaml:6:8: rule t.types: `where` must be a boolean");
    has(&errs, "rule t.types: unknown function `count`");
    has(&errs, "aggregates belong in `features`");
    has(&errs, "rule t.now: unknown function `now`");
    has(
        &errs,
        "rule t.bits: ip_prefix: v4_bits must be a whole number between 0 and 32",
    );
}

#[test]
fn yaml_syntax_errors_have_positions_and_other_files_still_report() {
    let sources = vec![
        (
            "a.yaml".to_string(),
            "id: x\nversion: [1, 2\ntitle: t\n".to_string(),
        ),
        (
            "b.yaml".to_string(),
            GOOD.replace("severity: low", "severity: extreme"),
        ),
    ];
    let errs: Vec<String> = load_sources(&sources)
        .expect_err("bad")
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("a.yaml:") && e.contains("invalid YAML")),
        "{errs:#?}"
    );
    has(&errs, "b.yaml:4:11:");
}

#[test]
fn rule_sets_load_all_or_nothing_and_ids_are_unique() {
    let sources = vec![
        ("a.yaml".to_string(), GOOD.to_string()),
        ("b.yaml".to_string(), GOOD.to_string()),
    ];
    let err = load_sources(&sources).expect_err("duplicate id");
    assert_eq!(err.0.len(), 1);
    assert!(
        err.0[0]
            .to_string()
            .contains("duplicate rule id (also defined at a.yaml:1:1)"),
        "{}",
        err.0[0]
    );
}

#[test]
fn window_geometry_is_checked() {
    let errs = errors(&GOOD.replace("every: 5m", "every: 7m"));
    has(
        &errs,
        "r.yaml:7:8: rule a.good: `every` must divide `window` evenly",
    );
    let errs = errors(
        &GOOD
            .replace("window: 1h", "window: 30d")
            .replace("every: 5m", "every: 1m"),
    );
    has(&errs, "panes; at most 1440 are allowed");
    let errs = errors(
        &GOOD
            .replace("window: 1h", "window: 360d")
            .replace("every: 5m", "every: 60d"),
    );
    has(&errs, "r.yaml:7:8: rule a.good: `every` may be at most 30d");
    let errs = errors(&GOOD.replace("window: 1h", "window: soon"));
    has(
        &errs,
        "r.yaml:6:9: rule a.good: `window`: `soon` is not a duration",
    );
}

#[test]
fn quoted_and_block_expressions_report_inside_the_text() {
    let text = GOOD.replace("condition: n > 10", "condition: \"n > 10 AND zz\"");
    has(
        &errors(&text),
        "r.yaml:10:24: rule a.good: unknown feature `zz`",
    );
    let text = GOOD.replace("condition: n > 10", "condition: >-\n  n > 10\n  AND zz > 1");
    has(
        &errors(&text),
        "r.yaml:12:7: rule a.good: unknown feature `zz`",
    );
}

#[test]
fn directories_load_recursively_and_missing_paths_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/one.yml"), GOOD).expect("write");
    std::fs::write(dir.path().join("two.yaml"), GOOD.replace("a.good", "a.two")).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a rule").expect("write");
    // A Kubernetes ConfigMap mount: hidden versioned folders next to symlinks.
    std::fs::create_dir(dir.path().join("..2026_11_26")).expect("mkdir");
    std::fs::write(
        dir.path().join("..2026_11_26/two.yaml"),
        GOOD.replace("a.good", "a.two"),
    )
    .expect("write");
    let set = load_paths(&[dir.path().to_path_buf()]).expect("loads");
    assert_eq!(set.len(), 2);
    let err = load_paths(&[dir.path().join("nope")]).expect_err("missing");
    assert!(
        err.to_string().contains("no such file or directory"),
        "{err}"
    );
    let empty = tempfile::tempdir().expect("tempdir");
    let err = load_paths(&[empty.path().to_path_buf()]).expect_err("empty");
    assert!(err.to_string().contains("no rules found"), "{err}");
}

#[test]
fn the_shipped_pack_is_valid() {
    let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packs/extraction");
    let set = load_paths(&[pack]).expect("the shipped pack validates");
    assert!(set.len() >= 3);
}

#[test]
fn disabled_rules_are_validated_but_not_run() {
    let set = load_sources(&[("r.yaml".into(), format!("{GOOD}enabled: false\n"))]).expect("valid");
    assert_eq!((set.len(), set.disabled.len()), (0, 1));
    let errs = errors(&format!("{GOOD}enabled: false\n").replace("n > 10", "nn > 10"));
    has(&errs, "unknown feature `nn`");
}

#[test]
fn interval_comparisons_are_refused_and_timestamp_comparisons_accepted() {
    // Regression: `ts - account_created < INTERVAL '3 days'` compiled, and was true for an
    // account 100 days old (intervals compare by months, then days, then nanoseconds).
    let rule = format!("{GOOD}where: ts - account_created < INTERVAL '3 days'\n");
    let errs = errors(&rule);
    has(
        &errs,
        "r.yaml:11:8: rule a.good: `ts - account_created < INTERVAL '3 days'` compares intervals",
    );
    has(&errs, "account_created > ts - INTERVAL '3 days'");
    let set = load_sources(&[(
        "r.yaml".into(),
        format!("{GOOD}where: account_created > ts - INTERVAL '3 days'\n"),
    )])
    .expect("a timestamp comparison is fine");
    assert_eq!(set.len(), 1);
}

#[test]
fn conditions_yield_the_feature_bounds_they_require() {
    use cordon_rules::{Bound, BoundOp};
    let rule = |condition: &str| {
        let text = GOOD
            .replace(
                "  n: count()\n",
                "  n: count()\n  m: count()\n  k: distinct(ip)\n",
            )
            .replace("condition: n > 10\n", &format!("condition: {condition}\n"));
        let set = load_sources(&[("r.yaml".into(), text)]).expect("valid");
        set.rules[0].bounds.clone()
    };
    let b = |feature, op, value| Bound { feature, op, value };
    assert_eq!(
        rule("n >= 300 AND m / n >= 0.5 AND 10 < k"),
        vec![b(0, BoundOp::Ge, 300.0), b(2, BoundOp::Gt, 10.0)]
    );
    assert_eq!(
        rule("(n > 3 AND m <= 2.5) AND 7 >= k"),
        vec![
            b(0, BoundOp::Gt, 3.0),
            b(1, BoundOp::Le, 2.5),
            b(2, BoundOp::Le, 7.0)
        ]
    );
    // Cheapest to read first: the count before the distinct set, whatever the order written.
    assert_eq!(
        rule("k >= 20 AND m > 1 AND n >= 200"),
        vec![
            b(1, BoundOp::Gt, 1.0),
            b(0, BoundOp::Ge, 200.0),
            b(2, BoundOp::Ge, 20.0)
        ]
    );
    // Under OR or NOT no single conjunct is required.
    assert_eq!(rule("n >= 300 OR k > 10"), vec![]);
    assert_eq!(rule("NOT (n < 300 AND k > 1)"), vec![]);
    // What the simplifier turns into a comparison counts.
    assert_eq!(rule("NOT (n < 300)"), vec![b(0, BoundOp::Ge, 300.0)]);
    // A bound admits only defined values on its side.
    let ge = b(0, BoundOp::Ge, 300.0);
    assert!(ge.admits(Some(300.0)) && !ge.admits(Some(299.0)) && !ge.admits(None));
    assert!(!ge.admits(Some(f64::NAN)) && !ge.admits(Some(f64::INFINITY)));
}

#[test]
fn expression_errors_show_with_validation_errors_of_the_same_rule() {
    // Regression: a rule whose feature failed validation was not compiled, so the errors in
    // its expressions only showed once the feature was fixed.
    let text = "id: a.bad
version: 1
title: bad
severity: low
entity: acount_id
window: 1h
every: 5m
features:
  n: count()
  s: sum(output_tokns)
  q: distnct(ip)
condition: n > 10 AND nope > 3 AND q > 1
";
    let errs = errors(text);
    has(
        &errs,
        "r.yaml:11:6: rule a.bad: feature `q`: unknown aggregate `distnct`",
    );
    has(
        &errs,
        "r.yaml:5:9: rule a.bad: unknown event field `acount_id`",
    );
    has(
        &errs,
        "r.yaml:10:10: rule a.bad: unknown event field `output_tokns`",
    );
    has(&errs, "r.yaml:12:23: rule a.bad: unknown feature `nope`");
    // `q` is declared, if invalid: the condition may name it without a second error.
    assert!(
        !errs.iter().any(|e| e.contains("unknown feature `q`")),
        "{}",
        errs.join("\n")
    );
    assert_eq!(errs.len(), 4, "{}", errs.join("\n"));
}
